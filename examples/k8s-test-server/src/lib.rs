#![forbid(unsafe_code)]
//! TEST SERVER ONLY: a small in-process Kubernetes API server for tests.
//!
//! It speaks the real Kubernetes REST protocol (HTTPS with its own CA, bearer tokens,
//! discovery, list/watch with resourceVersions and 410 Gone, create/replace/patch/apply,
//! RBAC, TokenRequest, the token controller) well enough that kube-rs clients cannot tell it
//! from a real API server for the calls this workspace makes. It keeps everything in memory,
//! listens on loopback only, and is never meant to run anything but tests. See README.md for
//! what it simplifies.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let server = k8s_test_server::TestApiServer::start("west").await?;
//! let kubeconfig_yaml = server.kubeconfig("west");
//! # let _ = kubeconfig_yaml; Ok(()) }
//! ```

mod apply;
mod auth;
mod bootstrap;
mod clock;
mod controllers;
mod crds;
mod defaults;
mod delete;
mod discovery;
mod endpoint_validation;
mod error;
mod escalation;
mod faults;
mod field_errors;
mod field_sets;
mod go_values;
mod handlers;
mod http;
mod ip_families;
mod kubeconfig;
mod list_keys;
mod list_options;
mod meta_validation;
mod name_rules;
mod patch;
mod rbac;
mod rbac_validation;
mod read;
mod resources;
mod respond;
mod review_validation;
mod route;
mod scaling_validation;
mod secret_validation;
mod selectors;
mod service_validation;
mod store;
mod tls;
mod token_cache;
mod util;
mod validation;
mod watch;
mod workload_validation;
mod write;

pub use auth::Identity;
pub use clock::Clock;
pub use error::ApiError;
pub use faults::{Fault, FaultRule, Faults};
pub use resources::ResourceType;
pub use store::{Store, StoreConfig};

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch as tokio_watch;

/// How to start a test API server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Name of the simulated cluster (used in the CA name and logs).
    pub cluster_name: String,
    /// Port on 127.0.0.1; 0 picks a free one.
    pub port: u16,
    /// `gitVersion` reported by `/version`.
    pub git_version: String,
    /// Serve `networking.istio.io` DestinationRules from the start.
    pub destination_rule_crd: bool,
    /// Interval of watch BOOKMARK events (real servers: about a minute).
    pub bookmark_interval: Duration,
    pub store: StoreConfig,
}

impl Options {
    pub fn new(cluster_name: &str) -> Options {
        Options {
            cluster_name: cluster_name.to_string(),
            port: 0,
            git_version: "v1.31.0".into(),
            destination_rule_crd: false,
            bookmark_interval: Duration::from_secs(5),
            store: StoreConfig::default(),
        }
    }
}

/// One simulated cluster's API server (TEST SERVER). Dropping it stops serving.
pub struct TestApiServer {
    addr: SocketAddr,
    opts: Options,
    tls: tls::TlsMaterial,
    store: Store,
    tokens: auth::Tokens,
    faults: Faults,
    shutdown: tokio_watch::Sender<bool>,
    end_watches: tokio_watch::Sender<u64>,
    accept: Option<tokio::task::JoinHandle<()>>,
}

/// A stopped server: its state and address, ready to [`restart`](StoppedServer::restart).
pub struct StoppedServer {
    addr: SocketAddr,
    opts: Options,
    tls: tls::TlsMaterial,
    store: Store,
    tokens: auth::Tokens,
    faults: Faults,
}

impl StoppedServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Serves the same state with the same CA and tokens on the same address again. Like a
    /// restarted real API server, its watch cache starts at the current resourceVersion:
    /// a watch resumed from an older one gets 410 Gone and must re-list.
    pub async fn restart(self) -> anyhow::Result<TestApiServer> {
        self.store.restart_watch_cache();
        self.tokens.forget_authentications();
        let mut opts = self.opts;
        opts.port = self.addr.port();
        serve(opts, self.tls, self.store, self.tokens, self.faults).await
    }
}

impl TestApiServer {
    /// Starts a TEST SERVER for `cluster_name` on 127.0.0.1 with a free port.
    pub async fn start(cluster_name: &str) -> anyhow::Result<TestApiServer> {
        Self::start_with(Options::new(cluster_name)).await
    }

    pub async fn start_with(opts: Options) -> anyhow::Result<TestApiServer> {
        let tls = tls::generate(&opts.cluster_name)?;
        let admin = format!("k8s-test-server-admin.{}", util::random_b64url(32));
        let store = Store::new(tls.ca_pem.clone(), admin, opts.store.clone());
        bootstrap::seed(&store);
        let tokens = auth::Tokens::default();
        controllers::start(&store, tokens.clone());
        let server = serve(opts, tls, store, tokens, Faults::default()).await?;
        if server.opts.destination_rule_crd {
            server.install_destination_rule_crd();
        }
        Ok(server)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn cluster_name(&self) -> &str {
        &self.opts.cluster_name
    }

    /// PEM of the CA that signed the serving certificate.
    pub fn ca_pem(&self) -> &str {
        &self.tls.ca_pem
    }

    /// A cluster-admin bearer token (member of `system:masters`).
    pub fn admin_token(&self) -> &str {
        self.store.admin_token()
    }

    /// An admin kubeconfig (YAML) whose cluster, context and user are all named `context`.
    pub fn kubeconfig(&self, context: &str) -> String {
        self.kubeconfig_with_token(context, self.admin_token())
    }

    /// A kubeconfig for this server with another bearer token (e.g. a service account's).
    pub fn kubeconfig_with_token(&self, context: &str, token: &str) -> String {
        kubeconfig::kubeconfig(context, &self.url(), self.ca_pem(), token)
    }

    /// Direct access to the objects, without HTTP.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The identity of a bearer token (admin, Secret token or TokenRequest token), as
    /// requests are authenticated.
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        auth::authenticate(&self.store, &self.tokens, token)
    }

    /// The server clock; advance it to expire TokenRequest tokens without sleeping.
    pub fn clock(&self) -> &Clock {
        self.store.clock()
    }

    /// Makes `networking.istio.io` DestinationRules (v1, v1beta1, v1alpha3) served, by
    /// creating their CustomResourceDefinition, as installing Istio's CRDs does.
    pub fn install_destination_rule_crd(&self) {
        self.install_crd(crds::destination_rule_crd());
    }

    /// Makes Istio's `security.istio.io` PeerAuthentications (v1, v1beta1) served.
    pub fn install_peer_authentication_crd(&self) {
        self.install_crd(crds::peer_authentication_crd());
    }

    /// Makes Istio's `networking.istio.io` WorkloadEntries (v1, v1alpha3, v1beta1) served.
    pub fn install_workload_entry_crd(&self) {
        self.install_crd(crds::workload_entry_crd());
    }

    /// Makes Istio's `networking.istio.io` ServiceEntries (v1, v1alpha3, v1beta1) served.
    pub fn install_service_entry_crd(&self) {
        self.install_crd(crds::service_entry_crd());
    }

    /// Makes Istio `networking.istio.io` Gateways served (their CRD).
    pub fn install_istio_gateway_crd(&self) {
        self.install_crd(crds::gateway_crd());
    }

    /// Makes Gateway API `gateway.networking.k8s.io` Gateways and GatewayClasses (v1, v1beta1)
    /// served, as the standard channel's install does.
    pub fn install_gateway_api_crds(&self) {
        for text in [crds::GATEWAY_CLASS_CRD, crds::GATEWAY_API_CRD] {
            self.install_crd(serde_json::from_str(text).expect("built-in CRD is valid JSON"));
        }
    }

    fn install_crd(&self, crd: serde_json::Value) {
        match self.store.create(crd) {
            Ok(_) => {}
            Err(e) if e.code == 409 => {}
            Err(e) => panic!("installing a built-in CRD failed: {e}"),
        }
    }

    /// Compacts the watch history: open watches receive a 410 Gone ERROR event and end,
    /// and watches from any older resourceVersion get 410 Gone, forcing clients to re-list.
    pub fn expire_watches(&self) {
        self.store.expire_watches();
    }

    /// TEST CONTROL: failures to inject (429 with `Retry-After`, 503, 500, 504), per verb and
    /// resource; none by default. See [`Fault`].
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// TEST CONTROL: ends every open watch now, cleanly, as the server does when a watch's
    /// timeout (`timeoutSeconds`, else 30 to 60 minutes) elapses: the stream just ends, with
    /// no ERROR event, and the client must watch again from its last resourceVersion.
    pub fn end_watches(&self) {
        self.end_watches.send_modify(|n| *n += 1);
    }

    /// Stops serving (open connections and watches are cut, like a crashed API server) and
    /// returns the state to restart it with.
    pub async fn stop(mut self) -> StoppedServer {
        let _ = self.shutdown.send(true);
        if let Some(h) = self.accept.take() {
            let _ = h.await;
        }
        tracing::info!(cluster = %self.opts.cluster_name, addr = %self.addr, "k8s-test-server stopped");
        StoppedServer {
            addr: self.addr,
            opts: self.opts.clone(),
            tls: self.tls.clone(),
            store: self.store.clone(),
            tokens: self.tokens.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn bind(port: u16) -> anyhow::Result<TcpListener> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Right after a stop the port can take a moment to free up; retry briefly.
    let mut last = None;
    for _ in 0..50 {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) if port != 0 && e.kind() == std::io::ErrorKind::AddrInUse => {
                last = Some(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("k8s-test-server: binding {addr}")),
        }
    }
    Err(last.expect("retried")).with_context(|| format!("k8s-test-server: binding {addr}"))
}

async fn serve(
    opts: Options,
    tls: tls::TlsMaterial,
    store: Store,
    tokens: auth::Tokens,
    faults: Faults,
) -> anyhow::Result<TestApiServer> {
    let listener = bind(opts.port).await?;
    let addr = listener.local_addr()?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls::server_config(&tls)?);
    let (shutdown, shutdown_rx) = tokio_watch::channel(false);
    let (end_watches, end_watches_rx) = tokio_watch::channel(0u64);
    let ctx = Arc::new(respond::Ctx {
        store: store.clone(),
        tokens: tokens.clone(),
        git_version: opts.git_version.clone(),
        server_address: addr.to_string(),
        bookmark_interval: opts.bookmark_interval,
        shutdown: shutdown_rx.clone(),
        faults: faults.clone(),
        end_watches: end_watches_rx,
    });
    let cluster = opts.cluster_name.clone();
    tracing::info!(%cluster, %addr, "k8s-test-server (TEST SERVER) listening");
    let accept = tokio::spawn(accept_loop(listener, acceptor, ctx, shutdown_rx, cluster));
    Ok(TestApiServer {
        addr,
        opts,
        tls,
        store,
        tokens,
        faults,
        shutdown,
        end_watches,
        accept: Some(accept),
    })
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: Arc<respond::Ctx>,
    mut shutdown: tokio_watch::Receiver<bool>,
    cluster: String,
) {
    let mut conn_id: u64 = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::debug!(%cluster, error = %e, "k8s-test-server accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        conn_id += 1;
        let (acceptor, ctx, mut stop) = (acceptor.clone(), ctx.clone(), shutdown.clone());
        let span =
            tracing::debug_span!("k8s-test-server conn", cluster = %cluster, id = conn_id, %peer);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let conn = async {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move { Ok::<_, std::convert::Infallible>(http::handle(&ctx, req).await) }
                    });
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await
                    {
                        tracing::debug!(error = %e, "connection ended with error");
                    }
                };
                tokio::select! {
                    _ = conn => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            },
            span,
        ));
    }
}

/// The JSON of a `Namespace` object, for test setup.
pub fn namespace_json(name: &str) -> serde_json::Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}
