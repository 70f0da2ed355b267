//! The route table: an immutable snapshot from SNI (host, port) to endpoints, swapped atomically.
//!
//! Discovery sources (the endpoints file, Kubernetes) hand a list of [`ServiceSpec`] to
//! [`Routes::publish`], which also resolves every subset to its ready endpoints, so a
//! connection does a lookup rather than a label scan. The data path loads the current
//! [`RouteTable`] without locks. Per-endpoint live state ([`EndpointState`]) is kept across
//! publishes by address, so a reload neither resets health nor loses connection counts.
//!
//! Endpoints at Istio's passthrough port, 15443, are left out of the classic table: the
//! gateway replays a client's ClientHello unchanged, so a hello naming a service whose
//! endpoint is a gateway's passthrough listener (the east-west gateway's own Service is one)
//! would make the gateways connect to each other, hop after hop. Loops through other ports
//! are caught per connection (`loop_guard`).
//!
//! This file holds the table and its lookups; building and swapping it in is [`publish`]'s.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use crate::breaker::Open;
use crate::dr_conn::{ConnSettings, DrConn, Lb};
use crate::dr_tls::DrTls;
use crate::endpoint::EndpointState;
use crate::metrics::{ConnMetrics, ProxyMetrics};
use crate::sni_name::{MAX_SNI_LEN, PASSTHROUGH_PORT, SniName};

mod publish;
#[cfg(test)]
mod tests;

pub use publish::Routes;

pub type Labels = BTreeMap<String, String>;

/// The table's maps hash with foldhash, not std's SipHash: a connection makes four lookups
/// (host, port, and its subset twice) and SipHash was about 700 instructions of them. The
/// keys are the discovered services' (a client's name is only looked up, never inserted), so
/// no client can fill a map with colliding keys; the seed is random per process all the same.
type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Subset name to the labels an endpoint must carry.
pub type Subsets = BTreeMap<String, Labels>;

/// One service as a discovery source sees it, before validation into a [`RouteTable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Fully qualified host, e.g. `catalog.istioinaction.svc.cluster.local`.
    pub host: String,
    /// The service ports that appear in SNI names.
    pub ports: Vec<u16>,
    /// Subset name to the labels an endpoint must carry. Shared: the table keeps this
    /// allocation, and sources may hand the same map to many services.
    pub subsets: Arc<Subsets>,
    pub endpoints: Vec<EndpointSpec>,
    /// The host of the waypoint this service is bound to (Kubernetes: `istio.io/use-waypoint`
    /// naming a ready waypoint). Its HBONE endpoints take only tunnels a waypoint sends
    /// (`x-istio-source: waypoint`, the waypoint's policy already applied); every other
    /// tunnel goes to the waypoint: the classic route `<waypoint>:15008`, each endpoint dialed
    /// at its own port (Istio's `inbound-vip|15008|tcp|<waypoint>`).
    pub waypoint: Option<String>,
    /// A second waypoint that takes a share of those tunnels; only with `waypoint`.
    pub canary: Option<Canary>,
    /// Connections go to ready endpoints in the gateway's own zone first, to the others
    /// only when none of those can be dialed (Kubernetes `trafficDistribution: PreferClose`).
    pub prefer_close: bool,
    /// The DestinationRule's TLS modes, which decide over the endpoints' own mark which take
    /// classic connections ([`DrTls`]). Shared, like the subsets.
    pub tls: Arc<DrTls>,
    /// The DestinationRule's connect timeout and outlier detection by port and subset
    /// ([`DrConn`]); empty leaves both to the gateway's flags. Shared, like the subsets.
    pub conn: Arc<DrConn>,
}

/// Kubernetes' `trafficDistribution` values that ask to keep traffic close
/// ([`ServiceSpec::prefer_close`]), for every source: `PreferClose` is the older name of
/// `PreferSameZone`; `PreferSameNode` is kept to the gateway's zone, the closest level a
/// gateway (not on the client's node) can keep.
pub const PREFER_CLOSE_VALUES: [&str; 3] = ["PreferClose", "PreferSameZone", "PreferSameNode"];

/// A canary waypoint (Kubernetes: `istio.io/use-waypoint-canary`, Istio 1.31): each tunnel
/// that goes to a waypoint goes to this one with `weight` percent odds, as ztunnel samples
/// per connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canary {
    /// The host of the canary waypoint's service.
    pub host: Box<str>,
    /// 1 to 100 (0 is no canary).
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub address: IpAddr,
    /// Service port to the port dialed on this endpoint. A service port missing here is not
    /// served by this endpoint (Kubernetes maps ports per EndpointSlice).
    pub ports: BTreeMap<u16, u16>,
    /// Shared: the table keeps this allocation, and sources may hand the same map to every
    /// endpoint with equal labels.
    pub labels: Arc<Labels>,
    pub ready: bool,
    /// The port of this endpoint's HBONE listener (its node's ztunnel, 15008) when it is
    /// reached over HBONE from 15008; `None` for a classic endpoint.
    pub hbone_port: Option<u16>,
    /// The zone the endpoint runs in (an EndpointSlice's `zone`). Shared: zones repeat.
    pub zone: Option<Arc<str>>,
    /// The endpoint terminates Istio mTLS (Kubernetes: its Pod is labelled
    /// `security.istio.io/tlsMode: istio`, as Istio's injector labels every sidecar). Only
    /// such endpoints take classic (15443) connections, as Istio's passthrough gateway sends
    /// SNI-routed bytes only to mTLS endpoints (`EndpointsWithMTLSFilter`): it cannot tell
    /// what a client's TLS is, so a plain TLS server behind a Service (the API server, a
    /// webhook) must not be reachable through it. HBONE and waypoint dials do not need it.
    pub mtls: bool,
    /// Service ports on which the endpoint, though `mtls`, takes no classic connection: a
    /// PeerAuthentication disables mTLS on the port they map to (Kubernetes only).
    pub mtls_disabled: Vec<u16>,
    /// Load-balancing weight, at least 1: a WorkloadEntry's or a ServiceEntry endpoint's
    /// `weight` (istiod sends it as Envoy's `load_balancing_weight`, 1 when unset), 1 for
    /// a Pod.
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub state: Arc<EndpointState>,
    pub labels: Arc<Labels>,
    pub ready: bool,
    pub zone: Option<Arc<str>>,
    /// [`EndpointSpec::mtls`]: false keeps a classic route's endpoint out of every candidate
    /// list (shown by `/debug/routes`, never dialed from 15443).
    pub mtls: bool,
    /// `mtls` is false because a PeerAuthentication disables mTLS on this port
    /// ([`EndpointSpec::mtls_disabled`]), not for want of the Pod's label.
    pub mtls_disabled: bool,
    /// [`EndpointSpec::weight`].
    pub weight: u32,
}

/// Everything reachable through one `(host, port)`.
#[derive(Debug, Clone)]
pub struct Route {
    pub host: String,
    pub port: u16,
    pub subsets: Arc<Subsets>,
    /// All endpoints, ready or not (the debug view shows both).
    pub endpoints: Vec<Endpoint>,
    /// The whole route (`""`) and each subset; resolved at publish.
    by_subset: Map<String, Subset>,
    /// An HBONE route of a service bound to a waypoint ([`ServiceSpec::waypoint`]): only
    /// tunnels a waypoint sent take it; the others go to this waypoint host's classic route
    /// at [`WAYPOINT_PORT`]. Always `None` on a classic route.
    pub waypoint: Option<Box<str>>,
    /// The canary that takes a share of those tunnels ([`ServiceSpec::canary`]).
    pub canary: Option<Canary>,
    /// The gateway's zone, when the service prefers close endpoints
    /// ([`ServiceSpec::prefer_close`]) and the gateway knows its zone: the endpoints in it
    /// are tried first.
    pub prefer_zone: Option<Arc<str>>,
    /// [`ServiceSpec::tls`], for a classic route.
    pub tls: Arc<DrTls>,
    /// [`ServiceSpec::conn`], resolved per subset at publish.
    pub conn: Arc<DrConn>,
    /// Its endpoints' weights differ: the pick weighs them (set at publish; with equal
    /// weights the unweighted pick chooses alike and costs less).
    pub weighted: bool,
}

/// The port a tunnel is sent to on a waypoint: its HBONE listener, which Istio hardcodes
/// (`HboneMtlsPort: 15008` in `waypoints.go`, the cluster `inbound-vip|15008|tcp|<waypoint>`).
pub const WAYPOINT_PORT: u16 = 15008;

/// What a connection to one `(host, port, subset)` needs: the ready endpoints, resolved at
/// publish, and the metric handles of its SNI name, resolved by the first connection to
/// use this table (metrics are not known to discovery).
#[derive(Debug, Clone, Default)]
pub struct Subset {
    /// Indices into the route's `endpoints` of the ready ones.
    ready: Box<[usize]>,
    /// Those of `ready` in the route's `prefer_zone`, and the others; both empty without one.
    near: Box<[usize]>,
    far: Box<[usize]>,
    metrics: OnceLock<Arc<ConnMetrics>>,
    /// The DestinationRule's settings for this port and subset; `None` when it sets none.
    conn: Option<Box<ConnSettings>>,
    /// The connections open to it, where the rule limits them (`maxConnections`); carried
    /// from table to table like the metric handles, so a publish does not forget them.
    open: Option<Open>,
    /// The next turn, where the rule balances round robin.
    turn: Option<Arc<AtomicU32>>,
    /// The zone `near` is in, if split.
    zone: Option<Arc<str>>,
    /// [`Candidates::spill`].
    spill: bool,
}

/// Indices into a route's `endpoints`: the ready ones, and for a service that prefers the
/// gateway's zone, those of them in it (`near`) and the others (`far`); without a preference
/// `near` and `far` are empty.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    pub near: &'a [usize],
    pub far: &'a [usize],
    pub all: &'a [usize],
    /// The DestinationRule's settings for them, if it sets any.
    pub conn: Option<&'a ConnSettings>,
    /// Their connections, where the rule limits them ([`crate::breaker`]).
    pub open: Option<&'a Open>,
    /// The round-robin turn, where the rule balances so.
    pub turn: Option<&'a AtomicU32>,
    /// `near` is the gateway's zone by a DestinationRule's locality failover: a share of
    /// connections leaves it as its healthy share falls, as Envoy's priority load does.
    pub spill: bool,
}

/// Why a route lookup found nothing to dial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    NoRoute,
    NoHealthyEndpoint,
}

impl Route {
    /// The waypoints a tunnel not sent by a waypoint goes to, first choice first, for a
    /// `roll` drawn uniformly from 0 to 99: the canary when `roll` is below its weight, else
    /// the waypoint; the other is the fallback if the first has no ready endpoint.
    pub fn waypoints(&self, roll: u8) -> Option<(&str, Option<&str>)> {
        let primary = self.waypoint.as_deref()?;
        Some(match &self.canary {
            None => (primary, None),
            Some(c) if roll < c.weight => (&c.host, Some(primary)),
            Some(c) => (primary, Some(&c.host)),
        })
    }

    /// Indices into `endpoints` of the ready endpoints of `subset` ("" for all). An unknown
    /// subset is no route, as in Istio, where a subset the gateway's cluster does not define
    /// has no filter chain.
    pub fn candidates(&self, subset: &str) -> Result<&[usize], LookupError> {
        self.candidates_near(subset).map(|c| c.all)
    }

    /// The ready endpoints of `subset`, split by the gateway's zone when the service prefers
    /// it ([`Candidates`]).
    pub fn candidates_near(&self, subset: &str) -> Result<Candidates<'_>, LookupError> {
        match self.by_subset.get(subset) {
            None => Err(LookupError::NoRoute),
            Some(c) if c.ready.is_empty() => Err(LookupError::NoHealthyEndpoint),
            Some(c) => Ok(Candidates {
                near: &c.near,
                far: &c.far,
                all: &c.ready,
                conn: c.conn.as_deref(),
                open: c.open.as_ref(),
                turn: c.turn.as_deref(),
                spill: c.spill,
            }),
        }
    }

    /// The DestinationRule's connect timeout and outlier detection for `subset` ("" for the
    /// whole route), where it sets any.
    pub fn settings(&self, subset: &str) -> Option<&ConnSettings> {
        self.by_subset.get(subset)?.conn.as_deref()
    }

    /// The zone `subset`'s endpoints there are tried first in, if any, and whether by a
    /// DestinationRule's locality failover (which spills a share).
    pub fn preferred_zone(&self, subset: &str) -> Option<(&str, bool)> {
        let s = self.by_subset.get(subset)?;
        Some((s.zone.as_deref()?, s.spill))
    }

    /// The connections counted against `subset`'s `maxConnections`, where its rule sets one.
    pub fn open_connections(&self, subset: &str) -> Option<u32> {
        let open = self.by_subset.get(subset)?.open.as_ref()?;
        Some(open.load(Ordering::Relaxed))
    }

    /// The metric handles of `subset` ("" for none), labelled with its SNI name
    /// (`outbound_.<port>_.<subset>_.<host>`); `None` for an unknown subset. Created on
    /// first use, then shared by every connection routed through this table.
    pub fn metrics(&self, subset: &str, m: &ProxyMetrics) -> Option<Arc<ConnMetrics>> {
        let s = self.by_subset.get(subset)?;
        let handles = s.metrics.get_or_init(|| {
            let sni = SniName::new(self.port, subset, self.host.as_str()).to_string();
            m.for_sni(sni)
        });
        Some(handles.clone())
    }
}

#[derive(Debug, Default)]
pub struct RouteTable {
    pub generation: u64,
    /// Classic endpoints not in the table because they are at a passthrough port, in
    /// publish order.
    pub left_out: Vec<LeftOut>,
    /// Classic SNI names no TLS client can send, sorted: the route stays (HBONE reaches it).
    pub too_long: Vec<TooLong>,
    /// Host, then port: nested so a lookup by `&str` needs no allocation.
    routes: Map<String, Map<u16, Route>>,
    /// The same keys, for HBONE: only endpoints with an HBONE port, each addressed
    /// `ip:hbone_port` (its own health and load state). A service without any is absent,
    /// unless bound to a waypoint.
    hbone: Map<String, Map<u16, Route>>,
    /// The services some route names as its waypoint or canary, at [`WAYPOINT_PORT`]: every
    /// endpoint, mTLS or not (a waypoint pod carries no sidecar label), dialed at its own port.
    waypoints: Map<String, Route>,
}

impl RouteTable {
    pub fn lookup(&self, host: &str, port: u16) -> Option<&Route> {
        self.routes.get(host)?.get(&port)
    }

    /// Number of `(host, port)` routes.
    pub fn len(&self) -> usize {
        self.routes.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn endpoint_count(&self) -> usize {
        self.routes().map(|r| r.endpoints.len()).sum()
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.values().flat_map(HashMap::values)
    }

    /// The route a tunnel sent to the waypoint `host` takes (its Service at
    /// [`WAYPOINT_PORT`]).
    pub fn lookup_waypoint(&self, host: &str) -> Option<&Route> {
        self.waypoints.get(host)
    }

    /// The route an HBONE CONNECT to `host:port` takes: endpoints dialed on their HBONE port.
    pub fn lookup_hbone(&self, host: &str, port: u16) -> Option<&Route> {
        self.hbone.get(host)?.get(&port)
    }

    /// HBONE routes without a classic route of the same name: every classic endpoint was
    /// left out (at 15443), as with the east-west gateway's own Service in ambient.
    pub fn hbone_only_routes(&self) -> impl Iterator<Item = &Route> {
        self.hbone
            .values()
            .flat_map(HashMap::values)
            .filter(|r| self.lookup(&r.host, r.port).is_none())
    }
}

/// A classic endpoint left out of the table: dialing it would reach a passthrough port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeftOut {
    pub host: String,
    pub port: u16,
    pub endpoint: SocketAddr,
}

/// A classic route's SNI name over [`MAX_SNI_LEN`]: `subset` is `""` when even the
/// subset-less name is too long (then every subset's is too).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TooLong {
    pub host: String,
    pub port: u16,
    pub subset: String,
    /// The name's length in bytes.
    pub len: usize,
}
