//! One gRPC call to istiod's `CreateCertificate` over TLS (tonic, rustls), authenticated as
//! istio-agent and ztunnel do (is:`security/pkg/nodeagent/caclient/providers/citadel/client.go`,
//! zt:`src/identity/auth.rs`): `authorization: Bearer <token>` with the projected token read
//! afresh for every request, and `clusterid: <cluster>`.

use std::path::PathBuf;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::proto::{CREATE_CERTIFICATE, IstioCertificateRequest, IstioCertificateResponse};
use crate::config::CaConfig;

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("reading --ca-root {path}: {source}")]
    ReadRoot {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--ca-address {address:?}: {msg}")]
    Address { address: String, msg: String },
    #[error(
        "reading --ca-token {path}: {source} (the projected service-account token for audience istio-ca)"
    )]
    ReadToken {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--ca-token {path} is not a Kubernetes service-account token (a JWT naming its namespace and service account)"
    )]
    NotAToken { path: PathBuf },
    #[error(
        "istiod at --ca-address {address} presented a TLS certificate that --ca-root {root} does not trust: {detail}"
    )]
    Untrusted {
        address: String,
        root: PathBuf,
        detail: String,
    },
    #[error(
        "istiod's TLS certificate does not name the host of --ca-address {address} ({detail}); give the name it carries, as Istio's proxies do: istiod.<istiod's namespace>.svc:15012"
    )]
    WrongName { address: String, detail: String },
    #[error(
        "istiod at --ca-address {address} refused the token from --ca-token {token} ({message}); it must be a service-account token for audience istio-ca of cluster --cluster-id {cluster_id:?}"
    )]
    Unauthenticated {
        address: String,
        token: PathBuf,
        cluster_id: String,
        message: String,
    },
    #[error(
        "istiod at --ca-address {address} refused the certificate lifetime ({message}): lower --hbone-cert-lifetime to at most istiod's MAX_WORKLOAD_CERT_TTL (90 days unless set)"
    )]
    Lifetime { address: String, message: String },
    #[error("istiod at --ca-address {address}: {code:?}: {message}")]
    Call {
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("istiod's answer is not usable: {0}")]
    Answer(String),
}

/// A lazily connected channel to istiod; reconnects on its own after a failure.
pub struct CaClient {
    cfg: CaConfig,
    channel: Channel,
}

impl std::fmt::Debug for CaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClient")
            .field("address", &self.cfg.address)
            .finish_non_exhaustive()
    }
}

impl CaClient {
    /// Reads the `--ca-root` file (returned too: the same roots check what istiod issues).
    /// Must run inside a Tokio runtime.
    pub fn new(cfg: &CaConfig) -> Result<(CaClient, Vec<u8>), CaError> {
        let roots_pem = std::fs::read(&cfg.root).map_err(|source| CaError::ReadRoot {
            path: cfg.root.clone(),
            source,
        })?;
        let address = |msg: String| CaError::Address {
            address: cfg.address.clone(),
            msg,
        };
        let host = cfg
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| address("not host:port".into()))?;
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&roots_pem))
            .domain_name(host);
        let endpoint = Endpoint::from_shared(format!("https://{}", cfg.address))
            .map_err(|e| address(e.to_string()))?
            .tls_config(tls)
            .map_err(|e| address(e.to_string()))?
            .connect_timeout(cfg.request_timeout)
            .timeout(cfg.request_timeout)
            // ztunnel's (`src/tls/control.rs` `grpc_connector`): the channel idles for hours
            // between renewals, and an istiod that vanished without a close is noticed.
            .tcp_keepalive(Some(std::time::Duration::from_secs(300)))
            .http2_keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .keep_alive_while_idle(true);
        let client = CaClient {
            cfg: cfg.clone(),
            channel: endpoint.connect_lazy(),
        };
        Ok((client, roots_pem))
    }

    /// The token, read now: the kubelet rotates the file.
    pub fn token(&self) -> Result<String, CaError> {
        let t = std::fs::read_to_string(&self.cfg.token).map_err(|source| CaError::ReadToken {
            path: self.cfg.token.clone(),
            source,
        })?;
        Ok(t.trim().to_string())
    }

    pub fn token_path(&self) -> &std::path::Path {
        &self.cfg.token
    }

    /// Sends `csr_pem` with `token`; returns the chain (leaf first).
    pub async fn create_certificate(
        &self,
        csr_pem: String,
        token: &str,
    ) -> Result<Vec<CertificateDer<'static>>, CaError> {
        let msg = IstioCertificateRequest {
            csr: csr_pem,
            validity_duration: self.cfg.cert_lifetime.as_secs().min(i64::MAX as u64) as i64,
            metadata: None,
        };
        let mut req = tonic::Request::new(msg);
        // A token with bytes a header cannot carry is refused like a bad one, without echoing it.
        let bearer =
            MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| CaError::NotAToken {
                path: self.cfg.token.clone(),
            })?;
        let cluster =
            MetadataValue::try_from(self.cfg.cluster_id.as_str()).map_err(|_| CaError::Call {
                address: self.cfg.address.clone(),
                code: tonic::Code::InvalidArgument,
                message: "--cluster-id is not a valid header value".into(),
            })?;
        req.metadata_mut().insert("authorization", bearer);
        req.metadata_mut().insert("clusterid", cluster);
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let codec =
            tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
        let path = http::uri::PathAndQuery::from_static(CREATE_CERTIFICATE);
        let call = async {
            grpc.ready().await.map_err(|e| {
                tonic::Status::unavailable(format!("connecting: {}", chain_text(&e)))
            })?;
            grpc.unary(req, path, codec).await
        };
        let resp = call.await.map_err(|s| self.classify(s))?;
        parse_chain(&resp.into_inner().cert_chain)
    }

    fn classify(&self, status: tonic::Status) -> CaError {
        let detail = chain_text(&status);
        // rustls: CertificateError::NotValidForName(Context) says "not valid for name".
        if detail.contains("not valid for name") || detail.contains("NotValidForName") {
            return CaError::WrongName {
                address: self.cfg.address.clone(),
                detail,
            };
        }
        if detail.contains("invalid peer certificate") || detail.contains("UnknownIssuer") {
            return CaError::Untrusted {
                address: self.cfg.address.clone(),
                root: self.cfg.root.clone(),
                detail,
            };
        }
        if status.code() == tonic::Code::Unauthenticated {
            return CaError::Unauthenticated {
                address: self.cfg.address.clone(),
                token: self.cfg.token.clone(),
                cluster_id: self.cfg.cluster_id.clone(),
                message: status.message().to_string(),
            };
        }
        if status.code() == tonic::Code::InvalidArgument && detail.contains("TTL") {
            return CaError::Lifetime {
                address: self.cfg.address.clone(),
                message: status.message().to_string(),
            };
        }
        CaError::Call {
            address: self.cfg.address.clone(),
            code: status.code(),
            message: detail,
        }
    }
}

/// An error and its causes on one line (tonic's transport errors hide the cause in `source`).
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = c.source();
    }
    out
}

/// One PEM certificate per element, leaf first (a PEM element holding more is split too).
pub fn parse_chain(pems: &[String]) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut chain = Vec::new();
    for (i, pem) in pems.iter().enumerate() {
        for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            chain.push(c.map_err(|e| CaError::Answer(format!("cert_chain[{i}]: {e}")))?);
        }
    }
    // istio-agent refuses an answer without a root after the leaf (citadel `CSRSign`:
    // `len(resp.CertChain) <= 1`), and ztunnel too ("no root certificate present").
    if chain.len() < 2 {
        return Err(CaError::Answer(format!(
            "cert_chain holds {} certificate(s): istiod answers the leaf, then its CA chain \
             up to the root",
            chain.len()
        )));
    }
    Ok(chain)
}
