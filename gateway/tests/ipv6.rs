//! IPv6 and dual-stack on loopback only (`::1`, and `::ffff:127.0.0.1`, the IPv4 loopback as
//! a dual-stack socket sees it): IPv6 endpoints dialed on 15443 and 15008, and IPv4 clients of
//! an IPv6 listener logged as IPv4.

mod common;
mod hbone_support;

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::process::{Command, Stdio};

use common::*;
use gateway::proxy_protocol;
use hbone_support::{App, AppMode, connect, outer, read_n};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const REVIEWS: &str = "reviews.istioinaction.svc.cluster.local";
const V6_LOOPBACK: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// The catalog (classic, 15443) at `catalog`, reviews (HBONE, 15008) at `reviews`; one
/// address unquoted, as people write it.
fn two_services(catalog: SocketAddr, reviews: SocketAddr) -> String {
    let q = |a: IpAddr| match a {
        IpAddr::V6(_) => format!("'{a}'"),
        IpAddr::V4(_) => a.to_string(),
    };
    format!(
        "services:
  - host: {CATALOG}
    ports: [{{port: 80, targetPort: {}}}]
    endpoints: [{{address: {}}}]
  - host: {REVIEWS}
    ports: [{{port: 80}}]
    endpoints:
      - address: {}
        hbone: {{port: {}}}
",
        catalog.port(),
        q(catalog.ip()),
        reviews.ip(),
        reviews.port()
    )
}

/// One tunnel to reviews through `hbone`: the app's greeting.
async fn tunnel_greeting(hbone: SocketAddr) -> String {
    let mut o = outer(hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap();
    let (status, io) = connect(&mut o, &format!("{REVIEWS}:80")).await.unwrap();
    assert_eq!(status, 200);
    let (_tx, mut rx) = io.unwrap();
    String::from_utf8(read_n(&mut rx, 8).await).unwrap()
}

/// Endpoints at `::1` (from the file) are dialed over IPv6 on both ports, by a gateway that
/// listens on `::1` itself.
#[tokio::test]
async fn ipv6_endpoints_are_dialed_on_15443_and_15008() {
    let catalog = Backend::start("catalog-6", V6_LOOPBACK, 0).await.unwrap();
    let reviews = App::start("reviews", V6_LOOPBACK, 0, AppMode::Echo)
        .await
        .unwrap();
    let yaml = two_services(catalog.addr, reviews.addr);
    let gw = hbone_support::gateway(&yaml, |c| {
        c.listen = "[::1]:0".parse().unwrap();
        c.hbone_listen = Some("[::1]:0".parse().unwrap());
    })
    .await;
    let listen = gw.gw.listen;
    assert_eq!(listen.ip(), V6_LOOPBACK);
    let greeting = call(listen, &sni(80, "", CATALOG)).await.unwrap();
    assert!(greeting.starts_with("catalog-6 "), "{greeting}");
    assert_eq!(catalog.accepted(), 1);
    assert_eq!(tunnel_greeting(gw.hbone).await, "reviews\n");
    assert_eq!(reviews.accepted(), 1);
    let (_, routes) = http_get(gw.gw.admin, "/debug/routes").await;
    assert!(
        routes.contains(&format!("\"{}\"", catalog.addr)),
        "{routes}"
    );
    assert!(
        routes.contains(&format!("[::1]:{}", reviews.addr.port())),
        "{routes}"
    );
}

/// A dual-stack listener (an IPv6 socket taking IPv4) sees IPv4 clients as
/// `::ffff:a.b.c.d`: the access logs of both ports, the connection span and the PROXY
/// header's client all give them as `a.b.c.d`.
#[test]
fn ipv4_clients_of_a_dual_stack_listener_are_logged_as_ipv4() {
    init();
    let rt = multi_thread_runtime(1);
    let (backends, port) = rt.block_on(backends(&["catalog-1"]));
    let reviews = rt
        .block_on(App::start(
            "reviews",
            [127, 0, 0, 3].into(),
            0,
            AppMode::Echo,
        ))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    let catalog = SocketAddr::new(backends[0].addr.ip(), port);
    std::fs::write(&path, two_services(catalog, reviews.addr)).unwrap();
    let certs = hbone_support::gateway_certs();
    let dual = "[::ffff:127.0.0.1]:0";
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args([
        "--listen",
        dual,
        "--hbone-listen",
        dual,
        "--admin",
        "127.0.0.1:0",
    ])
    .args(["--proxy-protocol", "--log-format", "json", "--hbone-certs"])
    .arg(certs.path())
    .arg("--endpoints")
    .arg(&path)
    .args(["--drain-grace", "100ms", "--drain-timeout", "1s"])
    .env("RUST_LOG", "info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let p = GatewayProcess::spawn(cmd);
    let on = p.wait_line(&|v| v["message"] == "HBONE listener on");
    let hbone: SocketAddr = on["hbone_addr"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        p.listen.ip().to_string(),
        "::ffff:127.0.0.1",
        "an IPv6 socket"
    );
    let v4 = |a: SocketAddr| SocketAddr::new([127, 0, 0, 1].into(), a.port());

    // 15443 through a balancer on a dual-stack socket: its PROXY header names the client
    // as a mapped address too.
    let lb = rt.block_on(async {
        let mut tcp = TcpStream::connect(v4(p.listen)).await.unwrap();
        let lb = tcp.local_addr().unwrap();
        let from: SocketAddr = "[::ffff:198.51.100.7]:40000".parse().unwrap();
        let to: SocketAddr = "[::ffff:10.0.0.1]:15443".parse().unwrap();
        tcp.write_all(&proxy_protocol::encode(from, to))
            .await
            .unwrap();
        let name = testkit::mtls::sni_server_name(&sni(80, "", CATALOG)).unwrap();
        let tls = TlsConnector::from(default_client())
            .connect(name, tcp)
            .await
            .unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(tls);
        tokio::time::timeout(TIMEOUT, r.read_line(&mut line))
            .await
            .unwrap()
            .unwrap();
        assert!(line.starts_with("catalog-1 "), "{line}");
        lb
    });
    let access = p.wait_line(&|v| v["message"] == "connection closed");
    assert_eq!(access["client"], "198.51.100.7:40000", "{access}");
    assert_eq!(access["span"]["peer"], lb.to_string(), "{access}");

    // 15008: the outer connection's and the tunnel's access lines.
    assert_eq!(rt.block_on(tunnel_greeting(v4(hbone))), "reviews\n");
    let tunnel = p.wait_line(&|v| v["message"] == "HBONE tunnel closed");
    let outer_line = p.wait_line(&|v| v["message"] == "HBONE connection closed");
    for line in [&tunnel, &outer_line] {
        let c: SocketAddr = line["client"].as_str().unwrap().parse().unwrap();
        assert_eq!(c.ip().to_string(), "127.0.0.1", "{line}");
    }
    let mapped =
        |v: &serde_json::Value| v["target"] == "access" && v.to_string().contains("::ffff:");
    assert_eq!(p.count_lines(&mapped), 0);
}
