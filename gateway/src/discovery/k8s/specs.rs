//! The route-spec builder: the projected model turned into [`ServiceSpec`]s on demand.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use super::ambient::{self, NamespaceScope};
use super::augment::{Augment, NETWORK_LABEL, endpoint_label};
use super::cache::Watched;
use super::crd::Crd;
use super::dr_scope::DrScope;
use super::peer_auth::{PaInfo, PeerAuths};
use super::project::{
    DRAINING_LABEL, DrInfo, ObjKey, PodInfo, SliceEndpoint, SliceInfo, SvcInfo, pod_label,
};
use super::service_entry::{Resolution, SeInfo};
use super::waypoints::{self, ClassInfo, WaypointAddress, WaypointInfo};
use super::workload_entry::WeInfo;
use crate::dr_conn::DrConn;
use crate::dr_tls::DrTls;
use crate::routes::{Canary, EndpointSpec, Labels, ServiceSpec, Subsets};
use crate::sni_name::{validate_host, validate_subset};

/// A Service's DestinationRules merged: its subsets and TLS modes, shared between Services.
type MergedRules = (Arc<Subsets>, Arc<DrTls>, Arc<DrConn>);

/// Why a waypoint cannot be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Blind {
    /// Its namespace is not among `--namespace`.
    NotWatched,
    /// The gateway may not read Gateways (403).
    Forbidden,
    /// Its listeners' rules refuse the Service's namespace, but its GatewayClass, which
    /// may not be read (403), could name another listener that allows it.
    ClassForbidden,
}

/// Why a Service's canary waypoint takes none of its tunnels; all of them then go to its
/// waypoint, as istiod falls back (and reports on the Service's `istio.io/WaypointBound`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CanaryUnused {
    /// The weight annotation is not a whole number from 0 to 100 (`CanaryInvalidWeight`).
    InvalidWeight(Box<str>),
    /// It names the waypoint itself (`CanarySameAsPrimary`).
    SameAsPrimary,
    /// No such Gateway is ready, or it does not take this Service (its listeners' rules, or
    /// its `istio.io/waypoint-for`).
    NotUsable,
    /// The gateway cannot see it.
    Unseen(Blind),
}

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

    /// The host of the waypoint a global Service's tunnels go to, if it has one, and what
    /// becomes of its canary. `by_ip` maps cluster IPs to hosts, for a waypoint whose status
    /// gives only an IP.
    fn waypoints_of(
        &self,
        ns: &str,
        svc: &SvcInfo,
        namespace: Option<&NamespaceScope>,
        by_ip: &HashMap<IpAddr, String>,
    ) -> Option<(String, Result<Option<Canary>, CanaryUnused>)> {
        let b = waypoints::binding(ns, &svc.scope, namespace)?;
        // Without a usable address the tunnels have nowhere to go: `ns/name` is no route's
        // host, so they are answered 503, and `/debug/routes` shows which waypoint it is.
        // So too for a waypoint the gateway cannot judge: sending the tunnels around it
        // would skip its policy.
        if self.blind_to(ns, &b).is_some() {
            return Some((b.key(), Ok(None)));
        }
        let w = self.resolve(ns, &b)?;
        let Some(host) = host_of(w, by_ip) else {
            return Some((b.key(), Ok(None)));
        };
        let canary = self.canary_of(ns, svc, namespace, &b, by_ip);
        Some((host, canary))
    }

    /// The canary of a Service in `ns` whose waypoint binding `primary` resolved: `Ok(None)`
    /// when none is named or its weight is 0.
    fn canary_of(
        &self,
        ns: &str,
        svc: &SvcInfo,
        namespace: Option<&NamespaceScope>,
        primary: &waypoints::Binding,
        by_ip: &HashMap<IpAddr, String>,
    ) -> Result<Option<Canary>, CanaryUnused> {
        let Some((b, raw)) = waypoints::canary_binding(ns, &svc.scope, namespace) else {
            return Ok(None);
        };
        let weight = waypoints::canary_weight(raw)
            .ok_or_else(|| CanaryUnused::InvalidWeight(raw.unwrap_or_default().into()))?;
        if (b.namespace, b.name) == (primary.namespace, primary.name) {
            return Err(CanaryUnused::SameAsPrimary);
        }
        if let Some(why) = self.blind_to(ns, &b) {
            return Err(CanaryUnused::Unseen(why));
        }
        let w = self.resolve(ns, &b).ok_or(CanaryUnused::NotUsable)?;
        let host = host_of(w, by_ip).ok_or(CanaryUnused::NotUsable)?;
        Ok((weight > 0).then(|| Canary {
            host: host.into(),
            weight,
        }))
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

    /// Cluster IPs to Service hosts, when some waypoint's status gives only an IP.
    fn hosts_by_ip(&self, domain: &str) -> HashMap<IpAddr, String> {
        match &self.waypoints {
            Some(w)
                if w.iter()
                    .any(|(_, w)| matches!(w.address, Some(WaypointAddress::Ip(_)))) =>
            {
                let services = self.services.iter();
                services
                    .flat_map(|((ns, name), s)| {
                        let host = service_host(name, ns, domain);
                        s.cluster_ips.iter().map(move |ip| (*ip, host.clone()))
                    })
                    .collect()
            }
            _ => HashMap::new(),
        }
    }

    /// The global Services whose canary waypoint takes none of their tunnels, as `(service
    /// host, canary namespace/name, why)`, for the log.
    pub fn unused_canaries(&self, domain: &str) -> Vec<(String, String, CanaryUnused)> {
        let mut out = Vec::new();
        let named = |c: &ambient::CanaryLabels| c != &ambient::CanaryLabels::default();
        let any = self.services.iter().any(|(_, s)| named(&s.scope.canary))
            || self.namespaces.iter().any(|(_, n)| named(&n.canary));
        if !any {
            return out;
        }
        let by_ip = self.hosts_by_ip(domain);
        for ((ns, name), svc) in self.services.iter() {
            if !svc.scope.global || svc.ports.is_empty() {
                continue;
            }
            let namespace = self.namespaces.get(&namespace_key(ns));
            let Some((_, Err(why))) = self.waypoints_of(ns, svc, namespace, &by_ip) else {
                continue;
            };
            let Some((canary, _)) = waypoints::canary_binding(ns, &svc.scope, namespace) else {
                continue;
            };
            let host = service_host(name, ns, domain);
            out.push((host, canary.key(), why));
        }
        out.sort();
        out
    }

    /// The ready waypoint (Gateway) `ns/name`, if any.
    fn waypoint(&self, ns: &str, name: &str) -> Option<&WaypointInfo> {
        self.waypoints.as_ref()?.get(&(ns.into(), name.into()))
    }

    /// GatewayClasses may exist but not be read (403): their defaults are unknown.
    fn classes_unread(&self) -> bool {
        self.gateway_classes.is_none() && self.gateway_classes_forbidden
    }

    /// The ready waypoint binding `b` of a Service in `ns` names, if it takes it.
    fn resolve(&self, ns: &str, b: &waypoints::Binding) -> Option<&WaypointInfo> {
        let class_of = |class: &str| {
            let classes = self.gateway_classes.as_ref()?;
            classes.get(&("".into(), class.into()))
        };
        b.resolve(ns, |n, name| self.waypoint(n, name), class_of)
    }

    /// Why the gateway cannot judge binding `b` of a Service in `ns`, if it cannot. Without
    /// the Gateway CRD there are no waypoints to judge.
    fn blind_to(&self, ns: &str, b: &waypoints::Binding) -> Option<Blind> {
        if self.waypoints.is_none() {
            return self.gateways_forbidden.then_some(Blind::Forbidden);
        }
        let watched = self.watched_namespaces.is_empty()
            || self.watched_namespaces.iter().any(|w| w == b.namespace);
        if !watched {
            return Some(Blind::NotWatched);
        }
        let might = || {
            self.resolve(ns, b).is_none()
                && b.class_might_allow(ns, |n, name| self.waypoint(n, name))
        };
        (self.classes_unread() && might()).then_some(Blind::ClassForbidden)
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

    /// The global Services bound to a waypoint the gateway cannot see, as `(service host,
    /// waypoint namespace/name, why)`: their tunnels are refused, and the log says why.
    pub fn unseen_waypoints(&self, domain: &str) -> Vec<(String, String, Blind)> {
        let mut out = Vec::new();
        let may_be_blind = match &self.waypoints {
            None => self.gateways_forbidden,
            Some(_) => !self.watched_namespaces.is_empty() || self.classes_unread(),
        };
        if !may_be_blind {
            return out;
        }
        for ((ns, name), svc) in self.services.iter() {
            if !svc.scope.global || svc.ports.is_empty() {
                continue;
            }
            let namespace = self.namespaces.get(&namespace_key(ns));
            let Some(b) = waypoints::binding(ns, &svc.scope, namespace) else {
                continue;
            };
            if let Some(why) = self.blind_to(ns, &b) {
                let host = service_host(name, ns, domain);
                out.push((host, b.key(), why));
            }
        }
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
    /// Service's primary family, or of the other when it has only that one. Pod labels are attached only
    /// for the label keys the Service's subsets select on; endpoints with equal labels
    /// share one map, so the table holds a few maps rather than one per endpoint.
    pub fn specs(&self, domain: &str) -> Vec<ServiceSpec> {
        // Each Service's slices in name order: which listing of an address comes first must
        // not depend on hash order (two gateways, or two restarts, would route differently).
        let mut slices_by_svc: HashMap<(&str, &str), Vec<(&str, &SliceInfo)>> = HashMap::new();
        for ((ns, name), s) in self.slices.iter() {
            slices_by_svc
                .entry((ns.as_ref(), s.service.as_ref()))
                .or_default()
                .push((name, s));
        }
        for slices in slices_by_svc.values_mut() {
            slices.sort_unstable_by_key(|(name, _)| *name);
        }
        let scope = DrScope::new(
            self.rules.iter().flat_map(|r| r.iter().map(|(_, r)| r)),
            &self.gateway_namespace,
            &self.root_namespace,
        );
        // Each Service's rules, merged; Services with equal rules share one map (rules are
        // often copies of each other, and a wildcard rule serves many Services).
        let mut shared: HashMap<Subsets, Arc<Subsets>> = HashMap::new();
        let mut shared_tls: HashMap<DrTls, Arc<DrTls>> = HashMap::new();
        let mut shared_conn: HashMap<DrConn, Arc<DrConn>> = HashMap::new();
        let rules_by_svc: HashMap<(&str, &str), MergedRules> = self
            .services
            .iter()
            .map(|((ns, name), _)| {
                let host = service_host(name, ns, domain);
                let (subs, tls, conn) = Self::merged_rules(&scope, ns, &host);
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
            .collect();
        let peer_auths = PeerAuths::new(
            self.peer_auths
                .iter()
                .flat_map(|p| p.iter().map(|(_, p)| p)),
            &self.root_namespace,
        );
        let augment = Augment {
            cluster: &self.cluster_id,
            network: self.network(),
        };
        let no_rules: MergedRules = Default::default();
        let mut share = LabelShare::default();
        let mut out = Vec::with_capacity(self.services.len());
        let by_ip = self.hosts_by_ip(domain);
        // Each namespace's WorkloadEntries in name order: which of two entries with one
        // address serves must not depend on hash order.
        let mut entries: Vec<(&ObjKey, &WeInfo)> = self
            .workload_entries
            .iter()
            .flat_map(|w| w.iter())
            .collect();
        entries.sort_unstable_by_key(|(key, _)| *key);
        let mut entries_by_ns: HashMap<&str, Vec<&WeInfo>> = HashMap::new();
        for ((ns, _), we) in entries {
            entries_by_ns.entry(ns).or_default().push(we);
        }
        for ((ns, svc_name), svc) in self.services.iter() {
            // Hidden from the gateway's namespace: istiod builds no listener for it there.
            if svc.ports.is_empty() || !svc.visible_to(ns, &self.gateway_namespace) {
                continue;
            }
            let namespace = self.namespaces.get(&namespace_key(ns));
            // Only global Services are exposed over HBONE (`ambientindex.go`).
            let hbone = svc.scope.global;
            let (waypoint, canary) = match hbone
                .then(|| self.waypoints_of(ns, svc, namespace, &by_ip))
                .flatten()
            {
                Some((host, canary)) => (Some(host), canary.ok().flatten()),
                None => (None, None),
            };
            let host = service_host(svc_name, ns, domain);
            let mut ports: Vec<u16> = svc.ports.iter().map(|(_, p)| *p).collect();
            ports.sort_unstable();
            ports.dedup();
            if validate_host(&host).is_err() {
                tracing::debug!(%host, "service host is not routable; skipped");
                continue;
            }
            let (subs, tls, conn) = rules_by_svc
                .get(&(ns.as_ref(), svc_name.as_ref()))
                .unwrap_or(&no_rules);
            let wanted_keys = subset_keys(subs);
            let mut eps: BTreeMap<IpAddr, EndpointSpec> = BTreeMap::new();
            let svc_slices: Vec<(&SliceInfo, BTreeMap<u16, u16>)> = slices_by_svc
                .get(&(ns.as_ref(), svc_name.as_ref()))
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
            let in_primary: HashSet<&str> =
                if svc_slices.iter().any(|(s, _)| s.family != svc.family) {
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
                        .and_then(|p| self.pods.get(&(ns.clone(), p.clone())));
                    // No Pod (a hand-made slice, the API server's own endpoints) or one not
                    // seen yet: not an mTLS endpoint, as istiod takes it.
                    let mtls = pod.is_some_and(PodInfo::mtls);
                    // A draining Pod takes no new connection ([`DRAINING_LABEL`]).
                    let draining = pod
                        .and_then(|p| pod_label(&p.labels, DRAINING_LABEL))
                        .is_some_and(|v| !v.is_empty());
                    let ready = e.ready && !draining;
                    if let Some(p) = pod.filter(|_| mtls && !peer_auths.is_empty()) {
                        sidecars.push((e.address, p, e));
                    }
                    let hbone_port = pod
                        .filter(|p| {
                            let mode = pod_label(&p.labels, ambient::DATAPLANE_MODE_LABEL);
                            hbone && ambient::pod_captured(mode, p.sidecar, namespace)
                        })
                        .map(|_| ambient::HBONE_PORT);
                    let pod = pod.map(|p| &p.labels);
                    let labels = share.of(&wanted_keys, |k| endpoint_label(k, pod, e, &augment));
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
            // The WorkloadEntries it selects, after its slices' endpoints (istiod's
            // `collectWorkloadInstanceEndpoints`); an address a slice lists stays the slice's.
            let selector = svc.entry_selector.as_deref().unwrap_or_default();
            let in_ns = entries_by_ns
                .get(ns.as_ref())
                .filter(|_| !selector.is_empty());
            for &we in in_ns.into_iter().flatten() {
                if !we.selected_by(selector, &augment) || eps.contains_key(&we.address) {
                    continue;
                }
                if !on_our_network(we, augment.network) {
                    continue;
                }
                // An entry has no node: with `internalTrafficPolicy: Local` it is kept only
                // by a gateway that does not know its own, as for slice endpoints.
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
                let labels = share.of(&wanted_keys, |k| we.label(k, &augment));
                let mut ep = entry_endpoint(we, ports, labels);
                if we.mtls && !peer_auths.is_empty() {
                    ep.mtls_disabled = disabled_ports(&ep, we, ns, &peer_auths, &augment);
                }
                eps.insert(we.address, ep);
            }
            // istiod asks for the endpoint's own (target) port (`checkMtlsEnabled`).
            for (address, pod, e) in sidecars {
                let Some(spec) = eps.get_mut(&address).filter(|s| s.mtls) else {
                    continue;
                };
                let label = |k: &str| endpoint_label(k, Some(&pod.labels), e, &augment);
                spec.mtls_disabled = spec
                    .ports
                    .iter()
                    .filter(|&(_, &target)| peer_auths.disables(ns, label, target))
                    .map(|(&port, _)| port)
                    .collect();
            }
            out.push(ServiceSpec {
                host,
                ports,
                subsets: subs.clone(),
                endpoints: eps.into_values().collect(),
                waypoint,
                canary,
                prefer_close: svc.prefer_close,
                tls: tls.clone(),
                conn: conn.clone(),
            });
        }
        if let Some(entries) = &self.service_entries {
            let from = EntryContext {
                domain,
                scope: &scope,
                augment: &augment,
                peer_auths: &peer_auths,
                entries_by_ns: &entries_by_ns,
            };
            self.service_entry_specs(entries, &mut out, &from);
        }
        out
    }
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

/// The host a waypoint is reached at: its hostname, or the Service with its cluster IP.
fn host_of(w: &WaypointInfo, by_ip: &HashMap<IpAddr, String>) -> Option<String> {
    match &w.address {
        Some(WaypointAddress::Hostname(h)) => Some(h.clone()),
        Some(WaypointAddress::Ip(ip)) => by_ip.get(ip).cloned(),
        None => None,
    }
}

/// The key of a Namespace (cluster-scoped) in [`Model::namespaces`].
fn namespace_key(name: &str) -> ObjKey {
    ("".into(), name.into())
}

#[cfg(test)]
mod tests {
    use super::super::project::tests::{slice, svc};
    use super::super::project::{
        Interner, IpFamily, project_namespace, project_pod, project_service, project_slice,
    };
    use super::*;
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    fn k(ns: &str, n: &str) -> ObjKey {
        (ns.into(), n.into())
    }

    fn model_with(dr: bool) -> Model {
        let interner = Interner::default();
        let mut m = Model::new(1);
        let s = project_service(&svc(
            json!([{"name": "http", "port": 80}, {"name": "grpc", "port": 90}]),
        ))
        .unwrap();
        m.services.streams[0].items.insert(k("shop", "catalog"), s);
        let sl = project_slice(
            &slice(
                "catalog",
                json!([{"name": "http", "port": 3000}]),
                json!([
                    {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p1"}},
                    {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "name": "p2"}},
                    {"addresses": ["10.0.0.3"], "conditions": {"ready": false}}
                ]),
            ),
            &Interner::default(),
        )
        .unwrap();
        m.slices.streams[0]
            .items
            .insert(k("shop", "catalog-abc"), sl);
        // The same address in a second slice, not ready there: still counted once, ready.
        let dup = project_slice(
            &slice(
                "catalog",
                json!([{"name": "http", "port": 3000}]),
                json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
            ),
            &Interner::default(),
        )
        .unwrap();
        m.slices.streams[0]
            .items
            .insert(k("shop", "catalog-def"), dup);
        for (p, v) in [("p1", "v1"), ("p2", "v2")] {
            let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": p, "namespace": "shop",
                             "labels": {"version": v, "app": "catalog",
                                        "security.istio.io/tlsMode": "istio"}}
            }))
            .unwrap();
            let labels = project_pod(&meta, &interner).unwrap();
            m.pods.streams[0].items.insert(k("shop", p), labels);
        }
        if dr {
            let mut w = Watched::new(1);
            w.streams[0].items.insert(
                k("shop", "old"),
                DrInfo {
                    namespace: "shop".into(),
                    host: "catalog.shop.svc.cluster.local".into(),
                    order: (None, "shop/old".into()),
                    subsets: vec![("v1".into(), Labels::from([("version".into(), "v1".into())]))],
                    ..Default::default()
                },
            );
            w.streams[0].items.insert(
                k("shop", "new"),
                DrInfo {
                    namespace: "shop".into(),
                    host: "catalog.shop.svc.cluster.local".into(),
                    order: (Some(Time(Default::default())), "shop/new".into()),
                    subsets: vec![
                        ("v1".into(), Labels::from([("version".into(), "v9".into())])),
                        ("v2".into(), Labels::from([("version".into(), "v2".into())])),
                        ("Bad_Name".into(), Labels::new()),
                    ],
                    ..Default::default()
                },
            );
            m.rules = Some(w);
        }
        m
    }

    #[test]
    fn specs_map_ports_by_name_and_merge_slices() {
        let specs = model_with(false).specs("cluster.local");
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.host, "catalog.shop.svc.cluster.local");
        assert_eq!(s.ports, vec![80, 90]);
        assert!(s.subsets.is_empty());
        assert_eq!(s.endpoints.len(), 3);
        let e1 = &s.endpoints[0];
        assert!(e1.ready);
        assert_eq!(
            e1.ports,
            BTreeMap::from([(80, 3000)]),
            "grpc has no slice port"
        );
        assert!(e1.labels.is_empty(), "labels only when subsets need them");
        assert!(!s.endpoints[2].ready);
    }

    /// `internalTrafficPolicy: Local`: only the endpoints on the gateway's node, as istiod
    /// serves such a Service to its gateways; a gateway that does not know its node keeps
    /// those that name none, as istiod's comparison of two empty names does.
    #[test]
    fn a_node_local_service_is_served_from_the_gateways_node_only() {
        let build = |local: bool, node: Option<&str>| {
            let mut m = Model::new(1);
            m.node_name = node.map(Box::from);
            let mut service = svc(json!([{"name": "http", "port": 80}]));
            if local {
                service.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
            }
            m.services.streams[0]
                .items
                .insert(k("shop", "catalog"), project_service(&service).unwrap());
            let sl = project_slice(
                &slice(
                    "catalog",
                    json!([{"name": "http", "port": 3000}]),
                    json!([
                        {"addresses": ["10.0.0.1"], "nodeName": "node-a"},
                        {"addresses": ["10.0.0.2"], "nodeName": "node-b"},
                        {"addresses": ["10.0.0.3"]}
                    ]),
                ),
                &Interner::default(),
            )
            .unwrap();
            m.slices.streams[0].items.insert(k("shop", "catalog-1"), sl);
            let spec = m.specs("cluster.local").remove(0);
            spec.endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(build(true, Some("node-a")), ["10.0.0.1"]);
        assert_eq!(build(true, None), ["10.0.0.3"]);
        assert_eq!(
            build(false, Some("node-a")).len(),
            3,
            "Cluster: every endpoint"
        );
    }

    /// One address in two slices of a Service, each slice with another of its ports (a
    /// selectorless Service's hand-made slices): the endpoint serves both ports, as istiod
    /// keeps an endpoint per address and port; a port whose only listing is not ready is not
    /// served by the ready endpoint. Before, the first listing's ports won and which one was
    /// first followed hash order.
    #[test]
    fn one_address_in_slices_of_different_ports_serves_each() {
        let build = |grpc_ready: bool| {
            let mut m = Model::new(1);
            let s = project_service(&svc(
                json!([{"name": "http", "port": 80}, {"name": "grpc", "port": 90}]),
            ))
            .unwrap();
            m.services.streams[0].items.insert(k("shop", "catalog"), s);
            for (name, port, target, ready) in [
                ("db-http", "http", 8080, true),
                ("db-grpc", "grpc", 9090, grpc_ready),
            ] {
                let sl = project_slice(
                    &slice(
                        "catalog",
                        json!([{"name": port, "port": target}]),
                        json!([{"addresses": ["10.0.0.31"], "conditions": {"ready": ready}}]),
                    ),
                    &Interner::default(),
                )
                .unwrap();
                m.slices.streams[0].items.insert(k("shop", name), sl);
            }
            m.specs("cluster.local").remove(0)
        };
        let both = build(true);
        assert_eq!(both.endpoints.len(), 1);
        assert!(both.endpoints[0].ready);
        assert_eq!(
            both.endpoints[0].ports,
            BTreeMap::from([(80, 8080), (90, 9090)])
        );
        let http_only = build(false);
        assert!(http_only.endpoints[0].ready);
        assert_eq!(http_only.endpoints[0].ports, BTreeMap::from([(80, 8080)]));
    }

    /// A subset named with capitals (Istio accepts it) is reachable: the SNI parser
    /// lower-cases, so the table does too; `V1` beside an older `v1` is the same subset.
    #[test]
    fn subset_names_are_kept_lower_cased() {
        let mut m = model_with(true);
        let rules = m.rules.as_mut().unwrap();
        rules.streams[0].items.insert(
            k("shop", "newest"),
            DrInfo {
                namespace: "shop".into(),
                host: "catalog.shop.svc.cluster.local".into(),
                order: (Some(Time(Default::default())), "shop/newest".into()),
                subsets: vec![
                    ("V1".into(), Labels::from([("version".into(), "v8".into())])),
                    (
                        "Canary".into(),
                        Labels::from([("version".into(), "v3".into())]),
                    ),
                ],
                ..Default::default()
            },
        );
        let specs = m.specs("cluster.local");
        let names: Vec<&String> = specs[0].subsets.keys().collect();
        assert_eq!(names, ["canary", "v1", "v2"]);
        assert_eq!(
            specs[0].subsets["v1"]["version"], "v1",
            "the oldest rule wins"
        );
    }

    #[test]
    fn subsets_from_rules_and_pod_labels() {
        let specs = model_with(true).specs("cluster.local");
        let s = &specs[0];
        assert_eq!(s.subsets.len(), 2, "bad subset names are dropped");
        assert_eq!(s.subsets["v1"]["version"], "v1", "the oldest rule wins");
        assert_eq!(s.subsets["v2"]["version"], "v2");
        assert_eq!(
            *s.endpoints[0].labels,
            Labels::from([("version".into(), "v1".into())]),
            "only selected keys are kept"
        );
        assert_eq!(s.endpoints[1].labels["version"], "v2");
    }

    /// Adds catalog's slice `catalog-ghi` (port `http` 3000) with these endpoints.
    fn add_catalog_slice(m: &mut Model, endpoints: serde_json::Value) {
        let ports = json!([{"name": "http", "port": 3000}]);
        let sl = project_slice(&slice("catalog", ports, endpoints), &Interner::default());
        let key = k("shop", "catalog-ghi");
        m.slices.streams[0].items.insert(key, sl.unwrap());
    }

    /// The addresses 15443 may dial for `catalog.shop…:80` once `specs` are published.
    fn classic_candidates(specs: &[ServiceSpec]) -> Vec<String> {
        let t = crate::routes::Routes::new().publish(specs);
        let r = t.lookup("catalog.shop.svc.cluster.local", 80).unwrap();
        let Ok(c) = r.candidates("") else {
            return Vec::new();
        };
        c.iter()
            .map(|&i| r.endpoints[i].state.addr.ip().to_string())
            .collect()
    }

    /// Adds Pod `name` in `shop` with these labels.
    fn add_pod(m: &mut Model, name: &str, labels: serde_json::Value) {
        let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": name, "namespace": "shop", "labels": labels}
        }))
        .unwrap();
        let info = project_pod(&meta, &Interner::default()).unwrap();
        m.pods.streams[0].items.insert(k("shop", name), info);
    }

    /// Subsets select on the labels istiod adds to every endpoint (`AugmentLabels`): the
    /// cluster's ID, the endpoint's zone and node, over the Pod's own.
    #[test]
    fn subsets_see_the_cluster_zone_and_node_istiod_adds() {
        let mut m = model_with(false);
        m.cluster_id = "west".into();
        add_catalog_slice(
            &mut m,
            json!([{"addresses": ["10.0.0.4"], "zone": "zone-b", "nodeName": "node-4",
                    "targetRef": {"kind": "Pod", "name": "p4"}}]),
        );
        // The Pod's own zone label loses to its node's, as in istiod.
        let labels = json!({"security.istio.io/tlsMode": "istio",
                            "topology.kubernetes.io/zone": "zone-x"});
        add_pod(&mut m, "p4", labels);
        let subsets = [
            ("cluster-west", "topology.istio.io/cluster", "west"),
            ("cluster-east", "topology.istio.io/cluster", "east"),
            ("zone-b", "topology.kubernetes.io/zone", "zone-b"),
            ("zone-x", "topology.kubernetes.io/zone", "zone-x"),
            ("node-4", "kubernetes.io/hostname", "node-4"),
        ];
        let mut w = Watched::new(1);
        w.streams[0].items.insert(
            k("shop", "by-topology"),
            DrInfo {
                namespace: "shop".into(),
                host: "catalog.shop.svc.cluster.local".into(),
                order: (None, "shop/by-topology".into()),
                subsets: subsets
                    .iter()
                    .map(|(n, key, v)| {
                        (
                            n.to_string(),
                            Labels::from([(key.to_string(), v.to_string())]),
                        )
                    })
                    .collect(),
                ..Default::default()
            },
        );
        m.rules = Some(w);
        let ips = |subset| subset_ips(&m, subset);
        assert_eq!(ips("cluster-west"), ["10.0.0.1", "10.0.0.2", "10.0.0.4"]);
        assert!(ips("cluster-east").is_empty());
        assert_eq!(ips("zone-b"), ["10.0.0.4"]);
        assert!(ips("zone-x").is_empty());
        assert_eq!(ips("node-4"), ["10.0.0.4"]);
    }

    /// istiod's `EndpointsWithMTLSFilter` input: a pod's endpoint is an mTLS one only with
    /// the injector's label; no Pod, a Pod not seen yet, or another value is not.
    #[test]
    fn only_pods_labelled_by_the_injector_are_mtls_endpoints() {
        let mut m = model_with(false);
        add_catalog_slice(
            &mut m,
            json!([
                {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "p4"}},
                {"addresses": ["10.0.0.5"], "targetRef": {"kind": "Pod", "name": "unseen"}}
            ]),
        );
        add_pod(
            &mut m,
            "p4",
            json!({"security.istio.io/tlsMode": "disabled"}),
        );
        let specs = m.specs("cluster.local");
        let mtls: Vec<(String, bool)> = specs[0]
            .endpoints
            .iter()
            .map(|e| (e.address.to_string(), e.mtls))
            .collect();
        let want = [
            ("10.0.0.1", true),
            ("10.0.0.2", true),
            ("10.0.0.3", false),
            ("10.0.0.4", false),
            ("10.0.0.5", false),
        ];
        assert_eq!(mtls, want.map(|(a, m)| (a.to_string(), m)));
        // Published, only the labelled pods are candidates on 15443.
        assert_eq!(classic_candidates(&specs), ["10.0.0.1", "10.0.0.2"]);
    }

    /// istiod's `checkMtlsEnabled`: a sidecar whose PeerAuthentication composes to DISABLE on
    /// its own (target) port takes no 15443 connection on the Service port that maps to it.
    #[test]
    fn a_peer_authentication_that_disables_a_port_takes_its_endpoints_out() {
        let pa = peer_authentication;
        let disabled = |m: &Model| -> Vec<(String, Vec<u16>)> {
            m.specs("cluster.local")[0]
                .endpoints
                .iter()
                .map(|e| (e.address.to_string(), e.mtls_disabled.clone()))
                .collect()
        };
        let mut m = model_with(false);
        let mut w = Watched::new(1);
        // The workload's port 3000 (Service port 80), selected by a label istiod adds.
        let v2 = json!({"selector": {"matchLabels": {"version": "v2",
                "topology.istio.io/cluster": "Kubernetes"}},
            "portLevelMtls": {"3000": {"mode": "DISABLE"}}});
        w.streams[0]
            .items
            .insert(k("shop", "v2"), pa("shop", "v2", v2));
        m.peer_auths = Some(w);
        let want = |p2: &[u16]| {
            vec![
                ("10.0.0.1".to_string(), vec![]),
                ("10.0.0.2".to_string(), p2.to_vec()),
                ("10.0.0.3".to_string(), vec![]),
            ]
        };
        assert_eq!(disabled(&m), want(&[80]));
        assert_eq!(classic_candidates(&m.specs("cluster.local")), ["10.0.0.1"]);
        // A mesh-wide STRICT under a namespace-wide DISABLE: every sidecar, but not where the
        // workload policy's port says PERMISSIVE.
        let w = m.peer_auths.as_mut().unwrap();
        let items = &mut w.streams[0].items;
        let strict = json!({"mtls": {"mode": "STRICT"}});
        items.insert(k("istio-system", "m"), pa("istio-system", "m", strict));
        let off = json!({"mtls": {"mode": "DISABLE"}});
        items.insert(k("shop", "ns"), pa("shop", "ns", off));
        let v2 = json!({"selector": {"matchLabels": {"version": "v2"}},
            "portLevelMtls": {"3000": {"mode": "PERMISSIVE"}}});
        items.insert(k("shop", "v2"), pa("shop", "v2", v2));
        assert_eq!(
            disabled(&m),
            vec![
                ("10.0.0.1".to_string(), vec![80]),
                ("10.0.0.2".to_string(), vec![]),
                ("10.0.0.3".to_string(), vec![]),
            ]
        );
    }

    /// Labels the root namespace (`istio-system`) with the cluster's network.
    fn set_network(m: &mut Model, network: &str) {
        let ns: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "istio-system",
                "labels": {"topology.istio.io/network": network}}}))
        .unwrap();
        let scope = project_namespace(&ns).unwrap();
        m.namespaces.streams[0]
            .items
            .insert(k("", "istio-system"), scope);
    }

    /// The cluster's network comes from the root namespace's label, so a PeerAuthentication
    /// selecting on it applies (an audit found it did not).
    #[test]
    fn the_root_namespaces_network_reaches_peer_authentication_selectors() {
        let mut m = model_with(false);
        set_network(&mut m, "west-network");
        let spec = json!({"selector": {"matchLabels": {"topology.istio.io/network": "west-network"}},
            "mtls": {"mode": "DISABLE"}});
        let mut w = Watched::new(1);
        let pa = peer_authentication("shop", "net", spec);
        w.streams[0].items.insert(k("shop", "net"), pa);
        m.peer_auths = Some(w);
        assert!(classic_candidates(&m.specs("cluster.local")).is_empty());
    }

    /// istiod's `filterIstioEndpoint`: a Pod labelled `istio.io/draining` (any value but
    /// empty) takes no new connection; behind a Service labelled `istio.io/persistent-session`
    /// neither, as Envoy takes the DRAINING status istiod sends it for unhealthy.
    #[test]
    fn draining_pods_are_not_ready() {
        let mut m = model_with(false);
        add_catalog_slice(
            &mut m,
            json!([
                {"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "p4"}},
                {"addresses": ["10.0.0.5"], "targetRef": {"kind": "Pod", "name": "p5"}}
            ]),
        );
        let mesh = "security.istio.io/tlsMode";
        add_pod(
            &mut m,
            "p4",
            json!({mesh: "istio", "istio.io/draining": "1"}),
        );
        add_pod(
            &mut m,
            "p5",
            json!({mesh: "istio", "istio.io/draining": ""}),
        );
        let ready = |m: &Model| -> Vec<(String, bool)> {
            m.specs("cluster.local")[0]
                .endpoints
                .iter()
                .map(|e| (e.address.to_string(), e.ready))
                .collect()
        };
        let want = |p4: bool| {
            [
                ("10.0.0.1", true),
                ("10.0.0.2", true),
                ("10.0.0.3", false),
                ("10.0.0.4", p4),
                ("10.0.0.5", true),
            ]
            .map(|(a, r)| (a.to_string(), r))
            .to_vec()
        };
        assert_eq!(ready(&m), want(false));
        let mut svc = svc(json!([{"name": "http", "port": 80}]));
        svc.metadata.labels = Some([("istio.io/persistent-session".into(), "x".into())].into());
        let s = project_service(&svc).unwrap();
        m.services.streams[0].items.insert(k("shop", "catalog"), s);
        assert_eq!(ready(&m), want(false));
    }

    #[test]
    fn equal_labels_and_subsets_share_one_map() {
        let mut m = model_with(true);
        add_catalog_slice(
            &mut m,
            json!([{"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "p4"}}]),
        );
        // Differs from p1 only in a label no subset selects on.
        let labels = json!({"version": "v1", "app": "other", "security.istio.io/tlsMode": "istio"});
        add_pod(&mut m, "p4", labels);
        let specs = m.specs("cluster.local");
        let eps = &specs[0].endpoints;
        let addr = |a: &str| {
            eps.iter()
                .find(|e| e.address == a.parse::<IpAddr>().unwrap())
        };
        let (e1, e2, e4) = (addr("10.0.0.1"), addr("10.0.0.2"), addr("10.0.0.4"));
        assert!(Arc::ptr_eq(&e1.unwrap().labels, &e4.unwrap().labels));
        assert!(!Arc::ptr_eq(&e1.unwrap().labels, &e2.unwrap().labels));
        assert_eq!(e4.unwrap().labels["version"], "v1");
        // Published tables keep the shared maps.
        let routes = crate::routes::Routes::new();
        let t = routes.publish(&specs);
        let r = t.lookup("catalog.shop.svc.cluster.local", 80).unwrap();
        assert!(Arc::ptr_eq(&r.subsets, &specs[0].subsets));
        assert!(Arc::ptr_eq(&r.endpoints[0].labels, &e1.unwrap().labels));
        assert_eq!(r.candidates("v1").unwrap().len(), 2);
    }

    #[test]
    fn hbone_only_for_captured_pods_of_global_services() {
        let mut m = model_with(false);
        let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "p1", "namespace": "shop",
                         "labels": {"version": "v1", "istio.io/dataplane-mode": "ambient"}}
        }))
        .unwrap();
        let labels = project_pod(&meta, &Interner::default()).unwrap();
        m.pods.streams[0].items.insert(k("shop", "p1"), labels);
        let hbone = |m: &Model| -> Vec<Option<u16>> {
            m.specs("cluster.local")[0]
                .endpoints
                .iter()
                .map(|e| e.hbone_port)
                .collect()
        };
        assert_eq!(hbone(&m), [None, None, None], "not a global service");
        m.services.streams[0]
            .items
            .get_mut(&k("shop", "catalog"))
            .unwrap()
            .scope
            .global = true;
        assert_eq!(
            hbone(&m),
            [Some(15008), None, None],
            "p2 is not ambient, 10.0.0.3 has no pod"
        );
        // The namespace's label captures p2 too; its waypoint binds the service.
        let shop = |kv: serde_json::Value| {
            let meta: PartialObjectMeta<Namespace> = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "shop", "labels": kv}
            }))
            .unwrap();
            project_namespace(&meta).unwrap()
        };
        let ns = &mut m.namespaces.streams[0].items;
        ns.insert(
            k("", "shop"),
            shop(json!({"istio.io/dataplane-mode": "ambient"})),
        );
        assert_eq!(hbone(&m), [Some(15008), Some(15008), None]);
        let waypoint = |m: &Model| m.specs("cluster.local")[0].waypoint.clone();
        assert_eq!(waypoint(&m), None);
        let ns = &mut m.namespaces.streams[0].items;
        ns.insert(
            k("", "shop"),
            shop(json!({"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "wp"})),
        );
        assert_eq!(waypoint(&m), None, "no Gateway CRD: no waypoint is ready");
        assert_eq!(m.unseen_waypoints("cluster.local"), []);
        // Gateways may exist but not be read: the binding stays, unresolved.
        m.gateways_forbidden = true;
        assert_eq!(waypoint(&m).as_deref(), Some("shop/wp"));
        let catalog = "catalog.shop.svc.cluster.local".to_string();
        let unseen = |why| vec![(catalog.clone(), "shop/wp".to_string(), why)];
        assert_eq!(
            m.unseen_waypoints("cluster.local"),
            unseen(Blind::Forbidden)
        );
        m.gateways_forbidden = false;
        let gateway = |status: serde_json::Value| {
            let g: waypoints::GatewayObject = serde_json::from_value(json!({
                "metadata": {"name": "wp", "namespace": "shop"}, "status": status}))
            .unwrap();
            waypoints::project_gateway(&g)
        };
        let mut gateways = Watched::new(1);
        let status =
            json!({"addresses": [{"type": "Hostname", "value": "wp.shop.svc.cluster.local"}]});
        gateways.streams[0]
            .items
            .insert(k("shop", "wp"), gateway(status).unwrap());
        m.waypoints = Some(gateways);
        assert_eq!(
            hbone(&m),
            [Some(15008), Some(15008), None],
            "bound to the namespace's waypoint: still tunnelled, for waypoints' tunnels"
        );
        assert_eq!(waypoint(&m).as_deref(), Some("wp.shop.svc.cluster.local"));
        // Gateways watched only elsewhere (`--namespace`): this one cannot be seen.
        m.watched_namespaces = vec!["web".into()];
        assert_eq!(waypoint(&m).as_deref(), Some("shop/wp"));
        assert_eq!(
            m.unseen_waypoints("cluster.local"),
            unseen(Blind::NotWatched)
        );
        m.watched_namespaces = vec!["web".into(), "shop".into()];
        assert_eq!(waypoint(&m).as_deref(), Some("wp.shop.svc.cluster.local"));
        assert_eq!(m.unseen_waypoints("cluster.local"), []);
        // A status with only an IP names the Service with that cluster IP.
        let mut wp_svc = svc(json!([{"name": "mesh", "port": 15008}]));
        wp_svc.spec.as_mut().unwrap().cluster_ips = Some(vec!["10.96.0.9".into()]);
        let wp_svc = project_service(&wp_svc).unwrap();
        m.services.streams[0].items.insert(k("infra", "wp"), wp_svc);
        let ip = json!({"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}]});
        let ip = gateway(ip).unwrap();
        m.waypoints.as_mut().unwrap().streams[0]
            .items
            .insert(k("shop", "wp"), ip);
        let specs = m.specs("cluster.local");
        let catalog = specs
            .iter()
            .find(|s| s.host.starts_with("catalog"))
            .unwrap();
        assert_eq!(
            catalog.waypoint.as_deref(),
            Some("wp.infra.svc.cluster.local")
        );
        m.services.streams[0].items.remove(&k("infra", "wp"));
        assert_eq!(
            waypoint(&m).as_deref(),
            Some("shop/wp"),
            "no such IP: unresolved"
        );
        let e1 = &m.specs("cluster.local")[0].endpoints[0];
        assert_eq!(
            e1.ports,
            BTreeMap::from([(80, 3000)]),
            "classic route unchanged"
        );
        assert!(
            e1.labels.is_empty(),
            "labels still only when subsets need them"
        );
    }

    /// Dual-stack: the IPv6 slice lists p1 again; p3 has only an IPv6 address, and fd00::9
    /// no Pod to pair it with.
    #[test]
    fn a_dual_stack_pod_is_one_endpoint_of_the_primary_family() {
        let mut m = model_with(false);
        m.slices.streams[0].items.remove(&k("shop", "catalog-def"));
        let mut v6 = slice(
            "catalog",
            json!([{"name": "http", "port": 3000}]),
            json!([
                {"addresses": ["fd00::1"], "targetRef": {"kind": "Pod", "name": "p1"}},
                {"addresses": ["fd00::3"], "targetRef": {"kind": "Pod", "name": "p3"}},
                {"addresses": ["fd00::9"]}
            ]),
        );
        v6.address_type = "IPv6".into();
        let v6 = project_slice(&v6, &Interner::default()).unwrap();
        m.slices.streams[0]
            .items
            .insert(k("shop", "catalog-v6"), v6);
        let addresses = |m: &Model| -> Vec<String> {
            let specs = m.specs("cluster.local");
            specs[0]
                .endpoints
                .iter()
                .map(|e| e.address.to_string())
                .collect()
        };
        assert_eq!(
            addresses(&m),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::3", "fd00::9"],
            "IPv4 first (the Service's ipFamilies[0])"
        );
        let catalog = m.services.streams[0].items.get_mut(&k("shop", "catalog"));
        catalog.unwrap().family = IpFamily::V6;
        assert_eq!(
            addresses(&m),
            ["10.0.0.2", "10.0.0.3", "fd00::1", "fd00::3", "fd00::9"],
            "IPv6 first"
        );
    }

    #[test]
    fn readiness_needs_every_watch() {
        let mut m = Model::new(2);
        m.services.streams.iter_mut().for_each(|c| c.synced = true);
        m.slices.streams.iter_mut().for_each(|c| c.synced = true);
        m.pods.streams[0].synced = true;
        m.namespaces.streams[1].synced = true;
        assert!(!m.synced());
        m.pods.streams[1].synced = true;
        assert!(!m.synced(), "namespaces too");
        m.namespaces.streams[0].synced = true;
        assert!(m.synced());
        m.rules = Some(Watched::new(2));
        assert!(!m.synced());
    }
    /// A sandwiched waypoint in `infra` whose HBONE listener admits only its own namespace
    /// and whose PROXY listener admits all: the class's binding decides, so with the class
    /// unreadable the binding of `shop/catalog` cannot be judged and is refused, not ignored.
    #[test]
    fn an_unreadable_class_that_could_allow_a_binding_refuses_it() {
        let mut m = Model::new(1);
        let mut s = svc(json!([{"name": "http", "port": 80}]));
        s.metadata.labels = Some(
            [
                ("istio.io/global", "true"),
                ("istio.io/use-waypoint", "wp"),
                ("istio.io/use-waypoint-namespace", "infra"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .into(),
        );
        let s = project_service(&s).unwrap();
        m.services.streams[0].items.insert(k("shop", "catalog"), s);
        let g: waypoints::GatewayObject = serde_json::from_value(json!({
            "metadata": {"name": "wp", "namespace": "infra"},
            "spec": {"gatewayClassName": "sandwiched", "listeners": [
                {"name": "mesh", "port": 15008, "protocol": "HBONE"},
                {"name": "proxy", "port": 15088, "protocol": "istio.io/PROXY",
                 "allowedRoutes": {"namespaces": {"from": "All"}}}]},
            "status": {"addresses": [{"type": "Hostname", "value": "wp.infra.svc.cluster.local"}]}}))
        .unwrap();
        let mut gateways = Watched::new(1);
        let wp = waypoints::project_gateway(&g).unwrap();
        gateways.streams[0].items.insert(k("infra", "wp"), wp);
        m.waypoints = Some(gateways);
        let waypoint = |m: &Model| m.specs("cluster.local")[0].waypoint.clone();
        assert_eq!(
            waypoint(&m),
            None,
            "no class: the HBONE listener refuses shop"
        );
        m.gateway_classes_forbidden = true;
        assert_eq!(waypoint(&m).as_deref(), Some("infra/wp"));
        let catalog = "catalog.shop.svc.cluster.local".to_string();
        assert_eq!(
            m.unseen_waypoints("cluster.local"),
            [(catalog, "infra/wp".to_string(), Blind::ClassForbidden)]
        );
        // The class read, with its binding: the PROXY listener admits shop.
        let mut classes = Watched::new(1);
        let class = ClassInfo {
            waypoint_for: None,
            inbound_binding: Some("PROXY/15088".into()),
        };
        classes.streams[0].items.insert(k("", "sandwiched"), class);
        m.gateway_classes = Some(classes);
        assert_eq!(waypoint(&m).as_deref(), Some("wp.infra.svc.cluster.local"));
        assert_eq!(m.unseen_waypoints("cluster.local"), []);
    }

    /// A Service's canary waypoint takes its weight of the tunnels when it could be its
    /// waypoint itself; otherwise all go to the waypoint, and `unused_canaries` says why.
    #[test]
    fn a_canary_is_used_only_when_it_could_be_the_waypoint() {
        let mut m = Model::new(1);
        let service = |labels: &[(&str, &str)], weight: Option<&str>| {
            let mut s = svc(json!([{"name": "http", "port": 80}]));
            let base = [("istio.io/global", "true"), ("istio.io/use-waypoint", "wp")];
            s.metadata.labels = Some(
                (base.iter().chain(labels))
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            );
            s.metadata.annotations = weight.map(|w| {
                [(
                    "istio.io/use-waypoint-canary-weight".to_string(),
                    w.to_string(),
                )]
                .into()
            });
            project_service(&s).unwrap()
        };
        let gateway = |ns: &str, name: &str, from: &str, address: serde_json::Value| {
            let g: waypoints::GatewayObject = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {"gatewayClassName": "istio-waypoint", "listeners": [
                    {"name": "mesh", "port": 15008, "protocol": "HBONE",
                     "allowedRoutes": {"namespaces": {"from": from}}}]},
                "status": {"addresses": [address]}}))
            .unwrap();
            waypoints::project_gateway(&g).unwrap()
        };
        let host = |h: &str| json!({"type": "Hostname", "value": h});
        let mut gateways = Watched::new(1);
        for (ns, name, from) in [("shop", "wp", "Same"), ("shop", "wp2", "Same")] {
            let address = host(&format!("{name}.{ns}.svc.cluster.local"));
            let g = gateway(ns, name, from, address);
            gateways.streams[0].items.insert(k(ns, name), g);
        }
        let same = gateway(
            "infra",
            "other-ns",
            "Same",
            host("o.infra.svc.cluster.local"),
        );
        gateways.streams[0]
            .items
            .insert(k("infra", "other-ns"), same);
        let by_ip = gateway(
            "shop",
            "by-ip",
            "Same",
            json!({"type": "IPAddress", "value": "10.9.9.9"}),
        );
        gateways.streams[0].items.insert(k("shop", "by-ip"), by_ip);
        m.waypoints = Some(gateways);
        let catalog = k("shop", "catalog");
        let c = "istio.io/use-waypoint-canary";
        let set = |m: &mut Model, s| {
            m.services.streams[0].items.insert(catalog.clone(), s);
        };
        let spec = |m: &Model| {
            let s = m.specs("cluster.local").remove(0);
            (s.waypoint, s.canary.map(|c| (c.host.to_string(), c.weight)))
        };
        let unused = |m: &Model| {
            let u = m.unused_canaries("cluster.local");
            u.into_iter()
                .map(|(_, c, why)| (c, why))
                .collect::<Vec<_>>()
        };
        let primary = Some("wp.shop.svc.cluster.local".to_string());

        set(&mut m, service(&[(c, "wp2")], Some("20")));
        let wp2 = Some(("wp2.shop.svc.cluster.local".to_string(), 20));
        assert_eq!(spec(&m), (primary.clone(), wp2));
        assert_eq!(unused(&m), []);
        set(&mut m, service(&[(c, "wp2")], None));
        assert_eq!(spec(&m), (primary.clone(), None), "no weight: 0");
        assert_eq!(unused(&m), []);

        for (labels, weight, why) in [
            (
                vec![(c, "wp2")],
                Some("101"),
                CanaryUnused::InvalidWeight("101".into()),
            ),
            (vec![(c, "wp")], Some("5"), CanaryUnused::SameAsPrimary),
            (vec![(c, "missing")], Some("5"), CanaryUnused::NotUsable),
            (
                vec![
                    (c, "other-ns"),
                    ("istio.io/use-waypoint-canary-namespace", "infra"),
                ],
                Some("5"),
                CanaryUnused::NotUsable,
            ),
            (vec![(c, "by-ip")], Some("5"), CanaryUnused::NotUsable),
        ] {
            set(&mut m, service(&labels, weight));
            assert_eq!(spec(&m), (primary.clone(), None), "{labels:?}");
            assert_eq!(unused(&m).len(), 1, "{labels:?}");
            assert_eq!(unused(&m)[0].1, why, "{labels:?}");
        }
        // Watching only `shop`: a canary elsewhere cannot be judged, and is left out.
        m.watched_namespaces = vec!["shop".into()];
        set(
            &mut m,
            service(
                &[
                    (c, "x"),
                    ("istio.io/use-waypoint-canary-namespace", "elsewhere"),
                ],
                Some("50"),
            ),
        );
        assert_eq!(spec(&m), (primary, None));
        assert_eq!(
            unused(&m),
            [(
                "elsewhere/x".into(),
                CanaryUnused::Unseen(Blind::NotWatched)
            )]
        );
    }

    /// The addresses subset `subset` of the catalog's port 80 chooses from, in the published
    /// table.
    fn subset_ips(m: &Model, subset: &str) -> Vec<String> {
        subset_ips_of(m, "catalog.shop.svc.cluster.local", 80, subset)
    }

    /// The addresses subset `subset` of `host`'s port `port` chooses from.
    fn subset_ips_of(m: &Model, host: &str, port: u16, subset: &str) -> Vec<String> {
        let t = crate::routes::Routes::new().publish(&m.specs("cluster.local"));
        let r = t.lookup(host, port).unwrap();
        r.candidates(subset)
            .map(|c| {
                c.iter()
                    .map(|&i| r.endpoints[i].state.addr.ip().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A WorkloadEntry as a Service's endpoint: matched by subsets and PeerAuthentications
    /// with the labels istiod gives it (its own, its locality's, the cluster's), never in place
    /// of an address a slice lists, left out by `internalTrafficPolicy: Local` on a gateway
    /// that knows its node, and of two entries at one address the first by name serves.
    #[test]
    fn workload_entries_join_the_services_that_select_them() {
        let we = |name: &str, spec| workload_entry("shop", name, spec);
        let mut m = model_with(true);
        let mut s = project_service(&svc(json!([{"name": "http", "port": 80}]))).unwrap();
        s.entry_selector = Some(Box::new([("app".into(), "catalog".into())]));
        m.services.streams[0].items.insert(k("shop", "catalog"), s);
        let mut w = Watched::new(1);
        let vm = json!({"address": "10.9.0.1", "serviceAccount": "vm",
            "labels": {"app": "catalog", "version": "v2"}, "locality": "eu/eu-1",
            "ports": {"http": 8080}, "weight": 7});
        w.streams[0].items.insert(k("shop", "a-vm"), we("a-vm", vm));
        // Same address, later name: not used (Envoy keeps the first host of an address).
        let twin = json!({"address": "10.9.0.1", "labels": {"app": "catalog", "version": "v1"},
            "weight": 3});
        w.streams[0]
            .items
            .insert(k("shop", "b-twin"), we("b-twin", twin));
        // A slice's address: the slice's endpoint stays.
        let shadow = json!({"address": "10.0.0.2", "labels": {"app": "catalog"}});
        w.streams[0]
            .items
            .insert(k("shop", "shadow"), we("shadow", shadow));
        let other = json!({"address": "10.9.0.2", "labels": {"app": "orders"}});
        w.streams[0]
            .items
            .insert(k("shop", "other"), we("other", other));
        m.workload_entries = Some(w);
        let specs = m.specs("cluster.local");
        let eps = &specs[0].endpoints;
        let addrs: Vec<String> = eps.iter().map(|e| e.address.to_string()).collect();
        assert_eq!(addrs, ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.9.0.1"]);
        let vm = &eps[3];
        assert_eq!(vm.ports, BTreeMap::from([(80, 8080)]));
        assert!(vm.ready && vm.mtls && vm.hbone_port.is_none());
        assert_eq!(vm.zone.as_deref(), Some("eu-1"));
        assert_eq!(vm.weight, 7);
        assert!(eps[..3].iter().all(|e| e.weight == 1));
        assert!(eps[1].mtls, "the slice's pod, not the shadowing entry");
        assert_eq!(subset_ips(&m, "v2"), ["10.0.0.2", "10.9.0.1"]);

        // A PeerAuthentication selecting the VM by its locality's zone disables its port.
        let spec = json!({"selector": {"matchLabels": {"topology.kubernetes.io/zone": "eu-1"}},
            "portLevelMtls": {"8080": {"mode": "DISABLE"}}});
        let pa = peer_authentication("shop", "vms", spec);
        let mut w = Watched::new(1);
        w.streams[0].items.insert(k("shop", "vms"), pa);
        m.peer_auths = Some(w);
        let specs = m.specs("cluster.local");
        assert_eq!(specs[0].endpoints[3].mtls_disabled, vec![80]);
        assert!(specs[0].endpoints[0].mtls_disabled.is_empty());

        // On another network than the cluster's: left out, and named for the log.
        assert!(
            m.entries_elsewhere().is_empty(),
            "the cluster's network is unknown"
        );
        set_network(&mut m, "east-net");
        let away = json!({"address": "10.9.0.3", "labels": {"app": "catalog"},
            "serviceAccount": "vm", "network": "vm-net"});
        let w = m.workload_entries.as_mut().unwrap();
        w.streams[0]
            .items
            .insert(k("shop", "away"), we("away", away));
        let here = json!({"address": "10.9.0.4", "labels": {"app": "catalog"},
            "serviceAccount": "vm", "network": "east-net"});
        w.streams[0]
            .items
            .insert(k("shop", "here"), we("here", here));
        let addrs: Vec<String> = m.specs("cluster.local")[0]
            .endpoints
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        assert!(addrs.contains(&"10.9.0.4".to_string()), "{addrs:?}");
        assert!(!addrs.contains(&"10.9.0.3".to_string()), "{addrs:?}");
        assert_eq!(
            m.entries_elsewhere(),
            vec![("shop/away".to_string(), Box::from("vm-net"))]
        );

        // Node-local: an entry has no node.
        let s = m.services.streams[0]
            .items
            .get_mut(&k("shop", "catalog"))
            .unwrap();
        s.node_local = true;
        m.node_name = Some("node-1".into());
        assert!(
            m.specs("cluster.local")[0]
                .endpoints
                .iter()
                .all(|e| e.address.to_string() != "10.9.0.1")
        );
        m.node_name = None;
        assert!(
            m.specs("cluster.local")[0]
                .endpoints
                .iter()
                .any(|e| e.address.to_string() == "10.9.0.1")
        );
    }

    /// An object of Istio's as the API server sends it: `spec` under `metadata`.
    fn istio_object(
        api_version: &str,
        kind: &str,
        metadata: serde_json::Value,
        spec: serde_json::Value,
    ) -> kube::api::DynamicObject {
        serde_json::from_value(json!({"apiVersion": api_version, "kind": kind,
            "metadata": metadata, "spec": spec}))
        .unwrap()
    }

    /// The connection settings merge as the TLS modes do: the oldest rule with a
    /// `trafficPolicy` gives the whole policy (a newer rule's `outlierDetection` is dropped
    /// though the older sets none), each subset keeps its own rule's, and the route's
    /// subsets resolve them per port.
    #[test]
    fn a_rules_connection_settings_merge_as_its_tls_modes() {
        let mut m = model_with(true);
        let rule = |name: &str, secs: u32, spec: serde_json::Value| {
            let meta = json!({"name": name, "namespace": "shop",
                "creationTimestamp": format!("2026-12-07T00:00:{secs:02}Z")});
            let obj = istio_object("networking.istio.io/v1", "DestinationRule", meta, spec);
            super::super::project::project_destination_rule(&obj, "cluster.local").unwrap()
        };
        let old = rule(
            "old",
            1,
            json!({"host": "catalog",
            "trafficPolicy": {"connectionPool": {"tcp": {"connectTimeout": "2s"}}}}),
        );
        let new = rule(
            "new",
            2,
            json!({"host": "catalog",
            "trafficPolicy": {"outlierDetection": {"consecutive5xxErrors": 1}},
            "subsets": [{"name": "v2", "labels": {"version": "v2"},
                "trafficPolicy": {"outlierDetection": {"consecutiveGatewayErrors": 3}}}]}),
        );
        let rules = m.rules.as_mut().unwrap();
        rules.streams[0].items.insert(k("shop", "old"), old);
        rules.streams[0].items.insert(k("shop", "new"), new);
        let spec = m.specs("cluster.local").remove(0);
        let whole = spec.conn.for_route(80, "");
        assert_eq!(
            whole.connect_timeout(),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(
            whole.outlier, None,
            "the newer rule's policy is dropped whole"
        );
        let v2 = spec.conn.for_route(80, "v2");
        assert_eq!(
            v2.connect_timeout(),
            Some(std::time::Duration::from_secs(2))
        );
        assert_eq!(v2.outlier.unwrap().consecutive_failures, 3);
        let t = crate::routes::Routes::new().publish(&[spec]);
        let route = t.lookup("catalog.shop.svc.cluster.local", 80).unwrap();
        let v2 = route.candidates_near("v2").unwrap().conn.unwrap();
        assert_eq!(v2.outlier.as_ref().unwrap().consecutive_failures, 3);
    }

    /// A ServiceEntry of namespace `ns`, created `secs` seconds into the day.
    fn service_entry(ns: &str, name: &str, secs: u32, spec: serde_json::Value) -> SeInfo {
        let meta = json!({"name": name, "namespace": ns,
            "creationTimestamp": format!("2026-12-07T00:00:{secs:02}Z")});
        let obj = istio_object("networking.istio.io/v1", "ServiceEntry", meta, spec);
        super::super::service_entry::project_service_entry(&obj).unwrap()
    }

    fn workload_entry(ns: &str, name: &str, spec: serde_json::Value) -> WeInfo {
        let meta = json!({"name": name, "namespace": ns});
        let obj = istio_object("networking.istio.io/v1", "WorkloadEntry", meta, spec);
        super::super::workload_entry::project_workload_entry(&obj).unwrap()
    }

    fn peer_authentication(ns: &str, name: &str, spec: serde_json::Value) -> PaInfo {
        let meta = json!({"name": name, "namespace": ns});
        let obj = istio_object("security.istio.io/v1", "PeerAuthentication", meta, spec);
        super::super::peer_auth::project_peer_authentication(&obj).unwrap()
    }

    /// ServiceEntries as routes, as istiod keys their instances by host and namespace: every
    /// entry of the oldest entry's namespace naming a host serves it, an address in two
    /// serving the ports of both; another namespace's entry for it does not; an entry with a
    /// selector serves the WorkloadEntries it selects, not its inline endpoints; subsets select
    /// endpoints by their labels; an endpoint on another network is left out; a namespace's
    /// PeerAuthentication reaches selected WorkloadEntries but not inline endpoints (istiod
    /// gives those no namespace), a mesh-wide one both.
    #[test]
    fn service_entries_become_routes_for_their_hosts() {
        let mut m = model_with(false);
        set_network(&mut m, "east-net");
        let ports = json!([{"number": 5432, "name": "pg", "targetPort": 6432}]);
        let host = json!(["db.mesh.local"]);
        let internal = |extra: serde_json::Value| {
            let mut spec = json!({"hosts": host, "location": "MESH_INTERNAL", "ports": ports});
            spec.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            spec
        };
        let old = internal(json!({"endpoints": [
            {"address": "10.3.0.1", "labels": {"version": "v1"}, "serviceAccount": "db"},
            {"address": "10.3.0.2", "labels": {"version": "v2"}, "serviceAccount": "db",
             "ports": {"pg": 7000}, "weight": 4},
            {"address": "10.3.0.3", "network": "west-net", "serviceAccount": "db"}]}));
        let admin = json!({"hosts": host, "location": "MESH_INTERNAL",
            "ports": [{"number": 9000, "name": "admin"}],
            "endpoints": [{"address": "10.3.0.1"}, {"address": "10.3.0.9"}]});
        let vms = internal(json!({"workloadSelector": {"labels": {"app": "db"}},
            "endpoints": [{"address": "10.3.0.8", "serviceAccount": "db"}]}));
        let elsewhere = internal(json!({"endpoints": [{"address": "10.3.0.7"}]}));
        let mut w = Watched::new(1);
        let items = &mut w.streams[0].items;
        items.insert(k("shop", "b-old"), service_entry("shop", "b-old", 1, old));
        items.insert(
            k("shop", "a-admin"),
            service_entry("shop", "a-admin", 2, admin),
        );
        items.insert(k("shop", "c-vms"), service_entry("shop", "c-vms", 3, vms));
        let other = service_entry("other", "db", 4, elsewhere);
        items.insert(k("other", "db"), other);
        m.service_entries = Some(w);
        let mut wes = Watched::new(1);
        let spec = json!({"address": "10.3.0.5", "labels": {"app": "db"}, "serviceAccount": "db",
            "weight": 0});
        let vm = workload_entry("shop", "db-vm", spec);
        wes.streams[0].items.insert(k("shop", "db-vm"), vm);
        m.workload_entries = Some(wes);
        let mut rules = Watched::new(1);
        rules.streams[0].items.insert(
            k("shop", "db"),
            DrInfo {
                namespace: "shop".into(),
                host: "db.mesh.local".into(),
                order: (None, "shop/db".into()),
                subsets: vec![("v2".into(), Labels::from([("version".into(), "v2".into())]))],
                ..Default::default()
            },
        );
        m.rules = Some(rules);
        let specs = m.specs("cluster.local");
        let db = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
        assert_eq!(db.ports, vec![5432, 9000]);
        type Seen = Vec<(String, Vec<(u16, u16)>, bool)>;
        let eps: Seen = (db.endpoints.iter())
            .map(|e| {
                let ports = e.ports.iter().map(|(&p, &t)| (p, t)).collect();
                (e.address.to_string(), ports, e.mtls)
            })
            .collect();
        let want: Seen = vec![
            ("10.3.0.1".into(), vec![(5432, 6432), (9000, 9000)], true),
            ("10.3.0.2".into(), vec![(5432, 7000)], true),
            ("10.3.0.5".into(), vec![(5432, 6432)], true),
            ("10.3.0.9".into(), vec![(9000, 9000)], false),
        ];
        assert_eq!(eps, want);
        // Weights as written; zero (unset in istiod's eyes) is 1.
        let weights: Vec<u32> = db.endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(weights, [1, 4, 1, 1]);
        assert_eq!(subset_ips_of(&m, "db.mesh.local", 5432, "v2"), ["10.3.0.2"]);

        let mut w = Watched::new(1);
        let off = json!({"mtls": {"mode": "DISABLE"}});
        let pa = peer_authentication("shop", "ns", off.clone());
        w.streams[0].items.insert(k("shop", "ns"), pa);
        m.peer_auths = Some(w);
        let disabled = |m: &Model| -> Vec<(String, Vec<u16>)> {
            let specs = m.specs("cluster.local");
            let db = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
            (db.endpoints.iter())
                .filter(|e| e.mtls)
                .map(|e| (e.address.to_string(), e.mtls_disabled.clone()))
                .collect()
        };
        let only_vm = vec![
            ("10.3.0.1".to_string(), vec![]),
            ("10.3.0.2".to_string(), vec![]),
            ("10.3.0.5".to_string(), vec![5432]),
        ];
        assert_eq!(disabled(&m), only_vm);
        let w = m.peer_auths.as_mut().unwrap();
        let mesh = peer_authentication("istio-system", "mesh", off);
        w.streams[0].items.insert(k("istio-system", "mesh"), mesh);
        let all = vec![
            ("10.3.0.1".to_string(), vec![5432, 9000]),
            ("10.3.0.2".to_string(), vec![5432]),
            ("10.3.0.5".to_string(), vec![5432]),
        ];
        assert_eq!(disabled(&m), all);
    }

    /// An entry in a Service's namespace naming its host adds endpoints to the Service's
    /// route on the Service ports whose name it has (istiod's endpoint builder reads every
    /// registry's shard of a host and namespace); one in another namespace adds none.
    #[test]
    fn a_service_entry_with_a_services_host_adds_to_it() {
        let mut m = model_with(false);
        let spec = |address: &str| {
            json!({"hosts": ["catalog.shop.svc.cluster.local"], "location": "MESH_INTERNAL",
                "ports": [{"number": 8080, "name": "http"}, {"number": 7070, "name": "other"}],
                "endpoints": [{"address": address, "serviceAccount": "vm"}]})
        };
        let mut w = Watched::new(1);
        let items = &mut w.streams[0].items;
        items.insert(
            k("shop", "vm"),
            service_entry("shop", "vm", 1, spec("10.3.0.1")),
        );
        items.insert(
            k("else", "vm"),
            service_entry("else", "vm", 0, spec("10.3.0.2")),
        );
        m.service_entries = Some(w);
        let specs = m.specs("cluster.local");
        assert_eq!(specs.len(), 1);
        let c = &specs[0];
        assert_eq!(c.ports, vec![80, 90], "the Service's own ports");
        let vm = (c.endpoints.iter())
            .find(|e| e.address.to_string() == "10.3.0.1")
            .unwrap();
        assert_eq!(vm.ports, BTreeMap::from([(80, 8080)]));
        assert!(
            c.endpoints
                .iter()
                .all(|e| e.address.to_string() != "10.3.0.2")
        );
        let pods: Vec<String> = (c.endpoints.iter())
            .map(|e| e.address.to_string())
            .filter(|a| a.starts_with("10.0.0."))
            .collect();
        assert_eq!(
            pods,
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"],
            "the slices' stay"
        );
    }

    /// An entry of the catalog's namespace with its host (the ports `extra` gives).
    fn catalog_entry(ns: &str, name: &str, secs: u32, extra: serde_json::Value) -> SeInfo {
        let mut spec = json!({"hosts": ["catalog.shop.svc.cluster.local"],
            "location": "MESH_INTERNAL"});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        service_entry(ns, name, secs, spec)
    }

    /// Added to a Service: an address two entries list serves the ports of both (EDS reads
    /// every instance of the host and namespace by port name); an address a slice lists keeps
    /// the slice's ports only.
    #[test]
    fn entries_added_to_a_service_join_by_address() {
        let mut m = model_with(false);
        let mut w = Watched::new(1);
        let items = &mut w.streams[0].items;
        let http = json!({"ports": [{"number": 8080, "name": "http"}],
            "endpoints": [{"address": "10.3.0.1"}, {"address": "10.0.0.1"}]});
        items.insert(k("shop", "a"), catalog_entry("shop", "a", 1, http));
        let grpc = json!({"ports": [{"number": 9090, "name": "grpc"}],
            "endpoints": [{"address": "10.3.0.1"}, {"address": "10.0.0.1"}]});
        items.insert(k("shop", "b"), catalog_entry("shop", "b", 2, grpc));
        m.service_entries = Some(w);
        let specs = m.specs("cluster.local");
        let at = |ip: &str| {
            (specs[0].endpoints.iter())
                .find(|e| e.address.to_string() == ip)
                .unwrap()
                .ports
                .clone()
        };
        assert_eq!(at("10.3.0.1"), BTreeMap::from([(80, 8080), (90, 9090)]));
        assert_eq!(at("10.0.0.1"), BTreeMap::from([(80, 3000)]), "the slice's");
    }

    /// A Service hidden from the gateway (`exportTo`) is not in its scope, so an entry for its
    /// host, from any namespace, gets the route, as in istiod.
    #[test]
    fn a_hidden_services_host_is_left_to_an_entry() {
        let mut m = model_with(false);
        let key = k("shop", "catalog");
        let mut s = m.services.streams[0].items.get(&key).unwrap().clone();
        s.export_to = Some(vec![Box::<str>::from(".")].into());
        m.services.streams[0].items.insert(key, s);
        let mut w = Watched::new(1);
        let spec = json!({"ports": [{"number": 80, "name": "http"}],
            "endpoints": [{"address": "10.3.0.1"}]});
        w.streams[0]
            .items
            .insert(k("other", "a"), catalog_entry("other", "a", 1, spec));
        m.service_entries = Some(w);
        let specs = m.specs("cluster.local");
        let c = specs
            .iter()
            .find(|s| s.host == "catalog.shop.svc.cluster.local");
        let ips: Vec<String> = (c.unwrap().endpoints.iter())
            .map(|e| e.address.to_string())
            .collect();
        assert_eq!(ips, ["10.3.0.1"]);
    }

    /// Who owns a host two namespaces define, in istiod's order for a gateway: exported to
    /// the gateway's namespace by name before public, each oldest first; an owner the gateway
    /// does not serve (`MESH_EXTERNAL`) leaves the host without a route. Entries istiod would
    /// not merge (here one with a selector, one without) do not join their ports; the
    /// traffic-distribution annotation asks for zone preference.
    #[test]
    fn a_hosts_owner_is_chosen_as_istiod_orders_a_gateways_services() {
        let db = |ip: &str, extra: serde_json::Value| {
            let mut s = json!({"hosts": ["db.mesh.local"], "location": "MESH_INTERNAL",
                "ports": [{"number": 5432, "name": "pg"}], "endpoints": [{"address": ip}]});
            s.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            s
        };
        let ips = |m: &Model| -> Option<Vec<String>> {
            let specs = m.specs("cluster.local");
            let db = specs.iter().find(|s| s.host == "db.mesh.local")?;
            Some(db.endpoints.iter().map(|e| e.address.to_string()).collect())
        };
        let mut m = model_with(false);
        let mut w = Watched::new(1);
        let items = &mut w.streams[0].items;
        items.insert(
            k("a", "db"),
            service_entry("a", "db", 1, db("10.3.0.1", json!({}))),
        );
        let named = json!({"exportTo": ["istio-system"]});
        items.insert(
            k("b", "db"),
            service_entry("b", "db", 2, db("10.3.0.2", named)),
        );
        m.service_entries = Some(w);
        assert_eq!(
            ips(&m).unwrap(),
            ["10.3.0.2"],
            "exported to the gateway's namespace"
        );
        let w = m.service_entries.as_mut().unwrap();
        w.streams[0].items.remove(&k("b", "db"));
        let external = json!({"location": "MESH_EXTERNAL"});
        let old = service_entry("c", "db", 0, db("10.3.0.3", external));
        w.streams[0].items.insert(k("c", "db"), old);
        assert_eq!(ips(&m), None, "owned by an external entry");

        let mut m = model_with(false);
        let mut w = Watched::new(1);
        let items = &mut w.streams[0].items;
        let mut first = db("10.3.0.1", json!({}));
        first["ports"] = json!([{"number": 5432, "name": "pg"}, {"number": 9000, "name": "admin"}]);
        items.insert(k("a", "db"), service_entry("a", "db", 1, first));
        let vms = json!({"workloadSelector": {"labels": {"app": "db"}}, "endpoints": [],
            "ports": [{"number": 5432, "name": "pg"}, {"number": 7000, "name": "metrics"}]});
        items.insert(k("a", "vms"), service_entry("a", "vms", 2, db("", vms)));
        m.service_entries = Some(w);
        let specs = m.specs("cluster.local");
        let route = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
        assert_eq!(
            route.ports,
            vec![5432, 9000],
            "not merged: another selector"
        );
        assert!(!route.prefer_close);
        let meta = json!({"name": "db", "namespace": "a",
            "creationTimestamp": "2026-12-07T00:00:01Z",
            "annotations": {"networking.istio.io/traffic-distribution": "PreferClose"}});
        let spec = db("10.3.0.1", json!({}));
        let obj = istio_object("networking.istio.io/v1", "ServiceEntry", meta, spec);
        let close = super::super::service_entry::project_service_entry(&obj).unwrap();
        let w = m.service_entries.as_mut().unwrap();
        w.streams[0].items.insert(k("a", "db"), close);
        let specs = m.specs("cluster.local");
        let route = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
        assert!(route.prefer_close);
    }

    /// `exportTo` is a set, as istiod compares it (`canMergeServices`): two entries listing
    /// the same namespaces in another order merge their ports.
    #[test]
    fn export_to_order_does_not_stop_ports_merging() {
        let mut m = model_with(false);
        let mut w = Watched::new(1);
        let items = &mut w.streams[0].items;
        let a = json!({"hosts": ["db.mesh.local"], "location": "MESH_INTERNAL",
            "exportTo": ["istio-system", "a"],
            "ports": [{"number": 5432, "name": "pg"}], "endpoints": [{"address": "10.3.0.1"}]});
        let b = json!({"hosts": ["db.mesh.local"], "location": "MESH_INTERNAL",
            "exportTo": ["a", "istio-system", "a"],
            "ports": [{"number": 9000, "name": "admin"}], "endpoints": [{"address": "10.3.0.2"}]});
        items.insert(k("a", "db"), service_entry("a", "db", 1, a));
        items.insert(k("a", "admin"), service_entry("a", "admin", 2, b));
        m.service_entries = Some(w);
        let specs = m.specs("cluster.local");
        let route = specs.iter().find(|s| s.host == "db.mesh.local").unwrap();
        assert_eq!(
            route.ports,
            vec![5432, 9000],
            "same exportTo, another order"
        );
    }

    /// A visible Service owns its host even when none of its ports is TCP (so it has no
    /// route): an entry of another namespace naming the host gets none either.
    #[test]
    fn a_visible_service_without_a_route_still_owns_its_host() {
        let mut m = model_with(false);
        let udp = project_service(&svc(
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}]),
        ))
        .unwrap();
        assert!(udp.ports.is_empty());
        m.services.streams[0]
            .items
            .insert(k("shop", "catalog"), udp);
        let mut w = Watched::new(1);
        let spec = json!({"ports": [{"number": 80, "name": "http"}],
            "endpoints": [{"address": "10.3.0.1"}]});
        w.streams[0]
            .items
            .insert(k("other", "a"), catalog_entry("other", "a", 1, spec));
        m.service_entries = Some(w);
        let specs = m.specs("cluster.local");
        assert!(
            specs
                .iter()
                .all(|s| s.host != "catalog.shop.svc.cluster.local")
        );
    }
}
