//! Mutual TLS the way Istio sidecars do it: both sides present workload certificates that
//! chain to the mesh root, and each checks the other's SPIFFE identity rather than a DNS
//! name (the SNI carries a routing key, `outbound_.80_._.host`, not a server name).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN a sidecar offers on a TCP cluster with metadata exchange (Istio's default).
pub const ISTIO_ALPN: &[&[u8]] = &[b"istio-peer-exchange", b"istio"];

#[derive(Debug, thiserror::Error)]
pub enum MtlsError {
    #[error("{what}: {msg}")]
    Pem { what: String, msg: String },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// The one crypto provider of this workspace's TLS code.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A workload's certificate chain and key, and the roots it trusts.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Arc<RootCertStore>,
}

impl Identity {
    pub fn from_pems(
        chain_pem: &str,
        key_pem: &str,
        root_pem: &str,
    ) -> Result<Identity, MtlsError> {
        let pem_err = |what: &str, e: &dyn std::fmt::Display| MtlsError::Pem {
            what: what.into(),
            msg: e.to_string(),
        };
        let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("certificate chain", &e))?;
        if chain.is_empty() {
            return Err(pem_err("certificate chain", &"no certificate found"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| pem_err("private key", &e))?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
            let c = c.map_err(|e| pem_err("root certificate", &e))?;
            roots.add(c).map_err(|e| pem_err("root certificate", &e))?;
        }
        if roots.is_empty() {
            return Err(pem_err("root certificate", &"no certificate found"));
        }
        Ok(Identity {
            chain,
            key,
            roots: Arc::new(roots),
        })
    }

    pub fn from_workload(w: &pki::WorkloadCert) -> Result<Identity, MtlsError> {
        Identity::from_pems(&w.chain_pem, &w.key_pem, &w.root_pem)
    }

    /// Reads `cert-chain.pem`, `key.pem` and `root-cert.pem` as `meshctl certs workload` writes them.
    pub fn load_dir(dir: &Path) -> Result<Identity, MtlsError> {
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f)).map_err(|e| MtlsError::Pem {
                what: dir.join(f).display().to_string(),
                msg: e.to_string(),
            })
        };
        Identity::from_pems(
            &read("cert-chain.pem")?,
            &read("key.pem")?,
            &read("root-cert.pem")?,
        )
    }
}

/// Server side: requires a client certificate chained to the mesh root.
pub fn server_config(
    id: &Identity,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ServerConfig>, MtlsError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider()).build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = ISTIO_ALPN.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Client side: presents the workload certificate, verifies the server chain to the mesh
/// root and, when `expect_peer` is set, that the server's SPIFFE id is exactly that.
pub fn client_config(
    id: &Identity,
    expect_peer: Option<&str>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>, MtlsError> {
    let p = provider();
    let allowed = expect_peer.into_iter().map(str::to_owned).collect();
    let verifier = SpiffeServerVerifier::new(id.roots.clone(), &p, allowed);
    let mut cfg = ClientConfig::builder_with_provider(p)
        .with_protocol_versions(versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = ISTIO_ALPN.iter().map(|a| a.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// SPIFFE URIs in a certificate's subjectAltName.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return vec![];
    };
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                Some(u.to_string())
            }
            _ => None,
        })
        .collect()
}

/// The SPIFFE id of the peer's leaf certificate, if it presented one.
pub fn peer_spiffe_id(peer_certs: Option<&[CertificateDer<'_>]>) -> Option<String> {
    peer_certs?
        .first()
        .and_then(|c| spiffe_ids(c).into_iter().next())
}

/// A server name for the client handshake: the Istio SNI routing key.
pub fn sni_server_name(sni: &str) -> Result<ServerName<'static>, MtlsError> {
    ServerName::try_from(sni.to_owned()).map_err(|e| MtlsError::Pem {
        what: format!("SNI {sni:?}"),
        msg: e.to_string(),
    })
}

/// Checks a server's chain to `roots` (and EKU serverAuth, not a DNS name: Istio's peers
/// have none) and that one of its SPIFFE URIs is `allowed` (any, when `allowed` is empty).
#[derive(Debug)]
pub(crate) struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algs: WebPkiSupportedAlgorithms,
    allowed: Vec<String>,
}

impl SpiffeServerVerifier {
    pub(crate) fn new(
        roots: Arc<RootCertStore>,
        provider: &CryptoProvider,
        allowed: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(SpiffeServerVerifier {
            roots,
            algs: provider.signature_verification_algorithms,
            allowed,
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        let got = spiffe_ids(end_entity);
        if !self.allowed.is_empty() && !got.iter().any(|g| self.allowed.contains(g)) {
            return Err(rustls::Error::General(format!(
                "server identity {got:?} is none of {:?}",
                self.allowed
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a handshake between the two configs in memory (real rustls on both sides).
    fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Result<(), String> {
        let name = sni_server_name("outbound_.80_._.catalog.ns.svc.cluster.local").unwrap();
        let mut c = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut s = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets().map_err(|e| e.to_string())?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets().map_err(|e| e.to_string())?;
        }
        Err("handshake did not finish".into())
    }

    /// A sidecar client expecting the catalog's identity completes the handshake with the
    /// catalog and refuses a server with another identity of the same mesh.
    #[test]
    fn client_checks_the_expected_peer_identity() {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let ca = root
            .issue_intermediate(&pki::IntermediateOptions::new("east"))
            .unwrap();
        let id = |sa: &str| {
            let w = ca.issue_workload(&pki::WorkloadOptions::new("ns", sa));
            Identity::from_workload(&w.unwrap()).unwrap()
        };
        let (catalog, webapp) = (id("catalog"), id("webapp"));
        let versions = rustls::DEFAULT_VERSIONS;
        let server = server_config(&catalog, versions).unwrap();
        let want = "spiffe://cluster.local/ns/ns/sa/catalog";
        let client = client_config(&webapp, Some(want), versions).unwrap();
        handshake(client, server.clone()).unwrap();
        let other = "spiffe://cluster.local/ns/ns/sa/other";
        let client = client_config(&webapp, Some(other), versions).unwrap();
        let e = handshake(client, server).unwrap_err();
        assert!(e.contains("is none of") && e.contains(other), "{e}");
    }
}
