//! `--proxy-protocol`: a PROXY v2 header before the ClientHello is consumed (never forwarded)
//! and its source becomes the client address; without it the connection is refused.

mod common;

use common::*;
use gateway::proxy_protocol;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

#[tokio::test]
async fn header_is_stripped_and_required() {
    let (b, gw) = one_catalog(|c| c.proxy_protocol = true).await;

    // A load balancer's header, then a real mTLS handshake on the same stream: the backend's
    // TLS stack only completes if the header was not forwarded.
    let mut tcp = TcpStream::connect(gw.listen).await.unwrap();
    let header = proxy_protocol::encode("198.51.100.7:40000".parse().unwrap(), gw.listen);
    tcp.write_all(&header).await.unwrap();
    let name = testkit::mtls::sni_server_name(&sni(80, "", CATALOG)).unwrap();
    let tls = TlsConnector::from(default_client())
        .connect(name, tcp)
        .await
        .unwrap();
    let mut r = BufReader::new(tls);
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert!(line.starts_with("catalog-1 "), "{line}");

    // Without a header: refused and counted, nothing forwarded.
    let err = call(gw.listen, &sni(80, "", CATALOG)).await;
    assert!(err.is_err());
    assert_eq!(rejected(gw.admin, "bad_proxy_header").await, 1.0);
    assert_eq!(b[0].accepted(), 1);
}
