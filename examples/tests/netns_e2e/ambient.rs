//! Steps 5-7, ambient (HBONE) across the networks (issue 13 part 5): west's ztunnel double
//! reaches catalog's destination ztunnels only through east's gateway on 15008; a dead
//! destination is failed over with no failed tunnel; the gateway drains under a tunnel load
//! and every tunnel started before GOAWAY finishes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use testkit::mesh::{CATALOG, WEBAPP, spiffe_id};
use testkit::prom::series_value;

use crate::failover::{failover_counts, until_ejected};
use crate::fixture::Mesh;
use crate::isolation::tcp_probe;
use crate::ztunnel::{catalog_authority, gateway_id, load_lines};
use crate::{DRAIN_GRACE, DRAIN_TIMEOUT, EAST_HBONE, EAST2_ADMIN_IP, EGW, WPOD};

pub fn step5_ambient_path_through_east_gateway(m: &Mesh) {
    println!(
        "== step 5: ambient: west's ztunnel -> east gateway {EAST_HBONE} -> catalog's ztunnels"
    );
    // No way around the gateway: catalog's ztunnels are on east's pod network.
    for direct in ["10.20.0.8:15008", "10.20.0.18:15008"] {
        let e = tcp_probe(&m.ns(WPOD), direct)
            .expect_err("west must not reach an east pod's 15008 directly");
        println!("   west -> {direct} directly: no connection: {e}");
        let t = m.tunnel(direct, "direct");
        assert!(
            !t.ok && t.stderr.contains(&format!("connect to {direct}")),
            "a tunnel straight to {direct} must fail at TCP connect: {}",
            t.describe()
        );
    }
    tcp_probe(&m.ns(WPOD), EAST_HBONE)
        .unwrap_or_else(|e| panic!("west should reach the gateway's {EAST_HBONE}: {e}"));

    let opened = format!(
        "gateway_hbone_tunnels_opened_total{{authority=\"{}\"}}",
        catalog_authority()
    );
    let before = series_value(&m.metrics(EGW, EAST2_ADMIN_IP), &opened);
    let mut endpoints: BTreeMap<String, usize> = BTreeMap::new();
    const CALLS: usize = 10;
    for i in 0..CALLS {
        let t = m.tunnel(EAST_HBONE, &format!("ambient-{i}"));
        assert!(
            t.ok,
            "tunnel {i} through the east gateway failed: {}",
            t.describe()
        );
        assert_eq!(
            t.gateway_id.as_deref(),
            Some(gateway_id().as_str()),
            "{}",
            t.describe()
        );
        assert_eq!(
            t.destination_id.as_deref(),
            Some(spiffe_id(CATALOG).as_str()),
            "the inner TLS must end at catalog's ztunnel: {}",
            t.describe()
        );
        assert!(
            t.reply.as_deref() == Some(&format!("{}: ambient-{i}", t.endpoint())),
            "{}",
            t.describe()
        );
        if i == 0 {
            println!(
                "   outer TLS: gateway {}; inner TLS: destination {}; reply: {}",
                gateway_id(),
                spiffe_id(CATALOG),
                t.reply.as_deref().unwrap_or_default()
            );
        }
        *endpoints.entry(t.endpoint().to_string()).or_default() += 1;
    }
    assert!(
        endpoints
            .keys()
            .all(|e| e == "ztunnel-a" || e == "ztunnel-b"),
        "{endpoints:?}"
    );
    println!("   {CALLS} tunnels by endpoint: {endpoints:?}");
    let after = series_value(&m.metrics(EGW, EAST2_ADMIN_IP), &opened);
    assert_eq!(
        after - before,
        CALLS as f64,
        "east gateway should count exactly these tunnels under {opened}"
    );
    println!("   east gateway metric {opened}: {before} -> {after}");

    // The destination saw webapp, not the gateway: the inner TLS went through untouched.
    let webapp = spiffe_id(WEBAPP);
    let seen = format!(
        "seen: peer={webapp} authority={} status=200 x-forwarded-network=west-network",
        catalog_authority()
    );
    for (label, n) in &endpoints {
        testkit::wait::wait_until("destination's record", Duration::from_secs(5), || {
            m.proc(label)
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|(_, l)| l.contains(&seen))
                .count()
                >= *n
        });
    }
    println!("   destination ztunnels recorded: {seen}");
}

pub fn step6_ambient_failover(m: &mut Mesh) {
    println!("== step 6: ambient failover: a destination ztunnel dies");
    let before = failover_counts(m);
    m.proc_mut("ztunnel-b").kill();
    println!("   killed ztunnel-b (10.20.0.18:15008); ztunnel-a (10.20.0.8:15008) remains");
    until_ejected(
        m,
        before,
        "tunnels, none failed, all answered by ztunnel-a",
        |i| {
            let t = m.tunnel(EAST_HBONE, &format!("after-kill-{i}"));
            assert!(
                t.ok,
                "tunnels must keep succeeding after a destination died: {}",
                t.describe()
            );
            assert_eq!(
                t.endpoint(),
                "ztunnel-a",
                "only ztunnel-a is alive: {}",
                t.describe()
            );
        },
    );
}

pub fn step7_ambient_drain_under_tunnel_load(m: &mut Mesh) {
    println!("== step 7: ambient drain: SIGTERM to the east gateway under a tunnel load");
    // A tunnel every 50 ms, each held ~600 ms: about 12 open at any time.
    let mut load = m.tunnel_load(
        "tunnel-load",
        &[
            "--every",
            "50",
            "--lines",
            "4",
            "--hold",
            "200",
            "--max-time",
            "30",
        ],
    );
    load.wait_for("load: outer connection", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("tunnel load did not start: {e}"));
    testkit::wait::wait_until("20 tunnels done", Duration::from_secs(15), || {
        load_lines(&load)
            .iter()
            .filter(|l| l.outcome == "ok")
            .count()
            >= 20
    });

    let t_term = Instant::now();
    m.proc("east-gateway-2").signal("TERM");
    testkit::wait::wait_until("readiness 503", DRAIN_GRACE, || {
        m.ready_status(EGW, EAST2_ADMIN_IP) == Some(503)
    });
    let status = load
        .wait_exit(DRAIN_GRACE + DRAIN_TIMEOUT)
        .expect("the tunnel load should end once the gateway sent GOAWAY");
    let lines = load_lines(&load);
    let summary = load
        .find("load summary:")
        .map(|(_, l)| l)
        .unwrap_or_else(|| panic!("no load summary:\n{}", load.tail(20)));
    println!("   {summary}");
    for l in lines.iter().filter(|l| l.outcome != "ok") {
        println!("     {}", l.line);
    }
    assert!(
        status.success(),
        "tunnels failed during the drain: {summary}"
    );
    assert!(
        summary.contains(" failed=0 ") && summary.contains("goaway=true"),
        "{summary}"
    );
    // GOAWAY: the first tunnel the gateway's connection would not take.
    let goaway_ms = lines
        .iter()
        .filter(|l| l.outcome == "not-started")
        .map(|l| l.at_ms)
        .min()
        .expect("a tunnel refused after GOAWAY marks the end of the grace");
    let in_flight: Vec<_> = lines
        .iter()
        .filter(|l| l.outcome == "ok" && l.at_ms < goaway_ms && l.end_ms > goaway_ms)
        .collect();
    let ok = lines.iter().filter(|l| l.outcome == "ok").count();
    let started = lines.iter().filter(|l| l.outcome != "not-started").count();
    assert_eq!(
        ok, started,
        "every tunnel started before GOAWAY must finish"
    );
    assert!(
        !in_flight.is_empty(),
        "some tunnels should have been open at GOAWAY and finished after it"
    );
    println!(
        "   {started} tunnels started, {ok} finished ok; {} were open at GOAWAY and finished during the drain",
        in_flight.len()
    );

    let gw = m.proc_mut("east-gateway-2");
    let status = gw
        .wait_exit(DRAIN_TIMEOUT + Duration::from_secs(5))
        .expect("the gateway should exit after its tunnels finished");
    assert!(status.success(), "gateway exit: {status}\n{}", gw.tail(20));
    let drained = gw.find("drained").map(|(_, l)| l).unwrap_or_default();
    assert!(
        drained.contains("forced=0") && !drained.contains("open_at_stop=0"),
        "the gateway should have drained open tunnels with none forced: {drained:?}"
    );
    let cut = gw
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.contains("HBONE tunnel closed") && l.contains("drain_deadline"))
        .count();
    assert_eq!(cut, 0, "no tunnel may be cut at the drain deadline");
    println!(
        "   gateway exited 0, {:?} after SIGTERM: {}",
        t_term.elapsed(),
        drained.trim()
    );
}
