//! The HBONE listener on 15008: ambient east-west traffic, beside SNI passthrough on 15443.
//!
//! A remote ztunnel opens mutual TLS with its workload identity, then sends one HTTP/2
//! CONNECT per tunnel with `:authority` `<service FQDN>:<service port>`. The gateway
//! terminates that outer tunnel only, picks an endpoint of the service from the same route
//! table as 15443, dials the endpoint's HBONE port and passes the inner bytes (a second,
//! end-to-end TLS + CONNECT) through untouched.
//!
//! - [`identity`] holds the gateway's certificate and who may connect (reloadable);
//! - [`ca`] gets that certificate from istiod and renews it (instead of files);
//! - [`listener`] accepts, handshakes (under the undecided budget) and serves HTTP/2;
//! - [`connections`] bounds established connections, shedding the longest idle when full;
//! - [`rapid_reset`] cuts connections that reset most streams, and remembers who for a while;
//! - [`stream`] answers one CONNECT: parse ([`authority`]), route, dial, 200 or an error;
//! - [`splice`] moves the bytes; [`queued`] bounds those a connection holds toward its client,
//!   which [`metered`] sees leave;
//! - [`metrics`] counts it all.

pub mod authority;
pub mod ca;
pub mod connections;
pub mod identity;
pub mod listener;
pub mod metered;
pub mod metrics;
pub mod queued;
pub mod rapid_reset;
pub mod splice;
pub mod stream;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::ProxyMetrics;
use crate::routes::Routes;
use crate::undecided::Undecided;
use identity::Identity;
use metrics::HboneMetrics;

/// ztunnel's flow-control windows (`HTTP2_STREAM_WINDOW_SIZE`, `HTTP2_CONNECTION_WINDOW_SIZE`):
/// large enough for bulk over long round trips.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 16 << 20;
/// ztunnel's max frame size.
pub const MAX_FRAME: u32 = 1 << 20;
/// ztunnel's client max header list; CONNECT headers are small.
pub const MAX_HEADER_LIST: u32 = 16 << 10;
/// A PING this often on every outer connection, closed when its PONG has not come in twice
/// this: ztunnel's (`do_ping_pong`) and Istio's gateway's keepalive (10 s / 20 s). TCP
/// keepalive alone does not find a peer whose kernel answers but whose process is stuck.
pub const KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Everything the HBONE listener shares with the rest of the gateway.
pub struct Hbone {
    pub cfg: Arc<Config>,
    pub routes: Arc<Routes>,
    /// The classic listener's metrics: the upstream connect histogram, failures, ejections.
    pub proxy_metrics: ProxyMetrics,
    pub metrics: HboneMetrics,
    pub drain: Arc<Drain>,
    pub identity: Arc<Identity>,
    acceptor: TlsAcceptor,
    undecided: Arc<Undecided>,
    /// `--hbone-max-tunnels`: one place per open tunnel, across connections.
    tunnels: Semaphore,
    /// `--hbone-max-connections`: one place per established outer connection.
    places: Arc<connections::Places>,
    /// Identities cut by the premature-reset rule, across connections.
    cooling: Arc<rapid_reset::Cooling>,
    next_id: AtomicU64,
}

impl Hbone {
    pub fn new(
        cfg: Arc<Config>,
        routes: Arc<Routes>,
        proxy_metrics: ProxyMetrics,
        metrics: HboneMetrics,
        drain: Arc<Drain>,
        identity: Arc<Identity>,
        undecided: Arc<Undecided>,
    ) -> Result<Self, rustls::Error> {
        let acceptor = TlsAcceptor::from(identity.server_config()?);
        Ok(Hbone {
            tunnels: Semaphore::new(cfg.hbone_max_tunnels.clamp(1, Semaphore::MAX_PERMITS)),
            places: connections::Places::new(
                cfg.hbone_max_connections,
                metrics.connections_shed.clone(),
            ),
            cooling: Arc::default(),
            cfg,
            routes,
            proxy_metrics,
            metrics,
            drain,
            identity,
            acceptor,
            undecided,
            next_id: AtomicU64::new(1),
        })
    }
}
