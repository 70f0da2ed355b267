//! Projections: each watched object reduced, as it arrives, to the few fields routing needs.
//!
//! Nothing here keeps a whole object: no managedFields, annotations, status or unused spec
//! fields, so memory grows with what the route table needs, not with object size.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::DynamicObject;
use kube::core::PartialObjectMeta;

use super::ambient::{NamespaceScope, SIDECAR_STATUS_ANNOTATION, ServiceScope};
use crate::routes::{Labels, PREFER_CLOSE_VALUES};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The label of a slice a Multi-Cluster Services implementation imported from another
/// cluster; istiod reads no slice with it (`endpointSliceSelector`), nor does the gateway.
pub const MCS_SERVICE_NAME_LABEL: &str = "multicluster.kubernetes.io/service-name";

/// `(namespace, name)` of an object.
pub type ObjKey = (Box<str>, Box<str>);

/// An address family, as a Service's `spec.ipFamilies` and a slice's `addressType` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    V4,
    V6,
}

/// What a Service contributes: its TCP ports (name, port), its primary address family and
/// the labels that decide whether its ambient endpoints are exposed over HBONE (see `ambient`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcInfo {
    pub ports: Vec<(Option<Box<str>>, u16)>,
    /// `spec.ipFamilies[0]`: a dual-stack pod is dialed at its address of this family.
    pub family: IpFamily,
    pub scope: ServiceScope,
    /// `spec.clusterIPs`: a waypoint whose status gives only an IP is the Service with it.
    pub cluster_ips: Vec<IpAddr>,
    /// Connections go to endpoints in the gateway's zone first ([`prefers_close`]).
    pub prefer_close: bool,
    /// Istio's `networking.istio.io/exportTo` annotation, split at commas and trimmed;
    /// `None` when absent or empty (the mesh's default: every namespace).
    pub export_to: Option<Box<[Box<str>]>>,
    /// `internalTrafficPolicy: Local`: istiod gives a gateway only the endpoints on its own
    /// node (`conversion.go` `NodeLocal`, `endpoint_builder.go` `filterIstioEndpoint`).
    pub node_local: bool,
    /// Each port's `targetPort`, in the order of `ports`.
    pub targets: Box<[TargetPort]>,
    /// `spec.selector`, sorted, when it selects WorkloadEntries: non-empty, and the Service
    /// not headless (istiod adds entries only to client-side load-balanced Services).
    pub entry_selector: Option<Selector>,
}

/// A Service's `spec.selector`: (key, value) pairs sorted by key.
pub type Selector = Box<[(Box<str>, Box<str>)]>;

/// A Service port's `targetPort`; unset is the port's number, as the API server defaults it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(Box<str>),
}

/// Istio's annotation naming the namespaces a Service is visible to.
pub const EXPORT_TO_ANNOTATION: &str = "networking.istio.io/exportTo";

impl SvcInfo {
    /// Whether a Service in `ns` is visible to a gateway in `gateway_ns`, as istiod decides
    /// which services a gateway's listeners get (`push_context.go` `initServiceRegistry`):
    /// `*` (or no annotation) is everyone; else `~` is no one; `.` or its own namespace is
    /// that namespace only; any other entry is that namespace.
    pub fn visible_to(&self, ns: &str, gateway_ns: &str) -> bool {
        exported_to(self.export_to.as_deref(), ns, gateway_ns)
    }
}

/// Whether an object in `ns` exported to `to` (`None`: everyone) is visible in `gateway_ns`,
/// as [`SvcInfo::visible_to`] says; a ServiceEntry's `exportTo` reads the same.
pub fn exported_to(to: Option<&[Box<str>]>, ns: &str, gateway_ns: &str) -> bool {
    let Some(to) = to else {
        return true;
    };
    if to.iter().any(|e| &**e == "*") {
        return true;
    }
    if to.iter().any(|e| &**e == "~") {
        return false;
    }
    to.iter().any(|e| match &**e {
        "." => ns == gateway_ns,
        other => other == gateway_ns,
    })
}

/// What an EndpointSlice contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub service: Box<str>,
    pub family: IpFamily,
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
    /// The endpoint's zone (its node's `topology.kubernetes.io/zone`, set by the
    /// EndpointSlice controller). Interned: a cluster has a few zones.
    pub zone: Option<Arc<str>>,
    /// The node it runs on (`nodeName`). Interned: nodes host many pods.
    pub node: Option<Arc<str>>,
}

/// What a DestinationRule contributes: the resolved host, who may see it, its subsets and
/// TLS modes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrInfo {
    /// Resolved (`resolve_host`); `*`, or `*.` and a suffix, for a wildcard rule.
    pub host: String,
    pub namespace: Box<str>,
    /// `spec.exportTo` as written; empty for every namespace (istiod's default). `["."]` for a
    /// rule with a `workloadSelector`, as istiod keeps such rules to their namespace.
    pub export_to: Vec<Box<str>>,
    /// `spec.workloadSelector.matchLabels`, when the rule has one: it applies to those
    /// workloads only (never to this gateway, whose labels it does not know), yet holds its
    /// host's place in its namespace's index, as in istiod.
    pub selector: Option<Labels>,
    /// `(creationTimestamp, namespace/name)`: the oldest rule wins a conflict, as in Istio.
    pub order: (Option<Time>, String),
    pub subsets: Vec<(String, Labels)>,
    /// It has a `trafficPolicy` (even one without `tls`): merged rules keep the oldest such
    /// rule's whole policy, as istiod's `mergeDestinationRule`.
    pub has_policy: bool,
    /// The TLS modes of its `trafficPolicy` and of each subset's (`subsets` order).
    pub tls: crate::dr_tls::PolicyTls,
    pub subset_tls: Vec<crate::dr_tls::PolicyTls>,
    /// The connection settings of its `trafficPolicy` and of each subset's.
    pub conn: crate::dr_conn::PolicyConn,
    pub subset_conn: Vec<crate::dr_conn::PolicyConn>,
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

/// istiod's `PILOT_DRAINING_LABEL` (its default): a Pod with any value but empty is draining.
/// istiod leaves its endpoints out (`filterIstioEndpoint` in
/// `pilot/pkg/xds/endpoints/endpoint_builder.go`), except for a Service labelled
/// `istio.io/persistent-session`, which gets them marked DRAINING, and Envoy takes DRAINING
/// for unhealthy (`buildEnvoyLbEndpoint`; Envoy's `HealthStatus`): a new connection reaches
/// one only in Envoy's panic mode. Here it is never dialed.
pub const DRAINING_LABEL: &str = "istio.io/draining";

/// Istio's annotation for a zone preference, read where `spec.trafficDistribution` is unset.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";

/// Whether a Service asks to keep traffic close, as istiod reads it: `spec.trafficDistribution`
/// when set, else Istio's annotation, compared ignoring case ([`PREFER_CLOSE_VALUES`]).
pub(super) fn prefers_close(field: Option<&str>, annotation: Option<&str>) -> bool {
    let close = PREFER_CLOSE_VALUES;
    match field {
        Some(f) => close.contains(&f),
        None => annotation.is_some_and(|a| close.iter().any(|c| c.eq_ignore_ascii_case(a))),
    }
}

/// A Service's routable ports. ExternalName services have no endpoints and are skipped.
pub fn project_service(svc: &Service) -> Option<SvcInfo> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let (ports, targets): (Vec<_>, Vec<_>) = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(&p.protocol))
        .filter_map(|p| {
            let port = port_u16(p.port)?;
            let target = match &p.target_port {
                Some(IntOrString::Int(n)) => TargetPort::Number(port_u16(*n).unwrap_or(port)),
                Some(IntOrString::String(name)) if !name.is_empty() => {
                    TargetPort::Name(name.as_str().into())
                }
                _ => TargetPort::Number(port),
            };
            Some(((nonempty(&p.name), port), target))
        })
        .unzip();
    let entry_selector = spec
        .selector
        .as_ref()
        .filter(|s| !s.is_empty() && spec.cluster_ip.as_deref() != Some("None"))
        .map(|s| {
            s.iter()
                .map(|(k, v)| (Box::from(k.as_str()), Box::from(v.as_str())))
                .collect()
        });
    // Set by the API server on every Service since Kubernetes 1.20; unset, IPv4 (its default).
    let family = match spec.ip_families.iter().flatten().next().map(String::as_str) {
        Some("IPv6") => IpFamily::V6,
        _ => IpFamily::V4,
    };
    let scope = ServiceScope::of(
        svc.metadata.labels.as_ref(),
        svc.metadata.annotations.as_ref(),
    );
    let cluster_ips = spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let annotation = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRAFFIC_DISTRIBUTION_ANNOTATION));
    let prefer_close = prefers_close(
        spec.traffic_distribution.as_deref(),
        annotation.map(String::as_str),
    );
    let export_to = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(EXPORT_TO_ANNOTATION))
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.split(',').map(|e| Box::from(e.trim())).collect());
    Some(SvcInfo {
        ports,
        family,
        scope,
        cluster_ips,
        prefer_close,
        export_to,
        node_local: spec.internal_traffic_policy.as_deref() == Some("Local"),
        targets: targets.into(),
        entry_selector,
    })
}

/// An EndpointSlice's TCP ports and IP endpoints. Not ready (`ready: false`) and terminating
/// endpoints are kept with `ready: false`, so they stay visible but are never chosen;
/// `ready` unset counts as ready, as the API documents.
pub fn project_slice(slice: &EndpointSlice, interner: &Interner) -> Option<SliceInfo> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.contains_key(MCS_SERVICE_NAME_LABEL) {
        return None;
    }
    let service = labels.get(SERVICE_NAME_LABEL).filter(|s| !s.is_empty())?;
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        _ => return None,
    };
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
            let interned = |v: &Option<String>| {
                v.as_deref()
                    .filter(|v| !v.is_empty())
                    .map(|v| interner.intern(v))
            };
            Some(SliceEndpoint {
                address,
                ready,
                pod,
                zone: interned(&e.zone),
                node: interned(&e.node_name),
            })
        })
        .collect();
    Some(SliceInfo {
        service: service.as_str().into(),
        family,
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

/// The Pod label Istio's injector sets on every sidecar (`istio`); istiod takes an endpoint
/// for an mTLS one only with it (`PodTLSMode`, `GetTLSModeFromEndpointLabels`).
pub const TLS_MODE_LABEL: &str = "security.istio.io/tlsMode";

/// What a Pod contributes: its labels and whether Istio injected a sidecar into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub labels: PodLabels,
    pub sidecar: bool,
}

impl PodInfo {
    /// The pod terminates Istio mTLS: `security.istio.io/tlsMode: istio`, as istiod reads it
    /// (any other value, or none, is `disabled`).
    pub fn mtls(&self) -> bool {
        pod_label(&self.labels, TLS_MODE_LABEL) == Some("istio")
    }
}

/// A Pod's labels and sidecar annotation (from metadata only). Every Pod is kept, labelled or
/// not: its namespace may make it ambient.
pub fn project_pod(pod: &PartialObjectMeta<Pod>, interner: &Interner) -> Option<PodInfo> {
    let m = &pod.metadata;
    // BTreeMap iteration is sorted by key.
    let labels = m
        .labels
        .iter()
        .flatten()
        .map(|(k, v)| (interner.intern(k), interner.intern(v)))
        .collect();
    let sidecar = m
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SIDECAR_STATUS_ANNOTATION));
    Some(PodInfo { labels, sidecar })
}

/// A Namespace's ambient labels (from metadata only).
pub fn project_namespace(ns: &PartialObjectMeta<Namespace>) -> Option<NamespaceScope> {
    Some(NamespaceScope::of(
        ns.metadata.labels.as_ref(),
        ns.metadata.annotations.as_ref(),
    ))
}

pub(super) fn pod_label<'a>(labels: &'a PodLabels, key: &str) -> Option<&'a str> {
    labels
        .binary_search_by(|(k, _)| k.as_ref().cmp(key))
        .ok()
        .map(|i| labels[i].1.as_ref())
}

/// Resolves a DestinationRule host as istiod does (`ResolveShortnameToFQDN`): a name without
/// a dot is relative to the rule's namespace (`name.<ns>.svc.<domain>`); any other is taken
/// as it is, so `name.ns` names no Kubernetes Service, in istiod as here. Nor is case folded
/// or a trailing dot dropped: istiod compares hosts as written (`MostSpecificHostMatch`), so
/// `Catalog.shop.svc.cluster.local` and `catalog.shop.svc.cluster.local.` match no Service
/// (before 2026-12-06 the gateway folded both).
pub fn resolve_host(host: &str, rule_ns: &str, domain: &str) -> String {
    // `*` alone is every host, not a name in the rule's namespace.
    if host.contains('.') || host == "*" {
        host.to_string()
    } else {
        format!("{host}.{rule_ns}.svc.{domain}")
    }
}

/// A JSON object's string values (a label map); anything else is none.
fn string_map(v: Option<&serde_json::Value>) -> Labels {
    v.and_then(|l| l.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// A DestinationRule's host, `exportTo`, workload selector, subsets
/// (`spec.subsets[].{name,labels}`) and TLS modes. A host with `*` anywhere but as its whole
/// first label is no host istiod accepts (its validation refuses it), so none here either.
pub fn project_destination_rule(dr: &DynamicObject, domain: &str) -> Option<DrInfo> {
    let spec = dr.data.get("spec")?;
    let host = spec.get("host")?.as_str()?;
    let selector: Option<Labels> = spec
        .get("workloadSelector")
        .filter(|w| !w.is_null())
        .map(|w| string_map(w.get("matchLabels")));
    let well_formed = match host.strip_prefix('*') {
        None => !host.contains('*'),
        Some(rest) => (rest.is_empty() || rest.starts_with('.')) && !rest.contains('*'),
    };
    if !well_formed {
        return None;
    }
    let ns = dr.metadata.namespace.as_deref().unwrap_or("");
    let export_to = match selector {
        Some(_) => vec![Box::from(".")],
        None => spec
            .get("exportTo")
            .and_then(|e| e.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.as_str().map(Box::from))
            .collect(),
    };
    let policy = spec.get("trafficPolicy").filter(|p| !p.is_null());
    let mut subset_tls = Vec::new();
    let mut subset_conn = Vec::new();
    let subsets = spec
        .get("subsets")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s.get("name")?.as_str()?.to_string();
            subset_tls.push(crate::dr_tls::policy_tls(s.get("trafficPolicy")));
            subset_conn.push(crate::dr_conn::policy_conn(s.get("trafficPolicy")));
            Some((name, string_map(s.get("labels"))))
        })
        .collect();
    Some(DrInfo {
        host: resolve_host(host, ns, domain),
        namespace: ns.into(),
        export_to,
        selector,
        order: (
            dr.metadata.creation_timestamp.clone(),
            format!("{ns}/{}", dr.metadata.name.as_deref().unwrap_or("")),
        ),
        subsets,
        has_policy: policy.is_some(),
        tls: crate::dr_tls::policy_tls(policy),
        subset_tls,
        conn: crate::dr_conn::policy_conn(policy),
        subset_conn,
    })
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    pub(crate) fn svc(ports: serde_json::Value) -> Service {
        serde_json::from_value(
            json!({"metadata": {"name": "catalog", "namespace": "shop"}, "spec": {"ports": ports}}),
        )
        .unwrap()
    }

    pub(crate) fn slice(
        svc: &str,
        ports: serde_json::Value,
        eps: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-abc"), "namespace": "shop",
                         "labels": {SERVICE_NAME_LABEL: svc}},
            "addressType": "IPv4", "ports": ports, "endpoints": eps
        }))
        .unwrap()
    }

    /// istiod's rule (`ambientindex` services): the field when set, else Istio's annotation,
    /// which is compared ignoring case; Kubernetes' newer names count as the older one.
    #[test]
    fn a_zone_preference_is_read_as_istiod_reads_it() {
        let cases = [
            (None, None, false),
            (Some("PreferClose"), None, true),
            (Some("PreferSameZone"), None, true),
            (Some("PreferSameNode"), None, true),
            (Some("preferclose"), None, false),
            (None, Some("preferClose"), true),
            (None, Some("PreferSameZone"), true),
            (None, Some("Any"), false),
            // The field, when set, wins over the annotation.
            (Some("Other"), Some("PreferClose"), false),
        ];
        for (field, annotation, want) in cases {
            let mut v = json!({"metadata": {"name": "catalog", "namespace": "shop"},
                               "spec": {"ports": [{"port": 80}]}});
            if let Some(f) = field {
                v["spec"]["trafficDistribution"] = json!(f);
            }
            if let Some(a) = annotation {
                v["metadata"]["annotations"] = json!({TRAFFIC_DISTRIBUTION_ANNOTATION: a});
            }
            let s: Service = serde_json::from_value(v).unwrap();
            let got = project_service(&s).unwrap().prefer_close;
            assert_eq!(got, want, "{field:?} {annotation:?}");
        }
    }

    /// istiod's reading of `networking.istio.io/exportTo` for a gateway in `istio-system`
    /// (`ConvertService`, `initServiceRegistry`): `*` wins, then `~`, `.` is the Service's
    /// own namespace, any other entry a namespace; absent or empty is everyone.
    #[test]
    fn export_to_is_read_as_istiod_reads_it() {
        let cases = [
            (None, "shop", true),
            (Some(""), "shop", true),
            (Some("*"), "shop", true),
            (Some("~"), "shop", false),
            (Some("."), "shop", false),
            (Some("."), "istio-system", true),
            (Some("shop"), "shop", false),
            (Some("istio-system"), "shop", true),
            (Some(" other , istio-system "), "shop", true),
            (Some("~,*"), "shop", true),
            (Some("~,istio-system"), "shop", false),
        ];
        for (annotation, ns, want) in cases {
            let mut v = json!({"metadata": {"name": "catalog", "namespace": ns},
                               "spec": {"ports": [{"port": 80}]}});
            if let Some(a) = annotation {
                v["metadata"]["annotations"] = json!({EXPORT_TO_ANNOTATION: a});
            }
            let s: Service = serde_json::from_value(v).unwrap();
            let got = project_service(&s).unwrap().visible_to(ns, "istio-system");
            assert_eq!(got, want, "{annotation:?} in {ns}");
        }
    }

    #[test]
    fn slice_endpoints_keep_their_zone_shared() {
        let interner = Interner::default();
        let sl = project_slice(
            &slice(
                "catalog",
                json!([{"name": "http", "port": 3000}]),
                json!([
                    {"addresses": ["10.0.0.1"], "zone": "us-east-1a"},
                    {"addresses": ["10.0.0.2"], "zone": "us-east-1a"},
                    {"addresses": ["10.0.0.3"], "zone": ""},
                    {"addresses": ["10.0.0.4"]}
                ]),
            ),
            &interner,
        )
        .unwrap();
        let zones: Vec<_> = sl.endpoints.iter().map(|e| e.zone.as_deref()).collect();
        assert_eq!(zones, [Some("us-east-1a"), Some("us-east-1a"), None, None]);
        let (a, b) = (&sl.endpoints[0].zone, &sl.endpoints[1].zone);
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
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
        assert_eq!(s.family, IpFamily::V4, "no ipFamilies: IPv4");
        let mut dual = svc(json!([{"port": 80}]));
        dual.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        assert_eq!(project_service(&dual).unwrap().family, IpFamily::V6);

        let sl = project_slice(
            &slice(
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
            ),
            &Interner::default(),
        )
        .unwrap();
        assert_eq!(&*sl.service, "catalog");
        assert_eq!(sl.ports, vec![(Some("http".into()), 3000)]);
        let ready: Vec<bool> = sl.endpoints.iter().map(|e| e.ready).collect();
        assert_eq!(ready, vec![true, false, false, true]);
        assert_eq!(sl.endpoints[0].pod.as_deref(), Some("p1"));
        assert_eq!(sl.family, IpFamily::V4);
        let mut v6 = slice("catalog", json!([]), json!([{"addresses": ["fd00::1"]}]));
        v6.address_type = "IPv6".into();
        let v6 = project_slice(&v6, &Interner::default()).unwrap();
        assert_eq!(v6.family, IpFamily::V6);
        assert_eq!(
            v6.endpoints[0].address,
            "fd00::1".parse::<IpAddr>().unwrap()
        );

        let mut no_label = slice("catalog", json!([]), json!([]));
        no_label.metadata.labels = None;
        assert!(project_slice(&no_label, &Interner::default()).is_none());
        let mut imported = slice("catalog", json!([]), json!([]));
        let labels = imported.metadata.labels.as_mut().unwrap();
        labels.insert(MCS_SERVICE_NAME_LABEL.into(), "catalog".into());
        assert!(project_slice(&imported, &Interner::default()).is_none());
        let mut fqdn = slice("catalog", json!([]), json!([]));
        fqdn.address_type = "FQDN".into();
        assert!(project_slice(&fqdn, &Interner::default()).is_none());
    }

    #[test]
    fn destination_rule_hosts_resolve_like_istio() {
        let d = "cluster.local";
        assert_eq!(
            resolve_host("catalog", "shop", d),
            "catalog.shop.svc.cluster.local"
        );
        // Taken as they are, as istiod takes them: no Service has these hosts.
        assert_eq!(resolve_host("catalog.other", "shop", d), "catalog.other");
        assert_eq!(
            resolve_host("catalog.other.svc", "shop", d),
            "catalog.other.svc"
        );
        assert_eq!(
            resolve_host("Catalog.Other.svc.cluster.local.", "shop", d),
            "Catalog.Other.svc.cluster.local.",
            "as istiod compares it: no Service's host"
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
        assert!(info.export_to.is_empty() && !info.has_policy);
    }

    #[test]
    fn destination_rules_keep_wildcards_export_to_and_selectors() {
        let rule = |spec: serde_json::Value| {
            let dr: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
                "metadata": {"name": "r", "namespace": "shop"}, "spec": spec
            }))
            .unwrap();
            project_destination_rule(&dr, "cluster.local")
        };
        for (host, kept) in [
            ("*", Some("*")),
            ("*.shop.svc.cluster.local", Some("*.shop.svc.cluster.local")),
            ("*.Local.", Some("*.Local.")),
            ("a*.shop", None),
            ("*.*.local", None),
            ("*shop", None),
        ] {
            let got = rule(json!({"host": host}));
            assert_eq!(got.as_ref().map(|r| r.host.as_str()), kept, "{host}");
        }
        let r = rule(json!({"host": "catalog", "exportTo": [".", "istio-system"],
            "trafficPolicy": {"connectionPool": {}}}))
        .unwrap();
        assert_eq!(r.export_to, [Box::from("."), Box::from("istio-system")]);
        assert!(r.has_policy && r.tls.mode.is_none());
        let selected = json!({"host": "catalog", "exportTo": ["*"],
            "workloadSelector": {"matchLabels": {"app": "a"}}});
        let r = rule(selected).unwrap();
        assert_eq!(r.selector.unwrap()["app"], "a");
        assert_eq!(
            r.export_to,
            [Box::from(".")],
            "kept to its namespace, as istiod keeps it"
        );
    }

    #[test]
    fn pods_keep_labels_and_the_sidecar_annotation_only() {
        let pod = |meta: serde_json::Value| {
            let p: PartialObjectMeta<Pod> = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata", "metadata": meta
            }))
            .unwrap();
            project_pod(&p, &Interner::default()).expect("every pod is kept")
        };
        let bare = pod(json!({"name": "p", "namespace": "shop"}));
        assert!(bare.labels.is_empty() && !bare.sidecar);
        let injected = pod(json!({"name": "p", "namespace": "shop",
            "labels": {"b": "2", "a": "1"},
            "annotations": {"sidecar.istio.io/status": "{}", "other": "x"}}));
        assert!(injected.sidecar);
        assert!(!injected.mtls(), "the annotation alone is no sidecar label");
        assert_eq!(pod_label(&injected.labels, "a"), Some("1"));
        for (value, mtls) in [("istio", true), ("disabled", false), ("Istio", false)] {
            let p = pod(json!({"name": "p", "labels": {TLS_MODE_LABEL: value}}));
            assert_eq!(p.mtls(), mtls, "{value}");
        }
        assert_eq!(pod_label(&injected.labels, "b"), Some("2"));
        let other = pod(json!({"name": "p", "annotations": {"sidecar.istio.io/inject": "false"}}));
        assert!(
            !other.sidecar,
            "only the injector's status annotation counts"
        );
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
}
