//! The Kubernetes discovery model, without I/O: objects are projected to the few fields
//! routing needs as they arrive, kept in per-watch caches with list/re-list semantics, and
//! turned into [`ServiceSpec`]s on demand.
//!
//! Nothing here keeps a whole object: no managedFields, annotations, status or unused spec
//! fields, so memory grows with what the route table needs, not with object size.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;

use crate::name;
use crate::routes::{EndpointSpec, Labels, ServiceSpec, Subsets};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `(namespace, name)` of an object.
pub type ObjKey = (Box<str>, Box<str>);

/// What a Service contributes: its TCP ports (name, port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcInfo {
    pub ports: Vec<(Option<Box<str>>, u16)>,
}

/// What an EndpointSlice contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub service: Box<str>,
    /// (port name, endpoint port) of TCP ports.
    pub ports: Vec<(Option<Box<str>>, u16)>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub address: IpAddr,
    pub ready: bool,
    /// Name of the Pod in the slice's namespace (from `targetRef`).
    pub pod: Option<Box<str>>,
}

/// What a DestinationRule contributes: the resolved host and its subsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrInfo {
    pub host: String,
    /// `(creationTimestamp, namespace/name)`: the oldest rule wins a conflict, as in Istio.
    pub order: (Option<Time>, String),
    pub subsets: Vec<(String, Labels)>,
}

fn nonempty(s: &Option<String>) -> Option<Box<str>> {
    s.as_deref().filter(|s| !s.is_empty()).map(Box::from)
}

fn is_tcp(protocol: &Option<String>) -> bool {
    protocol.as_deref().is_none_or(|p| p == "TCP")
}

fn port_u16(p: i32) -> Option<u16> {
    u16::try_from(p).ok().filter(|&p| p != 0)
}

/// Object key from metadata; objects without a name are ignored by the caller.
pub fn key(ns: Option<&str>, name: Option<&str>) -> Option<ObjKey> {
    Some((
        ns.unwrap_or("").into(),
        name.filter(|n| !n.is_empty())?.into(),
    ))
}

/// A Service's routable ports. ExternalName services have no endpoints and are skipped.
pub fn project_service(svc: &Service) -> Option<SvcInfo> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let ports: Vec<_> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(&p.protocol))
        .filter_map(|p| Some((nonempty(&p.name), port_u16(p.port)?)))
        .collect();
    Some(SvcInfo { ports })
}

/// An EndpointSlice's TCP ports and IP endpoints. Not ready (`ready: false`) and terminating
/// endpoints are kept with `ready: false`, so they stay visible but are never chosen;
/// `ready` unset counts as ready, as the API documents.
pub fn project_slice(slice: &EndpointSlice) -> Option<SliceInfo> {
    let service = slice
        .metadata
        .labels
        .as_ref()?
        .get(SERVICE_NAME_LABEL)
        .filter(|s| !s.is_empty())?;
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return None;
    }
    let ns = slice.metadata.namespace.as_deref().unwrap_or("");
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(&p.protocol))
        .filter_map(|p| Some((nonempty(&p.name), port_u16(p.port?)?)))
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .filter_map(|e| {
            // Addresses are fungible; consumers may use the first (API docs).
            let address: IpAddr = e.addresses.first()?.trim().parse().ok()?;
            let c = e.conditions.as_ref();
            let ready = c.and_then(|c| c.ready) != Some(false)
                && c.and_then(|c| c.terminating) != Some(true);
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .filter(|r| r.namespace.as_deref().is_none_or(|n| n == ns))
                .and_then(|r| nonempty(&r.name));
            Some(SliceEndpoint {
                address,
                ready,
                pod,
            })
        })
        .collect();
    Some(SliceInfo {
        service: service.as_str().into(),
        ports,
        endpoints,
    })
}

/// A Pod's labels, sorted by key, with interned strings: label keys and values repeat
/// across the pods of a workload, so 50,000 pods share a few thousand strings.
pub type PodLabels = Box<[(Arc<str>, Arc<str>)]>;

/// Shares equal strings. Entries nothing else refers to are dropped as the set grows.
#[derive(Clone, Default)]
pub struct Interner(Arc<Mutex<InternSet>>);

#[derive(Default)]
struct InternSet {
    set: HashSet<Arc<str>>,
    prune_at: usize,
}

impl Interner {
    pub fn intern(&self, s: &str) -> Arc<str> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(a) = g.set.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        g.set.insert(a.clone());
        if g.set.len() > g.prune_at {
            g.set.retain(|a| Arc::strong_count(a) > 1);
            g.prune_at = (g.set.len() * 2).max(4096);
        }
        a
    }
}

/// A Pod's labels (from metadata only). Pods without labels are not kept.
pub fn project_pod(pod: &PartialObjectMeta<Pod>, interner: &Interner) -> Option<PodLabels> {
    let labels = pod.metadata.labels.as_ref().filter(|l| !l.is_empty())?;
    // BTreeMap iteration is sorted by key.
    Some(
        labels
            .iter()
            .map(|(k, v)| (interner.intern(k), interner.intern(v)))
            .collect(),
    )
}

fn pod_label<'a>(labels: &'a PodLabels, key: &str) -> Option<&'a str> {
    labels
        .binary_search_by(|(k, _)| k.as_ref().cmp(key))
        .ok()
        .map(|i| labels[i].1.as_ref())
}

/// Resolves a DestinationRule host like Istio does for Kubernetes: a short name is relative
/// to the rule's namespace; `name.ns` and `name.ns.svc` are completed with the cluster
/// domain (Kubernetes DNS search semantics); anything longer is taken as a FQDN.
pub fn resolve_host(host: &str, rule_ns: &str, domain: &str) -> String {
    let h = host.trim().trim_end_matches('.').to_ascii_lowercase();
    let dots = h.matches('.').count();
    if dots == 0 {
        format!("{h}.{rule_ns}.svc.{domain}")
    } else if dots == 1 {
        format!("{h}.svc.{domain}")
    } else if dots == 2 && h.ends_with(".svc") {
        format!("{h}.{domain}")
    } else {
        h
    }
}

/// A DestinationRule's host and subsets (`spec.host`, `spec.subsets[].{name,labels}`).
pub fn project_destination_rule(dr: &DynamicObject, domain: &str) -> Option<DrInfo> {
    let spec = dr.data.get("spec")?;
    let host = spec.get("host")?.as_str()?;
    if host.contains('*') {
        // Wildcard hosts are not supported; the rule is ignored.
        return None;
    }
    let ns = dr.metadata.namespace.as_deref().unwrap_or("");
    let subsets = spec
        .get("subsets")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            let labels: Labels = s
                .get("labels")
                .and_then(|l| l.as_object())
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                        .collect()
                })
                .unwrap_or_default();
            Some((name, labels))
        })
        .collect();
    Some(DrInfo {
        host: resolve_host(host, ns, domain),
        order: (
            dr.metadata.creation_timestamp.clone(),
            format!("{ns}/{}", dr.metadata.name.as_deref().unwrap_or("")),
        ),
        subsets,
    })
}

/// One watch's update, already projected.
#[derive(Debug)]
pub enum Update<T> {
    /// A (re-)list starts: buffer until [`Update::InitDone`].
    Init,
    /// Listed, added or modified; `None` when the object projects to nothing.
    Apply {
        key: ObjKey,
        obj: Option<T>,
        initial: bool,
    },
    Delete(ObjKey),
    /// The list is complete: it replaces the cache atomically.
    InitDone,
}

/// The projected objects of one watch (one type in one namespace, or in all).
#[derive(Debug)]
pub struct Cache<T> {
    pub items: HashMap<ObjKey, T>,
    buffer: Option<HashMap<ObjKey, T>>,
    pub synced: bool,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            items: HashMap::new(),
            buffer: None,
            synced: false,
        }
    }
}

impl<T: PartialEq> Cache<T> {
    /// Applies one update; returns whether the visible contents may have changed.
    pub fn apply(&mut self, update: Update<T>) -> bool {
        match update {
            Update::Init => {
                self.buffer = Some(HashMap::new());
                false
            }
            Update::Apply {
                key,
                obj,
                initial: true,
            } if self.buffer.is_some() => {
                let buf = self.buffer.as_mut().expect("checked");
                match obj {
                    Some(o) => buf.insert(key, o),
                    None => buf.remove(&key),
                };
                false
            }
            Update::Apply { key, obj, .. } => match obj {
                Some(o) => {
                    let same = self.items.get(&key) == Some(&o);
                    if !same {
                        self.items.insert(key, o);
                    }
                    !same
                }
                None => self.items.remove(&key).is_some(),
            },
            Update::Delete(key) => self.items.remove(&key).is_some(),
            Update::InitDone => {
                let fresh = self.buffer.take().unwrap_or_default();
                let changed = !self.synced || fresh != self.items;
                self.items = fresh;
                self.items.shrink_to_fit();
                self.synced = true;
                changed
            }
        }
    }
}

/// Caches of one type across its watches (one per namespace, or one for all).
#[derive(Debug)]
pub struct Watched<T> {
    pub streams: Vec<Cache<T>>,
}

impl<T> Watched<T> {
    pub fn new(streams: usize) -> Self {
        Watched {
            streams: (0..streams.max(1)).map(|_| Cache::default()).collect(),
        }
    }

    pub fn synced(&self) -> bool {
        self.streams.iter().all(|s| s.synced)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ObjKey, &T)> {
        self.streams.iter().flat_map(|s| s.items.iter())
    }

    pub fn get(&self, key: &ObjKey) -> Option<&T> {
        self.streams.iter().find_map(|s| s.items.get(key))
    }

    pub fn len(&self) -> usize {
        self.streams.iter().map(|s| s.items.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Everything discovery knows, projected.
#[derive(Debug)]
pub struct Model {
    pub services: Watched<SvcInfo>,
    pub slices: Watched<SliceInfo>,
    pub pods: Watched<PodLabels>,
    /// `None` while the DestinationRule CRD is not served.
    pub rules: Option<Watched<DrInfo>>,
}

impl Model {
    pub fn new(streams: usize) -> Self {
        Model {
            services: Watched::new(streams),
            slices: Watched::new(streams),
            pods: Watched::new(streams),
            rules: None,
        }
    }

    /// Every watched type has completed its first list.
    pub fn synced(&self) -> bool {
        self.services.synced()
            && self.slices.synced()
            && self.pods.synced()
            && self.rules.as_ref().is_none_or(Watched::synced)
    }

    /// Subsets per resolved host: rules for one host merge, the oldest rule winning a subset
    /// name defined twice. Subset names that cannot appear in an SNI name are dropped.
    /// Hosts with equal subsets share one map (rules are often copies of each other).
    fn subsets_by_host(&self) -> HashMap<&str, Arc<Subsets>> {
        let Some(rules) = &self.rules else {
            return HashMap::new();
        };
        let mut sorted: Vec<&DrInfo> = rules.iter().map(|(_, r)| r).collect();
        sorted.sort_by(|a, b| a.order.cmp(&b.order));
        let mut out: HashMap<&str, Subsets> = HashMap::new();
        for r in sorted {
            let entry = out.entry(r.host.as_str()).or_default();
            for (name, labels) in &r.subsets {
                if name::parse(&format!("outbound_.1_.{name}_.a")).is_err() {
                    tracing::debug!(host = %r.host, subset = %name, "subset name is not routable; skipped");
                    continue;
                }
                entry.entry(name.clone()).or_insert_with(|| labels.clone());
            }
        }
        let mut shared: HashMap<Subsets, Arc<Subsets>> = HashMap::new();
        out.into_iter()
            .map(|(host, subs)| {
                let subs = shared
                    .entry(subs)
                    .or_insert_with_key(|s| Arc::new(s.clone()))
                    .clone();
                (host, subs)
            })
            .collect()
    }

    /// The route table's input: one spec per Service with at least one TCP port.
    ///
    /// An endpoint serves a Service port when its slice has a port with the same name
    /// (both empty for an unnamed port). An address listed in several slices of one
    /// Service counts once, ready if any listing is ready. Pod labels are attached only
    /// for the label keys the Service's subsets select on; endpoints with equal labels
    /// share one map, so the table holds a few maps rather than one per endpoint.
    pub fn specs(&self, domain: &str) -> Vec<ServiceSpec> {
        let mut slices_by_svc: HashMap<(&str, &str), Vec<&SliceInfo>> = HashMap::new();
        for ((ns, _), s) in self.slices.iter() {
            slices_by_svc
                .entry((ns.as_ref(), s.service.as_ref()))
                .or_default()
                .push(s);
        }
        let subsets = self.subsets_by_host();
        let no_subsets: Arc<Subsets> = Arc::default();
        let no_labels: Arc<Labels> = Arc::default();
        let mut label_sets: HashMap<Vec<(&str, &str)>, Arc<Labels>> = HashMap::new();
        let mut label_key: Vec<(&str, &str)> = Vec::new();
        let mut out = Vec::with_capacity(self.services.len());
        for ((ns, svc_name), svc) in self.services.iter() {
            if svc.ports.is_empty() {
                continue;
            }
            let host = format!("{svc_name}.{ns}.svc.{domain}").to_ascii_lowercase();
            let mut ports: Vec<u16> = svc.ports.iter().map(|(_, p)| *p).collect();
            ports.sort_unstable();
            ports.dedup();
            if name::parse(&format!("outbound_.{}_._.{host}", ports[0])).is_err() {
                tracing::debug!(%host, "service host is not routable; skipped");
                continue;
            }
            let subs = subsets.get(host.as_str()).unwrap_or(&no_subsets);
            let wanted_keys: Vec<&str> = {
                let mut k: Vec<&str> = subs
                    .values()
                    .flat_map(|l| l.keys().map(String::as_str))
                    .collect();
                k.sort();
                k.dedup();
                k
            };
            let mut eps: BTreeMap<IpAddr, EndpointSpec> = BTreeMap::new();
            for slice in slices_by_svc
                .get(&(ns.as_ref(), svc_name.as_ref()))
                .into_iter()
                .flatten()
            {
                let port_map: BTreeMap<u16, u16> = svc
                    .ports
                    .iter()
                    .filter_map(|(pname, port)| {
                        let target = slice.ports.iter().find(|(n, _)| n == pname)?.1;
                        Some((*port, target))
                    })
                    .collect();
                if port_map.is_empty() {
                    continue;
                }
                for e in &slice.endpoints {
                    let pod = e
                        .pod
                        .as_ref()
                        .filter(|_| !wanted_keys.is_empty())
                        .and_then(|p| self.pods.get(&(ns.clone(), p.clone())));
                    let labels = match pod {
                        None => no_labels.clone(),
                        Some(l) => {
                            label_key.clear();
                            label_key.extend(
                                wanted_keys
                                    .iter()
                                    .filter_map(|&k| Some((k, pod_label(l, k)?))),
                            );
                            match label_sets.get(label_key.as_slice()) {
                                Some(shared) => shared.clone(),
                                None => {
                                    let new: Arc<Labels> = Arc::new(
                                        label_key
                                            .iter()
                                            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                                            .collect(),
                                    );
                                    label_sets.insert(label_key.clone(), new.clone());
                                    new
                                }
                            }
                        }
                    };
                    let spec = eps.entry(e.address).or_insert_with(|| EndpointSpec {
                        address: e.address,
                        ports: BTreeMap::new(),
                        labels: no_labels.clone(),
                        ready: false,
                    });
                    if e.ready && !spec.ready {
                        spec.ready = true;
                        spec.labels = labels;
                        spec.ports = port_map.clone();
                    } else if spec.ports.is_empty() {
                        spec.labels = labels;
                        spec.ports = port_map.clone();
                    }
                }
            }
            out.push(ServiceSpec {
                host,
                ports,
                subsets: subs.clone(),
                endpoints: eps.into_values().collect(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn k(ns: &str, n: &str) -> ObjKey {
        (ns.into(), n.into())
    }

    fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "catalog", "namespace": "shop"}, "spec": {"ports": ports}}),
        )
        .unwrap()
    }

    fn slice(svc: &str, ports: serde_json::Value, eps: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-abc"), "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": eps
        }))
        .unwrap()
    }

    fn applied<T: PartialEq>(c: &mut Cache<T>, key: ObjKey, obj: Option<T>) -> bool {
        c.apply(Update::Apply {
            key,
            obj,
            initial: false,
        })
    }

    #[test]
    fn projections_keep_only_routing_fields() {
        let s = project_service(&svc(json!([
            {"name": "http", "port": 80},
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"port": 8080, "protocol": "TCP"}
        ])))
        .unwrap();
        assert_eq!(s.ports, vec![(Some("http".into()), 80), (None, 8080)]);

        let sl = project_slice(&slice(
            "catalog",
            json!([{"name": "http", "port": 3000}, {"name": "x"}]),
            json!([
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "p1", "namespace": "shop"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["10.0.0.4"]},
                {"addresses": ["not-an-ip"]}
            ]),
        ))
        .unwrap();
        assert_eq!(&*sl.service, "catalog");
        assert_eq!(sl.ports, vec![(Some("http".into()), 3000)]);
        let ready: Vec<bool> = sl.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, vec![true, false, false, true]);
        assert_eq!(sl.endpoints[0].pod.as_deref(), Some("p1"));

        let mut no_label = slice("catalog", json!([]), json!([]));
        no_label.metadata.labels = None;
        assert!(project_slice(&no_label).is_none());
        let mut fqdn = slice("catalog", json!([]), json!([]));
        fqdn.address_type = "FQDN".into();
        assert!(project_slice(&fqdn).is_none());
    }

    #[test]
    fn destination_rule_hosts_resolve_like_istio() {
        let d = "cluster.local";
        assert_eq!(
            resolve_host("catalog", "shop", d),
            "catalog.shop.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("catalog.other", "shop", d),
            "catalog.other.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("catalog.other.svc", "shop", d),
            "catalog.other.svc.cluster.local"
        );
        assert_eq!(
            resolve_host("Catalog.Other.svc.cluster.local.", "shop", d),
            "catalog.other.svc.cluster.local"
        );
        let dr: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "c", "namespace": "shop", "managedFields": [{"manager": "x"}]},
            "spec": {"host": "catalog", "subsets": [
                {"name": "v1", "labels": {"version": "v1"}}, {"name": "all"}]}
        }))
        .unwrap();
        let info = project_destination_rule(&dr, d).unwrap();
        assert_eq!(info.host, "catalog.shop.svc.cluster.local");
        assert_eq!(info.subsets.len(), 2);
        assert_eq!(info.subsets[0].1["version"], "v1");
        assert!(info.subsets[1].1.is_empty());
    }

    #[test]
    fn relist_replaces_atomically_and_detects_no_change() {
        let mut c: Cache<u32> = Cache::default();
        c.apply(Update::Init);
        c.apply(Update::Apply {
            key: k("a", "1"),
            obj: Some(1),
            initial: true,
        });
        assert!(c.items.is_empty(), "listed objects wait for InitDone");
        assert!(c.apply(Update::InitDone));
        assert!(c.synced);
        assert!(
            !applied(&mut c, k("a", "1"), Some(1)),
            "same object is no change"
        );
        assert!(applied(&mut c, k("a", "2"), Some(2)));
        // A re-list that misses "2" deletes it; the old contents serve until InitDone.
        c.apply(Update::Init);
        c.apply(Update::Apply {
            key: k("a", "1"),
            obj: Some(1),
            initial: true,
        });
        assert_eq!(c.items.len(), 2);
        assert!(c.apply(Update::InitDone));
        assert_eq!(c.items.len(), 1);
        // Projecting to nothing removes.
        assert!(applied(&mut c, k("a", "1"), None));
        assert!(!c.apply(Update::Delete(k("a", "1"))));
    }

    fn model_with(dr: bool) -> Model {
        let interner = Interner::default();
        let mut m = Model::new(1);
        let s = project_service(&svc(
            json!([{"name": "http", "port": 80}, {"name": "grpc", "port": 90}]),
        ))
        .unwrap();
        m.services.streams[0].items.insert(k("shop", "catalog"), s);
        let sl = project_slice(&slice(
            "catalog",
            json!([{"name": "http", "port": 3000}]),
            json!([
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "p1"}},
                {"addresses": ["10.0.0.2"], "targetRef": {"kind": "Pod", "name": "p2"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}}
            ]),
        ))
        .unwrap();
        m.slices.streams[0]
            .items
            .insert(k("shop", "catalog-abc"), sl);
        // The same address in a second slice, not ready there: still counted once, ready.
        let dup = project_slice(&slice(
            "catalog",
            json!([{"name": "http", "port": 3000}]),
            json!([{"addresses": ["10.0.0.1"], "conditions": {"ready": false}}]),
        ))
        .unwrap();
        m.slices.streams[0]
            .items
            .insert(k("shop", "catalog-def"), dup);
        for (p, v) in [("p1", "v1"), ("p2", "v2")] {
            let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": p, "namespace": "shop",
                             "labels": {"version": v, "app": "catalog"}}
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
                    host: "catalog.shop.svc.cluster.local".into(),
                    order: (None, "shop/old".into()),
                    subsets: vec![("v1".into(), Labels::from([("version".into(), "v1".into())]))],
                },
            );
            w.streams[0].items.insert(
                k("shop", "new"),
                DrInfo {
                    host: "catalog.shop.svc.cluster.local".into(),
                    order: (Some(Time(Default::default())), "shop/new".into()),
                    subsets: vec![
                        ("v1".into(), Labels::from([("version".into(), "v9".into())])),
                        ("v2".into(), Labels::from([("version".into(), "v2".into())])),
                        ("Bad_Name".into(), Labels::new()),
                    ],
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

    #[test]
    fn equal_labels_and_subsets_share_one_map() {
        let mut m = model_with(true);
        let sl = project_slice(&slice(
            "catalog",
            json!([{"name": "http", "port": 3000}]),
            json!([{"addresses": ["10.0.0.4"], "targetRef": {"kind": "Pod", "name": "p4"}}]),
        ))
        .unwrap();
        m.slices.streams[0]
            .items
            .insert(k("shop", "catalog-ghi"), sl);
        // Differs from p1 only in a label no subset selects on.
        let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "p4", "namespace": "shop",
                         "labels": {"version": "v1", "app": "other"}}
        }))
        .unwrap();
        let labels = project_pod(&meta, &Interner::default()).unwrap();
        m.pods.streams[0].items.insert(k("shop", "p4"), labels);
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
    fn interner_shares_and_prunes() {
        let i = Interner::default();
        let a = i.intern("version");
        let b = i.intern("version");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for n in 0..5000 {
            i.intern(&format!("x{n}"));
        }
        assert!(
            i.0.lock().unwrap().set.len() < 5000,
            "unreferenced strings are pruned"
        );
    }

    #[test]
    fn readiness_needs_every_watch() {
        let mut m = Model::new(2);
        m.services.streams.iter_mut().for_each(|c| c.synced = true);
        m.slices.streams.iter_mut().for_each(|c| c.synced = true);
        m.pods.streams[0].synced = true;
        assert!(!m.synced());
        m.pods.streams[1].synced = true;
        assert!(m.synced());
        m.rules = Some(Watched::new(2));
        assert!(!m.synced());
    }
}
