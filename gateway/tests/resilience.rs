//! Failover, outlier ejection and recovery, reloads, drain, readiness and metrics.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn failover_when_an_endpoint_refuses() {
    let (b, port) = backends(&["good"]).await;
    let dead = refused_port([127, 0, 0, 7].into(), port).await;
    let gw = gateway(&endpoints_yaml(
        CATALOG,
        port,
        &[(b[0].addr.ip(), "v1", true), (dead.ip(), "v1", true)],
    ))
    .await;
    // Every call succeeds: a refused connect is retried on the other endpoint.
    for _ in 0..20 {
        assert_eq!(served_by(gw.listen, &sni(80, "", CATALOG)).await, "good");
    }
    let (_, m) = http_get(gw.admin, "/metrics").await;
    assert!(metric(&m, "gateway_upstream_connect_failures_total") >= 1.0);
    assert_eq!(
        metric(
            &m,
            "gateway_connections_rejected_total{reason=\"connect_failed\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn ejection_and_recovery() {
    let (b, port) = backends(&["a", "b"]).await;
    let gw = gateway_with(
        &endpoints_yaml(
            CATALOG,
            port,
            &[(b[0].addr.ip(), "v1", true), (b[1].addr.ip(), "v1", true)],
        ),
        |c| {
            c.outlier.consecutive_failures = 2;
            // Long enough that the "still ejected" calls fit in it on a loaded machine.
            c.outlier.base_ejection = Duration::from_millis(5000);
            c.outlier.max_ejection_percent = 50;
        },
    )
    .await;
    let a_addr = b[0].addr;
    b[0].stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Calls keep succeeding on b; after two failures a is ejected and no longer tried.
    for _ in 0..10 {
        assert_eq!(served_by(gw.listen, &sni(80, "", CATALOG)).await, "b");
    }
    let (_, m) = http_get(gw.admin, "/metrics").await;
    assert_eq!(metric(&m, "gateway_endpoint_ejections_total"), 1.0);
    let failures = metric(&m, "gateway_upstream_connect_failures_total");
    assert_eq!(failures, 2.0, "an ejected endpoint must not be dialed");
    let (_, routes) = http_get(gw.admin, "/debug/routes").await;
    let v: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let eps = v["routes"][0]["endpoints"].as_array().unwrap();
    let a = eps
        .iter()
        .find(|e| e["address"] == a_addr.to_string())
        .unwrap();
    assert_eq!(a["ejected"], true);

    // Bring a back on the same address; after the ejection ends it serves again.
    let revived = Backend::start("a2", a_addr.ip(), a_addr.port())
        .await
        .unwrap();
    // Still ejected: the revived endpoint gets nothing until the ejection ends.
    for _ in 0..5 {
        assert_eq!(served_by(gw.listen, &sni(80, "", CATALOG)).await, "b");
    }
    assert_eq!(revived.accepted(), 0);
    let left = a["ejected_for_ms"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(left + 100)).await;
    let mut seen_a2 = false;
    for _ in 0..40 {
        if call(gw.listen, &sni(80, "", CATALOG))
            .await
            .unwrap()
            .starts_with("a2 ")
        {
            seen_a2 = true;
            break;
        }
    }
    assert!(seen_a2, "recovered endpoint never served");
    assert!(revived.accepted() >= 1);
}

#[tokio::test]
async fn reload_keeps_open_connections_and_bad_reload_keeps_table() {
    let (b, port) = backends(&["old", "new"]).await;
    let gw = gateway(&endpoints_yaml(
        CATALOG,
        port,
        &[(b[0].addr.ip(), "v1", true)],
    ))
    .await;
    let (mut conn, line) = open(gw.listen, &sni(80, "", CATALOG), default_client())
        .await
        .unwrap();
    assert!(line.starts_with("old "));

    // Replace the endpoints: only "new" remains.
    gw.write_endpoints(&endpoints_yaml(
        CATALOG,
        port,
        &[(b[1].addr.ip(), "v1", true)],
    ));
    gw.wait_generation(2).await;
    assert_eq!(served_by(gw.listen, &sni(80, "", CATALOG)).await, "new");
    // The connection opened before the reload still works both ways.
    conn.write_all(b"still here").await.unwrap();
    let mut buf = [0u8; 10];
    tokio::time::timeout(TIMEOUT, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"still here");

    // A broken file is rejected; generation 2 keeps serving and metrics say so.
    gw.write_endpoints("services: [{host: 'not a host', ports: [{port: 80}]}]");
    let mut errors = 0.0;
    for _ in 0..100 {
        let (_, m) = http_get(gw.admin, "/metrics").await;
        errors = metric(&m, "gateway_discovery_route_table_reload_errors_total");
        if errors >= 1.0 {
            assert_eq!(
                metric(&m, "gateway_discovery_route_table_last_reload_ok"),
                0.0
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(errors, 1.0);
    assert_eq!(gw.bound().routes.load().unwrap().generation, 2);
    assert_eq!(served_by(gw.listen, &sni(80, "", CATALOG)).await, "new");

    // Writing the first content back reloads again.
    gw.write_endpoints(&endpoints_yaml(
        CATALOG,
        port,
        &[(b[0].addr.ip(), "v1", true)],
    ));
    gw.wait_generation(3).await;
    assert_eq!(served_by(gw.listen, &sni(80, "", CATALOG)).await, "old");
}

#[tokio::test]
async fn readiness_metrics_and_drain() {
    let (b, port) = backends(&["catalog-1"]).await;
    let mut gw = gateway_with(
        &endpoints_yaml(CATALOG, port, &[(b[0].addr.ip(), "v1", true)]),
        |c| {
            // A grace long enough that a loaded machine still connects within it.
            c.drain_grace = Duration::from_millis(1000);
            c.drain_timeout = Duration::from_millis(2000);
        },
    )
    .await;
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 200);
    assert_eq!(http_get(gw.admin, "/nope").await.0, 404);

    // One finished call, one connection left open across the drain.
    assert_eq!(
        served_by(gw.listen, &sni(80, "", CATALOG)).await,
        "catalog-1"
    );
    let (mut conn, _) = open(gw.listen, &sni(80, "", CATALOG), default_client())
        .await
        .unwrap();

    let (_, m) = http_get(gw.admin, "/metrics").await;
    let s = format!("{{sni=\"{}\"}}", sni(80, "", CATALOG));
    assert_eq!(
        metric(&m, &format!("gateway_connections_opened_total{s}")),
        2.0
    );
    assert_eq!(metric(&m, &format!("gateway_connections_active{s}")), 1.0);
    assert!(metric(&m, &format!("gateway_sent_bytes_total{s}")) > 200.0);
    assert!(metric(&m, &format!("gateway_received_bytes_total{s}")) > 200.0);
    assert!(m.contains("gateway_upstream_connect_seconds_bucket"));
    assert_eq!(metric(&m, "gateway_discovery_route_table_routes"), 1.0);
    assert_eq!(metric(&m, "gateway_discovery_route_table_generation"), 1.0);

    let bound = gw.bound.take().unwrap();
    let admin = gw.admin;
    let listen = gw.listen;
    let drain = tokio::spawn(bound.drain());
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Draining: readiness fails at once, but the listener still accepts during the grace.
    assert_eq!(http_get(admin, "/healthz/ready").await.0, 503);
    assert_eq!(served_by(listen, &sni(80, "", CATALOG)).await, "catalog-1");
    // The open connection keeps working during the drain.
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // After the grace the listener is closed (by the accept task, once it runs again: polled).
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while tokio::net::TcpStream::connect(listen).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "listener still accepting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The open connection outlives the deadline, so the drain closes it.
    let outcome = tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.forced, 1);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(TIMEOUT, conn.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        r.is_err() || rest.is_empty(),
        "connection should be closed after drain"
    );
}

#[tokio::test]
async fn not_ready_without_table_then_ready() {
    // A build with a file always loads a table before returning, so readiness is immediate;
    // an empty table is still a loaded table.
    let gw = gateway("services: []\n").await;
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 200);
    let (_, v) = http_get(gw.admin, "/debug/routes").await;
    assert!(v.contains("\"routes\": []"), "{v}");
}

#[tokio::test]
async fn bad_file_at_start_fails_build() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eps.yaml");
    std::fs::write(
        &path,
        "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: 300.1.1.1}]}]",
    )
    .unwrap();
    let err = gateway::app::build(test_config(&path))
        .await
        .err()
        .expect("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("endpoints[0]") && msg.contains("300.1.1.1"),
        "{msg}"
    );
    let missing = gateway::app::build(test_config(&dir.path().join("missing.yaml")))
        .await
        .err()
        .unwrap();
    assert!(missing.to_string().contains("missing.yaml"));
}

#[tokio::test]
async fn port_conflict_fails_loudly() {
    let gw = gateway("services: []\n").await;
    let mut cfg = test_config(&gw.path);
    cfg.listen = gw.listen.into();
    let err = gateway::app::build(cfg)
        .await
        .err()
        .expect("bind must fail");
    assert!(err.to_string().contains(&gw.listen.to_string()), "{err}");
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    // 1 s against exchanges 250 ms apart: a stall of the shared test runtime does not look idle.
    let (_backends, gw) = one_catalog(|c| c.idle_timeout = Duration::from_millis(1000)).await;
    let (mut conn, _) = open(gw.listen, &sni(80, "", CATALOG), default_client())
        .await
        .unwrap();
    // Activity resets the timer: an exchange at 250 ms keeps the connection.
    tokio::time::sleep(Duration::from_millis(250)).await;
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    conn.read_exact(&mut buf).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    conn.write_all(b"pong").await.unwrap();
    conn.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong");
    // Then silence: the gateway closes it.
    let t = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(TIMEOUT, conn.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        r.is_err() || rest.is_empty(),
        "expected a close, got {rest:?}"
    );
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(800),
        "closed too early: {waited:?}"
    );
    let (_, m) = http_get(gw.admin, "/metrics").await;
    let s = format!("{{sni=\"{}\"}}", sni(80, "", CATALOG));
    assert_eq!(
        metric(
            &m,
            &format!(
                "gateway_connections_closed_total{{sni=\"{}\",outcome=\"idle_timeout\"}}",
                sni(80, "", CATALOG)
            )
        ),
        1.0
    );
    assert_eq!(metric(&m, &format!("gateway_connections_active{s}")), 0.0);
}
