//! ServiceEntries' routes, as istiod gives them to its east-west gateway.
//!
//! - **Who owns a host.** A Kubernetes Service visible to the gateway, else the first visible
//!   entry naming it in istiod's order for a gateway (`DefaultSidecarScopeForGateway`, with
//!   `initServiceRegistry`'s lists): exported privately to the gateway's namespace, then to
//!   it by name, then to everyone, each by creation time. An owner the gateway does not serve
//!   (`MESH_EXTERNAL`, DNS) leaves the host without a route, as istiod builds no SNI cluster
//!   for it.
//! - **Which endpoints.** Every entry of the owner's namespace naming the host, whatever its
//!   own location, resolution or `exportTo` (istiod keys instances `instancesKey{hostname,
//!   namespace}` and reads every registry's shard of a host and namespace), on the route's
//!   ports whose name it has (EDS matches endpoints by port name).
//! - **Which ports.** The owner's (a Service's own), and those of entries istiod merges into it
//!   (`canMergeServices`: same `exportTo`, selector and resolution; their metadata labels are
//!   not compared here).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::cache::Watched;
use super::project::{ObjKey, SvcInfo, exported_to};
use super::service_entry::{SeInfo, SePort};
use super::specs::{
    EntryContext, LabelShare, Model, disabled_ports, entry_endpoint, on_our_network, subset_keys,
};
use super::workload_entry::WeInfo;
use crate::routes::{EndpointSpec, ServiceSpec};
use crate::sni_name::validate_host;

/// One workload of an entry, and the namespace whose PeerAuthentications apply to it: none
/// for an inline endpoint, as istiod gives it an empty config key
/// (`convertServiceEntryToInstances`), so that only the root's mesh-wide policy counts; its
/// own for a selected WorkloadEntry.
struct Workload<'a> {
    we: &'a WeInfo,
    policy_ns: &'a str,
}

/// The workloads of entry `se` in `ns`, on the cluster's network: with a `workloadSelector`
/// the WorkloadEntries it selects, else its inline endpoints (istiod's
/// `buildServiceInstances`; validation refuses an entry with both).
fn workloads<'a>(se: &'a SeInfo, ns: &'a str, from: &EntryContext<'_, 'a>) -> Vec<Workload<'a>> {
    let all: Vec<Workload<'a>> = match se.selector.as_deref() {
        Some(sel) => (from.entries_by_ns.get(ns).into_iter().flatten())
            .filter(|we| we.selected_by(sel, from.augment))
            .map(|&we| Workload { we, policy_ns: ns })
            .collect(),
        None => (se.endpoints.iter())
            .map(|we| Workload { we, policy_ns: "" })
            .collect(),
    };
    all.into_iter()
        .filter(|w| on_our_network(w.we, from.augment.network))
        .collect()
}

/// Where an entry exported to `to` from `ns` stands in istiod's order of a gateway's services
/// in `gateway_ns`: private to it, exported to it by name, public.
fn tier(to: Option<&[Box<str>]>, ns: &str, gateway_ns: &str) -> u8 {
    match to {
        None => 2,
        Some(to) if to.iter().any(|e| &**e == "*") => 2,
        Some(to) if ns == gateway_ns && to.iter().any(|e| &**e == ".") => 0,
        Some(_) => 1,
    }
}

/// Whether istiod merges `other`'s ports into `owner`'s service (`canMergeServices`, less the
/// metadata labels the projection does not keep).
fn mergeable(owner: &SeInfo, other: &SeInfo) -> bool {
    owner.export_to == other.export_to
        && owner.selector == other.selector
        && owner.resolution == other.resolution
}

/// The ports (number → dialed port) a Service-side port list gives workload `we` of entry
/// `se`: each of `ports` (number, name) whose name one of the entry's ports has.
fn port_map<'p>(
    ports: impl Iterator<Item = (u16, &'p str)>,
    se: &SeInfo,
    we: &WeInfo,
) -> BTreeMap<u16, u16> {
    ports
        .filter_map(|(number, name)| {
            let p = se.ports.iter().find(|p| *p.name == *name)?;
            Some((number, p.on(we)))
        })
        .collect()
}

/// Who owns a host ([`Model::service_entry_specs`]).
#[derive(Clone, Copy)]
enum Owner<'a> {
    /// The Kubernetes Service routed at this index of the routes.
    Service { index: usize, svc: &'a SvcInfo },
    /// The first entry naming it.
    Entry(&'a SeInfo),
    /// A Service without a route (no TCP port): the host has none.
    Unrouted,
}

impl Model {
    /// Adds the ServiceEntries' routes to `services` (the Kubernetes Services' routes), and
    /// their endpoints to the Services whose hosts they name in the Services' namespaces.
    pub(super) fn service_entry_specs<'a>(
        &'a self,
        entries: &'a Watched<SeInfo>,
        services: &mut Vec<ServiceSpec>,
        from: &EntryContext<'_, 'a>,
    ) {
        let gateway_ns = &*self.gateway_namespace;
        let mut all: Vec<(&'a ObjKey, &'a SeInfo)> = entries.iter().collect();
        all.sort_by(|a, b| (&a.1.created, a.0).cmp(&(&b.1.created, b.0)));
        // Kubernetes Services' hosts that entries name (`<name>.<namespace>.svc.<domain>`): a
        // Service visible to the gateway owns its host, routed or not (UDP only, say).
        let mut owner: HashMap<&'a str, (&'a str, Owner<'a>)> = HashMap::new();
        let suffix = format!(".svc.{}", from.domain.to_ascii_lowercase());
        let named: BTreeSet<&'a str> = (all.iter())
            .flat_map(|(_, se)| se.hosts.iter().map(|h| &**h))
            .collect();
        for host in named {
            let Some((name, ns)) = host.strip_suffix(&suffix).and_then(|h| h.split_once('.'))
            else {
                continue;
            };
            let Some(svc) = self.services.get(&(ns.into(), name.into())) else {
                continue;
            };
            if !svc.visible_to(ns, gateway_ns) {
                continue;
            }
            let owned = match services.iter().position(|s| s.host == host) {
                Some(index) => Owner::Service { index, svc },
                None => Owner::Unrouted,
            };
            owner.insert(host, (ns, owned));
        }
        let mut visible: Vec<&(&'a ObjKey, &'a SeInfo)> = (all.iter())
            .filter(|((ns, _), se)| exported_to(se.export_to.as_deref(), ns, gateway_ns))
            .collect();
        // Stable: creation order within each tier.
        visible.sort_by_key(|((ns, _), se)| tier(se.export_to.as_deref(), ns, gateway_ns));
        for (key, se) in visible.into_iter().copied() {
            let ns = &*key.0;
            for host in se.hosts.iter().filter(|h| validate_host(h).is_ok()) {
                (owner.entry(host)).or_insert((ns, Owner::Entry(se)));
            }
        }
        // Each owned host's entries in its owner's namespace, oldest first.
        let mut groups: BTreeMap<&'a str, Vec<&'a SeInfo>> = BTreeMap::new();
        for &(key, se) in &all {
            for host in se.hosts.iter() {
                if owner.get(&**host).is_some_and(|&(n, _)| n == &*key.0) {
                    groups.entry(host).or_default().push(se);
                }
            }
        }
        let mut routes = Vec::new();
        for (host, group) in groups {
            let (ns, first) = owner[host];
            match first {
                Owner::Service { index, svc } => {
                    let node_known = self.node_name.is_some();
                    add_to_service(&mut services[index], svc, node_known, ns, &group, from);
                }
                Owner::Entry(first) if first.served() => {
                    routes.push(entry_route(host, ns, first, &group, from));
                }
                // Owned by an entry the gateway does not serve: no route, as in istiod.
                Owner::Entry(_) | Owner::Unrouted => {}
            }
        }
        services.extend(routes);
    }
}

/// Adds the endpoints of entries `group` (of the Service's namespace `ns`, naming its host) to
/// a Service's route, on the Service ports whose name one of the entry's ports has; an
/// address the Service's slices list stays theirs, and an address in two entries serves the
/// ports of both.
fn add_to_service(
    spec: &mut ServiceSpec,
    svc: &SvcInfo,
    node_known: bool,
    ns: &str,
    group: &[&SeInfo],
    from: &EntryContext<'_, '_>,
) {
    // An entry has no node: a node-local Service keeps it only on a gateway that does not
    // know its own (see `specs`, WorkloadEntries).
    if svc.node_local && node_known {
        return;
    }
    let wanted = subset_keys(&spec.subsets);
    let mut share = LabelShare::default();
    let mut added: BTreeMap<IpAddr, (EndpointSpec, Workload)> = BTreeMap::new();
    for se in group {
        for w in workloads(se, ns, from) {
            if spec.endpoints.iter().any(|e| e.address == w.we.address) {
                continue;
            }
            let named = (svc.ports.iter()).map(|(n, p)| (*p, n.as_deref().unwrap_or_default()));
            add_workload(
                &mut added,
                port_map(named, se, w.we),
                w,
                &wanted,
                &mut share,
                from,
            );
        }
    }
    if !added.is_empty() {
        let added = with_policies(added, from);
        spec.endpoints.extend(added);
        spec.endpoints.sort_by_key(|e| e.address);
    }
}

/// Adds workload `w` serving `map` to `eps`: a new endpoint, or more ports of the one at its
/// address (the first mapping of a port kept).
fn add_workload<'a>(
    eps: &mut BTreeMap<IpAddr, (EndpointSpec, Workload<'a>)>,
    map: BTreeMap<u16, u16>,
    w: Workload<'a>,
    wanted: &[&'a str],
    share: &mut LabelShare<'a>,
    from: &EntryContext<'_, 'a>,
) {
    if map.is_empty() {
        return;
    }
    match eps.entry(w.we.address) {
        Entry::Occupied(mut e) => {
            for (port, target) in map {
                e.get_mut().0.ports.entry(port).or_insert(target);
            }
        }
        Entry::Vacant(e) => {
            let labels = share.of(wanted, |k| w.we.label(k, from.augment));
            e.insert((entry_endpoint(w.we, map, labels), w));
        }
    }
}

/// The endpoints, each with the ports its PeerAuthentications disable.
fn with_policies(
    eps: BTreeMap<IpAddr, (EndpointSpec, Workload)>,
    from: &EntryContext<'_, '_>,
) -> Vec<EndpointSpec> {
    (eps.into_values())
        .map(|(mut ep, w)| {
            if w.we.mtls && !from.peer_auths.is_empty() {
                ep.mtls_disabled =
                    disabled_ports(&ep, w.we, w.policy_ns, from.peer_auths, from.augment);
            }
            ep
        })
        .collect()
}

/// The route of `host`, owned by entry `first` of namespace `ns`, served by the entries
/// `group` of that namespace naming it (oldest first).
fn entry_route<'a>(
    host: &str,
    ns: &'a str,
    first: &'a SeInfo,
    group: &[&'a SeInfo],
    from: &EntryContext<'_, 'a>,
) -> ServiceSpec {
    let mut ports: Vec<&SePort> = first.ports.iter().collect();
    for se in group.iter().filter(|se| mergeable(first, se)) {
        for p in se.ports.iter() {
            if !ports.iter().any(|q| q.number == p.number) {
                ports.push(p);
            }
        }
    }
    let (subsets, tls, conn) = Model::merged_rules(from.scope, ns, host);
    let wanted = subset_keys(&subsets);
    let mut share = LabelShare::default();
    let mut eps = BTreeMap::new();
    for se in group {
        for w in workloads(se, ns, from) {
            let named = ports.iter().map(|p| (p.number, &*p.name));
            add_workload(
                &mut eps,
                port_map(named, se, w.we),
                w,
                &wanted,
                &mut share,
                from,
            );
        }
    }
    let endpoints = with_policies(eps, from);
    let mut numbers: Vec<u16> = ports.iter().map(|p| p.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    ServiceSpec {
        host: host.to_string(),
        ports: numbers,
        subsets: Arc::new(subsets),
        endpoints,
        waypoint: None,
        canary: None,
        prefer_close: first.prefer_close,
        tls: Arc::new(tls),
        conn: Arc::new(conn),
    }
}
