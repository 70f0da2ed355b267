//! Mutual TLS with rustls (aws-lc-rs provider), in memory: an east-cluster server and a
//! west-cluster client trusting only the shared root.

use std::sync::Arc;

use pki::{IntermediateOptions, RootCa, RootOptions, WorkloadCert, WorkloadOptions};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use x509_parser::prelude::*;

/// Istio clients check the server's SPIFFE id, not a DNS name. rustls' default verifier
/// checks a DNS name, so the server's workload certificate also carries this DNS SAN; the
/// test then checks the SPIFFE URI of each peer itself, as Istio would.
const SERVER_DNS: &str = "catalog.istioinaction.svc.cluster.local";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn certs(pem_text: &str) -> Vec<CertificateDer<'static>> {
    ::pem::parse_many(pem_text)
        .unwrap()
        .into_iter()
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

fn key(pem_text: &str) -> PrivateKeyDer<'static> {
    PrivateKeyDer::try_from(::pem::parse(pem_text).unwrap().into_contents()).unwrap()
}

fn roots(root_pem: &str) -> Arc<RootCertStore> {
    let mut store = RootCertStore::empty();
    for c in certs(root_pem) {
        store.add(c).unwrap();
    }
    Arc::new(store)
}

fn spiffe_of(cert: &CertificateDer<'_>) -> String {
    let (_, x) = parse_x509_certificate(cert).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .find_map(|n| match n {
            GeneralName::URI(u) if u.starts_with("spiffe://") => Some(u.to_string()),
            _ => None,
        })
        .unwrap()
}

fn workload(root: &RootCa, cluster: &str, ns: &str, sa: &str, dns: &[&str]) -> WorkloadCert {
    let ca = root
        .issue_intermediate(&IntermediateOptions::new(cluster))
        .unwrap();
    let mut opts = WorkloadOptions::new(ns, sa);
    opts.dns_names = dns.iter().map(|s| s.to_string()).collect();
    ca.issue_workload(&opts).unwrap()
}

fn connect(
    server_cert: &WorkloadCert,
    server_trust: &str,
    client_cert: &WorkloadCert,
    client_trust: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(server_trust), provider())
        .build()
        .unwrap();
    let server_cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&server_cert.chain_pem), key(&server_cert.key_pem))
        .unwrap();
    let client_cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(client_trust))
        .with_client_auth_cert(certs(&client_cert.chain_pem), key(&client_cert.key_pem))
        .unwrap();
    let mut client = ClientConnection::new(
        Arc::new(client_cfg),
        ServerName::try_from(SERVER_DNS).unwrap(),
    )
    .unwrap();
    let mut server = ServerConnection::new(Arc::new(server_cfg)).unwrap();

    // Shuttle bytes until both sides are done; a bounded number of rounds, no I/O.
    for _ in 0..20 {
        let mut buf = Vec::new();
        while client.wants_write() {
            client.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            server.read_tls(&mut rd).unwrap();
        }
        server.process_new_packets()?;
        let mut buf = Vec::new();
        while server.wants_write() {
            server.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            client.read_tls(&mut rd).unwrap();
        }
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok((client, server));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn mutual_tls_across_clusters_with_a_shared_root() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let server = workload(
        &root,
        "east-cluster",
        "istioinaction",
        "catalog",
        &[SERVER_DNS],
    );
    let client = workload(&root, "west-cluster", "istioinaction", "webapp", &[]);

    let (c, s) = connect(&server, root.cert_pem(), &client, root.cert_pem()).expect("handshake");
    let seen_by_client = c.peer_certificates().unwrap();
    let seen_by_server = s.peer_certificates().unwrap();
    assert_eq!(seen_by_client.len(), 2, "leaf + intermediate");
    assert_eq!(
        spiffe_of(&seen_by_client[0]),
        "spiffe://cluster.local/ns/istioinaction/sa/catalog"
    );
    assert_eq!(
        spiffe_of(&seen_by_server[0]),
        "spiffe://cluster.local/ns/istioinaction/sa/webapp"
    );
}

#[test]
fn mutual_tls_fails_with_different_roots() {
    let east_root = RootCa::generate(&RootOptions::default()).unwrap();
    let west_root = RootCa::generate(&RootOptions::default()).unwrap();
    let server = workload(
        &east_root,
        "east-cluster",
        "istioinaction",
        "catalog",
        &[SERVER_DNS],
    );
    let client = workload(&west_root, "west-cluster", "istioinaction", "webapp", &[]);

    // Each side trusts only its own root: the client rejects the server's chain.
    let err = connect(&server, east_root.cert_pem(), &client, west_root.cert_pem()).unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "unexpected error: {err:?}"
    );

    // Even if the client trusted the east root, the server rejects the west client.
    let err = connect(&server, east_root.cert_pem(), &client, east_root.cert_pem()).unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(_) | rustls::Error::AlertReceived(_)
        ),
        "unexpected error: {err:?}"
    );
}
