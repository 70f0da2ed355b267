//! Benchmark (not a timed test; ignored by default) of Kubernetes discovery, with the
//! gateway binary as a separate process so its memory is measured alone:
//!
//! ```text
//! cargo test --release -p gateway --test kube_bench -- --ignored --nocapture
//! ```
//!
//! 1. Update latency: with 10,000 endpoints in the table, the time from an EndpointSlice
//!    update in the API server to the first new connection routed by it (calls are made
//!    back to back, so the figure includes one call's duration, a TLS handshake).
//! 2. Memory: the gateway's RSS with 10,000 Services and 50,000 endpoints (10,000 slices),
//!    without Istio's CRD, and with it plus 50,000 Pods and 10,000 DestinationRules (two
//!    subsets each); compared with its RSS on an empty cluster; plus the time to the first
//!    full sync and the update latency at that size.
//!
//! `BENCH_GATEWAY_LOG=warn,gateway::discovery::k8s=debug` shows each rebuild's cost.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::proc::ChildGuard;

const NS: &str = testkit::mesh::NAMESPACE;

fn free_port() -> SocketAddr {
    testkit::net::free_addr(std::net::Ipv4Addr::LOCALHOST).unwrap()
}

struct GwProc {
    child: ChildGuard,
    listen: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

impl GwProc {
    fn status_kb(&self, field: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

/// Starts the gateway binary on `api` and waits (up to 5 minutes) until it is ready.
async fn start_gateway(api: &TestApiServer) -> (GwProc, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let kc = dir.path().join("kubeconfig");
    std::fs::write(&kc, api.kubeconfig("east")).unwrap();
    let (listen, admin) = (free_port(), free_port());
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--kubeconfig", kc.to_str().unwrap(), "--context", "east"])
        .args([
            "--listen",
            &listen.to_string(),
            "--admin",
            &admin.to_string(),
        ])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_GATEWAY_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let gw = GwProc {
        child: ChildGuard::new(child),
        listen,
        admin,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        assert!(Instant::now() < deadline, "gateway not ready in time");
        if tokio::net::TcpStream::connect(admin).await.is_ok()
            && http_get(admin, "/healthz/ready").await.0 == 200
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (gw, started.elapsed())
}

/// A slice as the real controller writes it, with the fields discovery does not read too,
/// so the memory figure includes them.
fn slice(name: &str, svc: &str, port: u16, eps: &[(IpAddr, &str)]) -> Value {
    let endpoints: Vec<k8s::Endpoint> = eps
        .iter()
        .map(|&(address, pod)| k8s::Endpoint {
            address,
            ready: true,
            pod,
        })
        .collect();
    let mut v = k8s::endpoint_slice(
        NS,
        name,
        svc,
        ("http", port),
        "endpointslice-controller.k8s.io",
        &endpoints,
    );
    v["metadata"]["annotations"] =
        json!({"endpoints.kubernetes.io/last-change-trigger-time": "2025-01-01T00:00:00Z"});
    for e in v["endpoints"].as_array_mut().unwrap() {
        e["conditions"]["terminating"] = json!(false);
        e["nodeName"] = json!("node-1");
        e["zone"] = json!("zone-a");
        e["targetRef"]["uid"] = json!("0f0e0d0c-0b0a-0908-0706-050403020100");
    }
    v
}

/// A Service (port 80 → 9080) with the label and annotation `kubectl apply` leaves.
fn service(name: &str) -> Value {
    let mut v = k8s::service(
        NS,
        name,
        &[k8s::ServicePort {
            name: "http",
            port: 80,
            target_port: 9080,
        }],
    );
    v["metadata"]["labels"] = json!({"app": name});
    v["metadata"]["annotations"] = json!({"kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\",\"kind\":\"Service\"}"});
    v
}

fn fake_ip(i: usize) -> IpAddr {
    IpAddr::from([10, (i >> 16) as u8, (i >> 8) as u8, i as u8])
}

/// `services` Services with `per` endpoints each; with `istio`, their Pods (two labels and
/// the usual pod-template-hash) and one DestinationRule per Service.
fn populate(api: &TestApiServer, services: usize, per: usize, istio: bool) {
    let st = api.store();
    for s in 0..services {
        let name = format!("svc-{s}");
        st.create(service(&name)).unwrap();
        let eps: Vec<(IpAddr, String)> = (0..per)
            .map(|e| (fake_ip(s * per + e + 1), format!("{name}-{e}")))
            .collect();
        let refs: Vec<(IpAddr, &str)> = eps.iter().map(|(a, p)| (*a, p.as_str())).collect();
        st.create(slice(&format!("{name}-abcde"), &name, 9080, &refs))
            .unwrap();
        if istio {
            for (e, (_, pod)) in eps.iter().enumerate() {
                let version = format!("v{}", e % 2 + 1);
                let labels = [
                    ("app", name.as_str()),
                    ("version", version.as_str()),
                    ("pod-template-hash", "5d4f8c7b9"),
                ];
                st.create(k8s::sidecar_pod(NS, pod, &labels)).unwrap();
            }
            let subsets: [(&str, &[(&str, &str)]); 2] =
                [("v1", &[("version", "v1")]), ("v2", &[("version", "v2")])];
            st.create(k8s::destination_rule(NS, &name, &name, &subsets))
                .unwrap();
        }
    }
}

async fn endpoints_metric(admin: SocketAddr) -> f64 {
    metric(
        &http_get(admin, "/metrics").await.1,
        "gateway_discovery_route_table_endpoints",
    )
}

async fn generation(admin: SocketAddr) -> f64 {
    metric(
        &http_get(admin, "/metrics").await.1,
        "gateway_discovery_route_table_generation",
    )
}

/// Moves the catalog slice between backends `rounds` times; returns, per move, the time
/// until the gateway published a new table and until the first call routed by it.
async fn update_latency(
    api: &TestApiServer,
    gw: &GwProc,
    b: &[Backend],
    port: u16,
    rounds: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let name = sni(80, "", CATALOG);
    let mut published = Vec::new();
    let mut out = Vec::new();
    for r in 0..rounds {
        let (target, pod) = if r % 2 == 0 { ("b", "pb") } else { ("a", "pa") };
        let ip = b[if r % 2 == 0 { 1 } else { 0 }].addr.ip();
        // Spaced like independent updates, not a burst.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = generation(gw.admin).await;
        let t0 = Instant::now();
        api.store()
            .apply(slice("catalog-1", "catalog", port, &[(ip, pod)]))
            .unwrap();
        while generation(gw.admin).await <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "update never published"
            );
        }
        published.push(t0.elapsed());
        loop {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "update never routed"
            );
            if let Ok(line) = call(gw.listen, &name).await
                && line.starts_with(&format!("{target} "))
            {
                break;
            }
        }
        out.push(t0.elapsed());
    }
    (published, out)
}

fn summary(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    format!(
        "n={} min={:.1}ms p50={:.1}ms p90={:.1}ms max={:.1}ms",
        v.len(),
        ms(v[0]),
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[v.len() - 1])
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release -- --ignored --nocapture"]
async fn kube_discovery_benchmark() {
    init();
    let (b, port) = backends(&["a", "b"]).await;
    let catalog = |api: &TestApiServer| {
        api.store()
            .create(json!({"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "catalog", "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))
            .unwrap();
        api.store()
            .create(slice(
                "catalog-1",
                "catalog",
                port,
                &[(b[0].addr.ip(), "pa")],
            ))
            .unwrap();
    };
    let server = |istio: bool| {
        let mut o = Options::new("east");
        o.destination_rule_crd = istio;
        o.store.history_limit = 10_000_000;
        // One real backend listens on 127.0.0.1; a real API server would refuse that slice.
        o.store.allow_loopback_endpoint_addresses = true;
        o
    };

    // Baseline: an empty cluster.
    let api = TestApiServer::start_with(server(true)).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    catalog(&api);
    let (gw, _) = start_gateway(&api).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base_rss = gw.status_kb("VmRSS:");
    drop(gw);
    drop(api);

    // 1. Update latency with 10,000 endpoints (2,000 services x 5).
    let api = TestApiServer::start_with(server(false)).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    catalog(&api);
    populate(&api, 2_000, 5, false);
    let (gw, sync) = start_gateway(&api).await;
    assert_eq!(endpoints_metric(gw.admin).await, 10_001.0);
    let (publ, lat) = update_latency(&api, &gw, &b, port, 30).await;
    println!(
        "10,000 endpoints: update->published {}\n10,000 endpoints: update->routed    {} (first sync {:.2}s)",
        summary(publ),
        summary(lat),
        sync.as_secs_f64()
    );
    drop(gw);
    drop(api);

    // 2a. Memory with 10,000 services / 50,000 endpoints, no Istio CRD.
    let api = TestApiServer::start_with(server(false)).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    catalog(&api);
    populate(&api, 10_000, 5, false);
    let (gw, sync) = start_gateway(&api).await;
    assert_eq!(endpoints_metric(gw.admin).await, 50_001.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = gw.status_kb("VmRSS:");
    println!(
        "memory, 10,000 services / 50,000 endpoints (no Istio): RSS {:.1} MiB (delta {:.1} MiB), peak {:.1} MiB; first sync {:.2}s",
        rss as f64 / 1024.0,
        (rss as f64 - base_rss as f64) / 1024.0,
        gw.status_kb("VmHWM:") as f64 / 1024.0,
        sync.as_secs_f64()
    );
    let (publ, lat) = update_latency(&api, &gw, &b, port, 10).await;
    println!(
        "50,000 endpoints (no Istio): update->published {}\n50,000 endpoints (no Istio): update->routed    {}",
        summary(publ),
        summary(lat)
    );
    println!(
        "RSS after 10 updates: {:.1} MiB",
        gw.status_kb("VmRSS:") as f64 / 1024.0
    );
    drop(gw);
    drop(api);

    // 2. Memory with 10,000 services / 50,000 endpoints / 50,000 pods / 10,000 rules.
    let api = TestApiServer::start_with(server(true)).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    catalog(&api);
    let t = Instant::now();
    populate(&api, 10_000, 5, true);
    println!(
        "populated the test API server in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    let (gw, sync) = start_gateway(&api).await;
    assert_eq!(endpoints_metric(gw.admin).await, 50_001.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = gw.status_kb("VmRSS:");
    let hwm = gw.status_kb("VmHWM:");
    println!(
        "memory, 10,000 services / 50,000 endpoints / 50,000 pods / 10,000 DestinationRules (Istio): \
         RSS {:.1} MiB (empty cluster {:.1} MiB, delta {:.1} MiB), peak {:.1} MiB; first sync {:.2}s",
        rss as f64 / 1024.0,
        base_rss as f64 / 1024.0,
        (rss as f64 - base_rss as f64) / 1024.0,
        hwm as f64 / 1024.0,
        sync.as_secs_f64()
    );
    let (publ, lat) = update_latency(&api, &gw, &b, port, 10).await;
    println!(
        "50,000 endpoints (Istio): update->published {}\n50,000 endpoints (Istio): update->routed    {}",
        summary(publ),
        summary(lat)
    );
    let rss_after = gw.status_kb("VmRSS:");
    println!(
        "RSS after 10 updates at 50,000 endpoints: {:.1} MiB",
        rss_after as f64 / 1024.0
    );
    // Growth that levels off is allocator high water (each rebuild briefly holds two
    // tables); growth that keeps going would be retention.
    for n in [20, 30] {
        update_latency(&api, &gw, &b, port, 10).await;
        println!(
            "RSS after {n} updates at 50,000 endpoints: {:.1} MiB",
            gw.status_kb("VmRSS:") as f64 / 1024.0
        );
    }
}
