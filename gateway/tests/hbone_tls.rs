//! Who may connect to 15008, and the gateway's identity: real rustls on both sides.

mod common;
mod hbone_support;

use std::time::Duration;

use http::StatusCode;

use hbone_support::{connect, hbone_yaml, outer, outer_expecting, pki, read_n};

const SVC: &str = "catalog.istioinaction.svc.cluster.local";

/// A refused client gets no HTTP/2 connection, so no CONNECT and no dial.
async fn refused(gw: &hbone_support::HboneGw, cert: Option<&pki::WorkloadCert>, reason: &str) {
    let before = gw.refused(reason).await;
    let r = async {
        let mut o = outer(gw.hbone, cert).await?;
        connect(&mut o, &format!("{SVC}:80"))
            .await
            .map(|(s, _)| s)
            .map_err(|e| e.to_string())
    }
    .await;
    assert!(r.is_err(), "{reason}: connection was not refused: {r:?}");
    gw.wait_metric(
        &format!("gateway_hbone_refused_total{{reason=\"{reason}\"}}"),
        before + 1.0,
    )
    .await;
}

#[tokio::test]
async fn clients_outside_the_mesh_are_refused() {
    let (a, gw) = hbone_support::catalog_behind_gateway([127, 0, 0, 40], |_| {}).await;
    refused(&gw, Some(&pki().other_root), "bad_client_cert").await;
    refused(&gw, None, "bad_client_cert").await;
    refused(&gw, Some(&pki().other_td), "trust_domain_not_allowed").await;
    assert_eq!(
        a.accepted(),
        0,
        "a refused handshake never reaches an endpoint"
    );
    // The mesh's own client still gets through.
    let mut o = outer(gw.hbone, Some(&pki().client)).await.unwrap();
    assert_eq!(
        connect(&mut o, &format!("{SVC}:80")).await.unwrap().0,
        StatusCode::OK
    );
}

/// `--trust-domain` is repeatable: a second domain lets its clients in.
#[tokio::test]
async fn another_trust_domain_can_be_allowed() {
    let gw = hbone_support::gateway(&hbone_yaml(&[]), |c| {
        c.trust_domains = vec!["cluster.local".into(), "other.td".into()];
    })
    .await;
    outer(gw.hbone, Some(&pki().other_td)).await.unwrap();
}

/// TLS 1.2 and a client without ALPN h2 are refused (ztunnel speaks TLS 1.3 + h2 only).
#[tokio::test]
async fn tls12_is_refused() {
    let gw = hbone_support::gateway(&hbone_yaml(&[]), |_| {}).await;
    let id = testkit::mtls::Identity::from_workload(&pki().client).unwrap();
    let mut cfg = (*testkit::mtls::client_config(
        &id,
        Some(&pki().gateway.spiffe_id),
        &[&rustls::version::TLS12],
    )
    .unwrap())
    .clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(gw.hbone).await.unwrap();
    let name =
        rustls::pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let r = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await;
    assert!(r.is_err());
    gw.wait_metric(
        "gateway_hbone_refused_total{reason=\"handshake_failed\"}",
        1.0,
    )
    .await;
}

/// New certificate files are served to new connections without dropping open ones; a root
/// bundle with two roots accepts clients of both (rotation).
#[tokio::test]
async fn certificates_reload_without_dropping_connections() {
    let (_a, gw) = hbone_support::catalog_behind_gateway([127, 0, 0, 41], |c| {
        c.hbone_cert_poll = Duration::from_millis(50)
    })
    .await;
    let (_o, mut tx, mut rx) = hbone_support::greeted_tunnel(gw.hbone).await;

    let b = &pki().gateway_b;
    let dir = gw.certs.path();
    let both_roots = format!("{}{}", b.root_pem, pki().other_root_ca);
    // Written beside, then renamed: what a secret update looks like to a reader.
    for (name, text) in [
        ("cert-chain.pem", b.chain_pem.as_str()),
        ("key.pem", b.key_pem.as_str()),
        ("root-cert.pem", both_roots.as_str()),
    ] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
    let mut reloaded = false;
    for _ in 0..200 {
        if outer_expecting(gw.hbone, Some(&pki().client), &b.spiffe_id)
            .await
            .is_ok()
        {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(reloaded, "new connections never saw the new certificate");
    // The second root now admits its clients.
    let mut o2 = outer_expecting(gw.hbone, Some(&pki().other_root), &b.spiffe_id)
        .await
        .unwrap();
    assert_eq!(
        connect(&mut o2, &format!("{SVC}:80")).await.unwrap().0,
        StatusCode::OK
    );
    // The tunnel opened before the reload still carries bytes.
    hbone_support::send_all(&mut tx, bytes::Bytes::from_static(b"still here"), false).await;
    assert_eq!(read_n(&mut rx, 10).await, b"still here");
}
