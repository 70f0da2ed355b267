//! Wiring: `build(config)` binds every listener and starts every task, returning the real
//! addresses, so tests run the whole gateway in process on `127.0.0.1:0`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use prometheus_client::registry::Registry;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::admin::{Admin, Scope};
use crate::config::{Config, Discovery};
use crate::discovery::Publisher;
use crate::discovery::file::{FileError, FileSource};
use crate::discovery::k8s::{KubeError, KubeSource};
use crate::drain::{self, Drain};
use crate::hbone::Hbone;
use crate::hbone::ca::{CaClient, CaError, Renewer};
use crate::hbone::identity::{Identity, IdentityError};
use crate::hbone::metrics::HboneMetrics;
use crate::metrics::{ProxyMetrics, RouteMetrics};
use crate::proxy::Proxy;
use crate::routes::Routes;
use crate::sockets::{self, ListenAddr};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("binding {0}: {1}")]
    Bind(ListenAddr, std::io::Error),
    #[error(transparent)]
    File(#[from] FileError),
    /// KubeError's messages name Kubernetes discovery and carry their causes themselves.
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("HBONE certificates: {0}")]
    HboneIdentity(#[from] IdentityError),
    #[error("HBONE TLS configuration: {0}")]
    HboneTls(#[from] rustls::Error),
    #[error("HBONE certificate from istiod: {0}")]
    Ca(#[from] CaError),
    #[error("--ca-root: {0}")]
    CaRoot(IdentityError),
    #[error("both --hbone-certs and --ca-root are set: give one source of the HBONE certificate")]
    TwoCertSources,
}

/// A running gateway.
pub struct Bound {
    pub listen_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The status listener's address, when it runs.
    pub status_addr: Option<SocketAddr>,
    /// The HBONE listener's address, when it runs.
    pub hbone_addr: Option<SocketAddr>,
    pub routes: Arc<Routes>,
    pub publisher: Publisher,
    pub drain: Arc<Drain>,
    /// The data path's counters (shared with the proxy), readable after a drain.
    pub metrics: ProxyMetrics,
    /// HBONE's, when it runs, likewise.
    pub hbone_metrics: Option<HboneMetrics>,
    cfg: Arc<Config>,
    stop_background: CancellationToken,
}

/// How often at most a SIGHUP ignored in Kubernetes mode is logged.
pub const HANGUP_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes over SIGHUP, whose default action ends the process (exit 129, nothing logged), as a
/// config-reloader sidecar or logrotate sends it. `main` calls this before anything slow (the
/// first read of a large endpoints file, the first Kubernetes sync), so a SIGHUP during
/// start-up is a reload (file) or a logged no-op (Kubernetes), never the end. tokio leaves its
/// handler installed for the life of the process, even once the returned stream is dropped.
/// `None` (logged) when it cannot be installed.
pub fn hangup() -> Option<Signal> {
    signal(SignalKind::hangup())
        .inspect_err(|e| tracing::warn!(error = %e, "cannot handle SIGHUP: it ends the process"))
        .ok()
}

/// [`build_with`], taking over SIGHUP itself.
pub async fn build(cfg: Config) -> Result<Bound, BuildError> {
    build_with(cfg, hangup()).await
}

/// Binds every listener and starts every task. `hangup` (from [`hangup`]) reloads the
/// endpoints file, and is logged and ignored with Kubernetes discovery.
pub async fn build_with(cfg: Config, hangup: Option<Signal>) -> Result<Bound, BuildError> {
    let cfg = Arc::new(cfg);
    let bind = |addr| sockets::bind_listen(addr).map_err(|e| BuildError::Bind(addr, e));
    let listener = bind(cfg.listen)?;
    let admin_listener = bind(cfg.admin)?;
    let listen_addr = listener
        .local_addr()
        .map_err(|e| BuildError::Bind(cfg.listen, e))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| BuildError::Bind(cfg.admin, e))?;
    let status_listener = match cfg.status_listen {
        Some(addr) => {
            let l = bind(addr)?;
            let bound = l.local_addr().map_err(|e| BuildError::Bind(addr, e))?;
            Some((l, bound))
        }
        None => None,
    };
    let status_addr = status_listener.as_ref().map(|(_, a)| *a);

    // Loaded before anything starts, so bad certificate files fail the start with their cause.
    // The identity's source: files with --hbone-certs, istiod with --ca-root. With istiod the
    // port is bound now but refuses handshakes until the first certificate arrives.
    let hbone_setup = match (cfg.hbone_listen, &cfg.hbone_certs, &cfg.hbone_ca) {
        (Some(_), Some(_), Some(_)) => return Err(BuildError::TwoCertSources),
        (Some(addr), Some(dir), None) => {
            let identity = Identity::load(dir, cfg.trust_domains.clone())?;
            let listener = bind(addr)?;
            Some((identity, listener, None))
        }
        (Some(addr), None, Some(ca)) => {
            let (client, roots_pem) = CaClient::new(ca)?;
            let identity = Identity::from_istiod(&ca.root, &roots_pem, cfg.trust_domains.clone())
                .map_err(BuildError::CaRoot)?;
            let listener = bind(addr)?;
            Some((identity, listener, Some(((client, roots_pem), ca))))
        }
        (Some(_), None, None) => {
            tracing::info!(
                "HBONE listener off: neither --hbone-certs nor --ca-root given (classic 15443 only)"
            );
            None
        }
        (None, _, _) => None,
    };

    let mut registry = Registry::with_prefix("gateway");
    let proxy_metrics = ProxyMetrics::new(&mut registry);
    let hbone_metrics = hbone_setup
        .as_ref()
        .map(|_| HboneMetrics::new(registry.sub_registry_with_prefix("hbone")));
    let route_metrics = RouteMetrics::new(registry.sub_registry_with_prefix("discovery"));
    let routes = Arc::new(Routes::new());
    let publisher = Publisher::new(routes.clone(), route_metrics);
    let drain = Arc::new(Drain::new());
    let stop_background = CancellationToken::new();

    let synced: Arc<dyn Fn() -> bool + Send + Sync> = match &cfg.discovery {
        Discovery::File(path) => {
            let source = FileSource::start(path, publisher.clone(), cfg.zone.clone(), hangup)?;
            tokio::spawn(source.run(stop_background.clone()));
            Arc::new(|| true)
        }
        Discovery::Kubernetes(opts) => {
            if let Some(hangup) = hangup {
                tokio::spawn(ignore_hangups(hangup, stop_background.clone()));
            }
            let source = KubeSource::start(
                opts,
                cfg.zone.clone(),
                publisher.clone(),
                stop_background.clone(),
            )
            .await
            .inspect_err(|_| stop_background.cancel())?;
            let synced = source.synced();
            Arc::new(move || synced.load(Ordering::SeqCst))
        }
    };

    let proxy = Arc::new(Proxy::new(
        cfg.clone(),
        routes.clone(),
        proxy_metrics.clone(),
        drain.clone(),
    ));
    let mut hbone_addr = None;
    let mut hbone_identity = None;
    if let (Some((identity, hbone_listener, ca)), Some(metrics)) =
        (hbone_setup, hbone_metrics.clone())
    {
        let addr = hbone_listener
            .local_addr()
            .map_err(|e| BuildError::Bind(cfg.hbone_listen.unwrap_or(cfg.listen), e))?;
        // Plain values (a field left out when unknown), not Rust's `Some("…")`.
        tracing::info!(
            hbone_addr = %addr,
            spiffe_id = identity.spiffe_id().as_deref(),
            trust_domains = %cfg.trust_domains.join(","),
            "HBONE listener on"
        );
        if let Some((client, ca)) = ca {
            let td = cfg
                .trust_domains
                .first()
                .cloned()
                .unwrap_or_else(|| "cluster.local".into());
            let renewer = Renewer::new(client, identity.clone(), td, ca, metrics.clone());
            tokio::spawn(renewer.run(stop_background.clone()));
        }
        // Files: the three certificate files; istiod: the `--ca-root` roots.
        tokio::spawn(identity.clone().watch(
            cfg.hbone_cert_poll,
            stop_background.clone(),
            metrics.cert_reload_failures.clone(),
            metrics.cert_expiry_seconds.clone(),
        ));
        hbone_identity = Some(identity.clone());
        let hbone = Arc::new(Hbone::new(
            cfg.clone(),
            routes.clone(),
            proxy_metrics.clone(),
            metrics,
            drain.clone(),
            identity,
            proxy.undecided(),
        )?);
        drain.listeners.spawn(hbone.serve(hbone_listener));
        hbone_addr = Some(addr);
    }
    tokio::spawn(keep_timers_due(
        cfg.connect_timeout.min(cfg.detect_timeout) / 2,
        stop_background.clone(),
    ));
    // On the listeners' tracker: the drain waits for each to take what is queued in its
    // backlog before it counts and waits for the connections.
    drain.listeners.spawn(proxy.serve(listener));
    let admin = Arc::new(Admin::new(
        registry,
        routes.clone(),
        drain.clone(),
        synced,
        hbone_identity,
    ));
    if let Some((l, _)) = status_listener {
        tokio::spawn(
            admin
                .clone()
                .serve(l, Scope::Status, stop_background.clone()),
        );
    }
    tokio::spawn(admin.serve(admin_listener, Scope::Admin, stop_background.clone()));
    tracing::info!(
        %listen_addr,
        %admin_addr,
        status_addr = status_addr.map(tracing::field::display),
        hbone_addr = hbone_addr.map(tracing::field::display),
        "gateway listening"
    );
    Ok(Bound {
        listen_addr,
        admin_addr,
        status_addr,
        hbone_addr,
        routes,
        publisher,
        drain,
        metrics: proxy_metrics,
        hbone_metrics,
        cfg,
        stop_background,
    })
}

impl Bound {
    /// Drains with the configured grace and deadline, then stops the admin listener and
    /// discovery.
    pub async fn drain(self) -> drain::Outcome {
        let out = self
            .drain
            .run(self.cfg.drain_grace, self.cfg.drain_timeout)
            .await;
        self.stop_background.cancel();
        tracing::info!(
            open_at_stop = out.open_at_stop,
            forced = out.forced,
            "drained"
        );
        out
    }

    /// Waits for SIGTERM or SIGINT, then drains.
    pub async fn wait_termination(self) -> std::io::Result<drain::Outcome> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        Ok(self.drain().await)
    }
}

/// With Kubernetes discovery SIGHUP has nothing to reload: each is logged as ignored (at most
/// one line per [`HANGUP_LOG_EVERY`], with how many went unlogged before it) rather than
/// ending the process, as its default action would.
async fn ignore_hangups(mut hangup: Signal, stop: CancellationToken) {
    let mut last_line: Option<tokio::time::Instant> = None;
    let mut unlogged = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            got = hangup.recv() => if got.is_none() { return },
        }
        if last_line.is_some_and(|t| t.elapsed() < HANGUP_LOG_EVERY) {
            unlogged += 1;
            continue;
        }
        last_line = Some(tokio::time::Instant::now());
        tracing::info!(
            unlogged,
            "SIGHUP ignored: the route table follows the Kubernetes API; nothing to reload"
        );
        unlogged = 0;
    }
}

/// Keeps a timer due within `every`, shorter than any per-connection timeout. Tokio wakes its
/// I/O driver (an `eventfd` write) whenever a new timer is due before the driver's next
/// planned wake; with only the forwarded connections' idle timers (an hour) pending, that was
/// most new connections' detect or connect timer (0.87 writes per connection, strace).
async fn keep_timers_due(every: std::time::Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(std::time::Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
    }
}
