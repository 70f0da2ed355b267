//! How forwarded connections end: one access-log line and one close count per connection,
//! labelled by outcome (ok, idle_timeout, upstream_reset, client_reset, error, drain_deadline).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn closed_series(outcome: &str) -> String {
    format!(
        "gateway_connections_closed_total{{sni=\"{}\",outcome=\"{outcome}\"}}",
        sni(80, "", CATALOG)
    )
}

/// Polls /metrics until `series` reaches `want` (bounded), returning the last value.
async fn wait_metric(admin: SocketAddr, series: &str, want: f64) -> f64 {
    let mut v = 0.0;
    for _ in 0..250 {
        let (_, m) = http_get(admin, "/metrics").await;
        v = metric(&m, series);
        if v >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v
}

/// Sets SO_LINGER 0 so that dropping the socket sends a RST instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// A plain TCP backend on 127.0.0.2 that reads the first bytes of each connection, reports
/// them, then either resets the connection (`rst`) or holds it open.
async fn raw_backend(rst: bool) -> (SocketAddr, tokio::sync::mpsc::Receiver<Option<TcpStream>>) {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 64];
            if s.read(&mut buf).await.unwrap_or(0) == 0 {
                continue;
            }
            if rst {
                reset(s);
                let _ = tx.send(None).await;
            } else {
                let _ = tx.send(Some(s)).await;
            }
        }
    });
    (addr, rx)
}

/// A gateway routing catalog to a [`raw_backend`], and a client that has sent it a
/// ClientHello for catalog (forwarded to the backend once the gateway has dialled it).
async fn hello_to_raw_backend(
    rst: bool,
) -> (
    Gw,
    TcpStream,
    tokio::sync::mpsc::Receiver<Option<TcpStream>>,
) {
    let (addr, rx) = raw_backend(rst).await;
    let gw = gateway(&endpoints_yaml(
        CATALOG,
        addr.port(),
        &[(addr.ip(), "v1", true)],
    ))
    .await;
    let mut client = TcpStream::connect(gw.listen).await.unwrap();
    client
        .write_all(&rustls_hello(default_client(), &sni(80, "", CATALOG)))
        .await
        .unwrap();
    (gw, client, rx)
}

/// The connection was counted once under `outcome` and under none of `not`.
async fn assert_counted_as(admin: SocketAddr, outcome: &str, not: [&str; 2]) {
    assert_eq!(wait_metric(admin, &closed_series(outcome), 1.0).await, 1.0);
    let (_, m) = http_get(admin, "/metrics").await;
    for other in not {
        assert_eq!(metric(&m, &closed_series(other)), 0.0, "{other}");
    }
}

#[tokio::test]
async fn backend_crash_is_counted_as_upstream_reset() {
    let (gw, client, mut rx) = hello_to_raw_backend(true).await;
    // The backend saw the hello and reset.
    tokio::time::timeout(TIMEOUT, rx.recv()).await.unwrap();
    expect_closed(client).await;
    assert_counted_as(gw.admin, "upstream_reset", ["error", "client_reset"]).await;
}

#[tokio::test]
async fn client_reset_is_counted_as_client_reset() {
    let (gw, client, mut rx) = hello_to_raw_backend(false).await;
    let mut upstream = tokio::time::timeout(TIMEOUT, rx.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    reset(client);
    // The gateway closes its upstream leg in turn.
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, upstream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_counted_as(gw.admin, "client_reset", ["error", "upstream_reset"]).await;
}

#[tokio::test]
async fn graceful_close_is_counted_as_ok() {
    let (_b, gw) = one_catalog(|_| {}).await;
    let (mut conn, _) = open(gw.listen, &sni(80, "", CATALOG), default_client())
        .await
        .unwrap();
    conn.shutdown().await.unwrap();
    let mut rest = String::new();
    conn.read_to_string(&mut rest).await.unwrap();
    assert_eq!(wait_metric(gw.admin, &closed_series("ok"), 1.0).await, 1.0);
}

/// 50 connections outlive the drain deadline: each gets its access-log line with outcome
/// `drain_deadline`, and the built binary still exits 0.
#[test]
fn connections_cut_at_the_drain_deadline_are_logged() {
    let rt = multi_thread_runtime(2);
    let catalog = rt.block_on(catalog_endpoints_file());
    let eps = &catalog.path;
    let mut gw = GatewayProcess::start(
        eps,
        &["--drain-grace", "100ms", "--drain-timeout", "500ms"],
        "info",
    );
    let conns = rt.block_on(async {
        let mut conns = Vec::new();
        for _ in 0..50 {
            let (c, greeting) = open(gw.listen, &sni(80, "", CATALOG), default_client())
                .await
                .unwrap();
            assert!(greeting.starts_with("catalog-1 "));
            conns.push(c);
        }
        conns
    });
    let t = Instant::now();
    assert!(gw.terminate(), "gateway did not exit 0");
    assert!(t.elapsed() >= Duration::from_millis(500));
    let access = |v: &serde_json::Value| v["target"] == "access";
    let forced = |v: &serde_json::Value| access(v) && v["outcome"] == "drain_deadline";
    assert_eq!(
        gw.count_lines(&forced),
        50,
        "{:?}",
        gw.lines.lock().unwrap()
    );
    assert_eq!(gw.count_lines(&access), 50);
    drop(conns);
}

/// The same in process: the 50 forced closes are counted under `drain_deadline`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_at_the_drain_deadline_are_counted() {
    let (_b, mut gw) = one_catalog(|c| {
        c.drain_grace = Duration::from_millis(50);
        c.drain_timeout = Duration::from_millis(300);
    })
    .await;
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(
            open(gw.listen, &sni(80, "", CATALOG), default_client())
                .await
                .unwrap(),
        );
    }
    let bound = gw.bound.take().unwrap();
    let metrics = bound.metrics.clone();
    // The table holds the name's series: once the drained gateway's last holder (its file
    // source task) is gone, they are removed, and a count read after that would be 0.
    let _table = bound.routes.load();
    let outcome = tokio::time::timeout(TIMEOUT, bound.drain()).await.unwrap();
    assert_eq!(outcome.forced, 50);
    let count = |outcome| {
        metrics
            .closed
            .get_or_create(&gateway::metrics::CloseLabels {
                sni: sni(80, "", CATALOG),
                outcome,
            })
            .get()
    };
    assert_eq!(count("drain_deadline"), 50);
    assert_eq!(count("ok") + count("error"), 0);
    drop(conns);
}
