//! Heavy control-plane work (parsing a large endpoints file, serializing `/debug/routes`) runs
//! on the blocking pool, not on the runtime that serves connections; and `/debug/routes` can be
//! filtered so it need not dump everything.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// 20,000 endpoints: large enough that parsing or serializing takes a visible time here.
const SERVICES: usize = 200;
const PER_SERVICE: usize = 100;

/// A one-thread runtime: whatever blocks its thread stalls every task on it.
fn one_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Ticks every millisecond on the runtime until `done()` and returns the longest gap between
/// two ticks: how long the runtime could not run a tiny task.
async fn longest_stall(done: impl Fn() -> bool) -> Duration {
    let mut last = Instant::now();
    let mut worst = Duration::ZERO;
    let deadline = last + Duration::from_secs(120);
    while !done() {
        assert!(Instant::now() < deadline, "the work never finished");
        tokio::time::sleep(Duration::from_millis(1)).await;
        let now = Instant::now();
        worst = worst.max(now - last);
        last = now;
    }
    worst
}

#[test]
fn parsing_a_large_file_does_not_stall_the_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    std::fs::write(&big, big_endpoints_yaml(SERVICES, PER_SERVICE)).unwrap();
    // What one parse costs on this machine now: the stall it would cause on the runtime.
    let t = Instant::now();
    let specs = gateway::discovery::file::load(&big).unwrap();
    let parse = t.elapsed();
    assert_eq!(specs.len(), SERVICES);
    assert!(
        parse >= Duration::from_millis(100),
        "parsing took only {parse:?}: too fast to tell a stall from scheduling noise"
    );

    let rt = one_thread();
    rt.block_on(async {
        let gw = gateway(&big_endpoints_yaml(1, 1)).await;
        std::fs::rename(&big, &gw.path).unwrap();
        let stall = longest_stall(|| gw.bound().routes.load().unwrap().generation >= 2).await;
        assert_eq!(gw.bound().routes.load().unwrap().len(), SERVICES);
        eprintln!("reload of {SERVICES}x{PER_SERVICE} endpoints: parse {parse:?}, stall {stall:?}");
        assert!(
            stall < parse / 3,
            "the runtime stalled {stall:?} during a reload (one parse takes {parse:?})"
        );
    });
}

#[test]
fn debug_routes_does_not_stall_the_runtime() {
    let rt = one_thread();
    rt.block_on(async {
        let gw = gateway(&big_endpoints_yaml(SERVICES, PER_SERVICE)).await;
        let admin = gw.admin;
        let client = std::thread::spawn(move || {
            let t = Instant::now();
            let (code, body) = admin_get(admin, "/debug/routes");
            (code, body.len(), t.elapsed())
        });
        let stall = longest_stall(|| client.is_finished()).await;
        let (code, len, took) = client.join().unwrap();
        assert_eq!(code, 200);
        eprintln!("/debug/routes: {len} bytes in {took:?}, stall {stall:?}");
        assert!(len > 1_000_000, "{len} bytes");
        assert!(
            took >= Duration::from_millis(100),
            "/debug/routes took only {took:?}: too fast to tell a stall from scheduling noise"
        );
        assert!(
            stall < took / 3,
            "the runtime stalled {stall:?} while /debug/routes took {took:?}"
        );
    });
}

#[tokio::test]
async fn debug_routes_filters_by_host_and_limits() {
    let mut yaml = big_endpoints_yaml(3, 1);
    yaml.push_str(
        &endpoints_yaml(CATALOG, 3000, &[([127, 0, 0, 2].into(), "v1", true)]).replacen(
            "services:\n",
            "",
            1,
        ),
    );
    let gw = gateway(&yaml).await;
    let get = |q: &'static str| async move {
        let (code, body) = http_get(gw.admin, q).await;
        let v: serde_json::Value = if code == 200 {
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{q}: {e}: {body}"))
        } else {
            serde_json::Value::String(body)
        };
        (code, v)
    };
    let hosts = |v: &serde_json::Value| -> Vec<String> {
        v["routes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["host"].as_str().unwrap().to_string())
            .collect()
    };

    let (code, all) = get("/debug/routes").await;
    assert_eq!(code, 200);
    assert_eq!(hosts(&all).len(), 4);
    assert_eq!(all["total_routes"], 4);
    assert_eq!(all["truncated"], false);

    // `host` matches a substring of the host, case-insensitively.
    let (_, v) = get("/debug/routes?host=CATALOG").await;
    assert_eq!(hosts(&v), vec![CATALOG.to_string()]);
    assert_eq!(v["matched_routes"], 1);
    let (_, v) = get("/debug/routes?host=svc-1.big.local").await;
    assert_eq!(hosts(&v), vec!["svc-1.big.local".to_string()]);
    let (_, v) = get("/debug/routes?host=big.local").await;
    assert_eq!(hosts(&v).len(), 3);
    let (_, v) = get("/debug/routes?host=nothing.here").await;
    assert!(hosts(&v).is_empty());

    // `limit` keeps the first N in the sorted order and says it cut.
    let (_, v) = get("/debug/routes?limit=2").await;
    assert_eq!(hosts(&v), hosts(&all)[..2].to_vec());
    assert_eq!(v["truncated"], true);
    assert_eq!(v["matched_routes"], 4);
    let (_, v) = get("/debug/routes?host=big.local&limit=1").await;
    assert_eq!(hosts(&v), vec!["svc-0.big.local".to_string()]);
    let (_, v) = get("/debug/routes?limit=0").await;
    assert!(hosts(&v).is_empty());

    // Bad queries are refused with a message that says what is accepted.
    for (q, want) in [
        ("/debug/routes?limit=ten", "limit"),
        ("/debug/routes?limit=-1", "limit"),
        ("/debug/routes?hots=a", "host="),
        ("/debug/routes?host=a%20b", "host"),
        ("/debug/routes?host=a&host=b", "host"),
    ] {
        let (code, v) = get(q).await;
        assert_eq!(code, 400, "{q}: {v}");
        assert!(v.as_str().unwrap().contains(want), "{q}: {v}");
    }
}
