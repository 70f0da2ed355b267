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

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use arc_swap::ArcSwapOption;

use crate::breaker::Open;
use crate::clock;
use crate::dr_conn::{ConnSettings, DrConn, Lb};
use crate::dr_tls::DrTls;
use crate::endpoint::EndpointState;
use crate::metrics::{ConnMetrics, ProxyMetrics};
use crate::sni_name::{MAX_SNI_LEN, PASSTHROUGH_PORT, SniName};

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

    /// Resolves `""` and every subset to the indices of its ready endpoints (with
    /// `mtls_only`, of those that terminate Istio mTLS, as the DestinationRule's TLS mode
    /// for the port and subset or else each endpoint's mark says: a classic route), and of
    /// those in the preferred zone and not: the route's, for a service that prefers close
    /// endpoints, else the gateway's `zone` where the subset's DestinationRule turns on
    /// Istio's locality failover ([`ConnSettings::prefers_locality`]).
    fn resolve_subsets(&mut self, mtls_only: bool, zone: Option<&Arc<str>>) {
        let ready = |name: &str, want: Option<&Labels>| -> Box<[usize]> {
            let matches = |e: &Endpoint| {
                want.is_none_or(|w| w.iter().all(|(k, v)| e.labels.get(k) == Some(v)))
            };
            let by_rule = self.tls.for_route(self.port, name);
            let mtls = |e: &Endpoint| !mtls_only || by_rule.unwrap_or(e.mtls);
            let eps = self.endpoints.iter().enumerate();
            eps.filter(|(_, e)| e.ready && mtls(e) && matches(e))
                .map(|(i, _)| i)
                .collect()
        };
        let split = |ready: &[usize], by: Option<&Arc<str>>| -> (Box<[usize]>, Box<[usize]>) {
            let Some(zone) = by else {
                return Default::default();
            };
            let in_zone = |i: &usize| self.endpoints[*i].zone.as_ref() == Some(zone);
            let (near, far): (Vec<usize>, Vec<usize>) = ready.iter().partition(|i| in_zone(i));
            (near.into(), far.into())
        };
        let mut by_subset =
            Map::with_capacity_and_hasher(self.subsets.len() + 1, Default::default());
        let subset = |name: &str, ready: Box<[usize]>| {
            let conn = Some(self.conn.for_route(self.port, name))
                .filter(|c| *c != ConnSettings::default())
                .map(Box::new);
            // The service's own ask keeps every connection in the zone while one there can
            // be dialed; a rule's failover spills a share as Envoy's priorities do.
            let failover = conn.as_ref().is_some_and(|c| c.prefers_locality());
            let (by, spill) = match (&self.prefer_zone, zone) {
                (Some(z), _) => (Some(z), false),
                (None, Some(z)) if failover => (Some(z), true),
                _ => (None, false),
            };
            let (near, far) = split(&ready, by);
            let limited = conn.as_ref().is_some_and(|c| c.max_connections().is_some());
            let in_turn = conn.as_ref().is_some_and(|c| c.lb == Some(Lb::RoundRobin));
            Subset {
                ready,
                near,
                far,
                metrics: OnceLock::new(),
                conn,
                open: limited.then(Open::default),
                turn: in_turn.then(Default::default),
                zone: by.cloned(),
                spill,
            }
        };
        by_subset.insert(String::new(), subset("", ready("", None)));
        for (name, labels) in self.subsets.iter() {
            by_subset.insert(name.clone(), subset(name, ready(name, Some(labels))));
        }
        self.by_subset = by_subset;
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

/// The SNI names of `routes` that are too long to send, sorted by host, port and subset.
fn too_long(routes: &Map<String, Map<u16, Route>>) -> Vec<TooLong> {
    let mut found = Vec::new();
    for route in routes.values().flat_map(HashMap::values) {
        let name = |subset: &str| TooLong {
            host: route.host.clone(),
            port: route.port,
            subset: subset.to_owned(),
            len: SniName::len_of(route.port, subset, &route.host),
        };
        let whole = name("");
        if whole.len > MAX_SNI_LEN {
            found.push(whole);
            continue;
        }
        for subset in route.subsets.keys() {
            if SniName::len_of(route.port, subset, &route.host) > MAX_SNI_LEN {
                found.push(name(subset));
            }
        }
    }
    found.sort_unstable();
    found
}

/// The published table plus the registry that keeps endpoint state across publishes.
#[derive(Default)]
pub struct Routes {
    current: ArcSwapOption<RouteTable>,
    states: Mutex<HashMap<SocketAddr, Weak<EndpointState>>>,
    generation: AtomicU64,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current table, or `None` before the first publish. Lock-free.
    pub fn load(&self) -> Option<Arc<RouteTable>> {
        self.current.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Builds and swaps in a new table. Specs are assumed validated by their source; a host
    /// listed twice is merged (Kubernetes may list one service's endpoints in several slices).
    pub fn publish(&self, specs: &[ServiceSpec]) -> Arc<RouteTable> {
        self.publish_in(specs, None)
    }

    /// [`publish`](Self::publish) for a gateway that runs in `zone`: the routes of services
    /// that prefer close endpoints try those in `zone` first.
    pub fn publish_in(&self, specs: &[ServiceSpec], zone: Option<&Arc<str>>) -> Arc<RouteTable> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes: Map<String, Map<u16, Route>> = Map::default();
        let mut hbone: Map<String, Map<u16, Route>> = Map::default();
        let mut waypoints: Map<String, Route> = Map::default();
        let waypoint_hosts: std::collections::HashSet<&str> = specs
            .iter()
            .flat_map(|s| {
                s.waypoint
                    .as_deref()
                    .into_iter()
                    .chain(s.canary.iter().map(|c| &*c.host))
            })
            .collect();
        let mut left_out = Vec::new();
        // Addresses some route lists ready: stamped for a DestinationRule's warmup below.
        let mut ready_now = std::collections::HashSet::new();
        for spec in specs {
            for &port in &spec.ports {
                let route = route_at(&mut routes, &spec.host, port);
                if route.tls.is_empty() {
                    route.tls = spec.tls.clone();
                }
                if route.conn.is_empty() {
                    route.conn = spec.conn.clone();
                }
                // Share the spec's map; copy only to merge a host listed twice.
                if route.subsets.is_empty() {
                    route.subsets = spec.subsets.clone();
                } else if !spec.subsets.is_empty() && !Arc::ptr_eq(&route.subsets, &spec.subsets) {
                    Arc::make_mut(&mut route.subsets)
                        .extend(spec.subsets.iter().map(|(k, v)| (k.clone(), v.clone())));
                }
                for ep in &spec.endpoints {
                    let Some(&target) = ep.ports.get(&port) else {
                        continue;
                    };
                    let mut endpoint = |addr| {
                        if ep.ready {
                            ready_now.insert(addr);
                        }
                        endpoint_at(&mut states, addr, ep, port)
                    };
                    let classic = SocketAddr::new(ep.address, target);
                    if port == WAYPOINT_PORT && waypoint_hosts.contains(spec.host.as_str()) {
                        let to = waypoints
                            .entry(spec.host.clone())
                            .or_insert_with(|| empty_route(&spec.host, port));
                        to.endpoints.push(endpoint(classic));
                    }
                    if target == PASSTHROUGH_PORT {
                        left_out.push(LeftOut {
                            host: spec.host.clone(),
                            port,
                            endpoint: classic,
                        });
                    } else {
                        route.endpoints.push(endpoint(classic));
                    }
                    // HBONE replays nothing: each hop terminates one TLS layer the client built.
                    if let Some(hp) = ep.hbone_port {
                        let tunnelled = endpoint(SocketAddr::new(ep.address, hp));
                        let to = route_at(&mut hbone, &spec.host, port);
                        to.endpoints.push(tunnelled);
                        if to.conn.is_empty() {
                            to.conn = spec.conn.clone();
                        }
                    }
                }
                // A bound service is reached through its waypoint even with no endpoint
                // captured by ztunnel (Istio matches every port of an exposed service).
                if let Some(wp) = &spec.waypoint {
                    let route = route_at(&mut hbone, &spec.host, port);
                    route.waypoint = Some(wp.as_str().into());
                    route.canary = spec.canary.clone();
                }
                if spec.prefer_close && zone.is_some() {
                    for map in [&mut routes, &mut hbone] {
                        let by_port = map.get_mut(spec.host.as_str());
                        if let Some(route) = by_port.and_then(|p| p.get_mut(&port)) {
                            route.prefer_zone = zone.cloned();
                        }
                    }
                    let waypoint = waypoints.get_mut(spec.host.as_str());
                    if let Some(route) = waypoint.filter(|_| port == WAYPOINT_PORT) {
                        route.prefer_zone = zone.cloned();
                    }
                }
            }
        }
        // A route all of whose endpoints were left out is no route at all.
        for gone in &left_out {
            if let Some(by_port) = routes.get_mut(&gone.host) {
                if by_port
                    .get(&gone.port)
                    .is_some_and(|r| r.endpoints.is_empty())
                {
                    by_port.remove(&gone.port);
                }
                if by_port.is_empty() {
                    routes.remove(&gone.host);
                }
            }
        }
        for route in routes.values_mut().flat_map(|p| p.values_mut()) {
            route.resolve_subsets(true, zone);
        }
        let others = hbone.values_mut().flat_map(|p| p.values_mut());
        for route in others.chain(waypoints.values_mut()) {
            route.resolve_subsets(false, zone);
        }
        let every = routes.values_mut().chain(hbone.values_mut());
        for route in every
            .flat_map(|p| p.values_mut())
            .chain(waypoints.values_mut())
        {
            let mut weights = route.endpoints.iter().map(|e| e.weight);
            let first = weights.next();
            route.weighted = weights.any(|w| Some(w) != first);
        }
        if let Some(before) = self.current.load().as_deref() {
            carry_state(&before.routes, &mut routes);
            carry_state(&before.hbone, &mut hbone);
        }
        // Stamped before the table is seen, so no connection weighs a new endpoint whole.
        let now = clock::now_ms();
        for (addr, state) in states.iter() {
            let Some(state) = state.upgrade() else {
                continue;
            };
            if ready_now.contains(addr) {
                state.mark_ready(now);
            } else {
                state.mark_not_ready();
            }
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let table = Arc::new(RouteTable {
            generation,
            left_out,
            too_long: too_long(&routes),
            routes,
            hbone,
            waypoints,
        });
        self.current.store(Some(table.clone()));
        // Forget addresses no table refers to any more (old tables still hold their Arcs).
        states.retain(|_, w| w.strong_count() > 0);
        table
    }
}

/// Gives each route and subset of the new table the metric handles the same one had in
/// `before`, so its series live on across tables instead of starting again at zero, and
/// the count of its open connections and its round-robin turn where both tables have one.
fn carry_state(before: &Map<String, Map<u16, Route>>, routes: &mut Map<String, Map<u16, Route>>) {
    for route in routes.values_mut().flat_map(|by_port| by_port.values_mut()) {
        let Some(old) = before.get(&route.host).and_then(|p| p.get(&route.port)) else {
            continue;
        };
        for (name, subset) in &mut route.by_subset {
            let Some(was) = old.by_subset.get(name) else {
                continue;
            };
            if let Some(h) = was.metrics.get() {
                let _ = subset.metrics.set(h.clone());
            }
            if let (Some(open), Some(counted)) = (&mut subset.open, &was.open) {
                *open = counted.clone();
            }
            if let (Some(turn), Some(was)) = (&mut subset.turn, &was.turn) {
                *turn = was.clone();
            }
        }
    }
}

/// The route for `host:port` in `map`, made empty on first use.
fn route_at<'m>(map: &'m mut Map<String, Map<u16, Route>>, host: &str, port: u16) -> &'m mut Route {
    map.entry(host.to_owned())
        .or_default()
        .entry(port)
        .or_insert_with(|| empty_route(host, port))
}

fn empty_route(host: &str, port: u16) -> Route {
    Route {
        host: host.to_owned(),
        port,
        subsets: Arc::default(),
        endpoints: Vec::new(),
        by_subset: Map::default(),
        waypoint: None,
        canary: None,
        prefer_zone: None,
        tls: Arc::default(),
        conn: Arc::default(),
        weighted: false,
    }
}

/// `ep`'s endpoint at `addr` for a route of `port`, with the state every table shares.
fn endpoint_at(
    states: &mut HashMap<SocketAddr, Weak<EndpointState>>,
    addr: SocketAddr,
    ep: &EndpointSpec,
    port: u16,
) -> Endpoint {
    Endpoint {
        state: shared_state(states, addr),
        labels: ep.labels.clone(),
        ready: ep.ready,
        zone: ep.zone.clone(),
        mtls: ep.mtls && !ep.mtls_disabled.contains(&port),
        mtls_disabled: ep.mtls && ep.mtls_disabled.contains(&port),
        weight: ep.weight.max(1),
    }
}

/// The one health state of `addr` that every table shares while any holds it.
fn shared_state(
    states: &mut HashMap<SocketAddr, Weak<EndpointState>>,
    addr: SocketAddr,
) -> Arc<EndpointState> {
    let state = states
        .get(&addr)
        .and_then(Weak::upgrade)
        .unwrap_or_else(|| Arc::new(EndpointState::new(addr)));
    states.insert(addr, Arc::downgrade(&state));
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (address, ready, labels)
    type Ep<'a> = (&'a str, bool, &'a [(&'a str, &'a str)]);

    fn spec(host: &str, eps: &[Ep]) -> ServiceSpec {
        ServiceSpec {
            host: host.into(),
            ports: vec![80],
            subsets: Arc::new(Subsets::from([(
                "v1".to_string(),
                Labels::from([("version".into(), "v1".into())]),
            )])),
            endpoints: eps
                .iter()
                .map(|(a, ready, labels)| EndpointSpec {
                    address: a.parse().unwrap(),
                    ports: [(80, 3000)].into(),
                    labels: Arc::new(
                        labels
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    ),
                    ready: *ready,
                    hbone_port: None,
                    zone: None,
                    mtls: true,
                    mtls_disabled: Vec::new(),
                    weight: 1,
                })
                .collect(),
            waypoint: None,
            canary: None,
            prefer_close: false,
            tls: Arc::default(),
            conn: Arc::default(),
        }
    }

    /// Both data planes' routes of a service that prefers close endpoints try the gateway's
    /// zone first, every subset included.
    /// A rule's `maxConnections` counts a route's (and each subset's) open connections; a
    /// new table keeps counting the ones open before it, and a table without the limit
    /// counts none.
    #[test]
    fn connection_counts_live_on_across_tables() {
        let limited = |on: bool| {
            let mut s = spec("a.local", &[("10.0.0.1", true, &[("version", "v1")])]);
            if on {
                let pool = serde_json::json!({"connectionPool": {"tcp": {"maxConnections": 5}}});
                s.conn = Arc::new(DrConn {
                    service: crate::dr_conn::policy_conn(Some(&pool)),
                    ..Default::default()
                });
            }
            s
        };
        let routes = Routes::new();
        let t1 = routes.publish(&[limited(true)]);
        let r1 = t1.lookup("a.local", 80).unwrap();
        let c = r1.candidates_near("v1").unwrap();
        let held = crate::breaker::Held::take(c.open.unwrap(), 5).unwrap();
        assert_eq!(r1.open_connections("v1"), Some(1));
        assert_eq!(
            r1.open_connections(""),
            Some(0),
            "each subset its own cluster"
        );
        let t2 = routes.publish(&[limited(true)]);
        assert_eq!(
            t2.lookup("a.local", 80).unwrap().open_connections("v1"),
            Some(1)
        );
        drop(held);
        assert_eq!(
            t2.lookup("a.local", 80).unwrap().open_connections("v1"),
            Some(0)
        );
        let t3 = routes.publish(&[limited(false)]);
        assert_eq!(
            t3.lookup("a.local", 80).unwrap().open_connections("v1"),
            None
        );
    }

    #[test]
    fn the_near_endpoints_are_resolved_per_subset_and_for_hbone() {
        let mut s = spec(
            "a.local",
            &[
                ("10.0.0.1", true, &[("version", "v1")]),
                ("10.0.0.2", true, &[("version", "v2")]),
                ("10.0.0.3", true, &[("version", "v1")]),
                ("10.0.0.4", false, &[("version", "v1")]),
            ],
        );
        s.prefer_close = true;
        for (e, zone) in s.endpoints.iter_mut().zip(["a", "a", "b", "a"]) {
            e.zone = Some(Arc::from(zone));
            e.hbone_port = Some(15008);
        }
        let t = Routes::new().publish_in(&[s], Some(&Arc::from("a")));
        // HBONE names no subset: only the whole route there.
        for (r, subsets) in [
            (t.lookup("a.local", 80), true),
            (t.lookup_hbone("a.local", 80), false),
        ] {
            let r = r.unwrap();
            assert_eq!(r.prefer_zone.as_deref(), Some("a"));
            let ip = |i: &usize| r.endpoints[*i].state.addr.ip().to_string();
            let all = r.candidates_near("").unwrap();
            assert_eq!(
                all.near.iter().map(ip).collect::<Vec<_>>(),
                ["10.0.0.1", "10.0.0.2"]
            );
            assert_eq!(all.all.len(), 3);
            if !subsets {
                continue;
            }
            let v1 = r.candidates_near("v1").unwrap();
            assert_eq!(v1.near.iter().map(ip).collect::<Vec<_>>(), ["10.0.0.1"]);
            assert_eq!(
                v1.all.iter().map(ip).collect::<Vec<_>>(),
                ["10.0.0.1", "10.0.0.3"]
            );
        }
    }

    #[test]
    fn lookup_and_subsets() {
        let routes = Routes::new();
        assert!(routes.load().is_none());
        let t = routes.publish(&[spec(
            "a.ns.svc.cluster.local",
            &[
                ("10.0.0.1", true, &[("version", "v1")]),
                ("10.0.0.2", true, &[("version", "v2")]),
                ("10.0.0.3", false, &[("version", "v1")]),
            ],
        )]);
        let r = t.lookup("a.ns.svc.cluster.local", 80).unwrap();
        assert_eq!(r.candidates("").unwrap().len(), 2);
        let v1 = r.candidates("v1").unwrap();
        assert_eq!(v1.len(), 1);
        assert_eq!(
            r.endpoints[v1[0]].state.addr,
            "10.0.0.1:3000".parse().unwrap()
        );
        assert_eq!(r.candidates("v9").unwrap_err(), LookupError::NoRoute);
        assert!(t.lookup("a.ns.svc.cluster.local", 81).is_none());
        assert!(t.lookup("b.ns.svc.cluster.local", 80).is_none());
    }

    /// A host listed twice (several EndpointSlices) is merged before its subsets are
    /// resolved, so a subset sees the endpoints of every listing.
    #[test]
    fn subsets_resolve_after_merging() {
        let mut second = spec("a.local", &[("10.0.0.2", true, &[("version", "v2")])]);
        second.subsets = Arc::new(Subsets::from([(
            "v2".to_string(),
            Labels::from([("version".into(), "v2".into())]),
        )]));
        let first = spec(
            "a.local",
            &[
                ("10.0.0.1", true, &[("version", "v1")]),
                ("10.0.0.3", true, &[("version", "v2")]),
            ],
        );
        let t = Routes::new().publish(&[first, second]);
        let r = t.lookup("a.local", 80).unwrap();
        let addrs = |subset| -> Vec<String> {
            let c = r.candidates(subset).unwrap();
            c.iter()
                .map(|&i| r.endpoints[i].state.addr.to_string())
                .collect()
        };
        assert_eq!(
            addrs(""),
            ["10.0.0.1:3000", "10.0.0.3:3000", "10.0.0.2:3000"]
        );
        assert_eq!(addrs("v1"), ["10.0.0.1:3000"]);
        assert_eq!(addrs("v2"), ["10.0.0.3:3000", "10.0.0.2:3000"]);
    }

    /// A subset's metric handles are made once and carry the SNI label Istio's name layout
    /// gives; a new table routing the same name takes them over.
    #[test]
    fn metric_handles_once_per_table_and_subset() {
        let mut reg = prometheus_client::registry::Registry::default();
        let m = ProxyMetrics::new(&mut reg);
        let routes = Routes::new();
        let s = spec(
            "a.ns.svc.cluster.local",
            &[("10.0.0.1", true, &[("version", "v1")])],
        );
        let t1 = routes.publish(std::slice::from_ref(&s));
        let r1 = t1.lookup("a.ns.svc.cluster.local", 80).unwrap();
        let v1 = r1.metrics("v1", &m).unwrap();
        assert!(Arc::ptr_eq(&v1, &r1.metrics("v1", &m).unwrap()));
        assert_eq!(v1.sni, "outbound_.80_.v1_.a.ns.svc.cluster.local");
        assert_eq!(
            r1.metrics("", &m).unwrap().sni,
            "outbound_.80_._.a.ns.svc.cluster.local"
        );
        assert!(r1.metrics("v9", &m).is_none());
        v1.opened.inc();
        v1.closed("ok");
        let t2 = routes.publish(&[s]);
        let v1b = t2
            .lookup("a.ns.svc.cluster.local", 80)
            .unwrap()
            .metrics("v1", &m)
            .unwrap();
        assert!(Arc::ptr_eq(&v1, &v1b), "carried to the next table");
        v1b.opened.inc();
        v1b.closed("ok");
        let labels = crate::metrics::SniLabels {
            sni: v1.sni.clone(),
        };
        assert_eq!(m.opened.get_or_create(&labels).get(), 2);
        let closed = crate::metrics::CloseLabels {
            sni: v1.sni.clone(),
            outcome: "ok",
        };
        assert_eq!(m.closed.get_or_create(&closed).get(), 2);
    }

    /// A name's series go once no table routes it and no connection holds its handles, and
    /// stay while either does; routed again, it starts from zero.
    #[test]
    fn metric_series_go_with_their_last_holder() {
        let mut reg = prometheus_client::registry::Registry::default();
        let m = ProxyMetrics::new(&mut reg);
        let text = |reg: &prometheus_client::registry::Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, reg).unwrap();
            out
        };
        let routes = Routes::new();
        let (a, b) = (
            spec("a.local", &[("10.0.0.1", true, &[])]),
            spec("b.local", &[("10.0.0.2", true, &[])]),
        );
        let t1 = routes.publish(&[a.clone(), b.clone()]);
        let ha = t1.lookup("a.local", 80).unwrap().metrics("", &m).unwrap();
        let hb = t1.lookup("b.local", 80).unwrap().metrics("", &m).unwrap();
        ha.opened.inc();
        hb.opened.inc();
        hb.closed("ok");
        drop(t1);
        // b leaves the table while a connection still holds its handles.
        let t2 = routes.publish(std::slice::from_ref(&a));
        let (sa, sb) = ("outbound_.80_._.a.local", "outbound_.80_._.b.local");
        assert!(text(&reg).contains(sb), "held by a connection: kept");
        drop(hb);
        let now = text(&reg);
        assert!(!now.contains(sb), "gone with its last holder:\n{now}");
        assert!(
            now.contains(&format!("opened_total{{sni=\"{sa}\"}} 1")),
            "{now}"
        );
        // a's handles were carried into t2: dropping the connection's keeps the series.
        drop(ha);
        assert!(text(&reg).contains(sa));
        let t3 = routes.publish(&[a, b]);
        drop(t2);
        assert!(text(&reg).contains(sa), "still routed");
        let hb2 = t3.lookup("b.local", 80).unwrap().metrics("", &m).unwrap();
        assert_eq!(hb2.opened.get(), 0, "routed again: a new series");
    }

    #[test]
    fn no_ready_endpoint() {
        let routes = Routes::new();
        let t = routes.publish(&[spec("a.local", &[("10.0.0.3", false, &[])])]);
        let r = t.lookup("a.local", 80).unwrap();
        assert_eq!(
            r.candidates("").unwrap_err(),
            LookupError::NoHealthyEndpoint
        );
    }

    #[test]
    fn state_survives_republish() {
        let routes = Routes::new();
        let s = spec("a.local", &[("10.0.0.1", true, &[])]);
        let t1 = routes.publish(std::slice::from_ref(&s));
        let st1 = t1.lookup("a.local", 80).unwrap().endpoints[0].state.clone();
        let _guard = st1.track();
        let t2 = routes.publish(&[s]);
        assert_eq!(t2.generation, t1.generation + 1);
        let st2 = &t2.lookup("a.local", 80).unwrap().endpoints[0].state;
        assert!(Arc::ptr_eq(&st1, st2));
        assert_eq!(st2.active(), 1);
    }

    /// An address is stamped when a table first lists it ready and keeps the stamp across
    /// tables; not ready, or listed by no route (though a connection still holds its
    /// state), it loses it, so it warms up again when it is back.
    #[test]
    fn readiness_is_stamped_once_and_forgotten_when_gone() {
        let routes = Routes::new();
        let both = [("10.0.0.1", true, &[][..]), ("10.0.0.2", true, &[][..])];
        let t1 = routes.publish(&[spec("a.local", &both)]);
        let state =
            |t: &RouteTable, i: usize| t.lookup("a.local", 80).unwrap().endpoints[i].state.clone();
        let (one, two) = (state(&t1, 0), state(&t1, 1));
        let stamp = one.ready_since();
        assert!(stamp > 0 && two.ready_since() > 0);
        std::thread::sleep(std::time::Duration::from_millis(5));
        routes.publish(&[spec("a.local", &both)]);
        assert_eq!(one.ready_since(), stamp, "kept while ready");
        routes.publish(&[spec("a.local", &[both[0], ("10.0.0.2", false, &[])])]);
        assert_eq!(two.ready_since(), 0, "not ready");
        let _held = two.track();
        routes.publish(&[spec("a.local", &both[..1])]);
        assert_eq!(two.ready_since(), 0, "gone, though held");
        let t = routes.publish(&[spec("a.local", &both)]);
        assert!(Arc::ptr_eq(&state(&t, 1), &two));
        assert!(two.ready_since() > stamp, "back: stamped anew");
        assert_eq!(one.ready_since(), stamp);
    }

    /// HBONE endpoints get their own route keyed like the SNI one, dialed on the HBONE port,
    /// with state apart from the classic address; a classic-only service has no HBONE route.
    #[test]
    fn hbone_routes_dial_the_hbone_port() {
        let mut s = spec(
            "a.local",
            &[("10.0.0.1", true, &[]), ("10.0.0.2", true, &[])],
        );
        s.endpoints[0].hbone_port = Some(15008);
        let t = Routes::new().publish(&[s, spec("b.local", &[("10.0.0.3", true, &[])])]);
        let h = t.lookup_hbone("a.local", 80).unwrap();
        assert_eq!(h.endpoints.len(), 1);
        assert_eq!(h.endpoints[0].state.addr, "10.0.0.1:15008".parse().unwrap());
        assert_eq!(h.candidates("").unwrap(), &[0]);
        assert_eq!(t.lookup("a.local", 80).unwrap().endpoints.len(), 2);
        assert!(t.lookup_hbone("a.local", 81).is_none());
        assert!(t.lookup_hbone("b.local", 80).is_none());
        assert!(t.lookup("b.local", 80).is_some());
        assert!(h.waypoint.is_none());
    }

    /// A service bound to a waypoint has an HBONE route naming it, with or without
    /// endpoints of its own; the classic route does not.
    #[test]
    fn waypoint_bound_routes_name_their_waypoint() {
        let mut a = spec("a.local", &[("10.0.0.1", true, &[])]);
        a.endpoints[0].hbone_port = Some(15008);
        a.waypoint = Some("wp.local".into());
        let mut b = spec("b.local", &[("10.0.0.2", true, &[])]);
        b.waypoint = Some("wp.local".into());
        let t = Routes::new().publish(&[a, b]);
        let a = t.lookup_hbone("a.local", 80).unwrap();
        assert_eq!(a.waypoint.as_deref(), Some("wp.local"));
        assert_eq!(a.endpoints.len(), 1);
        assert!(
            t.lookup("a.local", 80).unwrap().waypoint.is_none(),
            "classic route"
        );
        let b = t.lookup_hbone("b.local", 80).unwrap();
        assert_eq!(b.waypoint.as_deref(), Some("wp.local"));
        assert_eq!(b.candidates(""), Err(LookupError::NoHealthyEndpoint));
        assert!(t.lookup_hbone("b.local", 81).is_none());
        assert_eq!(b.waypoints(0), Some(("wp.local", None)));
        assert_eq!(t.lookup("a.local", 80).unwrap().waypoints(0), None);
    }

    /// Endpoints that are not Istio mTLS workloads are listed on their classic route and
    /// never candidates there (Istio's `EndpointsWithMTLSFilter`); HBONE and waypoint dials
    /// take them (a waypoint pod has no sidecar label).
    #[test]
    fn only_mtls_endpoints_take_classic_connections() {
        let v1: &[(&str, &str)] = &[("version", "v1")];
        let mut a = spec("a.local", &[("10.0.0.1", true, v1), ("10.0.0.2", true, v1)]);
        a.endpoints[0].mtls = false;
        a.endpoints[0].hbone_port = Some(15008);
        a.waypoint = Some("wp.local".into());
        let mut wp = spec("wp.local", &[("10.0.0.9", true, &[])]);
        wp.ports = vec![15008];
        wp.endpoints[0].ports = [(15008, 15008)].into();
        wp.endpoints[0].mtls = false;
        let t = Routes::new().publish(&[a, wp]);
        let r = t.lookup("a.local", 80).unwrap();
        assert_eq!(r.endpoints.len(), 2, "both listed");
        let ips = |r: &Route, subset| -> Vec<String> {
            let c = r.candidates(subset).unwrap();
            c.iter()
                .map(|&i| r.endpoints[i].state.addr.ip().to_string())
                .collect()
        };
        assert_eq!(ips(r, ""), ["10.0.0.2"]);
        assert_eq!(ips(r, "v1"), ["10.0.0.2"]);
        assert_eq!(
            ips(t.lookup_hbone("a.local", 80).unwrap(), ""),
            ["10.0.0.1"]
        );
        // The waypoint: no classic candidate, but its own route dials it.
        let classic = t.lookup("wp.local", 15008).unwrap();
        assert_eq!(classic.candidates(""), Err(LookupError::NoHealthyEndpoint));
        let to = t.lookup_waypoint("wp.local").unwrap();
        assert_eq!(ips(to, ""), ["10.0.0.9"]);
        assert!(t.lookup_waypoint("a.local").is_none(), "only waypoints");
    }

    /// A canary is the first choice for a draw below its weight, the waypoint otherwise, and
    /// each is the other's fallback.
    #[test]
    fn a_canary_is_chosen_below_its_weight() {
        let mut a = spec("a.local", &[]);
        a.waypoint = Some("wp.local".into());
        a.canary = Some(Canary {
            host: "wp2.local".into(),
            weight: 30,
        });
        let t = Routes::new().publish(&[a]);
        let r = t.lookup_hbone("a.local", 80).unwrap();
        assert_eq!(r.waypoints(0), Some(("wp2.local", Some("wp.local"))));
        assert_eq!(r.waypoints(29), Some(("wp2.local", Some("wp.local"))));
        assert_eq!(r.waypoints(30), Some(("wp.local", Some("wp2.local"))));
        assert_eq!(r.waypoints(99), Some(("wp.local", Some("wp2.local"))));
        let share = (0..100).filter(|&d| r.waypoints(d).unwrap().0 == "wp2.local");
        assert_eq!(share.count(), 30);
    }

    /// Endpoints at 15443 are left out of the classic table (and listed); a route left with
    /// none is no route; the HBONE side, other ports and other endpoints stay.
    #[test]
    fn names_too_long_to_send_are_listed() {
        // "outbound_.80_._." is 16 bytes: a 239-byte host fits only without a subset.
        let (fits, subset_over, over) = ("a".repeat(200), "b".repeat(239), "c".repeat(240));
        let ep: &[Ep] = &[("10.0.0.1", true, &[])];
        let t = Routes::new().publish(&[spec(&fits, ep), spec(&subset_over, ep), spec(&over, ep)]);
        let listed: Vec<_> = t
            .too_long
            .iter()
            .map(|l| (l.host.len(), l.subset.as_str(), l.len))
            .collect();
        assert_eq!(listed, [(239, "v1", 257), (240, "", 256)]);
        // Listed, not dropped: the route is there for HBONE and a client that can send it.
        assert!(t.lookup(&over, 80).is_some());
    }

    #[test]
    fn passthrough_ports_are_never_dialed() {
        let mut gw = spec(
            "gw.istio-system.svc.cluster.local",
            &[("10.0.0.9", true, &[])],
        );
        gw.ports = vec![15443, 15021];
        gw.endpoints[0].ports = [(15443, 15443), (15021, 15021)].into();
        gw.endpoints[0].hbone_port = Some(15008);
        let mut own = spec(
            "other.local",
            &[("10.0.0.7", true, &[]), ("10.0.0.8", true, &[])],
        );
        own.endpoints[0].ports = [(80, 15443)].into();
        let t = Routes::new().publish(&[gw, own]);
        let dialed = |host, port| {
            t.lookup(host, port).map(|r| {
                r.endpoints
                    .iter()
                    .map(|e| e.state.addr.to_string())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(dialed("gw.istio-system.svc.cluster.local", 15443), None);
        assert_eq!(
            dialed("gw.istio-system.svc.cluster.local", 15021),
            Some(vec!["10.0.0.9:15021".to_string()])
        );
        assert_eq!(
            dialed("other.local", 80),
            Some(vec!["10.0.0.8:3000".to_string()])
        );
        let hbone = t
            .lookup_hbone("gw.istio-system.svc.cluster.local", 15443)
            .unwrap();
        assert_eq!(hbone.endpoints[0].state.addr.to_string(), "10.0.0.9:15008");
        let left: Vec<_> = t
            .left_out
            .iter()
            .map(|l| (l.port, l.endpoint.to_string()))
            .collect();
        assert_eq!(
            left,
            [
                (15443, "10.0.0.9:15443".to_string()),
                (80, "10.0.0.7:15443".to_string())
            ]
        );
    }
}
