//! Step 8, a root rotation of both clusters' trust under continuous cross-network traffic
//! (issue 14), on file-based workload certificates with `meshctl certs` (`meshctl rotate`
//! does the same stages on the clusters' `cacerts`, which needs Kubernetes). West's webapp
//! calls catalog through east's gateway without pause, alternating classic mTLS on 15443
//! and a double-HBONE tunnel on 15008, while: a new root is made; every bundle becomes old +
//! new (prepare); new intermediates sign re-issued certificates (activate); the old root
//! leaves every bundle (finish); east's intermediate is renewed. Workloads, the gateway's
//! `--hbone-certs` and the destination ztunnel pick the files up by polling. Zero failed
//! calls at every stage; a new-root certificate against a peer that trusts only the old root
//! fails, and so does an old-root one after finish (checks outside the stream).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use testkit::mesh::{CATALOG, NAMESPACE, WEBAPP, spiffe_id};
use testkit::prom::series_value;
use testkit::wait::wait_until;

use crate::caller::Caller;
use crate::certs::bundle;
use crate::fixture::Mesh;
use crate::restart::{Sample, StopOnDrop};
use crate::{EAST_GW, EAST_HBONE, EAST2_ADMIN_IP, EGW, WPOD, catalog_sni};

const MAX_CALLS: usize = 2000;
const MAX_TIME: Duration = Duration::from_secs(120);
const PACING: Duration = Duration::from_millis(20);
/// Calls of each kind that must succeed after a stage's files are in place and reloaded.
const CALLS_PER_STAGE: usize = 5;

/// The processes that poll certificate files, and the log line each writes on a reload.
const RELOADERS: [(&str, &str); 3] = [
    ("catalog-a", "certificates reloaded"),
    ("ztunnel-a", "certificates reloaded"),
    ("east-gateway-3", "HBONE certificates reloaded"),
];

pub fn step8_root_rotation_under_traffic(m: &mut Mesh) {
    println!("== step 8: root rotation of both clusters under continuous west -> east traffic");
    // The east gateway drained and exited in step 7; a new instance takes its place.
    m.start_east_gateway_retrying("east-gateway-3");
    wait_until("east-gateway-3 ready", Duration::from_secs(10), || {
        m.ready_status(EGW, EAST2_ADMIN_IP) == Some(200)
    });

    let samples: Arc<Mutex<Vec<(Sample, &'static str)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = start_traffic(m, samples.clone(), stop.clone());
    let ok_after = |t: Instant, kind: &str| {
        samples
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, k)| s.ok && s.at >= t && *k == kind)
            .count()
    };
    let settled = |stage: &str, t: Instant| {
        wait_until(stage, Duration::from_secs(30), || {
            ok_after(t, "classic") >= CALLS_PER_STAGE && ok_after(t, "hbone") >= CALLS_PER_STAGE
        });
        let n = samples.lock().unwrap().len();
        println!("   {stage}: calls keep succeeding ({n} so far)");
    };
    settled("before: old root everywhere", Instant::now());

    // A new root. A workload certified from it now (activated too early) is refused by
    // catalog, which trusts only the old root.
    let (old, new) = (m.pki("root"), m.pki("root-new"));
    m.meshctl(&[
        "certs".as_ref(),
        "root".as_ref(),
        "--out".as_ref(),
        new.as_os_str(),
    ]);
    let early_ca = m.pki("west-early");
    m.intermediate(&new, testkit::mesh::WEST_CLUSTER, &early_ca, false);
    let early = m.dir.path().join("early-webapp");
    m.meshctl(&[
        "certs".as_ref(),
        "workload".as_ref(),
        "-n".as_ref(),
        NAMESPACE.as_ref(),
        "-s".as_ref(),
        WEBAPP.as_ref(),
        "--ca".as_ref(),
        early_ca.as_os_str(),
        "--out".as_ref(),
        early.as_os_str(),
    ]);
    std::fs::write(early.join("root-cert.pem"), bundle(&[&old, &new])).expect("early bundle");
    let early_caller = Caller {
        bins: m.bins.clone(),
        ns: m.ns(WPOD),
        certs: early.clone(),
    };
    let refusals = refused_by_catalog(m);
    let c = early_caller.call(EAST_GW, &catalog_sni(), &spiffe_id(CATALOG), "too early");
    assert!(
        !c.ok,
        "a new-root caller must fail against catalog trusting only the old root: {}",
        c.describe()
    );
    let why = wait_refusal(m, refusals.len());
    println!(
        "   new-root webapp -> catalog (trusts the old root only): fails: {}",
        c.error_line()
    );
    println!("     catalog-a: {why}");

    // The same certificate from west's ztunnel: east's gateway (HBONE terminates the outer
    // TLS) refuses the handshake, before any endpoint.
    let refused = "gateway_hbone_refused_total{reason=\"bad_client_cert\"}";
    let before = series_value(&m.metrics(EGW, EAST2_ADMIN_IP), refused);
    let t = m
        .tunnel_client()
        .tunnel(EAST_HBONE, "too early", Some(&early));
    assert!(
        !t.ok,
        "a new-root ztunnel must fail against the gateway trusting only the old root: {}",
        t.describe()
    );
    wait_until(
        "the gateway counts the refusal",
        Duration::from_secs(5),
        || series_value(&m.metrics(EGW, EAST2_ADMIN_IP), refused) > before,
    );
    println!(
        "   new-root webapp's ztunnel -> east gateway 15008: refused, counted under {refused}: {}",
        t.stderr.lines().last().unwrap_or_default()
    );

    // prepare: every bundle old + new; the old intermediates keep signing.
    let t = reissue(m, &["west", "east"], |m| {
        for c in ["west", "east"] {
            std::fs::write(m.pki(c).join("root-cert.pem"), bundle(&[&old, &new])).expect("bundle");
        }
    });
    settled("prepared: bundles old + new", t);
    let c = early_caller.call(
        EAST_GW,
        &catalog_sni(),
        &spiffe_id(CATALOG),
        "after prepare",
    );
    assert!(
        c.ok,
        "once catalog trusts both roots the new-root caller works: {}",
        c.describe()
    );
    let prepared_webapp = m
        .certs("west", WEBAPP)
        .join(format!("..v{}", m.cert_version));

    // activate: new intermediates from the new root; bundles still old + new.
    let t = reissue(m, &["west", "east"], |m| {
        for (c, cluster) in [
            ("west", testkit::mesh::WEST_CLUSTER),
            ("east", testkit::mesh::EAST_CLUSTER),
        ] {
            m.intermediate(&new, cluster, &m.pki(c), true);
            std::fs::write(m.pki(c).join("root-cert.pem"), bundle(&[&old, &new])).expect("bundle");
        }
    });
    settled("activated: new intermediates, bundles old + new", t);

    // finish: the old root leaves every bundle.
    let t = reissue(m, &["west", "east"], |m| {
        for c in ["west", "east"] {
            std::fs::write(m.pki(c).join("root-cert.pem"), bundle(&[&new])).expect("bundle");
        }
    });
    settled("finished: new root only", t);
    let stale = Caller {
        bins: m.bins.clone(),
        ns: m.ns(WPOD),
        certs: prepared_webapp,
    };
    let refusals = refused_by_catalog(m);
    let c = stale.call(EAST_GW, &catalog_sni(), &spiffe_id(CATALOG), "stale");
    assert!(
        !c.ok,
        "an old-root certificate must fail after finish: {}",
        c.describe()
    );
    let why = wait_refusal(m, refusals.len());
    println!(
        "   old-root webapp -> catalog after finish: fails: {}",
        c.error_line()
    );
    println!("     catalog-a: {why}");

    // An intermediate renewal under the new root (`meshctl certs renew`).
    let t = reissue(m, &["east"], |m| {
        let (ca, cert, key) = (
            m.pki("east"),
            new.join("root-cert.pem"),
            new.join("root-key.pem"),
        );
        m.meshctl(&[
            "certs".as_ref(),
            "renew".as_ref(),
            "--ca".as_ref(),
            ca.as_os_str(),
            "--root-cert".as_ref(),
            cert.as_os_str(),
            "--root-key".as_ref(),
            key.as_os_str(),
        ]);
    });
    settled("east intermediate renewed", t);

    traffic.stop();
    let samples = samples.lock().unwrap();
    let failed: Vec<_> = samples.iter().filter(|(s, _)| !s.ok).collect();
    let count = |kind: &str| samples.iter().filter(|(_, k)| *k == kind).count();
    println!(
        "   traffic: {} classic calls and {} tunnels, {} failed",
        count("classic"),
        count("hbone"),
        failed.len()
    );
    for (s, k) in &failed {
        println!("     {k} failed: {}", s.detail);
    }
    assert!(failed.is_empty(), "calls failed during the rotation");
}

/// catalog-a's log lines refusing a client's TLS handshake.
fn refused_by_catalog(m: &Mesh) -> Vec<String> {
    let log = m.proc("catalog-a").log.lock().unwrap();
    log.iter()
        .filter(|(_, l)| l.contains("refused TLS from"))
        .map(|(_, l)| l.clone())
        .collect()
}

/// Waits for catalog-a to log one more refusal than `before` and returns it: the failure was
/// catalog's trust check, not the network or the gateway.
fn wait_refusal(m: &Mesh, before: usize) -> String {
    wait_until(
        "catalog-a refuses the handshake",
        Duration::from_secs(5),
        || refused_by_catalog(m).len() > before,
    );
    refused_by_catalog(m).pop().unwrap_or_default()
}

/// Runs `change` (the CA directories), re-issues every identity of `clusters` from them and
/// waits for each running reader to reload; returns when the new files are being served.
fn reissue(m: &mut Mesh, clusters: &[&str], change: impl FnOnce(&Mesh)) -> Instant {
    let count = |m: &Mesh, label: &str, line: &str| {
        m.proc(label)
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(line))
            .count()
    };
    let before: Vec<usize> = RELOADERS.iter().map(|(p, l)| count(m, p, l)).collect();
    change(m);
    m.issue_all(clusters);
    if clusters.contains(&"east") {
        for ((label, line), n) in RELOADERS.iter().zip(before) {
            wait_until(&format!("{label} reloads"), Duration::from_secs(10), || {
                count(m, label, line) > n
            });
        }
    }
    Instant::now()
}

fn start_traffic(
    m: &Mesh,
    samples: Arc<Mutex<Vec<(Sample, &'static str)>>>,
    stop: Arc<AtomicBool>,
) -> StopOnDrop {
    let webapp = m.caller(WPOD, "west", WEBAPP);
    let ztunnel = m.tunnel_client();
    StopOnDrop::new(
        stop.clone(),
        thread::spawn(move || {
            let t0 = Instant::now();
            for i in 0..MAX_CALLS {
                if stop.load(std::sync::atomic::Ordering::SeqCst) || t0.elapsed() > MAX_TIME {
                    break;
                }
                let (sample, kind) = if i % 2 == 0 {
                    let c = webapp.call(
                        EAST_GW,
                        &catalog_sni(),
                        &spiffe_id(CATALOG),
                        &format!("rot-{i}"),
                    );
                    let detail = if c.ok {
                        c.reply.clone().unwrap_or_default()
                    } else {
                        c.error_line()
                    };
                    (
                        Sample {
                            at: c.started,
                            ok: c.ok,
                            detail,
                        },
                        "classic",
                    )
                } else {
                    let t = ztunnel.tunnel(EAST_HBONE, &format!("rot-{i}"), None);
                    let detail = if t.ok {
                        t.reply.clone().unwrap_or_default()
                    } else {
                        t.describe()
                    };
                    (
                        Sample {
                            at: t.started,
                            ok: t.ok,
                            detail,
                        },
                        "hbone",
                    )
                };
                samples.lock().unwrap().push((sample, kind));
                thread::sleep(PACING);
            }
        }),
    )
}
