//! The route-spec builder against the model: Services, slices, subsets and rules,
//! waypoints and canaries, WorkloadEntries and ServiceEntries.

use super::super::project::tests::{slice, svc};
use super::super::project::{
    Interner, IpFamily, project_namespace, project_pod, project_service, project_slice,
};
use super::*;
use crate::discovery::k8s::waypoints;
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

/// A ServiceEntry of namespace `ns`, created `secs` seconds into the day.
fn service_entry(ns: &str, name: &str, secs: u32, spec: serde_json::Value) -> SeInfo {
    let meta = json!({"name": name, "namespace": ns,
        "creationTimestamp": format!("2026-12-07T00:00:{secs:02}Z")});
    let obj = istio_object("networking.istio.io/v1", "ServiceEntry", meta, spec);
    crate::discovery::k8s::service_entry::project_service_entry(&obj).unwrap()
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

mod bindings;
mod entries;
