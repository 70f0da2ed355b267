//! The gateway in process, real rustls clients and servers: bytes, half-close, TLS versions,
//! fragmented ClientHellos, subset routing.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

#[tokio::test]
async fn bytes_intact_both_ways_and_half_close() {
    let (_backends, gw) = one_catalog(|_| {}).await;
    // The server's identity was checked by the client verifier; check what the server saw.
    let (r, line) = open(gw.listen, &sni(80, "", CATALOG), default_client())
        .await
        .unwrap();
    assert_eq!(
        line,
        format!(
            "catalog-1 peer={}",
            testkit::mesh::spiffe_id(testkit::mesh::WEBAPP)
        )
    );

    // 1 MiB of patterned bytes, written while reading the echo.
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let (mut rd, mut wr) = tokio::io::split(r);
    let send = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&send).await.unwrap();
        // close_notify + FIN: the gateway must pass the FIN on and keep the reverse way open.
        wr.shutdown().await.unwrap();
    });
    let mut echoed = vec![0u8; data.len()];
    tokio::time::timeout(TIMEOUT, rd.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert!(echoed == data, "echoed bytes differ");
    writer.await.unwrap();
    let mut tail = String::new();
    tokio::time::timeout(TIMEOUT, rd.read_to_string(&mut tail))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tail, format!("eof after {} bytes\n", data.len()));
}

/// Both legs of a forwarded connection run TCP keepalive: the client leg inherits it from
/// the listener, the upstream leg gets it after the connect.
#[tokio::test]
async fn both_legs_keep_alive() {
    let (b, gw) = one_catalog(|_| {}).await;
    let (_open, greeting) = open(gw.listen, &sni(80, "", CATALOG), default_client())
        .await
        .unwrap();
    assert!(greeting.starts_with("catalog-1"), "{greeting}");
    wait_keepalive("client leg", &|local, _| local == gw.listen, 1).await;
    wait_keepalive("upstream leg", &|_, remote| remote == b[0].addr, 1).await;
}

#[tokio::test]
async fn tls12_and_tls13() {
    let (_backends, gw) = one_catalog(|_| {}).await;
    for v in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let tls = connect(gw.listen, &sni(80, "", CATALOG), client_config(&[v]))
            .await
            .unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(v.version));
        let mut r = BufReader::new(tls);
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with("catalog-1 "), "{line}");
    }
}

/// Drives a rustls client by hand so the ClientHello can be cut into arbitrary TCP writes
/// and TLS records.
async fn hello_bytes() -> Vec<u8> {
    let cfg = default_client();
    let name = testkit::mtls::sni_server_name(&sni(80, "", CATALOG)).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[tokio::test]
async fn hello_one_byte_at_a_time_and_split_records() {
    let (b, gw) = one_catalog(|_| {}).await;
    let hello = hello_bytes().await;
    assert_eq!(hello[0], 22);

    // One byte per write with pauses, so every TCP segment carries one byte.
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.set_nodelay(true).unwrap();
    for byte in &hello {
        s.write_all(std::slice::from_ref(byte)).await.unwrap();
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // The backend got the hello and answers with a ServerHello record.
    let mut head = [0u8; 5];
    tokio::time::timeout(TIMEOUT, s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 22, "expected a handshake record from the backend");
    assert_eq!(b[0].accepted(), 1);

    // A second hello (its own client random: a replayed one would be refused as a loop
    // while the first connection is open) re-framed into three records.
    let hello = hello_bytes().await;
    let body = &hello[5..];
    let cuts = [0, 7, body.len() / 2, body.len()];
    let mut framed = Vec::new();
    for w in cuts.windows(2) {
        framed.extend_from_slice(&[22, 3, 1]);
        framed.extend_from_slice(&((w[1] - w[0]) as u16).to_be_bytes());
        framed.extend_from_slice(&body[w[0]..w[1]]);
    }
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(&framed).await.unwrap();
    // The backend's rustls accepts records split this way too; it answers.
    tokio::time::timeout(TIMEOUT, s.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head[0], 22);
    assert_eq!(b[0].accepted(), 2);
}

#[tokio::test]
async fn subset_routing_reaches_only_labelled_endpoints() {
    let (b, port) = backends(&["v1-a", "v2-a", "v1-b"]).await;
    let gw = gateway(&endpoints_yaml(
        CATALOG,
        port,
        &[
            (b[0].addr.ip(), "v1", true),
            (b[1].addr.ip(), "v2", true),
            (b[2].addr.ip(), "v1", true),
        ],
    ))
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let greet = call(gw.listen, &sni(80, "v1", CATALOG)).await.unwrap();
        seen.insert(greet.split(' ').next().unwrap().to_string());
    }
    assert!(seen.iter().all(|n| n.starts_with("v1-")), "{seen:?}");
    assert_eq!(seen.len(), 2, "both v1 endpoints should serve: {seen:?}");
    for _ in 0..5 {
        assert_eq!(served_by(gw.listen, &sni(80, "v2", CATALOG)).await, "v2-a");
    }
    // Without a subset every ready endpoint is eligible.
    let mut all = std::collections::BTreeSet::new();
    for _ in 0..40 {
        all.insert(
            call(gw.listen, &sni(80, "", CATALOG))
                .await
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(all.len(), 3, "{all:?}");
}
