//! A certificate-service TEST SERVER standing in for istiod's
//! `istio.v1.auth.IstioCertificateService/CreateCertificate` on :15012: gRPC over TLS
//! (HTTP/2 from the real `h2` crate, protobuf from prost), served with a certificate from a
//! `meshctl certs`-style intermediate, signing with that intermediate as istiod does with
//! plugged-in certificates. Behaviour checked against istio/istio
//! `security/pkg/server/ca/server.go` `CreateCertificate` and
//! `security/pkg/server/ca/authenticate/kubeauth/kube_jwt.go`:
//!
//! - the bearer token is reviewed by the Kubernetes API (TokenReview, audience `istio-ca`);
//!   no token, a refused one, or a `clusterid` of another cluster is `UNAUTHENTICATED`;
//! - the leaf's SPIFFE id comes from the token's namespace and service account, never from
//!   the CSR's SAN;
//! - the leaf: empty subject, digitalSignature + keyEncipherment, EKU server + client, not a
//!   CA, valid for the requested lifetime (one over the maximum is refused, InvalidArgument, as
//!   istiod refuses it)
//!   (`security/pkg/pki/util/generate_cert.go` `genCertTemplateFromCSR`);
//! - the answer: leaf, intermediate(s), root.
//!
//! Controls for tests: fail (`UNAVAILABLE`) the next N calls or until told, delay answers,
//! force a short lifetime, count calls and certificates issued.

mod grpc;
#[cfg(feature = "kube")]
mod review;
mod sign;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

#[cfg(feature = "kube")]
pub use review::KubeTokenReview;
pub use sign::{IstioCertificateRequest, IstioCertificateResponse};

/// The gRPC method path.
pub const CREATE_CERTIFICATE: &str = "/istio.v1.auth.IstioCertificateService/CreateCertificate";
/// The audience istiod reviews tokens for (`TOKEN_AUDIENCES`).
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";
/// The DNS name in the server's certificate, as istiod's.
pub const ISTIOD_HOST: &str = "istiod.istio-system.svc";

/// The result of a token review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reviewed {
    pub namespace: String,
    pub service_account: String,
}

pub type ReviewFuture = Pin<Box<dyn std::future::Future<Output = Result<Reviewed, String>> + Send>>;

/// Checks a bearer token for audience `istio-ca`, as istiod asks the API server.
pub trait TokenReviewer: Send + Sync + 'static {
    fn review(&self, token: String) -> ReviewFuture;
}

/// What the server is started with.
pub struct CaServerOptions {
    /// Signs the leaves and the server's own certificate.
    pub issuer: pki::IntermediateCa,
    pub reviewer: Arc<dyn TokenReviewer>,
    pub trust_domain: String,
    /// The cluster whose API server reviews tokens (`clusterid` must be it when sent).
    pub cluster_id: String,
    /// Longest lifetime issued (istiod's `MAX_WORKLOAD_CERT_TTL`, 90 days).
    pub max_lifetime: Duration,
}

impl CaServerOptions {
    pub fn new(issuer: pki::IntermediateCa, reviewer: Arc<dyn TokenReviewer>) -> Self {
        CaServerOptions {
            issuer,
            reviewer,
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            max_lifetime: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// Test controls and records, shared with the serving task.
#[derive(Default)]
struct State {
    calls: AtomicU64,
    issued: AtomicU64,
    fail_next: AtomicU64,
    fail_always: AtomicBool,
    delay: Mutex<Duration>,
    forced_lifetime: Mutex<Option<Duration>>,
    /// What each call asked and who it was, for checks.
    seen: Mutex<Vec<SeenCall>>,
}

/// One call as the server saw it.
#[derive(Debug, Clone)]
pub struct SeenCall {
    pub cluster_id: Option<String>,
    pub requested_seconds: i64,
    /// The SPIFFE id issued, if any.
    pub issued: Option<String>,
    /// The gRPC status code answered (0 = OK).
    pub status: u32,
}

pub struct CaTestServer {
    addr: SocketAddr,
    root_pem: String,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl CaTestServer {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(opts: CaServerOptions) -> Result<CaTestServer, String> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let signer = Arc::new(sign::Signer::new(&opts.issuer, opts.trust_domain.clone())?);
        let tls = signer.server_tls()?;
        let root_pem = opts.issuer.root_pem().to_string();
        let state = Arc::new(State::default());
        let ctx = Arc::new(grpc::Ctx {
            signer,
            reviewer: opts.reviewer,
            cluster_id: opts.cluster_id,
            max_lifetime: opts.max_lifetime,
            state: state.clone(),
        });
        let acceptor = TlsAcceptor::from(tls);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, ctx) = (acceptor.clone(), ctx.clone());
                tokio::spawn(async move {
                    let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    grpc::serve_connection(tls, ctx).await;
                });
            }
        });
        Ok(CaTestServer {
            addr,
            root_pem,
            state,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, for `--ca-address` (the server's certificate has that IP SAN).
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The mesh root: what `--ca-root` should trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// Calls received (every method, every outcome).
    pub fn calls(&self) -> u64 {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Certificates issued.
    pub fn issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    pub fn seen(&self) -> Vec<SeenCall> {
        self.state.seen.lock().expect("lock").clone()
    }

    /// Answers the next `n` calls `UNAVAILABLE`.
    pub fn fail_next(&self, n: u64) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answers every call `UNAVAILABLE` until called with `false`.
    pub fn fail_always(&self, on: bool) {
        self.state.fail_always.store(on, Ordering::SeqCst);
    }

    /// Waits this long before answering each call.
    pub fn set_delay(&self, d: Duration) {
        *self.state.delay.lock().expect("lock") = d;
    }

    /// Issues this lifetime whatever is asked (`None`: the request's; over the maximum refused).
    pub fn force_lifetime(&self, d: Option<Duration>) {
        *self.state.forced_lifetime.lock().expect("lock") = d;
    }
}

impl Drop for CaTestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
