//! ztunnel's TLS for HBONE, both ends (zt:`src/tls/lib.rs` `tls_versions`, `provider`;
//! zt:`src/tls/certificate.rs` `client_config`; zt:`src/tls/workload.rs`):
//! TLS 1.3 only, AES-256-GCM and AES-128-GCM, groups X25519/P-256/P-384 (ztunnel's ring
//! build), ALPN `h2`, no SNI and no resumption on the client. The client checks the server's
//! chain and that one of its SPIFFE URIs is in an allowed set (DNS names are ignored); the
//! server requires a client certificate from its roots in its own trust domain.

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};

use super::ALPN_H2;
use crate::mtls::{Identity, MtlsError, SpiffeServerVerifier, spiffe_ids};

/// The crypto provider cut down to what ztunnel offers.
pub fn ztunnel_provider() -> Arc<CryptoProvider> {
    let mut p = aws_lc_rs::default_provider();
    p.cipher_suites = vec![
        aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
        aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
    ];
    p.kx_groups = vec![
        aws_lc_rs::kx_group::X25519,
        aws_lc_rs::kx_group::SECP256R1,
        aws_lc_rs::kx_group::SECP384R1,
    ];
    Arc::new(p)
}

/// The trust domain of a SPIFFE id: `spiffe://cluster.local/ns/a/sa/b` → `cluster.local`.
pub fn trust_domain(spiffe_id: &str) -> Option<&str> {
    let rest = spiffe_id.strip_prefix("spiffe://")?;
    let td = rest.split('/').next()?;
    (!td.is_empty()).then_some(td)
}

/// The server name ztunnel hands rustls: a dummy IP, never sent because SNI is off.
pub fn dummy_server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// A client ztunnel's config: presents `id`'s workload certificate and accepts a server whose
/// chain ends at `id`'s roots and whose SPIFFE URIs include one of `server_ids` (any SPIFFE
/// id when `server_ids` is empty; ztunnel itself fails on an empty list, a test may not care).
pub fn client_config(id: &Identity, server_ids: &[String]) -> Result<Arc<ClientConfig>, MtlsError> {
    let builder = client_builder(id.roots.clone(), server_ids)?;
    finish_client(builder.with_client_auth_cert(id.chain.clone(), id.key.clone_key())?)
}

/// The same without a client certificate: what a server must refuse.
pub fn anonymous_client_config(
    roots: Arc<RootCertStore>,
    server_ids: &[String],
) -> Result<Arc<ClientConfig>, MtlsError> {
    finish_client(client_builder(roots, server_ids)?.with_no_client_auth())
}

fn client_builder(
    roots: Arc<RootCertStore>,
    server_ids: &[String],
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, MtlsError> {
    let p = ztunnel_provider();
    let verifier = SpiffeServerVerifier::new(roots, &p, server_ids.to_vec());
    Ok(ClientConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier))
}

fn finish_client(mut cfg: ClientConfig) -> Result<Arc<ClientConfig>, MtlsError> {
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.enable_sni = false;
    cfg.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// A destination ztunnel's config: presents `id`, requires a client certificate chained to
/// `id`'s roots whose SPIFFE trust domain is `id`'s own (ztunnel's `TrustDomainVerifier`).
pub fn server_config(id: &Identity) -> Result<Arc<ServerConfig>, MtlsError> {
    let own = id
        .chain
        .first()
        .and_then(|c| spiffe_ids(c).into_iter().next())
        .ok_or_else(|| MtlsError::Pem {
            what: "server certificate".into(),
            msg: "has no SPIFFE URI SAN; issue it with `meshctl certs workload`".into(),
        })?;
    let td = trust_domain(&own).unwrap_or_default().to_owned();
    server_config_for_trust_domain(id, &td)
}

/// As [`server_config`], with the accepted client trust domain given explicitly.
pub fn server_config_for_trust_domain(
    id: &Identity,
    trust_domain: &str,
) -> Result<Arc<ServerConfig>, MtlsError> {
    let p = ztunnel_provider();
    let inner = WebPkiClientVerifier::builder_with_provider(id.roots.clone(), p.clone()).build()?;
    let verifier = Arc::new(TrustDomainVerifier {
        inner,
        trust_domain: trust_domain.to_owned(),
    });
    let mut cfg = ServerConfig::builder_with_provider(p)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let ids = spiffe_ids(end_entity);
        if !ids
            .iter()
            .any(|id| trust_domain(id) == Some(self.trust_domain.as_str()))
        {
            return Err(rustls::Error::General(format!(
                "client identity {ids:?} is not in trust domain {}",
                self.trust_domain
            )));
        }
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_domain_is_the_spiffe_authority() {
        assert_eq!(
            trust_domain("spiffe://cluster.local/ns/a/sa/b"),
            Some("cluster.local")
        );
        assert_eq!(trust_domain("spiffe:///ns/a"), None);
        assert_eq!(trust_domain("https://x/y"), None);
    }
}
