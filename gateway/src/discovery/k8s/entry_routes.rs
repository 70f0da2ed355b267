//! ServiceEntries' routes, as istiod gives them to its east-west gateway: the entries
//! `service_entry` keeps, grouped by host and namespace (istiod keys their instances
//! `instancesKey{hostname, namespace}`, so every entry of one namespace naming a host serves
//! it), each group a route of its own, or more endpoints of the Kubernetes Service whose host
//! it names in the Service's namespace (istiod's endpoint builder reads every registry's
//! shard of a host and namespace, by Service port name).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::cache::Watched;
use super::project::{ObjKey, SvcInfo, exported_to};
use super::service_entry::{SeInfo, SePort};
use super::specs::{
    EntryContext, LabelShare, Model, disabled_ports, entry_endpoint, on_our_network, service_host,
    subset_keys,
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
        .filter(|w| on_our_network(w.we, from.augment))
        .collect()
}

/// A host's entries: the namespace they are in and those entries, oldest first.
type Group<'a> = (&'a str, &'a str, Vec<&'a SeInfo>);

impl Model {
    /// Adds the ServiceEntries' routes to `services` (the Kubernetes Services' routes). A
    /// host is served by the entries of one namespace: a Kubernetes Service's, else the
    /// oldest entry's (then by namespace and name), as a host belongs to one namespace here.
    pub(super) fn service_entry_specs<'a>(
        &'a self,
        entries: &'a Watched<SeInfo>,
        services: &mut Vec<ServiceSpec>,
        from: &EntryContext<'_, 'a>,
    ) {
        let gateway_ns = &*self.gateway_namespace;
        let mut ordered: Vec<(&ObjKey, &SeInfo)> = (entries.iter())
            .filter(|((ns, _), se)| {
                !se.by_dns && exported_to(se.export_to.as_deref(), ns, gateway_ns)
            })
            .collect();
        ordered.sort_by(|a, b| (&a.1.created, a.0).cmp(&(&b.1.created, b.0)));
        let svc_hosts: HashMap<String, (&str, &SvcInfo)> = (self.services.iter())
            .map(|((ns, name), svc)| (service_host(name, ns, from.domain), (&**ns, svc)))
            .collect();
        let mut groups: Vec<Group<'a>> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for ((ns, _), se) in ordered {
            for host in se.hosts.iter().filter(|h| validate_host(h).is_ok()) {
                let i = *group_of.entry(host).or_insert_with(|| {
                    let owner = svc_hosts.get(&**host).map_or(&**ns, |(n, _)| *n);
                    groups.push((host, owner, Vec::new()));
                    groups.len() - 1
                });
                if groups[i].1 == &**ns {
                    groups[i].2.push(se);
                }
            }
        }
        let routed: HashMap<String, usize> = (services.iter().enumerate())
            .map(|(i, s)| (s.host.clone(), i))
            .collect();
        for (host, ns, ses) in groups {
            match (routed.get(host), svc_hosts.get(host)) {
                (Some(&i), Some(&(_, svc))) => {
                    self.add_to_service(&mut services[i], svc, ns, &ses, from);
                }
                // A Service's host that is not routed (hidden, or without TCP ports).
                (_, Some(_)) => {}
                (_, None) => services.push(entry_route(host, ns, &ses, from)),
            }
        }
    }

    /// Adds the endpoints of a Service's namespace's entries that name its host to its
    /// route, on the Service ports whose name an entry port has; an address the Service's
    /// slices list stays theirs.
    fn add_to_service<'a>(
        &self,
        spec: &mut ServiceSpec,
        svc: &SvcInfo,
        ns: &'a str,
        ses: &[&'a SeInfo],
        from: &EntryContext<'_, 'a>,
    ) {
        let wanted = subset_keys(&spec.subsets);
        let mut share = LabelShare::default();
        let mut added: BTreeMap<IpAddr, EndpointSpec> = BTreeMap::new();
        for se in ses {
            // An entry has no node (see `specs`, WorkloadEntries).
            if svc.node_local && self.node_name.is_some() {
                break;
            }
            for w in workloads(se, ns, from) {
                if spec.endpoints.iter().any(|e| e.address == w.we.address) {
                    continue;
                }
                let map: BTreeMap<u16, u16> = (svc.ports.iter())
                    .filter_map(|(name, port)| {
                        let name = name.as_deref().unwrap_or_default();
                        let p = se.ports.iter().find(|p| *p.name == *name)?;
                        Some((*port, p.on(w.we)))
                    })
                    .collect();
                if map.is_empty() || added.contains_key(&w.we.address) {
                    continue;
                }
                let labels = share.of(&wanted, |k| w.we.label(k, from.augment));
                let mut ep = entry_endpoint(w.we, map, labels);
                if w.we.mtls && !from.peer_auths.is_empty() {
                    ep.mtls_disabled =
                        disabled_ports(&ep, w.we, w.policy_ns, from.peer_auths, from.augment);
                }
                added.insert(w.we.address, ep);
            }
        }
        if !added.is_empty() {
            spec.endpoints.extend(added.into_values());
            spec.endpoints.sort_by_key(|e| e.address);
        }
    }
}

/// The route of `host` served by entries `ses` of namespace `ns` (oldest first): their
/// ports, and their workloads, each on the ports of its own entry (an address in two
/// entries serves the ports of both, the older entry's mapping first).
fn entry_route<'a>(
    host: &str,
    ns: &'a str,
    ses: &[&'a SeInfo],
    from: &EntryContext<'_, 'a>,
) -> ServiceSpec {
    let (subsets, tls) = Model::merged_rules(from.scope, ns, host);
    let wanted = subset_keys(&subsets);
    let mut share = LabelShare::default();
    let mut ports: BTreeSet<u16> = BTreeSet::new();
    let mut eps: BTreeMap<IpAddr, (EndpointSpec, Workload)> = BTreeMap::new();
    for se in ses {
        ports.extend(se.ports.iter().map(|p| p.number));
        for w in workloads(se, ns, from) {
            let map = (se.ports.iter()).map(|p: &SePort| (p.number, p.on(w.we)));
            match eps.entry(w.we.address) {
                Entry::Occupied(mut e) => {
                    for (port, target) in map {
                        e.get_mut().0.ports.entry(port).or_insert(target);
                    }
                }
                Entry::Vacant(e) => {
                    let labels = share.of(&wanted, |k| w.we.label(k, from.augment));
                    e.insert((entry_endpoint(w.we, map.collect(), labels), w));
                }
            }
        }
    }
    let endpoints = (eps.into_values())
        .map(|(mut ep, w)| {
            if w.we.mtls && !from.peer_auths.is_empty() {
                ep.mtls_disabled =
                    disabled_ports(&ep, w.we, w.policy_ns, from.peer_auths, from.augment);
            }
            ep
        })
        .collect();
    ServiceSpec {
        host: host.to_string(),
        ports: ports.into_iter().collect(),
        subsets: Arc::new(subsets),
        endpoints,
        waypoint: None,
        canary: None,
        prefer_close: ses.first().is_some_and(|se| se.prefer_close),
        tls: Arc::new(tls),
    }
}
