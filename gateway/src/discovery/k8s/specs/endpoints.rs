//! A Service's endpoints: its EndpointSlices' listings (one endpoint per address, dual-stack
//! pods at their primary family's address, node-local Services on this node, draining Pods
//! not ready), then the WorkloadEntries it selects, then the ports a PeerAuthentication
//! turns mTLS off on.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use super::{LabelShare, Model, SpecContext, disabled_ports, entry_endpoint, on_our_network};
use crate::discovery::k8s::ambient::{self, NamespaceScope};
use crate::discovery::k8s::augment::endpoint_label;
use crate::discovery::k8s::project::{
    DRAINING_LABEL, PodInfo, SliceEndpoint, SliceInfo, SvcInfo, pod_label,
};
use crate::routes::EndpointSpec;

/// A Service's endpoints by address, and its mTLS slice endpoints with their Pods, which a
/// PeerAuthentication may turn off ([`Model::disable_by_peer_auth`]).
pub(super) type Endpoints<'m> = (
    BTreeMap<IpAddr, EndpointSpec>,
    Vec<(IpAddr, &'m PodInfo, &'m SliceEndpoint)>,
);

/// One Service's place in the build: its namespace and name, the Service, whether it is
/// exposed over HBONE, its Namespace's ambient scope, and the label keys its subsets select
/// on.
pub(super) struct ForService<'m, 'k> {
    pub ns: &'m str,
    pub name: &'m str,
    pub svc: &'m SvcInfo,
    pub hbone: bool,
    pub namespace: Option<&'m NamespaceScope>,
    pub wanted_keys: &'k [&'m str],
}

impl Model {
    /// The endpoints of a Service from its slices (in name order): an endpoint serves a
    /// Service port when its slice has a port of the same name.
    pub(super) fn slice_endpoints<'m>(
        &'m self,
        cx: &'m SpecContext<'m>,
        s: &ForService<'m, '_>,
        share: &mut LabelShare<'m>,
    ) -> Endpoints<'m> {
        let ForService {
            ns,
            name,
            svc,
            hbone,
            namespace,
            wanted_keys,
        } = *s;
        let mut eps: BTreeMap<IpAddr, EndpointSpec> = BTreeMap::new();
        let svc_slices: Vec<(&SliceInfo, BTreeMap<u16, u16>)> = (cx.slices_by_svc)
            .get(&(ns, name))
            .into_iter()
            .flatten()
            .filter_map(|&(_, slice)| {
                let port_map: BTreeMap<u16, u16> = svc
                    .ports
                    .iter()
                    .filter_map(|(pname, port)| {
                        let target = slice.ports.iter().find(|(n, _)| n == pname)?.1;
                        Some((*port, target))
                    })
                    .collect();
                (!port_map.is_empty()).then_some((slice, port_map))
            })
            .collect();
        // Pods listed in the primary family, whose other-family listing is skipped (as
        // istiod keeps one endpoint per dual-stack pod). Built only for a dual-stack
        // Service; endpoints without a Pod cannot be paired and stay as listed.
        let in_primary: HashSet<&str> = if svc_slices.iter().any(|(s, _)| s.family != svc.family) {
            svc_slices
                .iter()
                .filter(|(s, _)| s.family == svc.family)
                .flat_map(|(s, _)| s.endpoints.iter().filter_map(|e| e.pod.as_deref()))
                .collect()
        } else {
            HashSet::new()
        };
        // The mTLS endpoints a PeerAuthentication may turn off, with what selects them.
        let mut sidecars: Vec<(IpAddr, &PodInfo, &SliceEndpoint)> = Vec::new();
        for (slice, port_map) in &svc_slices {
            for e in &slice.endpoints {
                if slice.family != svc.family
                    && e.pod.as_deref().is_some_and(|p| in_primary.contains(p))
                {
                    continue;
                }
                // As istiod compares them: an unknown node is the empty name, so a
                // gateway that does not know its node keeps only endpoints without one.
                if svc.node_local
                    && e.node.as_deref().unwrap_or_default()
                        != self.node_name.as_deref().unwrap_or_default()
                {
                    continue;
                }
                let pod = e
                    .pod
                    .as_ref()
                    .and_then(|p| self.pods.get(&(ns.into(), p.clone())));
                // No Pod (a hand-made slice, the API server's own endpoints) or one not
                // seen yet: not an mTLS endpoint, as istiod takes it.
                let mtls = pod.is_some_and(PodInfo::mtls);
                // A draining Pod takes no new connection ([`DRAINING_LABEL`]).
                let draining = pod
                    .and_then(|p| pod_label(&p.labels, DRAINING_LABEL))
                    .is_some_and(|v| !v.is_empty());
                let ready = e.ready && !draining;
                if let Some(p) = pod.filter(|_| mtls && !cx.peer_auths.is_empty()) {
                    sidecars.push((e.address, p, e));
                }
                let hbone_port = pod
                    .filter(|p| {
                        let mode = pod_label(&p.labels, ambient::DATAPLANE_MODE_LABEL);
                        hbone && ambient::pod_captured(mode, p.sidecar, namespace)
                    })
                    .map(|_| ambient::HBONE_PORT);
                let pod = pod.map(|p| &p.labels);
                let labels = share.of(wanted_keys, |k| endpoint_label(k, pod, e, &cx.augment));
                let spec = eps.entry(e.address).or_insert_with(|| EndpointSpec {
                    address: e.address,
                    ports: BTreeMap::new(),
                    labels: share.none.clone(),
                    ready: false,
                    hbone_port: None,
                    zone: None,
                    mtls: false,
                    mtls_disabled: Vec::new(),
                    weight: 1,
                });
                if spec.zone.is_none() {
                    spec.zone = e.zone.clone();
                }
                // istiod keeps an endpoint per address and Service port
                // (`endpointKey{ip, port name}`), so listings of one address in slices
                // with different ports add up: a ready endpoint serves the ports of its
                // ready listings, one that is not ready those of all of them.
                if ready && !spec.ready {
                    spec.ready = true;
                    spec.labels = labels;
                    spec.ports = port_map.clone();
                    spec.hbone_port = hbone_port;
                    spec.mtls = mtls;
                } else if ready == spec.ready {
                    if spec.ports.is_empty() {
                        spec.labels = labels;
                        spec.hbone_port = hbone_port;
                        spec.mtls = mtls;
                    }
                    for (&port, &target) in port_map {
                        spec.ports.entry(port).or_insert(target);
                    }
                }
            }
        }
        (eps, sidecars)
    }

    /// Adds the WorkloadEntries a Service selects, after its slices' endpoints (istiod's
    /// `collectWorkloadInstanceEndpoints`); an address a slice lists stays the slice's.
    pub(super) fn add_selected_entries<'m>(
        &'m self,
        cx: &'m SpecContext<'m>,
        s: &ForService<'m, '_>,
        share: &mut LabelShare<'m>,
        eps: &mut BTreeMap<IpAddr, EndpointSpec>,
    ) {
        let ForService {
            ns,
            svc,
            wanted_keys,
            ..
        } = *s;
        let selector = svc.entry_selector.as_deref().unwrap_or_default();
        let in_ns = (cx.entries_by_ns).get(ns).filter(|_| !selector.is_empty());
        for &we in in_ns.into_iter().flatten() {
            if !we.selected_by(selector, &cx.augment) || eps.contains_key(&we.address) {
                continue;
            }
            if !on_our_network(we, cx.augment.network) {
                continue;
            }
            // An entry has no node: with `internalTrafficPolicy: Local` it is kept only by a
            // gateway that does not know its own, as for slice endpoints.
            if svc.node_local && self.node_name.is_some() {
                continue;
            }
            let ports: BTreeMap<u16, u16> = svc
                .ports
                .iter()
                .zip(&svc.targets)
                .filter_map(|((name, port), target)| {
                    Some((*port, we.port_for(name.as_deref(), target)?))
                })
                .collect();
            if ports.is_empty() {
                continue;
            }
            let labels = share.of(wanted_keys, |k| we.label(k, &cx.augment));
            let mut ep = entry_endpoint(we, ports, labels);
            if we.mtls && !cx.peer_auths.is_empty() {
                ep.mtls_disabled = disabled_ports(&ep, we, ns, &cx.peer_auths, &cx.augment);
            }
            eps.insert(we.address, ep);
        }
    }

    /// The ports on which a PeerAuthentication in `ns` turns off the mTLS of each of
    /// `sidecars`, asked for the endpoint's own (target) port, as istiod's
    /// `checkMtlsEnabled` does.
    pub(super) fn disable_by_peer_auth(
        cx: &SpecContext<'_>,
        ns: &str,
        sidecars: Vec<(IpAddr, &PodInfo, &SliceEndpoint)>,
        eps: &mut BTreeMap<IpAddr, EndpointSpec>,
    ) {
        for (address, pod, e) in sidecars {
            let Some(spec) = eps.get_mut(&address).filter(|s| s.mtls) else {
                continue;
            };
            let label = |k: &str| endpoint_label(k, Some(&pod.labels), e, &cx.augment);
            spec.mtls_disabled = spec
                .ports
                .iter()
                .filter(|&(_, &target)| cx.peer_auths.disables(ns, label, target))
                .map(|(&port, _)| port)
                .collect();
        }
    }
}
