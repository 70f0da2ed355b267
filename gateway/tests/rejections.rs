//! Every rejection reason: the connection is closed, nothing reaches a backend, and the
//! reason is counted in /metrics.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The raw ClientHello a configured rustls client would send for `sni`.
fn hello(cfg: Arc<rustls::ClientConfig>, name: &str) -> Vec<u8> {
    let server = testkit::mtls::sni_server_name(name).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, server).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

async fn send_and_expect_closed(gw: std::net::SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(gw).await.unwrap();
    s.write_all(bytes).await.unwrap();
    expect_closed(s).await
}

#[tokio::test]
async fn each_reason_is_closed_and_counted() {
    let (b, port) = backends(&["catalog-1"]).await;
    let dead = refused_port([127, 0, 0, 9].into(), port).await;
    let yaml = format!(
        "{}  - host: down.istioinaction.svc.cluster.local\n    ports: [{{port: 80, targetPort: {port}}}]\n    endpoints:\n      - address: 127.0.0.8\n        ready: false\n  - host: dead.istioinaction.svc.cluster.local\n    ports: [{{port: 80, targetPort: {}}}]\n    endpoints:\n      - address: {}\n",
        endpoints_yaml(CATALOG, port, &[(b[0].addr.ip(), "v1", true)]),
        dead.port(),
        dead.ip()
    );
    let gw = gateway(&yaml).await;
    let good = default_client();

    // not_tls: an HTTP request.
    let got = send_and_expect_closed(gw.listen, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(got.is_empty());
    assert_eq!(rejected(gw.admin, "not_tls").await, 1.0);

    // no_sni
    let mut no_sni = (*good).clone();
    no_sni.enable_sni = false;
    send_and_expect_closed(gw.listen, &hello(Arc::new(no_sni), &sni(80, "", CATALOG))).await;
    assert_eq!(rejected(gw.admin, "no_sni").await, 1.0);

    // bad_name: a plain host name is not an Istio SNI routing key.
    send_and_expect_closed(gw.listen, &hello(good.clone(), CATALOG)).await;
    // bad_name: inbound direction, and a non-numeric port.
    send_and_expect_closed(
        gw.listen,
        &hello(good.clone(), &format!("inbound_.80_._.{CATALOG}")),
    )
    .await;
    send_and_expect_closed(
        gw.listen,
        &hello(good.clone(), &format!("outbound_.http_._.{CATALOG}")),
    )
    .await;
    assert_eq!(rejected(gw.admin, "bad_name").await, 3.0);

    // host_not_allowed: not under *.local.
    send_and_expect_closed(
        gw.listen,
        &hello(good.clone(), &sni(80, "", "catalog.example.com")),
    )
    .await;
    assert_eq!(rejected(gw.admin, "host_not_allowed").await, 1.0);

    // alpn_not_allowed: h2 only, no Istio ALPN.
    let mut h2 = (*good).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    send_and_expect_closed(gw.listen, &hello(Arc::new(h2), &sni(80, "", CATALOG))).await;
    // No ALPN at all.
    let mut none = (*good).clone();
    none.alpn_protocols.clear();
    send_and_expect_closed(gw.listen, &hello(Arc::new(none), &sni(80, "", CATALOG))).await;
    assert_eq!(rejected(gw.admin, "alpn_not_allowed").await, 2.0);

    // no_route: unknown host, unknown port, unknown subset.
    send_and_expect_closed(
        gw.listen,
        &hello(good.clone(), &sni(80, "", &testkit::mesh::host("nope"))),
    )
    .await;
    send_and_expect_closed(gw.listen, &hello(good.clone(), &sni(81, "", CATALOG))).await;
    send_and_expect_closed(gw.listen, &hello(good.clone(), &sni(80, "v9", CATALOG))).await;
    assert_eq!(rejected(gw.admin, "no_route").await, 3.0);

    // no_healthy_endpoint: every endpoint not ready.
    send_and_expect_closed(
        gw.listen,
        &hello(good.clone(), &sni(80, "", &testkit::mesh::host("down"))),
    )
    .await;
    assert_eq!(rejected(gw.admin, "no_healthy_endpoint").await, 1.0);

    // connect_failed: the only endpoint refuses.
    send_and_expect_closed(
        gw.listen,
        &hello(good.clone(), &sni(80, "", &testkit::mesh::host("dead"))),
    )
    .await;
    assert_eq!(rejected(gw.admin, "connect_failed").await, 1.0);

    // Garbage that looks like a record header with an absurd length.
    send_and_expect_closed(gw.listen, &[22, 3, 1, 0xff, 0xff, 1, 0, 0]).await;
    assert_eq!(rejected(gw.admin, "not_tls").await, 2.0);

    // Nothing above reached the backend.
    assert_eq!(b[0].accepted(), 0);
    // And a good call still works.
    assert_eq!(
        served_by(gw.listen, &sni(80, "", CATALOG)).await,
        "catalog-1"
    );
}

#[tokio::test]
async fn istio_alpn_requirement_can_be_lifted() {
    let (b, gw) = one_catalog(|c| c.require_istio_alpn = false).await;
    let mut h2 = (*default_client()).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    // The backend only speaks Istio ALPNs, so the handshake itself fails at the backend;
    // what matters is that the gateway forwarded it.
    let _ = connect(gw.listen, &sni(80, "", CATALOG), Arc::new(h2)).await;
    assert_eq!(b[0].accepted(), 1);
    assert_eq!(rejected(gw.admin, "alpn_not_allowed").await, 0.0);
}

#[tokio::test]
async fn timeout_and_limits() {
    let (b, gw) = one_catalog(|c| {
        c.detect_timeout = Duration::from_millis(300);
        c.max_connections = 2;
        c.max_hello_bytes = 1024;
    })
    .await;
    // timeout: a client that sends half a record header and stops.
    let mut slow = TcpStream::connect(gw.listen).await.unwrap();
    slow.write_all(&[22, 3]).await.unwrap();
    let t = std::time::Instant::now();
    expect_closed(slow).await;
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "closed too early: {:?}",
        t.elapsed()
    );
    assert_eq!(rejected(gw.admin, "timeout").await, 1.0);

    // over_limit: a ClientHello bigger than the 1 KiB cap (a long ALPN list pads it).
    let mut big = (*default_client()).clone();
    big.alpn_protocols = (0..40)
        .map(|i| format!("istio-padding-{i:040}").into_bytes())
        .collect();
    let bytes = hello(Arc::new(big), &sni(80, "", CATALOG));
    assert!(bytes.len() > 1024);
    send_and_expect_closed(gw.listen, &bytes).await;
    assert_eq!(rejected(gw.admin, "over_limit").await, 1.0);

    // over_limit: two forwarded connections hold both places; a third is closed as soon as
    // its hello is read. (Connections still sending a hello have their own budget and take
    // no place: tests/undecided.rs.)
    let hold1 = open(gw.listen, &sni(80, "", CATALOG), default_client()).await;
    let hold2 = open(gw.listen, &sni(80, "", CATALOG), default_client()).await;
    assert!(hold1.is_ok() && hold2.is_ok());
    let t = std::time::Instant::now();
    send_and_expect_closed(gw.listen, &hello(default_client(), &sni(80, "", CATALOG))).await;
    // Refused as over_limit (the count says it, not a detect timeout); the time bound only
    // catches a hang, lenient as a loaded machine can stall this runtime.
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "third connection was not refused at once"
    );
    assert_eq!(rejected(gw.admin, "over_limit").await, 2.0);
    assert_eq!(b[0].accepted(), 2);
    drop((hold1, hold2));
}

#[tokio::test]
async fn client_that_closes_mid_hello() {
    let gw = gateway("services: []").await;
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(&[22, 3, 1, 0, 200, 1]).await.unwrap();
    drop(s);
    for _ in 0..100 {
        if rejected(gw.admin, "client_closed").await == 1.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("client_closed not counted");
}

/// A one-record TLS 1.2-framed ClientHello around hand-built extensions, for shapes no
/// library client will produce.
fn raw_hello(exts: &[Vec<u8>]) -> Vec<u8> {
    let exts = exts.concat();
    let mut body = vec![3, 3];
    body.extend([7; 32]);
    body.extend([0, 0, 2, 0x13, 0x01, 1, 0]);
    body.extend((exts.len() as u16).to_be_bytes());
    body.extend(exts);
    let len = (body.len() as u32).to_be_bytes();
    let msg = [&[1, len[1], len[2], len[3]][..], &body].concat();
    [&[22, 3, 1][..], &(msg.len() as u16).to_be_bytes(), &msg].concat()
}

fn raw_ext(typ: u16, data: &[u8]) -> Vec<u8> {
    [
        &typ.to_be_bytes()[..],
        &(data.len() as u16).to_be_bytes(),
        data,
    ]
    .concat()
}

/// server_name extension with the given host_name entries.
fn raw_sni(names: &[&[u8]]) -> Vec<u8> {
    let list: Vec<u8> = names
        .iter()
        .flat_map(|n| [&[0][..], &(n.len() as u16).to_be_bytes(), n].concat())
        .collect();
    raw_ext(0, &[&(list.len() as u16).to_be_bytes()[..], &list].concat())
}

fn raw_alpn(names: &[&[u8]]) -> Vec<u8> {
    let list: Vec<u8> = names
        .iter()
        .flat_map(|n| [&[n.len() as u8][..], n].concat())
        .collect();
    raw_ext(
        16,
        &[&(list.len() as u16).to_be_bytes()[..], &list].concat(),
    )
}

/// RFC 8701 GREASE ALPN values are opaque, non-UTF-8 bytes that BoringSSL-based clients
/// send; a hello offering one next to `istio` is routed, with or without the ALPN check.
#[tokio::test]
async fn grease_alpn_next_to_istio_is_accepted() {
    for require in [true, false] {
        let (b, gw) = one_catalog(|c| c.require_istio_alpn = require).await;
        let name = sni(80, "", CATALOG);
        let h = raw_hello(&[
            raw_sni(&[name.as_bytes()]),
            raw_alpn(&[&[0xda, 0xda], b"istio"]),
        ]);
        // The backend cannot finish a handshake with a hand-built hello; what matters is
        // that the gateway forwarded it.
        send_and_expect_closed(gw.listen, &h).await;
        assert_eq!(b[0].accepted(), 1, "require_istio_alpn={require}");
        assert_eq!(rejected(gw.admin, "not_tls").await, 0.0);
        // GREASE alone is no Istio ALPN.
        if require {
            let h = raw_hello(&[raw_sni(&[name.as_bytes()]), raw_alpn(&[&[0x0a, 0x0a]])]);
            send_and_expect_closed(gw.listen, &h).await;
            assert_eq!(rejected(gw.admin, "alpn_not_allowed").await, 1.0);
        }
    }
}

/// TLS ClientHellos with invalid extension contents are `malformed_hello`, not `not_tls`.
#[tokio::test]
async fn malformed_hellos_are_counted_apart_from_not_tls() {
    let (b, gw) = one_catalog(|_| {}).await;
    let name = sni(80, "", CATALOG);
    let istio = raw_alpn(&[b"istio"]);
    let cases = [
        raw_hello(&[raw_sni(&[name.as_bytes(), name.as_bytes()]), istio.clone()]),
        raw_hello(&[raw_sni(&[b"outbound_.80_._.a\0b.local"]), istio.clone()]),
        raw_hello(&[
            raw_sni(&["outbound_.80_._.caf\u{e9}.local".as_bytes()]),
            istio.clone(),
        ]),
        raw_hello(&[raw_sni(&[name.as_bytes()]), raw_ext(16, &[0, 0])]),
    ];
    for h in &cases {
        send_and_expect_closed(gw.listen, h).await;
    }
    assert_eq!(rejected(gw.admin, "malformed_hello").await, 4.0);
    assert_eq!(rejected(gw.admin, "not_tls").await, 0.0);
    send_and_expect_closed(gw.listen, b"SSH-2.0-OpenSSH_9.2\r\n").await;
    assert_eq!(rejected(gw.admin, "not_tls").await, 1.0);
    assert_eq!(b[0].accepted(), 0);
}

/// A free port on 127.0.0.1 outside the ephemeral range (the caller binds it next; a port
/// from `:0` could be taken meanwhile by another test's outgoing connection).
fn free_port() -> u16 {
    testkit::net::free_port([127, 0, 0, 1].into()).unwrap()
}

/// The endpoints file of one service `host`:15443 whose endpoint is 127.0.0.1:`target`.
fn gateway_service(host: &str, target: u16) -> String {
    format!(
        "services:\n  - host: {host}\n    ports:\n      - port: 15443\n        targetPort: {target}\n    endpoints:\n      - address: 127.0.0.1\n"
    )
}

const GW_HOST: &str = "gw.istio-system.svc.cluster.local";

/// Calls `sni` through `gw`, which must refuse or fail it within 5 s; returns its /metrics.
async fn failed_call_metrics(gw: &Gw, sni: &str) -> String {
    let r = tokio::time::timeout(Duration::from_secs(5), call(gw.listen, sni)).await;
    assert!(matches!(r, Ok(Err(_))), "the call must fail: {r:?}");
    http_get(gw.admin, "/metrics").await.1
}

/// A service whose endpoint is at Istio's passthrough port (the east-west gateway's Service
/// is one) is never dialed: the route is left out, and shown so.
#[tokio::test]
async fn a_route_to_port_15443_is_no_route() {
    let gw = gateway(&gateway_service(GW_HOST, 15443)).await;
    let sni = sni(15443, "", GW_HOST);
    let m = failed_call_metrics(&gw, &sni).await;
    assert_eq!(metric(&m, "gateway_tcp_connections_accepted_total"), 1.0);
    assert_eq!(rejected(gw.admin, "no_route").await, 1.0);
    assert_eq!(
        metric(&m, "gateway_discovery_route_table_endpoints_left_out"),
        1.0
    );
    let (_, routes) = http_get(gw.admin, "/debug/routes").await;
    let v: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(v["left_out"][0]["sni"], sni.as_str());
    assert_eq!(v["left_out"][0]["endpoint"], "127.0.0.1:15443");
}

/// A hello routed back to the gateway's own listener on another port comes back with the
/// random of a connection the gateway is forwarding: refused as `loop` at its first return.
/// Without the check one hello opened 9,991 connections here, until descriptors ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hello_that_comes_back_is_refused_as_a_loop() {
    let port = free_port();
    let gw = gateway_with(&gateway_service(GW_HOST, port), |c| {
        c.listen = ([127, 0, 0, 1], port).into();
    })
    .await;
    let m = failed_call_metrics(&gw, &sni(15443, "", GW_HOST)).await;
    // The client's connection and its one return.
    assert_eq!(metric(&m, "gateway_tcp_connections_accepted_total"), 2.0);
    assert_eq!(rejected(gw.admin, "loop").await, 1.0);
    assert_eq!(
        metric(&m, "gateway_discovery_route_table_endpoints_left_out"),
        0.0
    );
}

/// Two gateways on ports other than 15443, each routing the name to the other: the hello
/// is refused when it reaches the first gateway again, after one hop each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_two_gateways_ends_at_the_first_return() {
    let (pa, pb) = (free_port(), free_port());
    let a = gateway_with(&gateway_service(GW_HOST, pb), |c| {
        c.listen = ([127, 0, 0, 1], pa).into();
    })
    .await;
    let b = gateway_with(&gateway_service(GW_HOST, pa), |c| {
        c.listen = ([127, 0, 0, 1], pb).into();
    })
    .await;
    let ma = failed_call_metrics(&a, &sni(15443, "", GW_HOST)).await;
    let accepted = |m: &str| metric(m, "gateway_tcp_connections_accepted_total");
    let (_, mb) = http_get(b.admin, "/metrics").await;
    assert_eq!((accepted(&ma), accepted(&mb)), (2.0, 1.0));
    assert_eq!(rejected(a.admin, "loop").await, 1.0);
    assert_eq!(rejected(b.admin, "loop").await, 0.0);
}

/// An application endpoint at the same port number as the gateway's listener, on another
/// address, is an ordinary endpoint: only a hello that comes back is refused.
#[tokio::test]
async fn an_endpoint_sharing_the_gateways_port_number_is_routed() {
    let mut found = None;
    for _ in 0..20 {
        let port = free_port();
        if let Ok(b) = Backend::start("catalog-1", [127, 0, 0, 2].into(), port).await {
            found = Some((b, port));
            break;
        }
    }
    let (_b, port) = found.expect("a port free on 127.0.0.1 and 127.0.0.2");
    let yaml = endpoints_yaml(CATALOG, port, &[([127, 0, 0, 2].into(), "v1", true)]);
    let gw = gateway_with(&yaml, |c| c.listen = ([127, 0, 0, 1], port).into()).await;
    assert_eq!(
        served_by(gw.listen, &sni(80, "", CATALOG)).await,
        "catalog-1"
    );
    assert_eq!(rejected(gw.admin, "loop").await, 0.0);
}
