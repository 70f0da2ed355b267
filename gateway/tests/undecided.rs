//! Connections still sending their ClientHello ("undecided") have their own budget, in
//! count and buffered bytes. A slowloris flood sheds its own oldest connections instead of
//! starving clients that send a whole hello at once.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Opens `n` connections that each send `partial` and then stall.
async fn flood(gw: std::net::SocketAddr, partial: &[u8], n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(gw).await.unwrap();
        s.write_all(partial).await.unwrap();
        out.push(s);
    }
    out
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

/// Waits (bounded) until `series` is at least `want`.
async fn wait_at_least(admin: std::net::SocketAddr, series: &str, want: f64) -> f64 {
    let mut v = 0.0;
    for _ in 0..250 {
        v = metric(&metrics(admin).await, series);
        if v >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    v
}

/// Whether the gateway closed `s` (EOF or reset) within a short window.
async fn closed_soon(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

const SHED: &str = "gateway_connections_rejected_total{reason=\"shed\"}";

/// 300 stalled hellos against `--max-connections 100` and 50 undecided slots: every good
/// call gets through, the flood's oldest connections are the ones shed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_flood_sheds_oldest_and_good_clients_get_through() {
    let (b, gw) = one_catalog(|c| {
        c.max_connections = 100;
        c.max_undecided = 50;
        c.detect_timeout = Duration::from_secs(60);
    })
    .await;
    let partial = &rustls_hello(default_client(), &sni(80, "", CATALOG))[..100];
    let mut slow = flood(gw.listen, partial, 300).await;
    assert_eq!(wait_at_least(gw.admin, SHED, 250.0).await, 250.0);
    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, "gateway_undecided_connections"), 50.0);
    assert_eq!(metric(&m, "gateway_undecided_hello_bytes"), 50.0 * 100.0);
    // Oldest first: the first connection is gone, the last one still waits.
    assert!(closed_soon(&mut slow[0]).await);
    assert!(!closed_soon(&mut slow[299]).await);

    let mut ok = 0;
    for _ in 0..50 {
        if call(gw.listen, &sni(80, "", CATALOG)).await.is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 50, "good calls during the flood");
    assert_eq!(b[0].accepted(), 50);
    let m = metrics(gw.admin).await;
    assert_eq!(
        metric(
            &m,
            "gateway_connections_rejected_total{reason=\"over_limit\"}"
        ),
        0.0
    );
    // The first good call took the place of one more stalled connection; each call was
    // decided and gave its place back before the next one came.
    assert_eq!(metric(&m, SHED), 251.0);
    assert_eq!(metric(&m, "gateway_undecided_connections"), 49.0);

    // Now good calls while 300 more stalled connections arrive at the same time. A good
    // call is shed only if 50 newer connections arrive before its hello is read.
    let more = tokio::spawn({
        let partial = partial.to_vec();
        let listen = gw.listen;
        async move { flood(listen, &partial, 300).await }
    });
    let mut ok = 0;
    for _ in 0..50 {
        if call(gw.listen, &sni(80, "", CATALOG)).await.is_ok() {
            ok += 1;
        }
    }
    let more = more.await.unwrap();
    assert!(ok >= 48, "good calls during a concurrent flood: {ok} of 50");
    let m = metrics(gw.admin).await;
    assert!(metric(&m, "gateway_undecided_connections") <= 50.0);
    assert_eq!(
        metric(
            &m,
            "gateway_connections_rejected_total{reason=\"over_limit\"}"
        ),
        0.0
    );
    drop((slow, more));
}

/// The byte budget sheds too: 2,000-byte stalled prefixes against 64 KiB of buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_hello_bytes_are_bounded() {
    let (_b, gw) = one_catalog(|c| {
        c.max_undecided_bytes = 64 * 1024;
        c.detect_timeout = Duration::from_secs(60);
    })
    .await;
    let mut big = (*default_client()).clone();
    big.alpn_protocols = (0..60)
        .map(|i| format!("istio-padding-{i:040}").into_bytes())
        .collect();
    let hello = rustls_hello(Arc::new(big), &sni(80, "", CATALOG));
    let partial = &hello[..2000];
    let slow = flood(gw.listen, partial, 100).await;
    // 32 prefixes fit in 64 KiB; the 68 oldest are shed.
    assert_eq!(wait_at_least(gw.admin, SHED, 68.0).await, 68.0);
    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, "gateway_undecided_hello_bytes"), 32.0 * 2000.0);
    assert_eq!(metric(&m, "gateway_undecided_connections"), 32.0);
    assert_eq!(
        served_by(gw.listen, &sni(80, "", CATALOG)).await,
        "catalog-1"
    );
    drop(slow);
}

#[test]
fn budget_flags_are_range_checked() {
    for args in [
        &["--max-undecided", "0"][..],
        &["--max-undecided", "1000001"],
        &["--max-undecided-bytes", "1000"],
        &["--max-undecided-bytes", "99999999999999"],
        &[
            "--max-undecided-bytes",
            "65536",
            "--max-hello-bytes",
            "65537",
        ],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains(args[0]) && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}
