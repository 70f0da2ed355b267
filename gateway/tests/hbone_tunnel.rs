//! HBONE on 15008, in process through `app::build`: real rustls, real h2 (client and server),
//! real sockets on loopback. The "client ztunnel" is `hbone_support::outer`; endpoints are
//! plain TCP apps standing in for the destination ztunnel's HBONE port.

mod common;
mod hbone_support;

use std::net::IpAddr;

use bytes::Bytes;
use http::{Method, StatusCode};

use hbone_support::{
    App, AppMode, HboneGw, Outer, TIMEOUT, connect, connect_with, hbone_yaml, outer, read_n,
    read_to_end, send_all,
};

const SVC: &str = "catalog.istioinaction.svc.cluster.local";

fn ip(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

async fn app(name: &str, last: u8) -> App {
    App::start(name, ip(last), 0, AppMode::Echo).await.unwrap()
}

/// A gateway routing `SVC` to `a`, and a client ztunnel's outer connection to it.
async fn gateway_to(a: &App) -> (HboneGw, Outer) {
    let yaml = hbone_yaml(&[(SVC, &[(a.addr.ip(), a.addr.port())])]);
    let gw = hbone_support::gateway(&yaml, |_| {}).await;
    let o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    (gw, o)
}

/// A tunnel through the gateway carries `n` bytes to the echo app and back intact, and the
/// client's END_STREAM reaches the app as EOF.
async fn echo_through(n: usize) {
    let a = app("catalog-1", 20).await;
    let (gw, mut o) = gateway_to(&a).await;
    let (status, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (mut tx, mut rx) = io.unwrap();
    assert_eq!(read_n(&mut rx, 10).await, b"catalog-1\n");
    let data: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
    let writer = tokio::spawn({
        let data = Bytes::from(data.clone());
        async move {
            send_all(&mut tx, data, true).await;
            tx
        }
    });
    let got = tokio::time::timeout(TIMEOUT * 3, read_to_end(&mut rx, usize::MAX))
        .await
        .expect("echo in time")
        .unwrap();
    let _tx = writer.await.unwrap();
    let tail = format!("eof after {n} bytes\n");
    assert_eq!(got.len(), n + tail.len());
    assert!(got[..n] == data[..], "bytes changed in transit");
    assert_eq!(&got[n..], tail.as_bytes());
    let auth = format!("authority=\"{SVC}:80\"");
    gw.wait_metric(
        &format!("gateway_hbone_tunnels_closed_total{{{auth},outcome=\"closed\"}}"),
        1.0,
    )
    .await;
    assert_eq!(
        gw.metric(&format!("gateway_hbone_sent_bytes_total{{{auth}}}"))
            .await,
        n as f64
    );
    assert_eq!(
        gw.metric(&format!("gateway_hbone_received_bytes_total{{{auth}}}"))
            .await,
        (n + 10 + tail.len()) as f64
    );
}

/// Both legs of a tunnel run TCP keepalive, as on 15443: the outer connection from the
/// client ztunnel (pooled, idle between tunnels) and the dial to the endpoint.
#[tokio::test]
async fn both_legs_keep_alive() {
    let a = app("catalog-1", 21).await;
    let (gw, mut o) = gateway_to(&a).await;
    let (status, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_tx, mut rx) = io.unwrap();
    assert_eq!(read_n(&mut rx, 10).await, b"catalog-1\n");
    common::wait_keepalive("outer connection", &|local, _| local == gw.hbone, 1).await;
    common::wait_keepalive("endpoint dial", &|_, remote| remote == a.addr, 1).await;
}

#[tokio::test]
async fn one_byte_intact() {
    echo_through(1).await;
}

#[tokio::test]
async fn sixty_four_kib_intact() {
    echo_through(64 << 10).await;
}

#[tokio::test]
async fn sixty_four_mib_intact() {
    echo_through(64 << 20).await;
}

/// Three tunnels on one pooled outer connection (streams 1, 3, 5, as ztunnel pools them)
/// reach three services' endpoints, all open at once.
#[tokio::test]
async fn three_tunnels_on_one_connection_reach_different_endpoints() {
    let apps = [
        app("a-1", 21).await,
        app("b-1", 22).await,
        app("c-1", 23).await,
    ];
    let hosts = [
        "a.ns.svc.cluster.local",
        "b.ns.svc.cluster.local",
        "c.ns.svc.cluster.local",
    ];
    let eps: Vec<[(IpAddr, u16); 1]> = apps
        .iter()
        .map(|a| [(a.addr.ip(), a.addr.port())])
        .collect();
    let services: Vec<(&str, &[(IpAddr, u16)])> =
        hosts.iter().zip(&eps).map(|(h, e)| (*h, &e[..])).collect();
    let gw = hbone_support::gateway(&hbone_yaml(&services), |_| {}).await;
    let mut o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let mut open = Vec::new();
    for (h, name) in hosts.iter().zip(["a-1", "b-1", "c-1"]) {
        let (status, io) = connect(&mut o, &format!("{h}:80")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let (tx, mut rx) = io.unwrap();
        assert_eq!(
            read_n(&mut rx, name.len() + 1).await,
            format!("{name}\n").as_bytes()
        );
        open.push((tx, rx));
    }
    for (i, (tx, rx)) in open.iter_mut().enumerate() {
        send_all(tx, Bytes::from(format!("ping {i}")), false).await;
        assert_eq!(read_n(rx, 6).await, format!("ping {i}").as_bytes());
    }
    assert!(apps.iter().all(|a| a.accepted() == 1));
    assert_eq!(
        gw.metric("gateway_hbone_connections_opened_total").await,
        1.0
    );
    drop(open);
}

/// The 200 comes only once the upstream connection is up: by then the endpoint's listener
/// already holds the connection in its accept queue. A refused endpoint is retried on
/// another; with every endpoint refusing, 503 and `connect_failed`.
#[tokio::test]
async fn ok_only_after_dial_and_retry_on_another_endpoint() {
    let pending = std::net::TcpListener::bind((ip(24), 0)).unwrap();
    pending.set_nonblocking(true).unwrap();
    let refused = common::refused_port(ip(25), 0).await;
    let yaml = hbone_yaml(&[
        (
            SVC,
            &[
                (refused.ip(), refused.port()),
                (ip(24), pending.local_addr().unwrap().port()),
            ],
        ),
        (
            "dead.ns.svc.cluster.local",
            &[(refused.ip(), refused.port())],
        ),
    ]);
    let gw = hbone_support::gateway(&yaml, |c| c.outlier.consecutive_failures = 0).await;
    let mut o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    for _ in 0..4 {
        let (status, _io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // Accepted without waiting: the TCP connection was up before the 200.
        pending
            .accept()
            .expect("upstream connection established before 200");
    }
    let (status, io) = connect(&mut o, "dead.ns.svc.cluster.local:80")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(io.is_none());
    assert_eq!(gw.refused("connect_failed").await, 1.0);
}

/// No ready endpoint: 503 `no_healthy_endpoint`. An unknown authority, or a service with no
/// HBONE endpoint: 503 `no_route`, nothing dialed.
#[tokio::test]
async fn unavailable_and_unrouted() {
    let a = app("classic", 26).await;
    let yaml = format!(
        "services:\n  - host: {SVC}\n    ports: [{{port: 80}}]\n    hbone: true\n    endpoints:\n      - address: 127.0.0.27\n        ready: false\n  - host: classic.ns.svc.cluster.local\n    ports: [{{port: 80, targetPort: {}}}]\n    endpoints:\n      - address: {}\n",
        a.addr.port(),
        a.addr.ip()
    );
    let gw = hbone_support::gateway(&yaml, |_| {}).await;
    let mut o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let (status, _) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gw.refused("no_healthy_endpoint").await, 1.0);
    for authority in [
        "nothing.ns.svc.cluster.local:80",
        &format!("{SVC}:81"),
        "classic.ns.svc.cluster.local:80",
    ] {
        let (status, _) = connect(&mut o, authority).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{authority}");
    }
    assert_eq!(gw.refused("no_route").await, 3.0);
    assert_eq!(
        a.accepted(),
        0,
        "a classic-only endpoint is not dialed over HBONE"
    );
}

/// A method other than CONNECT and malformed authorities are answered 400 without a dial;
/// the connection stays usable.
#[tokio::test]
async fn bad_requests_are_400() {
    let a = app("catalog-1", 28).await;
    let (gw, mut o) = gateway_to(&a).await;
    let (status, _) = hbone_support::request(&mut o, Method::GET, &format!("{SVC}:80"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for bad in [
        "bad_host.svc:80",
        &format!("{SVC}:0"),
        &format!("user@{SVC}:80"),
        "[::1]:80",
    ] {
        let (status, _) = connect(&mut o, bad).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(gw.refused("bad_request").await, 5.0);
    assert_eq!(a.accepted(), 0);
    let (status, _) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// RST_STREAM(CANCEL), ztunnel's normal end of a tunnel, closes the upstream connection and
/// is counted as a normal close.
#[tokio::test]
async fn cancel_closes_upstream_as_normal() {
    let a = app("catalog-1", 29).await;
    let (gw, mut o) = gateway_to(&a).await;
    let (_, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    let (mut tx, mut rx) = io.unwrap();
    read_n(&mut rx, 10).await;
    send_all(&mut tx, Bytes::from_static(b"abc"), false).await;
    read_n(&mut rx, 3).await;
    tx.send_reset(h2::Reason::CANCEL);
    hbone_support::eventually("upstream closed", || a.finished() == vec![3]).await;
    let auth = format!("authority=\"{SVC}:80\"");
    gw.wait_metric(
        &format!("gateway_hbone_tunnels_closed_total{{{auth},outcome=\"closed\"}}"),
        1.0,
    )
    .await;
    assert_eq!(
        gw.metric(&format!("gateway_hbone_tunnels_active{{{auth}}}"))
            .await,
        0.0
    );
    assert_eq!(gw.refused("h2_error").await, 0.0);
}

/// Half-close both ways: the upstream's FIN arrives as END_STREAM while the client can still
/// send, and the client's END_STREAM then arrives upstream as EOF.
#[tokio::test]
async fn half_close_both_ways() {
    let a = App::start("x", ip(30), 0, AppMode::CloseFirst)
        .await
        .unwrap();
    let (gw, mut o) = gateway_to(&a).await;
    let (_, io) = connect(&mut o, &format!("{SVC}:80")).await.unwrap();
    let (mut tx, mut rx) = io.unwrap();
    let got = tokio::time::timeout(TIMEOUT, read_to_end(&mut rx, usize::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"bye\n", "upstream FIN became END_STREAM");
    send_all(&mut tx, Bytes::from(vec![7u8; 100_000]), true).await;
    hbone_support::eventually("client END_STREAM reached upstream as EOF", || {
        a.finished() == vec![100_000]
    })
    .await;
    let auth = format!("authority=\"{SVC}:80\"");
    gw.wait_metric(
        &format!("gateway_hbone_tunnels_closed_total{{{auth},outcome=\"closed\"}}"),
        1.0,
    )
    .await;
}

/// h2 answers PINGs on the outer connection (ztunnel pings every 10 s and closes without a
/// PONG in 20 s).
#[tokio::test]
async fn ping_is_answered() {
    let gw = hbone_support::gateway(&hbone_yaml(&[]), |_| {}).await;
    let mut o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let mut ping = o.ping.take().unwrap();
    for _ in 0..3 {
        tokio::time::timeout(TIMEOUT, ping.ping(h2::Ping::opaque()))
            .await
            .expect("PONG in time")
            .expect("PONG");
    }
}

/// A service bound to a waypoint takes straight to its endpoints only tunnels a waypoint
/// sent (`x-istio-source: waypoint`, exactly); every other goes to the waypoint, dialed at
/// its own 15008 route with the tunnel's bytes passed on, as Istio's gateway does. A
/// waypoint with no ready endpoint is a 503 and nothing else is dialed.
#[tokio::test]
async fn a_waypoint_bound_service_sends_other_tunnels_to_its_waypoint() {
    let a = app("catalog-1", 21).await;
    let wp = app("waypoint-1", 22).await;
    const WP: &str = "wp.infra.svc.cluster.local";
    let yaml = |wp_ready: bool| {
        format!(
            "services:\n  - host: {SVC}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
             waypoint: {WP}\n    endpoints:\n      - address: {}\n        hbone: {{port: {}}}\n  \
             - host: {WP}\n    ports: [{{port: 15008, targetPort: {}}}, {{port: 15021}}]\n    \
             endpoints: [{{address: {}, ready: {wp_ready}}}]\n",
            a.addr.ip(),
            a.addr.port(),
            wp.addr.port(),
            wp.addr.ip(),
        )
    };
    let gw = hbone_support::gateway(&yaml(true), |_| {}).await;
    let mut o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let authority = format!("{SVC}:80");
    for source in [
        &[][..],
        &[("x-istio-source", "gateway")],
        &[("x-istio-source", "Waypoint")],
    ] {
        let (status, io) = connect_with(&mut o, &authority, source).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{source:?}");
        let (mut tx, mut rx) = io.unwrap();
        assert_eq!(read_n(&mut rx, 11).await, b"waypoint-1\n", "{source:?}");
        // The tunnel's bytes reach the waypoint unchanged (it echoes them).
        tx.send_data(Bytes::from_static(b"inner-tls"), false)
            .unwrap();
        assert_eq!(read_n(&mut rx, 9).await, b"inner-tls");
    }
    assert_eq!(a.accepted(), 0, "the service's endpoint not dialed");
    a_waypoints_tunnel_reaches(&mut o, &authority, b"catalog-1\n").await;
    assert_eq!(a.accepted(), 1);
    assert_eq!(wp.accepted(), 3);

    // The waypoint not ready: 503, nothing dialed; a waypoint's tunnel still gets through.
    gw.gw.write_endpoints(&yaml(false));
    gw.gw.wait_generation(2).await;
    let (status, io) = connect_with(&mut o, &authority, &[]).await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(io.is_none());
    assert_eq!(gw.refused("no_healthy_endpoint").await, 1.0);
    assert_eq!(wp.accepted(), 3);
    let (status, _io) = connect_with(&mut o, &authority, &[("x-istio-source", "waypoint")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
}

/// A tunnel as a waypoint sends it (`x-istio-source: waypoint`) reaches the app greeting
/// `greeting`: the service's own endpoint.
async fn a_waypoints_tunnel_reaches(o: &mut Outer, authority: &str, greeting: &[u8]) {
    let (status, io) = connect_with(o, authority, &[("x-istio-source", "waypoint")])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (_tx, mut rx) = io.unwrap();
    assert_eq!(read_n(&mut rx, greeting.len()).await, greeting);
}

/// Opens a tunnel to `authority`, reads the name the app behind it sends first, and closes
/// the tunnel cleanly (END_STREAM, then the app's EOF).
async fn name_behind(o: &mut Outer, authority: &str) -> String {
    let (status, io) = connect_with(o, authority, &[]).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (mut tx, mut rx) = io.unwrap();
    send_all(&mut tx, Bytes::new(), true).await;
    let got = tokio::time::timeout(TIMEOUT, read_to_end(&mut rx, usize::MAX))
        .await
        .expect("the tunnel ends in time")
        .unwrap();
    let text = String::from_utf8(got).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

/// A canary waypoint takes its weight of the tunnels bound for the waypoint, drawn per
/// tunnel: at 50 both take some, at 100 the canary takes all; a canary with no ready endpoint
/// leaves them to the waypoint; a waypoint's own tunnels still reach the service.
#[tokio::test]
async fn a_canary_waypoint_takes_its_weight_of_the_tunnels() {
    let a = app("catalog-1", 41).await;
    let wp = app("waypoint-1", 42).await;
    let canary = app("waypoint-2", 43).await;
    const WP: &str = "wp.infra.svc.cluster.local";
    const WP2: &str = "wp2.infra.svc.cluster.local";
    let yaml = |weight: u8, canary_ready: bool| {
        format!(
            "services:\n  - host: {SVC}\n    ports: [{{port: 80, targetPort: 8080}}]\n    \
             waypoint: {WP}\n    waypoint_canary: {{host: {WP2}, weight: {weight}}}\n    \
             endpoints:\n      - address: {}\n        hbone: {{port: {}}}\n  \
             - host: {WP}\n    ports: [{{port: 15008, targetPort: {}}}]\n    \
             endpoints: [{{address: {}}}]\n  \
             - host: {WP2}\n    ports: [{{port: 15008, targetPort: {}}}]\n    \
             endpoints: [{{address: {}, ready: {canary_ready}}}]\n",
            a.addr.ip(),
            a.addr.port(),
            wp.addr.port(),
            wp.addr.ip(),
            canary.addr.port(),
            canary.addr.ip(),
        )
    };
    let gw = hbone_support::gateway(&yaml(50, true), |_| {}).await;
    let mut o = outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let authority = format!("{SVC}:80");
    let mut to_canary = 0;
    const N: usize = 64;
    for _ in 0..N {
        match name_behind(&mut o, &authority).await.as_str() {
            "waypoint-2" => to_canary += 1,
            "waypoint-1" => {}
            other => panic!("a tunnel reached {other:?}"),
        }
    }
    // Binomial(64, 1/2): outside 12..=52 about once in a million runs.
    assert!((12..=52).contains(&to_canary), "{to_canary} of {N}");
    assert_eq!(wp.accepted() + canary.accepted(), N);
    assert_eq!(a.accepted(), 0);

    let (code, routes) = common::http_get(gw.gw.admin, "/debug/routes?host=catalog").await;
    assert_eq!(code, 200);
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(
        routes["routes"][0]["canary"],
        serde_json::json!({"host": WP2, "weight": 50}),
        "{routes}"
    );

    gw.gw.write_endpoints(&yaml(100, true));
    gw.gw.wait_generation(2).await;
    for _ in 0..8 {
        assert_eq!(name_behind(&mut o, &authority).await, "waypoint-2");
    }
    gw.gw.write_endpoints(&yaml(100, false));
    gw.gw.wait_generation(3).await;
    for _ in 0..8 {
        assert_eq!(
            name_behind(&mut o, &authority).await,
            "waypoint-1",
            "the canary has no ready endpoint"
        );
    }
    a_waypoints_tunnel_reaches(&mut o, &authority, b"catalog-1\n").await;
}
