//! HBONE beside classic passthrough in one process, drain with GOAWAY, and the limits.

mod common;
mod hbone_support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use tokio::io::AsyncReadExt;

use hbone_support::{
    App, AppMode, TIMEOUT, catalog_behind_gateway, connect, greeted_tunnel, hbone_yaml, outer, pki,
    read_n, read_to_end, send_all,
};

const SVC: &str = common::CATALOG;

/// One process: a classic SNI connection on the passthrough port and an HBONE tunnel on the
/// HBONE port reach the same service's pod, from one route table.
#[tokio::test]
async fn classic_and_hbone_to_the_same_service() {
    let (backends, target_port) = common::backends(&["catalog-1"]).await;
    let pod = backends[0].addr.ip();
    let ztunnel = App::start("catalog-1-ztunnel", pod, 0, AppMode::Echo)
        .await
        .unwrap();
    let yaml = format!(
        "services:\n  - host: {SVC}\n    ports: [{{port: 80, targetPort: {target_port}}}]\n    endpoints:\n      - address: {pod}\n        hbone: {{port: {}}}\n",
        ztunnel.addr.port()
    );
    let gw = hbone_support::gateway(&yaml, |_| {}).await;
    let greeting = common::call(gw.gw.listen, &common::sni(80, "", SVC))
        .await
        .unwrap();
    assert!(greeting.starts_with("catalog-1 peer="), "{greeting}");
    let mut o = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    let (status, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_tx, mut rx) = io.unwrap();
    assert_eq!(read_n(&mut rx, 18).await, b"catalog-1-ztunnel\n");
    assert_eq!(backends[0].accepted(), 1);
    assert_eq!(ztunnel.accepted(), 1);
    // `/debug/routes` shows the route's HBONE reachability.
    let (_, body) = common::http_get(gw.gw.admin, "/debug/routes").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hbone = &v["routes"][0]["hbone_endpoints"];
    assert_eq!(
        hbone[0]["address"],
        format!("{pod}:{}", ztunnel.addr.port()),
        "{body}"
    );
}

/// SIGTERM's drain: readiness fails at once; after the grace the listener stops and every
/// HBONE connection gets GOAWAY (no new tunnel); the open tunnel finishes; exit is clean.
#[tokio::test]
async fn drain_sends_goaway_and_lets_the_tunnel_finish() {
    let (_a, mut gw) = catalog_behind_gateway([127, 0, 0, 50], |c| {
        c.drain_grace = Duration::from_millis(300);
        c.drain_timeout = Duration::from_secs(10);
    })
    .await;
    let (mut o, mut tx, mut rx) = greeted_tunnel(gw.hbone).await;

    let bound = gw.gw.bound.take().unwrap();
    let drain = tokio::spawn(bound.drain());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (code, _) = common::http_get(gw.gw.admin, "/healthz/ready").await;
    assert_eq!(code, 503, "readiness fails at once");
    // During the grace new tunnels are still served; after it: GOAWAY, so a new CONNECT on
    // this connection is refused.
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if connect(&mut o, &format!("{SVC}:80")).await.is_err() {
            refused = true;
            break;
        }
    }
    assert!(refused, "no GOAWAY after the grace period");
    assert!(
        tokio::net::TcpStream::connect(gw.hbone).await.is_err(),
        "listener still accepting"
    );
    // The open tunnel still works and ends normally.
    send_all(&mut tx, Bytes::from_static(b"last words"), true).await;
    let got = tokio::time::timeout(TIMEOUT, read_to_end(&mut rx, usize::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"last wordseof after 10 bytes\n");
    let out = tokio::time::timeout(TIMEOUT, drain).await.unwrap().unwrap();
    assert_eq!(out.forced, 0);
}

/// A tunnel still open at the drain deadline is closed and counted `drain_deadline`.
#[tokio::test]
async fn drain_deadline_closes_open_tunnels() {
    let (a, mut gw) = catalog_behind_gateway([127, 0, 0, 51], |c| {
        c.drain_grace = Duration::from_millis(100);
        c.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let (_o, _tx, _rx) = greeted_tunnel(gw.hbone).await;
    let bound = gw.gw.bound.take().unwrap();
    let metrics_admin = gw.gw.admin;
    let out = tokio::time::timeout(TIMEOUT, bound.drain()).await.unwrap();
    assert!(out.forced >= 1, "{out:?}");
    hbone_support::eventually("upstream closed", || a.finished().len() == 1).await;
    let _ = metrics_admin;
}

/// `--hbone-max-streams` is the advertised MAX_CONCURRENT_STREAMS: a third stream waits
/// until one of two closes. `--hbone-max-tunnels` caps tunnels across connections (503).
#[tokio::test]
async fn stream_and_tunnel_caps() {
    let (_a, gw) = hbone_support::catalog_behind_gateway([127, 0, 0, 52], |c| {
        c.hbone_max_streams = 2;
        c.hbone_max_tunnels = 3;
    })
    .await;
    let auth = format!("{SVC}:80");
    let mut o = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    let (_, t1) = connect(&mut o, &auth).await.unwrap();
    let (_, t2) = connect(&mut o, &auth).await.unwrap();
    let (t1, t2) = (t1.unwrap(), t2.unwrap());
    let third = tokio::time::timeout(Duration::from_millis(500), connect(&mut o, &auth)).await;
    assert!(third.is_err(), "a third concurrent stream was served");
    drop(t1);
    let (status, _t3) = tokio::time::timeout(TIMEOUT, connect(&mut o, &auth))
        .await
        .expect("third stream after one closed")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    // Now 2 tunnels open here (t2, t3); one more on another connection fills the cap.
    let mut o2 = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    let (status, _t4) = connect(&mut o2, &auth).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = connect(&mut o2, &auth).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gw.refused("over_limit").await, 1.0);
    drop(t2);
}

/// The undecided budget covers TLS handshakes on the HBONE port: with room for one, a
/// second silent connection sheds the first.
#[tokio::test]
async fn undecided_budget_covers_hbone_handshakes() {
    let gw = hbone_support::gateway(&hbone_yaml(&[]), |c| c.max_undecided = 1).await;
    let mut first = tokio::net::TcpStream::connect(gw.hbone).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _second = tokio::net::TcpStream::connect(gw.hbone).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, first.read(&mut buf))
        .await
        .expect("the oldest handshake is shed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    gw.wait_metric("gateway_hbone_refused_total{reason=\"over_limit\"}", 1.0)
        .await;
}

/// The real binary: every tunnel gets one access line naming the client's SPIFFE id, the
/// authority, the endpoint, bytes each way, duration and outcome; on SIGTERM a tunnel still
/// open finishes, is logged, and the process exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_logs_each_tunnel_and_exits_zero_after_drain() {
    let a = App::start("catalog-1", [127, 0, 0, 60].into(), 0, AppMode::Echo)
        .await
        .unwrap();
    let yaml = hbone_yaml(&[(SVC, &[(a.addr.ip(), a.addr.port())])]);
    let extra = ["--drain-grace", "200ms", "--drain-timeout", "10s"];
    let h = hbone_support::hbone_process(&yaml, &extra, "info").await;
    let hbone = h.hbone;
    let p = std::sync::Arc::new(std::sync::Mutex::new(h.gw));
    let line = |pred: fn(&serde_json::Value) -> bool| {
        let p = p.clone();
        async move {
            tokio::task::spawn_blocking(move || p.lock().unwrap().wait_line(&pred))
                .await
                .unwrap()
        }
    };

    let mut o = outer(hbone, Some(&pki().client)).await.unwrap();
    let (_, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    let (mut tx, mut rx) = io.unwrap();
    read_n(&mut rx, 10).await;
    send_all(&mut tx, Bytes::from_static(b"12345"), true).await;
    read_to_end(&mut rx, usize::MAX).await.unwrap();
    let first = line(|v| v["message"] == "HBONE tunnel closed").await;
    assert_eq!(
        first["client_id"],
        pki().client.spiffe_id.as_str(),
        "{first}"
    );
    assert_eq!(first["authority"], format!("{SVC}:80"));
    assert_eq!(first["upstream"], a.addr.to_string());
    assert_eq!(first["sent"], 5);
    assert_eq!(first["received"], 10 + 5 + "eof after 5 bytes\n".len());
    assert_eq!(first["outcome"], "closed");
    assert!(first["duration_ms"].is_u64());

    // A second tunnel, open across SIGTERM.
    let (_, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    let (mut tx, mut rx) = io.unwrap();
    read_n(&mut rx, 10).await;
    p.lock().unwrap().signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_all(&mut tx, Bytes::from_static(b"bye"), true).await;
    read_to_end(&mut rx, usize::MAX).await.unwrap();
    let exited = {
        let p = p.clone();
        tokio::task::spawn_blocking(move || {
            let mut p = p.lock().unwrap();
            p.wait_exit()
        })
        .await
        .unwrap()
    };
    assert!(exited.success(), "{exited:?}");
    let n = p
        .lock()
        .unwrap()
        .count_lines(&|v| v["message"] == "HBONE tunnel closed" && v["outcome"] == "closed");
    assert_eq!(n, 2);
}

/// A client that completes mTLS but does not speak HTTP/2 is counted `h2_error`.
#[tokio::test]
async fn not_http2_is_an_h2_error() {
    use tokio::io::AsyncWriteExt;
    let gw = hbone_support::gateway(&hbone_yaml(&[]), |_| {}).await;
    let tcp = tokio::net::TcpStream::connect(gw.hbone).await.unwrap();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let cfg = hbone_support::client_tls(Some(&pki().client), &pki().gateway.spiffe_id);
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut buf)).await;
    gw.wait_metric("gateway_hbone_refused_total{reason=\"h2_error\"}", 1.0)
        .await;
}

/// An outer connection with no tunnel for `--hbone-idle-timeout` gets GOAWAY and closes;
/// one carrying a tunnel does not.
#[tokio::test]
async fn idle_outer_connection_is_closed() {
    let (_a, gw) = catalog_behind_gateway([127, 0, 0, 53], |c| {
        c.hbone_idle_timeout = Duration::from_millis(300)
    })
    .await;
    let busy = greeted_tunnel(gw.hbone).await;
    let idle = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    tokio::time::timeout(TIMEOUT, idle.conn)
        .await
        .expect("idle connection closed by the gateway")
        .unwrap()
        .unwrap();
    let (mut o, mut tx, mut rx) = busy;
    assert!(!o.conn.is_finished(), "the busy connection stays open");
    send_all(&mut tx, Bytes::from_static(b"x"), false).await;
    assert_eq!(read_n(&mut rx, 1).await, b"x");
    let _ = &mut o;
    gw.wait_metric("gateway_hbone_connections_active", 1.0)
        .await;
}

/// A tunnel that talked for longer than `--idle-timeout` and then fell quiet ends no sooner
/// than the timeout after its last byte and at most an eighth later, as `idle_timeout`.
#[tokio::test]
async fn quiet_tunnel_ends_after_the_idle_timeout() {
    let (_a, gw) = catalog_behind_gateway([127, 0, 0, 54], |c| {
        c.idle_timeout = Duration::from_millis(600)
    })
    .await;
    let (_o, mut tx, mut rx) = greeted_tunnel(gw.hbone).await;
    let mut quiet = std::time::Instant::now();
    for _ in 0..9 {
        send_all(&mut tx, Bytes::from_static(b"x"), false).await;
        assert_eq!(read_n(&mut rx, 1).await, b"x");
        // The last byte has moved: the end is due 600 to 675 ms from here (counted from the
        // echo, not from the sleep below, which a loaded machine may stretch).
        quiet = std::time::Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = tokio::time::timeout(TIMEOUT, read_to_end(&mut rx, 1))
        .await
        .expect("the gateway ends the quiet tunnel");
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(waited <= Duration::from_millis(1_100), "{waited:?}");
    gw.wait_metric(
        &format!(
            "gateway_hbone_tunnels_closed_total{{authority=\"{SVC}:80\",outcome=\"idle_timeout\"}}"
        ),
        1.0,
    )
    .await;
}

/// The service's DestinationRule (here the endpoints file's `traffic_policy`) times each
/// tunnel, as istiod gives its top-level `idleTimeout` and `maxConnectionDuration` to the TCP
/// proxy that takes a tunnel at Istio's east-west gateway: a quiet tunnel ends after the
/// rule's 600 ms under an hour's `--idle-timeout`, and a busy one is cut after the rule's
/// 1 s lifetime, reset, counted `max_duration`.
#[tokio::test]
async fn a_rules_timeouts_end_tunnels() {
    let a = App::start("catalog-1", [127, 0, 0, 55].into(), 0, AppMode::Echo)
        .await
        .unwrap();
    let yaml = hbone_yaml(&[(SVC, &[(a.addr.ip(), a.addr.port())])])
        + "    traffic_policy: {connectionPool: {tcp: {idleTimeout: 600ms, maxConnectionDuration: 1500ms}}}\n";
    let gw = hbone_support::gateway(&yaml, |c| c.idle_timeout = Duration::from_secs(3600)).await;
    let closed = |outcome: &str| {
        format!(
            "gateway_hbone_tunnels_closed_total{{authority=\"{SVC}:80\",outcome=\"{outcome}\"}}"
        )
    };
    // Quiet: ends 600 ms after the greeting, well before its lifetime.
    let (_o, _tx, mut rx) = greeted_tunnel(gw.hbone).await;
    let quiet = std::time::Instant::now();
    let _ = tokio::time::timeout(TIMEOUT, read_to_end(&mut rx, 1))
        .await
        .expect("the gateway ends the quiet tunnel");
    let waited = quiet.elapsed();
    assert!(waited >= Duration::from_millis(450), "{waited:?}");
    assert!(waited < Duration::from_millis(1_400), "{waited:?}");
    gw.wait_metric(&closed("idle_timeout"), 1.0).await;
    // Busy: a byte echoed every 100 ms until the lifetime cuts it.
    let (_o, mut tx, mut rx) = greeted_tunnel(gw.hbone).await;
    let born = std::time::Instant::now();
    let cut = loop {
        assert!(born.elapsed() < TIMEOUT, "the tunnel outlived its rule");
        // A send to a stream already reset fails: the read below tells why.
        let _ = tx.send_data(Bytes::from_static(b"x"), false);
        let echoed = tokio::time::timeout(TIMEOUT, read_to_end(&mut rx, 1)).await;
        match echoed.expect("an echo or the cut in time") {
            Err(e) => break e,
            Ok(got) => assert_eq!(got, b"x", "the tunnel ended without a reset"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let lived = born.elapsed();
    assert!(cut.is_reset(), "{cut:?}");
    assert!(lived >= Duration::from_millis(1_300), "{lived:?}");
    assert!(lived < Duration::from_millis(3_500), "{lived:?}");
    gw.wait_metric(&closed("max_duration"), 1.0).await;
}
