//! The route-spec builder: the projected model turned into [`ServiceSpec`]s on demand. A
//! Service's endpoints are [`endpoints`]'s, its waypoint [`bindings`]'s; ServiceEntries'
//! routes are `entry_routes`'s.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use super::ambient::NamespaceScope;
use super::augment::{Augment, NETWORK_LABEL};
use super::cache::Watched;
use super::crd::Crd;
use super::dr_scope::DrScope;
use super::peer_auth::{PaInfo, PeerAuths};
use super::project::{DrInfo, ObjKey, PodInfo, SliceInfo, SvcInfo};
use super::service_entry::{Resolution, SeInfo};
use super::waypoints::{ClassInfo, WaypointInfo};
use super::workload_entry::WeInfo;
use crate::dr_conn::DrConn;
use crate::dr_tls::DrTls;
use crate::routes::{EndpointSpec, Labels, ServiceSpec, Subsets};
use crate::sni_name::{validate_host, validate_subset};

mod bindings;
mod endpoints;
#[cfg(test)]
mod tests;

pub use bindings::{Blind, CanaryUnused};
use endpoints::ForService;

/// A Service's DestinationRules merged: its subsets, TLS modes and connection settings,
/// shared between Services.
type MergedRules = (Arc<Subsets>, Arc<DrTls>, Arc<DrConn>);

/// Everything discovery knows, projected.
#[derive(Debug)]
pub struct Model {
    pub services: Watched<SvcInfo>,
    pub slices: Watched<SliceInfo>,
    pub pods: Watched<PodInfo>,
    /// Cluster-scoped: keyed `("", name)`.
    pub namespaces: Watched<NamespaceScope>,
    /// `None` while the DestinationRule CRD is not served.
    pub rules: Option<Watched<DrInfo>>,
    /// `None` while the PeerAuthentication CRD is not served (or may not be read).
    pub peer_auths: Option<Watched<PaInfo>>,
    /// Ready waypoints (Gateways with addresses); `None` while the Gateway CRD is not served.
    pub waypoints: Option<Watched<WaypointInfo>>,
    /// GatewayClasses (cluster-scoped: keyed `("", name)`); `None` while not served.
    pub gateway_classes: Option<Watched<ClassInfo>>,
    /// WorkloadEntries; `None` while the CRD is not served (or may not be read).
    pub workload_entries: Option<Watched<WeInfo>>,
    /// ServiceEntries the gateway serves; `None` while the CRD is not served (or readable).
    pub service_entries: Option<Watched<SeInfo>>,
    /// The namespaces whose Gateways are watched (`--namespace`); empty for all.
    pub watched_namespaces: Vec<String>,
    /// Gateways may not be read (403): a waypoint binding cannot be resolved.
    pub gateways_forbidden: bool,
    /// GatewayClasses may not be read (403): their defaults are unknown.
    pub gateway_classes_forbidden: bool,
    /// The cluster's ID (`--cluster-id`), every endpoint's `topology.istio.io/cluster`.
    pub cluster_id: Box<str>,
    /// The gateway's namespace: a Service whose `exportTo` leaves it out is not routed, and
    /// DestinationRules are looked up from it ([`DrScope`]).
    pub gateway_namespace: Box<str>,
    /// istiod's root namespace (`--root-namespace`), the last place rules come from.
    pub root_namespace: Box<str>,
    /// The node the gateway runs on (`--node-name`): a Service with `internalTrafficPolicy:
    /// Local` is served by its endpoints on this node only.
    pub node_name: Option<Box<str>>,
}

impl Model {
    pub fn new(streams: usize) -> Self {
        Model {
            services: Watched::new(streams),
            slices: Watched::new(streams),
            pods: Watched::new(streams),
            namespaces: Watched::new(streams),
            rules: None,
            peer_auths: None,
            waypoints: None,
            gateway_classes: None,
            workload_entries: None,
            service_entries: None,
            watched_namespaces: Vec::new(),
            gateways_forbidden: false,
            gateway_classes_forbidden: false,
            cluster_id: crate::config::CaConfig::DEFAULT_CLUSTER_ID.into(),
            gateway_namespace: "istio-system".into(),
            root_namespace: crate::config::KubeOptions::DEFAULT_ROOT_NAMESPACE.into(),
            node_name: None,
        }
    }

    /// Every watched type has completed its first list.
    pub fn synced(&self) -> bool {
        self.services.synced()
            && self.slices.synced()
            && self.pods.synced()
            && self.namespaces.synced()
            && self.rules.as_ref().is_none_or(Watched::synced)
            && self.peer_auths.as_ref().is_none_or(Watched::synced)
            && self.waypoints.as_ref().is_none_or(Watched::synced)
            && self.gateway_classes.as_ref().is_none_or(Watched::synced)
            && self.workload_entries.as_ref().is_none_or(Watched::synced)
            && self.service_entries.as_ref().is_none_or(Watched::synced)
    }

    /// An optional type's watches started, `streams` of them: its part of the model, empty
    /// and waiting for their first lists.
    pub fn crd_started(&mut self, crd: Crd, streams: usize) {
        match crd {
            Crd::DestinationRule => self.rules = Some(Watched::new(streams)),
            Crd::PeerAuthentication => self.peer_auths = Some(Watched::new(streams)),
            Crd::Gateway => self.waypoints = Some(Watched::new(streams)),
            Crd::GatewayClass => self.gateway_classes = Some(Watched::new(streams)),
            Crd::WorkloadEntry => self.workload_entries = Some(Watched::new(streams)),
            Crd::ServiceEntry => self.service_entries = Some(Watched::new(streams)),
        }
    }

    /// An optional type's part of the model dropped; whether it had one.
    pub fn crd_lost(&mut self, crd: Crd) -> bool {
        match crd {
            Crd::DestinationRule => self.rules.take().is_some(),
            Crd::PeerAuthentication => self.peer_auths.take().is_some(),
            Crd::Gateway => self.waypoints.take().is_some(),
            Crd::GatewayClass => self.gateway_classes.take().is_some(),
            Crd::WorkloadEntry => self.workload_entries.take().is_some(),
            Crd::ServiceEntry => self.service_entries.take().is_some(),
        }
    }

    /// Whether the gateway may not read `crd`, for the types whose absence routing must tell
    /// from their not being seen (waypoints); `None` for the others.
    pub fn forbidden_flag(&mut self, crd: Crd) -> Option<&mut bool> {
        match crd {
            Crd::Gateway => Some(&mut self.gateways_forbidden),
            Crd::GatewayClass => Some(&mut self.gateway_classes_forbidden),
            Crd::DestinationRule
            | Crd::PeerAuthentication
            | Crd::WorkloadEntry
            | Crd::ServiceEntry => None,
        }
    }

    /// The zone the EndpointSlices give the endpoint at `ip` (any slice listing it with one:
    /// a pod's zone is its node's). The gateway finds its own zone by its pod's address.
    pub fn zone_of(&self, ip: IpAddr) -> Option<Arc<str>> {
        self.slices
            .iter()
            .flat_map(|(_, s)| &s.endpoints)
            .filter(|e| e.address == ip)
            .find_map(|e| e.zone.clone())
    }

    /// The cluster's network: the root namespace's `topology.istio.io/network`.
    fn network(&self) -> Option<&str> {
        self.namespaces
            .get(&namespace_key(&self.root_namespace))
            .and_then(|n| n.labels.get(NETWORK_LABEL))
            .map(String::as_str)
            .filter(|n| !n.is_empty())
    }

    /// The WorkloadEntries on another network than the cluster's, as `(namespace/name,
    /// network)`: never dialed from here ([`Model::specs`]), and the log says so.
    pub fn entries_elsewhere(&self) -> Vec<(String, Box<str>)> {
        let ours = self.network();
        let mut out: Vec<(String, Box<str>)> = (self.workload_entries.iter())
            .flat_map(|w| w.iter())
            .filter(|(_, we)| !on_our_network(we, ours))
            .filter_map(|((ns, name), we)| Some((format!("{ns}/{name}"), we.network.clone()?)))
            .collect();
        out.sort();
        out
    }

    /// The mesh-internal ServiceEntries resolved by DNS, as `namespace/name`: the gateway
    /// does not serve them (a host one owns gets no route), and the log says so.
    pub fn entries_by_dns(&self) -> Vec<String> {
        let mut out: Vec<String> = (self.service_entries.iter())
            .flat_map(|w| w.iter())
            .filter(|(_, se)| !se.external && se.resolution == Resolution::Dns)
            .map(|((ns, name), _)| format!("{ns}/{name}"))
            .collect();
        out.sort();
        out
    }

    /// The subsets, TLS modes and connection settings of the rules istiod gives the gateway
    /// for `host`, a Service's in `svc_ns` ([`DrScope`]), merged as `mergeDestinationRule`
    /// merges them: the oldest rule wins a subset name defined twice, and the oldest rule
    /// with a `trafficPolicy` gives the whole policy (a newer rule's `tls` or
    /// `outlierDetection` is dropped even when the older policy sets none). Each subset's
    /// policy is its own rule's. Subset names that cannot appear in an SNI name are dropped.
    pub(super) fn merged_rules(
        scope: &DrScope,
        svc_ns: &str,
        host: &str,
    ) -> (Subsets, DrTls, DrConn) {
        let mut subsets = Subsets::new();
        let mut tls = DrTls::default();
        let mut conn = DrConn::default();
        let mut policy_taken = false;
        for r in scope.rules_for(svc_ns, host) {
            if r.has_policy && !policy_taken {
                tls.service = r.tls.clone();
                conn.service = r.conn.clone();
                policy_taken = true;
            }
            for (i, (name, labels)) in r.subsets.iter().enumerate() {
                if validate_subset(name).is_err() {
                    tracing::debug!(host = %r.host, subset = ?name, "subset name is not routable; skipped");
                    continue;
                }
                // Istio allows upper case in subset names (pkg/config/labels/instance.go,
                // dns1123LabelFmt) and sidecars send it in the SNI name, which the gateway
                // matches ignoring case: kept lower-cased, so `V1` is reachable. Names equal
                // but for case are one subset here; the oldest rule's wins.
                let key = name.to_ascii_lowercase();
                if let std::collections::btree_map::Entry::Vacant(v) = subsets.entry(key) {
                    let subset_tls = r.subset_tls.get(i).cloned().unwrap_or_default();
                    tls.subsets.insert(v.key().clone(), subset_tls);
                    let subset_conn = r.subset_conn.get(i).cloned().unwrap_or_default();
                    if subset_conn != Default::default() {
                        conn.subsets.insert(v.key().clone(), subset_conn);
                    }
                    v.insert(labels.clone());
                }
            }
        }
        (subsets, tls, conn)
    }

    /// The route table's input: one spec per Service with at least one TCP port.
    ///
    /// An endpoint serves a Service port when its slice has a port with the same name
    /// (both empty for an unnamed port). An address listed in several slices of one
    /// Service counts once, ready if any listing is ready. A dual-stack Service has a slice
    /// per family listing the same pods: a pod is one endpoint, at its address of the
    /// Service's primary family, or of the other when it has only that one. Pod labels are
    /// attached only for the label keys the Service's subsets select on; endpoints with equal
    /// labels share one map, so the table holds a few maps rather than one per endpoint.
    pub fn specs(&self, domain: &str) -> Vec<ServiceSpec> {
        let scope = DrScope::new(
            self.rules.iter().flat_map(|r| r.iter().map(|(_, r)| r)),
            &self.gateway_namespace,
            &self.root_namespace,
        );
        let peer_auths = self
            .peer_auths
            .iter()
            .flat_map(|p| p.iter().map(|(_, p)| p));
        let cx = SpecContext {
            slices_by_svc: self.slices_by_service(),
            rules_by_svc: self.rules_by_service(&scope, domain),
            peer_auths: PeerAuths::new(peer_auths, &self.root_namespace),
            augment: Augment {
                cluster: &self.cluster_id,
                network: self.network(),
            },
            by_ip: self.hosts_by_ip(domain),
            entries_by_ns: self.entries_by_namespace(),
            no_rules: MergedRules::default(),
        };
        let mut share = LabelShare::default();
        let mut out = Vec::with_capacity(self.services.len());
        for ((ns, name), svc) in self.services.iter() {
            out.extend(self.service_spec(&cx, (ns, name), svc, domain, &mut share));
        }
        if let Some(entries) = &self.service_entries {
            let from = EntryContext {
                domain,
                scope: &scope,
                augment: &cx.augment,
                peer_auths: &cx.peer_auths,
                entries_by_ns: &cx.entries_by_ns,
            };
            self.service_entry_specs(entries, &mut out, &from);
        }
        out
    }

    /// One Service's spec; `None` for a Service without a TCP port, hidden from the gateway's
    /// namespace (istiod builds no listener for it there) or whose host is not routable.
    fn service_spec<'m>(
        &'m self,
        cx: &'m SpecContext<'m>,
        (ns, name): (&'m str, &'m str),
        svc: &'m SvcInfo,
        domain: &str,
        share: &mut LabelShare<'m>,
    ) -> Option<ServiceSpec> {
        if svc.ports.is_empty() || !svc.visible_to(ns, &self.gateway_namespace) {
            return None;
        }
        let namespace = self.namespaces.get(&namespace_key(ns));
        // Only global Services are exposed over HBONE (`ambientindex.go`).
        let hbone = svc.scope.global;
        let (waypoint, canary) = match hbone
            .then(|| self.waypoints_of(ns, svc, namespace, &cx.by_ip))
            .flatten()
        {
            Some((host, canary)) => (Some(host), canary.ok().flatten()),
            None => (None, None),
        };
        let host = service_host(name, ns, domain);
        if validate_host(&host).is_err() {
            tracing::debug!(%host, "service host is not routable; skipped");
            return None;
        }
        let mut ports: Vec<u16> = svc.ports.iter().map(|(_, p)| *p).collect();
        ports.sort_unstable();
        ports.dedup();
        let (subs, tls, conn) = (cx.rules_by_svc).get(&(ns, name)).unwrap_or(&cx.no_rules);
        let wanted_keys = subset_keys(subs);
        let this = ForService {
            ns,
            name,
            svc,
            hbone,
            namespace,
            wanted_keys: &wanted_keys,
        };
        let (mut eps, sidecars) = self.slice_endpoints(cx, &this, share);
        self.add_selected_entries(cx, &this, share, &mut eps);
        Self::disable_by_peer_auth(cx, ns, sidecars, &mut eps);
        Some(ServiceSpec {
            host,
            ports,
            subsets: subs.clone(),
            endpoints: eps.into_values().collect(),
            waypoint,
            canary,
            prefer_close: svc.prefer_close,
            tls: tls.clone(),
            conn: conn.clone(),
        })
    }

    /// Each Service's slices in name order: which listing of an address comes first must
    /// not depend on hash order (two gateways, or two restarts, would route differently).
    fn slices_by_service(&self) -> HashMap<(&str, &str), Vec<(&str, &SliceInfo)>> {
        let mut by_svc: HashMap<(&str, &str), Vec<(&str, &SliceInfo)>> = HashMap::new();
        for ((ns, name), s) in self.slices.iter() {
            by_svc
                .entry((ns.as_ref(), s.service.as_ref()))
                .or_default()
                .push((name, s));
        }
        for slices in by_svc.values_mut() {
            slices.sort_unstable_by_key(|(name, _)| *name);
        }
        by_svc
    }

    /// Each Service's rules, merged; Services with equal rules share one map (rules are
    /// often copies of each other, and a wildcard rule serves many Services).
    fn rules_by_service(
        &self,
        scope: &DrScope<'_>,
        domain: &str,
    ) -> HashMap<(&str, &str), MergedRules> {
        let mut shared: HashMap<Subsets, Arc<Subsets>> = HashMap::new();
        let mut shared_tls: HashMap<DrTls, Arc<DrTls>> = HashMap::new();
        let mut shared_conn: HashMap<DrConn, Arc<DrConn>> = HashMap::new();
        (self.services.iter())
            .map(|((ns, name), _)| {
                let host = service_host(name, ns, domain);
                let (subs, tls, conn) = Self::merged_rules(scope, ns, &host);
                let subs = shared
                    .entry(subs)
                    .or_insert_with_key(|s| Arc::new(s.clone()))
                    .clone();
                let tls = shared_tls
                    .entry(tls)
                    .or_insert_with_key(|t| Arc::new(t.clone()))
                    .clone();
                let conn = shared_conn
                    .entry(conn)
                    .or_insert_with_key(|c| Arc::new(c.clone()))
                    .clone();
                ((ns.as_ref(), name.as_ref()), (subs, tls, conn))
            })
            .collect()
    }

    /// Each namespace's WorkloadEntries in name order: which of two entries with one
    /// address serves must not depend on hash order.
    fn entries_by_namespace(&self) -> HashMap<&str, Vec<&WeInfo>> {
        let mut entries: Vec<(&ObjKey, &WeInfo)> = (self.workload_entries.iter())
            .flat_map(|w| w.iter())
            .collect();
        entries.sort_unstable_by_key(|(key, _)| *key);
        let mut by_ns: HashMap<&str, Vec<&WeInfo>> = HashMap::new();
        for ((ns, _), we) in entries {
            by_ns.entry(ns).or_default().push(we);
        }
        by_ns
    }
}

/// What every Service's spec is built from, gathered once per build ([`Model::specs`]).
pub(super) struct SpecContext<'m> {
    /// Each Service's slices, in name order.
    slices_by_svc: HashMap<(&'m str, &'m str), Vec<(&'m str, &'m SliceInfo)>>,
    /// Each Service's merged rules.
    rules_by_svc: HashMap<(&'m str, &'m str), MergedRules>,
    peer_auths: PeerAuths<'m>,
    augment: Augment<'m>,
    /// Cluster IPs to Service hosts, for waypoints whose status gives only an IP.
    by_ip: HashMap<IpAddr, String>,
    /// Each namespace's WorkloadEntries, in name order.
    entries_by_ns: HashMap<&'m str, Vec<&'m WeInfo>>,
    /// A Service's without rules.
    no_rules: MergedRules,
}

/// What [`Model::specs`] has built that ServiceEntries' routes need too (`entry_routes`).
pub(super) struct EntryContext<'m, 'a> {
    pub domain: &'m str,
    pub scope: &'m DrScope<'a>,
    pub augment: &'m Augment<'a>,
    pub peer_auths: &'m PeerAuths<'a>,
    /// Each namespace's WorkloadEntries, in name order.
    pub entries_by_ns: &'m HashMap<&'a str, Vec<&'a WeInfo>>,
}

/// Endpoints' labels, as far as subsets select on them: endpoints with equal labels share one
/// map, so the table holds a few maps rather than one per endpoint.
#[derive(Default)]
pub(super) struct LabelShare<'a> {
    sets: HashMap<Vec<(&'a str, &'a str)>, Arc<Labels>>,
    key: Vec<(&'a str, &'a str)>,
    /// The map of an endpoint with none of the wanted labels.
    none: Arc<Labels>,
}

impl<'a> LabelShare<'a> {
    /// The shared map of the `wanted` keys (sorted) that `label` gives a value.
    pub fn of(
        &mut self,
        wanted: &[&'a str],
        label: impl Fn(&'a str) -> Option<&'a str>,
    ) -> Arc<Labels> {
        self.key.clear();
        (self.key).extend(wanted.iter().filter_map(|&k| Some((k, label(k)?))));
        if self.key.is_empty() {
            return self.none.clone();
        }
        if let Some(shared) = self.sets.get(&self.key) {
            return shared.clone();
        }
        let new: Arc<Labels> = Arc::new(
            (self.key.iter())
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        self.sets.insert(self.key.clone(), new.clone());
        new
    }
}

/// The label keys `subsets` select on, sorted: the only labels an endpoint's route keeps.
pub(super) fn subset_keys(subsets: &Subsets) -> Vec<&str> {
    let mut keys: Vec<&str> = (subsets.values())
        .flat_map(|l| l.keys().map(String::as_str))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Whether a WorkloadEntry (or a ServiceEntry's endpoint) is on the cluster's network: one
/// on another would be reached through that network's gateway, and this one dials only its
/// own (`gateway/WORKLOAD_ENTRIES.md`). `ours` is the cluster's; either unknown counts as the
/// same.
pub(super) fn on_our_network(we: &WeInfo, ours: Option<&str>) -> bool {
    match (we.network.as_deref(), ours) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => true,
    }
}

/// A WorkloadEntry's (or a ServiceEntry endpoint's) endpoint, serving `ports`.
pub(super) fn entry_endpoint(
    we: &WeInfo,
    ports: BTreeMap<u16, u16>,
    labels: Arc<Labels>,
) -> EndpointSpec {
    EndpointSpec {
        address: we.address,
        ports,
        labels,
        ready: true,
        hbone_port: None,
        zone: we.locality[1].clone(),
        mtls: we.mtls,
        mtls_disabled: Vec::new(),
        weight: we.weight,
    }
}

/// The Service ports of `spec` on which a PeerAuthentication in `ns` disables the mTLS of
/// entry `we` (asked for the entry's own port, as istiod's `checkMtlsEnabled`).
pub(super) fn disabled_ports(
    spec: &EndpointSpec,
    we: &WeInfo,
    ns: &str,
    peer_auths: &PeerAuths<'_>,
    augment: &Augment<'_>,
) -> Vec<u16> {
    (spec.ports.iter())
        .filter(|&(_, &target)| peer_auths.disables(ns, |k| we.label(k, augment), target))
        .map(|(&port, _)| port)
        .collect()
}

/// The host of Service `name` in namespace `ns`, lower-cased as routes are keyed.
pub(super) fn service_host(name: &str, ns: &str, domain: &str) -> String {
    format!("{name}.{ns}.svc.{domain}").to_ascii_lowercase()
}

/// The key of a Namespace (cluster-scoped) in [`Model::namespaces`].
fn namespace_key(name: &str) -> ObjKey {
    ("".into(), name.into())
}
