//! TLS for the benchmark: server-auth only. The backend presents an istio-style workload
//! certificate (ECDSA P-256, SPIFFE SAN) and asks for no client certificate; the client
//! verifies the chain to the test root and the SPIFFE form (the SNI is a routing key, not
//! a DNS name). Proxies never see inside TLS, so mutual TLS would only add client-side
//! signing cost that is the same for every target.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls::client::Resumption;
use rustls::{ClientConfig, ServerConfig};
use testkit::mtls::{self, ISTIO_ALPN, Identity};

pub fn write_certs(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let w = pki::RootCa::generate(&pki::RootOptions::default())?
        .issue_intermediate(&pki::IntermediateOptions::new("east"))?
        .issue_workload(&pki::WorkloadOptions::new("default", "bench"))?;
    std::fs::write(dir.join("cert-chain.pem"), &w.chain_pem)?;
    std::fs::write(dir.join("key.pem"), &w.key_pem)?;
    std::fs::write(dir.join("root-cert.pem"), &w.root_pem)?;
    Ok(())
}

fn identity(dir: &Path) -> Result<Identity> {
    Identity::load_dir(dir).with_context(|| format!("loading certificates from {}", dir.display()))
}

pub fn server_config(dir: &Path) -> Result<Arc<ServerConfig>> {
    let id = identity(dir)?;
    let mut cfg = ServerConfig::builder_with_provider(mtls::provider())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = ISTIO_ALPN.iter().map(|a| a.to_vec()).collect();
    // Every connection is a full handshake: no tickets to write after it.
    cfg.send_tls13_tickets = 0;
    Ok(Arc::new(cfg))
}

/// Offers the Istio ALPN like a sidecar; resumption off, so each connection is a full
/// handshake (X25519 + ECDSA P-256, TLS 1.3).
pub fn client_config(dir: &Path) -> Result<Arc<ClientConfig>> {
    let id = identity(dir)?;
    let base = mtls::client_config(&id, None, rustls::DEFAULT_VERSIONS)?;
    let mut cfg = (*base).clone();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}
