//! Publishing a route table: specs merged per (host, port), every subset resolved to its
//! ready endpoints (and the gateway's zone), endpoint state and per-subset counters carried
//! over from the table before, readiness stamped for warmups; then the swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use arc_swap::ArcSwapOption;

use super::*;
use crate::clock;

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

impl Route {
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
