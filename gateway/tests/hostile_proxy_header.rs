//! PROXY headers from hostile or misconfigured peers, against the real binary on 127.0.0.0/8:
//! truncated, oversized, of the wrong version or family, or sent to a gateway not expecting
//! one. Every loop is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use gateway::proxy_protocol;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A PROXY v2 header with the given family byte and address block.
fn v2_header(fam: u8, block: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    h.push(fam);
    h.extend_from_slice(&(block.len() as u16).to_be_bytes());
    h.extend_from_slice(block);
    h
}

/// A fresh rustls ClientHello for catalog, and the connection that made it.
fn catalog_hello() -> Vec<u8> {
    let name = testkit::mtls::sni_server_name(&sni(80, "", CATALOG)).unwrap();
    let mut conn = rustls::ClientConnection::new(default_client(), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Sends `bytes` and waits for the gateway to close; returns how long that took.
async fn closed_after(gw: SocketAddr, bytes: &[u8]) -> Duration {
    let mut s = TcpStream::connect(gw).await.unwrap();
    let started = Instant::now();
    let _ = s.write_all(bytes).await;
    let got = expect_closed(s).await;
    assert!(got.is_empty(), "the gateway answered: {got:?}");
    started.elapsed()
}

/// A v1 header (HAProxy's `send-proxy`, ELB Classic) is accepted and stripped like v2, and
/// a mTLS handshake behind it reaches the backend; before, v1 was refused.
#[tokio::test]
async fn proxy_v1_header_is_stripped_and_routed() {
    let (b, gw) = one_catalog(|c| c.proxy_protocol = true).await;
    for header in [
        format!("PROXY TCP4 198.51.100.7 {} 40000 15443\r\n", gw.listen.ip()),
        "PROXY TCP6 2001:db8::7 2001:db8::1 40000 15443\r\n".to_string(),
        "PROXY UNKNOWN\r\n".to_string(),
    ] {
        let mut tcp = TcpStream::connect(gw.listen).await.unwrap();
        tcp.write_all(header.as_bytes()).await.unwrap();
        let name = testkit::mtls::sni_server_name(&sni(80, "", CATALOG)).unwrap();
        let tls = tokio_rustls::TlsConnector::from(default_client())
            .connect(name, tcp)
            .await
            .unwrap_or_else(|e| panic!("{header:?}: {e}"));
        let mut r = tokio::io::BufReader::new(tls);
        let mut line = String::new();
        tokio::time::timeout(
            TIMEOUT,
            tokio::io::AsyncBufReadExt::read_line(&mut r, &mut line),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(line.starts_with("catalog-1 "), "{header:?}: {line}");
    }
    assert_eq!(b[0].accepted(), 3);
    assert_eq!(rejected(gw.admin, "bad_proxy_header").await, 0.0);
}

/// Headers that can never be valid are refused as soon as that is known, without waiting
/// for the detect timeout (10 s here) or reading past the header's bound; truncated ones end
/// as the client's close or the timeout. Each is counted. Before, a v2 header of an unknown
/// family was accepted and its connection routed.
#[tokio::test]
async fn bad_proxy_headers_are_refused_promptly_and_counted() {
    let (b, gw) = one_catalog(|c| {
        c.proxy_protocol = true;
        c.detect_timeout = Duration::from_secs(10);
    })
    .await;
    let hello = catalog_hello();
    let quick = Duration::from_secs(2);
    let mut v1_no_crlf = b"PROXY TCP4 ".to_vec();
    v1_no_crlf.resize(300, b'1');
    let refused: Vec<(&str, Vec<u8>)> = vec![
        (
            "v2 length 65535",
            v2_header(0x11, &vec![0; 0xffff])[..16].to_vec(),
        ),
        ("v1 without CRLF", v1_no_crlf),
        (
            "v1 LF only",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n".to_vec(),
        ),
        ("v1 TCP4 with IPv6", b"PROXY TCP4 ::1 ::1 1 2\r\n".to_vec()),
        (
            "v1 port 65536",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 65536 2\r\n".to_vec(),
        ),
        ("v1 NUL", b"PROXY TCP4 192.0.2.1\0".to_vec()),
        ("v2 IPv6 family, IPv4 block", v2_header(0x21, &[0; 12])),
        ("v2 UNIX family, short block", v2_header(0x31, &[0; 36])),
        (
            "v2 family 4",
            [v2_header(0x41, &[0; 12]), hello.clone()].concat(),
        ),
        (
            "v2 transport 3",
            [v2_header(0x13, &[0; 12]), hello.clone()].concat(),
        ),
        ("v2 version 3", {
            let mut h = v2_header(0x11, &[0; 12]);
            h[12] = 0x31;
            h
        }),
        ("no header", hello.clone()),
        ("HTTP", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
    ];
    for (what, bytes) in &refused {
        let took = closed_after(gw.listen, bytes).await;
        assert!(took < quick, "{what}: closed after {took:?}");
    }
    assert_eq!(
        rejected(gw.admin, "bad_proxy_header").await,
        refused.len() as f64
    );

    // Truncated: the client's close, or the detect timeout.
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(&v2_header(0x11, &[0; 12])[..10]).await.unwrap();
    drop(s);
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(b"PROXY TCP4 192.0.2.1 192.0.").await.unwrap();
    drop(s);
    let deadline = Instant::now() + TIMEOUT;
    while rejected(gw.admin, "client_closed").await < 2.0 {
        assert!(Instant::now() < deadline, "truncated headers not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b[0].accepted(), 0, "nothing was forwarded");
}

/// A balancer sending PROXY headers to a gateway not started with `--proxy-protocol`: the
/// connections are refused as `bad_proxy_header`, naming the misconfiguration, rather than
/// `not_tls` (as before).
#[tokio::test]
async fn a_proxy_header_without_the_flag_is_named() {
    let (b, gw) = one_catalog(|_| {}).await;
    let hello = catalog_hello();
    let v2 = proxy_protocol::encode("198.51.100.7:40000".parse().unwrap(), gw.listen);
    for header in [
        v2,
        b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 15443\r\n".to_vec(),
    ] {
        closed_after(gw.listen, &[header, hello.clone()].concat()).await;
    }
    assert_eq!(rejected(gw.admin, "bad_proxy_header").await, 2.0);
    assert_eq!(rejected(gw.admin, "not_tls").await, 0.0);
    // Plain garbage is still not TLS.
    closed_after(gw.listen, b"PROXZ").await;
    assert_eq!(rejected(gw.admin, "not_tls").await, 1.0);
    assert_eq!(b[0].accepted(), 0);
}
