//! `--hbone-max-connections`: established outer connections on 15008. When every place is
//! taken, the connection idle longest (no tunnel) is shed with GOAWAY for an authenticated
//! newcomer; when all carry tunnels, newcomers are refused (at accept, before TLS, once that
//! is known), counted as `connection_limit`, while tunnels already open keep working. And
//! what an idle outer connection costs the gateway in memory.

mod common;
mod hbone_support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use hbone_support::{
    HboneGw, Outer, catalog_behind_gateway, connect, greeted_tunnel, hbone_yaml, outer, pki,
    read_n, read_to_end, send_all,
};

const SVC: &str = common::CATALOG;
const REFUSED: &str = "gateway_hbone_refused_total{reason=\"connection_limit\"}";
const SHED: &str = "gateway_hbone_connections_shed_total";
const ACTIVE: &str = "gateway_hbone_connections_active";
/// A shed connection gets its GOAWAY within milliseconds; this is slack.
const SHED_SEEN: Duration = Duration::from_secs(5);

fn authority() -> String {
    format!("{SVC}:80")
}

/// A new outer connection with a tunnel open on it, if served: mTLS, HTTP/2 and a CONNECT
/// answered 200. The tunnel stays open while the result is held.
async fn served(hbone: SocketAddr) -> Option<(Outer, h2::SendStream<Bytes>, h2::RecvStream)> {
    let mut o = outer(hbone, Some(&pki().client)).await.ok()?;
    let r = tokio::time::timeout(Duration::from_secs(5), connect(&mut o, &authority())).await;
    match r {
        Ok(Ok((StatusCode::OK, Some((tx, rx))))) => Some((o, tx, rx)),
        _ => None,
    }
}

/// Whether the gateway closed `o` (its HTTP/2 driver ended), waiting up to `within`.
async fn closed_within(o: &mut Outer, within: Duration) -> bool {
    tokio::time::timeout(within, &mut o.conn).await.is_ok()
}

/// Closes `o` from the client side.
fn close(o: Outer) {
    o.conn.abort();
}

/// Echo through a tunnel already open.
async fn echoes(tx: &mut h2::SendStream<Bytes>, rx: &mut h2::RecvStream, what: &'static [u8]) {
    send_all(tx, Bytes::from_static(what), false).await;
    assert_eq!(read_n(rx, what.len()).await, what);
}

async fn cap_gateway(ip: [u8; 4], cap: usize) -> (hbone_support::App, HboneGw) {
    catalog_behind_gateway(ip, |c| c.hbone_max_connections = cap).await
}

/// Every place carries a tunnel: a new connection is refused and counted, the open tunnels
/// keep moving bytes and new tunnels on the open connections are served; once a connection
/// closes its place is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_places_refuse_newcomers_and_free_on_close() {
    let (_app, gw) = cap_gateway([127, 0, 0, 120], 2).await;
    let (mut o1, mut tx1, mut rx1) = greeted_tunnel(gw.hbone).await;
    let (o2, mut tx2, mut rx2) = greeted_tunnel(gw.hbone).await;
    gw.wait_metric(ACTIVE, 2.0).await;

    for _ in 0..3 {
        assert!(
            served(gw.hbone).await.is_none(),
            "a third connection served"
        );
    }
    assert_eq!(gw.refused("connection_limit").await, 3.0);
    assert_eq!(gw.metric(SHED).await, 0.0, "nothing idle to shed");
    assert_eq!(gw.metric(ACTIVE).await, 2.0);

    echoes(&mut tx1, &mut rx1, b"still one").await;
    echoes(&mut tx2, &mut rx2, b"still two").await;
    let (status, _t) = connect(&mut o1, &authority()).await.unwrap();
    assert_eq!(status, StatusCode::OK, "a new tunnel on an open connection");

    drop((tx2, rx2));
    close(o2);
    gw.wait_metric(ACTIVE, 1.0).await;
    let (_o3, mut tx3, mut rx3) = served(gw.hbone).await.expect("the freed place is served");
    assert_eq!(gw.refused("connection_limit").await, 3.0);
    echoes(&mut tx1, &mut rx1, b"and still").await;
    read_n(&mut rx3, 10).await;
    echoes(&mut tx3, &mut rx3, b"new one").await;
}

/// Refused at accept: the gateway closes the TCP connection without a byte, at once, and
/// spends neither a TLS handshake nor an undecided place on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_before_the_tls_handshake() {
    let (_app, gw) = cap_gateway([127, 0, 0, 121], 1).await;
    let (_o1, _tx, _rx) = greeted_tunnel(gw.hbone).await;
    let mut tcp = TcpStream::connect(gw.hbone).await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    // Without a ClientHello the gateway would wait --detect-timeout (10 s) for one.
    let r = tokio::time::timeout(Duration::from_secs(3), tcp.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "not closed at accept");
    assert!(buf.is_empty(), "{} bytes before closing", buf.len());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(gw.metric(REFUSED).await, 1.0);
    assert_eq!(gw.metric("gateway_undecided_connections").await, 0.0);
    assert_eq!(
        gw.refused("handshake_failed").await + gw.refused("timeout").await,
        0.0,
        "no handshake was started"
    );
}

/// A connection accepted while a place could still be freed (one was idle) that finds every
/// place busy once its handshake is done is refused then, and counted the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_by_the_end_of_the_handshake_is_refused_after_it() {
    let (_app, gw) = cap_gateway([127, 0, 0, 122], 1).await;
    let mut o1 = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    gw.wait_metric(ACTIVE, 1.0).await;
    // Accepted now, with o1 idle: let the accept loop see it before o1 gets busy.
    let tcp = TcpStream::connect(gw.hbone).await.unwrap();
    gw.wait_metric("gateway_undecided_connections", 1.0).await;
    let (status, io) = connect(&mut o1, &authority()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (mut tx, mut rx) = io.unwrap();
    read_n(&mut rx, 10).await;

    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let cfg = hbone_support::client_tls(Some(&pki().client), &pki().gateway.spiffe_id);
    let refused = match TlsConnector::from(cfg).connect(name, tcp).await {
        // TLS 1.3: the client is done before the server has checked its Finished.
        Ok(mut tls) => {
            let mut buf = Vec::new();
            // Kept, it would wait --detect-timeout (10 s) for the HTTP/2 preface.
            let r = tokio::time::timeout(Duration::from_secs(3), tls.read_to_end(&mut buf)).await;
            r.is_ok()
        }
        Err(_) => true,
    };
    assert!(refused, "the connection was kept");
    gw.wait_metric(REFUSED, 1.0).await;
    assert_eq!(gw.metric(SHED).await, 0.0);
    echoes(&mut tx, &mut rx, b"unharmed").await;
}

/// Every place taken, some idle: a newcomer gets the place of the connection idle longest,
/// which gets GOAWAY and closes; busy connections and their tunnels are untouched. Idle means
/// since the last tunnel closed, not since the connection opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_idle_connection_is_shed_for_a_newcomer() {
    let (_app, gw) = cap_gateway([127, 0, 0, 123], 4).await;
    let (_busy, mut btx, mut brx) = greeted_tunnel(gw.hbone).await;
    // Opened first, but busy until after `idle_a` and `idle_b` went idle.
    let (mut late, ltx, lrx) = greeted_tunnel(gw.hbone).await;
    let mut idle_a = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    gw.wait_metric(ACTIVE, 3.0).await;
    let mut idle_b = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    gw.wait_metric(ACTIVE, 4.0).await;
    drop((ltx, lrx));
    gw.wait_metric(
        &format!("gateway_hbone_tunnels_active{{authority=\"{SVC}:80\"}}"),
        1.0,
    )
    .await;

    let short = Duration::from_millis(300);
    let _n1 = served(gw.hbone).await.expect("newcomer 1 served");
    assert!(
        closed_within(&mut idle_a, SHED_SEEN).await,
        "idle_a not shed"
    );
    assert!(
        !closed_within(&mut idle_b, short).await,
        "idle_b shed first"
    );
    assert!(!closed_within(&mut late, short).await, "late shed first");
    assert_eq!(gw.metric(SHED).await, 1.0);

    // Newcomer 1 carries a tunnel (served opens one), so the next to go is idle_b, then late.
    let _n2 = served(gw.hbone).await.expect("newcomer 2 served");
    assert!(
        closed_within(&mut idle_b, SHED_SEEN).await,
        "idle_b not shed"
    );
    assert!(
        !closed_within(&mut late, short).await,
        "late shed too early"
    );
    let _n3 = served(gw.hbone).await.expect("newcomer 3 served");
    assert!(closed_within(&mut late, SHED_SEEN).await, "late not shed");
    assert_eq!(gw.metric(SHED).await, 3.0);
    assert_eq!(gw.metric(REFUSED).await, 0.0);
    gw.wait_metric(ACTIVE, 4.0).await;

    // Now all four carry tunnels: the next newcomer is refused.
    assert!(served(gw.hbone).await.is_none());
    assert_eq!(gw.metric(REFUSED).await, 1.0);
    echoes(&mut btx, &mut brx, b"busy all along").await;
}

/// An idle flood from one mesh identity (the real binary): connections beyond the cap evict
/// the flood's own oldest, so the gateway holds at most the cap, and its memory stays that
/// of the cap. Prints the RSS per idle outer connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flood_holds_at_most_the_cap_in_memory() {
    const CAP: usize = 400;
    let cap_arg = CAP.to_string();
    let extra = ["--hbone-max-connections", &cap_arg];
    let h = hbone_support::hbone_process(&hbone_yaml(&[]), &extra, "warn,gateway=info").await;
    let (p, hbone) = (&h.gw, h.hbone);
    let pid = p.child.id();
    let active = || {
        let admin = p.admin;
        async move {
            let (_, body) = common::http_get(admin, "/metrics").await;
            common::metric(&body, ACTIVE)
        }
    };
    // Warm-up (allocator, TLS configuration), then closed.
    let warm: Vec<_> = futures_open(hbone, 20).await;
    warm.into_iter().for_each(close);
    for _ in 0..200 {
        if active().await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);
    let mut held = futures_open(hbone, CAP).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_cap = rss_kib(pid).saturating_sub(base);
    eprintln!(
        "{CAP} idle outer connections: gateway RSS +{at_cap} KiB ({:.1} KiB each)",
        at_cap as f64 / CAP as f64
    );
    held.extend(futures_open(hbone, CAP).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rss_kib(pid).saturating_sub(base);
    eprintln!("{} more: +{after} KiB in all", CAP);
    assert_eq!(active().await, CAP as f64);
    let (_, body) = common::http_get(p.admin, "/metrics").await;
    assert_eq!(common::metric(&body, SHED), CAP as f64);
    // The first CAP were shed by the next CAP; memory is reused, not doubled.
    assert!(
        after < at_cap + at_cap / 2,
        "RSS grew from {at_cap} to {after} KiB"
    );
    drop(held);
}

/// Memory per idle outer connection, as a pooling ztunnel leaves them: mTLS, HTTP/2 with
/// ztunnel's settings, one tunnel opened, used (the greeting, a 64-byte echo) and closed by
/// both sides, then nothing. RSS growth of the real binary per connection, over [`IDLE_N`]
/// of them after a warm-up, at the default log level. 600 connections, debug build:
/// 27.3–27.6 KiB each (release: 27.3); 30.5–31.5 (release 31.4) when the connection's task
/// kept the TLS and HTTP/2 handshakes' futures for its whole life. Most of the rest is h2's
/// and rustls's own buffers, which their APIs do not size. `HBONE_RSS_GATEWAY=<binary>`
/// measures another build (the test build is a debug one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_outer_connections_stay_small() {
    let per = idle_kib_per_connection(IDLE_N).await;
    eprintln!(
        "{IDLE_N} idle outer connections, one tunnel each used and closed: {per:.2} KiB each"
    );
    assert!(
        per < IDLE_KIB_MAX,
        "{per:.2} KiB per idle outer connection (bound {IDLE_KIB_MAX})"
    );
}

/// Connections measured: enough that allocator pages average out, few enough for a test
/// process under a 1,024-descriptor limit.
const IDLE_N: usize = 600;
/// About 2 KiB over the measured figure; a regression of the connection's future (4 KiB)
/// crosses it.
const IDLE_KIB_MAX: f64 = 29.5;

/// The gateway binary measured: `HBONE_RSS_GATEWAY`, else the test build.
fn measured_binary() -> String {
    std::env::var("HBONE_RSS_GATEWAY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gateway").into())
}

/// RSS growth of a gateway process per idle outer connection, KiB, over `n` connections
/// that each carried one short tunnel first.
async fn idle_kib_per_connection(n: usize) -> f64 {
    use futures::StreamExt;
    let app = hbone_support::App::start(
        "catalog-1",
        [127, 0, 0, 124].into(),
        0,
        hbone_support::AppMode::Echo,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    let yaml = hbone_yaml(&[(SVC, &[(app.addr.ip(), app.addr.port())])]);
    std::fs::write(&path, yaml).unwrap();
    let certs = hbone_support::gateway_certs();
    let certs_dir = certs.path().to_path_buf();
    let p = tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(measured_binary());
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-format", "json", "--endpoints"])
            .arg(&path)
            .args(["--hbone-listen", "127.0.0.1:0", "--hbone-certs"])
            .arg(&certs_dir)
            .args(["--drain-grace", "200ms", "--drain-timeout", "2s"])
            // The default level: each connection's span is kept, as deployed.
            .env("RUST_LOG", "info")
            .env("TOKIO_WORKER_THREADS", "1")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        common::GatewayProcess::spawn(cmd)
    })
    .await
    .unwrap();
    let on = p.wait_line(&|v| v["message"] == "HBONE listener on");
    let hbone: SocketAddr = on["hbone_addr"].as_str().unwrap().parse().unwrap();
    let pid = p.child.id();
    let admin = p.admin;
    // Measured once the gateway holds `want` connections and no tunnel.
    let settled = |want: f64| async move {
        let tunnels = format!("gateway_hbone_tunnels_active{{authority=\"{SVC}:80\"}}");
        for _ in 0..400 {
            let (_, body) = common::http_get(admin, "/metrics").await;
            if common::metric(&body, ACTIVE) == want && common::metric(&body, &tunnels) == 0.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{ACTIVE} never reached {want} with no tunnel open");
    };
    let open = |count: usize| {
        futures::stream::iter(0..count)
            .map(|_| idle_outer(hbone))
            .buffer_unordered(8)
            .collect::<Vec<_>>()
    };
    // Warm-up (allocator, TLS configuration, tracing), then closed.
    open(50).await.into_iter().for_each(close);
    settled(0.0).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);
    let held = open(n).await;
    settled(n as f64).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let grown = rss_kib(pid).saturating_sub(base);
    drop(held);
    grown as f64 / n as f64
}

/// An outer connection left idle after one tunnel: greeted, a 64-byte echo, closed by both
/// sides.
async fn idle_outer(hbone: SocketAddr) -> Outer {
    let mut o = outer(hbone, Some(&pki().client)).await.unwrap();
    let (status, io) = connect(&mut o, &authority()).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (mut tx, mut rx) = io.unwrap();
    assert_eq!(read_n(&mut rx, 10).await, b"catalog-1\n");
    send_all(&mut tx, Bytes::from_static(&[b'x'; 64]), true).await;
    let rest = tokio::time::timeout(Duration::from_secs(10), read_to_end(&mut rx, usize::MAX))
        .await
        .expect("tunnel closed in time")
        .unwrap();
    assert!(rest.starts_with(&[b'x'; 64]) && rest.ends_with(b"bytes\n"));
    o
}

/// `n` outer connections, one after another.
async fn futures_open(hbone: SocketAddr, n: usize) -> Vec<Outer> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let o = outer(hbone, Some(&pki().client))
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        v.push(o);
    }
    v
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// The start-up descriptor check counts HBONE when it is on: HBONE limits left at their
/// defaults are lowered to fit beside 15443's; set explicitly too high they get the warning,
/// naming the HBONE flags among the fixes; limits that fit both get none.
#[tokio::test]
async fn the_descriptor_warning_counts_hbone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, hbone_yaml(&[])).unwrap();
    let certs = hbone_support::gateway_certs();
    let certs_arg = certs.path().to_str().unwrap();
    let short = |v: &serde_json::Value| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("descriptor limit 4096 is below"))
    };
    // 2 × 1000 + 100 + 578 fits 4096; the HBONE defaults (65,536 and 65,536) do not.
    let classic_fits = ["--max-connections", "1000", "--max-undecided", "100"];
    let mut args = classic_fits.to_vec();
    args.extend(["--hbone-listen", "127.0.0.1:0", "--hbone-certs", certs_arg]);
    let gw = common::GatewayProcess::start_limited(&path, &args, "info", Some((64, 4096)));
    let warning = gw.wait_line(&short);
    let msg = warning["message"].as_str().unwrap();
    // 4096 - 578 - 2 × 219 pipes - 2,100 = 980 descriptors for 131,072 asked.
    assert!(
        msg.contains(
            "lowered --hbone-max-connections 65536 → 490, --hbone-max-tunnels 65536 → 490"
        ),
        "{msg}"
    );
    assert!(
        !msg.contains("--max-connections 1000"),
        "explicit flags stay: {msg}"
    );
    drop(gw);
    args.extend([
        "--hbone-max-connections",
        "65536",
        "--hbone-max-tunnels",
        "65536",
    ]);
    let gw = common::GatewayProcess::start_limited(&path, &args, "info", Some((64, 4096)));
    let warning = gw.wait_line(&short);
    let msg = warning["message"].as_str().unwrap();
    assert!(
        msg.contains("--hbone-max-connections 65536 and --hbone-max-tunnels 65536"),
        "{msg}"
    );
    assert!(
        msg.contains("or lower --max-connections, --hbone-max-connections or --hbone-max-tunnels")
    );
    drop(gw);
    // 2,100 + 400 + 400 fit the 3,080 left beside 219 pipes.
    let n = args.len();
    args[n - 3] = "400";
    args[n - 1] = "400";
    let gw = common::GatewayProcess::start_limited(&path, &args, "info", Some((64, 4096)));
    gw.wait_line(&|v| v["message"] == "HBONE listener on");
    assert_eq!(gw.count_lines(&short), 0);
}
