//! Kubernetes discovery against the in-process Kubernetes API TEST SERVER: the gateway runs
//! in process (`app::build` on 127.0.0.1:0) in Kubernetes mode, EndpointSlices point at
//! mTLS test backends on 127.0.0.x, and calls go through real sockets.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gateway::app::{self, Bound, BuildError};
use gateway::config::{Config, KubeOptions};
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::wait::eventually;
use tokio::net::{TcpListener, TcpStream};

const NS: &str = testkit::mesh::NAMESPACE;
const WAIT: Duration = Duration::from_secs(10);

async fn api_server(crd: bool) -> TestApiServer {
    init();
    let mut opts = Options::new("east");
    opts.destination_rule_crd = crd;
    // The backends listen on 127.0.0.x; a real API server would refuse these slices.
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    // The pods the tests' slices name, injected: only a sidecar's endpoint takes 15443.
    for name in MESH_PODS {
        api.store().create(k8s::sidecar_pod(NS, name, &[])).unwrap();
    }
    api
}

/// Pods every test's namespace has (a test may relabel one with `apply`).
const MESH_PODS: [&str; 6] = ["catalog-a", "catalog-b", "p", "pa", "pb", "pc"];

struct KubeGw {
    bound: Bound,
    listen: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn write_kubeconfig(yaml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, yaml).unwrap();
    (dir, path)
}

fn kube_config(path: PathBuf, tweak: impl FnOnce(&mut KubeOptions)) -> Config {
    let mut cfg = kube_path_config(path, tweak);
    cfg.drain_grace = Duration::from_millis(50);
    cfg.drain_timeout = Duration::from_secs(1);
    cfg
}

async fn gateway_for(
    kubeconfig_yaml: &str,
    tweak: impl FnOnce(&mut KubeOptions),
) -> Result<KubeGw, BuildError> {
    let (dir, path) = write_kubeconfig(kubeconfig_yaml);
    let bound = app::build(kube_config(path, tweak)).await?;
    Ok(KubeGw {
        listen: bound.listen_addr,
        admin: bound.admin_addr,
        bound,
        _dir: dir,
    })
}

/// A gateway on `api`, returned once it reports ready.
async fn kube_gateway(api: &TestApiServer, tweak: impl FnOnce(&mut KubeOptions)) -> KubeGw {
    let gw = gateway_for(&api.kubeconfig("east"), tweak).await.unwrap();
    let admin = gw.admin;
    eventually("gateway ready", WAIT, || async move {
        http_get(admin, "/healthz/ready").await.0 == 200
    })
    .await;
    gw
}

/// A Service in `NS` whose ports all target 9080.
fn service(name: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<k8s::ServicePort> = ports
        .iter()
        .map(|&(name, port)| k8s::ServicePort {
            name,
            port,
            target_port: 9080,
        })
        .collect();
    k8s::service(NS, name, &ports)
}

/// (address, ready, pod name)
type Ep<'a> = (IpAddr, bool, &'a str);

fn slice(name: &str, svc: &str, port_name: &str, target: u16, eps: &[Ep]) -> Value {
    let eps: Vec<k8s::Endpoint> = eps
        .iter()
        .map(|&(address, ready, pod)| k8s::Endpoint {
            address,
            ready,
            pod,
        })
        .collect();
    k8s::endpoint_slice(NS, name, svc, (port_name, target), "test", &eps)
}

/// A catalog Pod of this version, injected.
fn pod(name: &str, version: &str) -> Value {
    k8s::sidecar_pod(NS, name, &[("app", "catalog"), ("version", version)])
}

/// The catalog's slice `catalog-1` (port `http` on `port`) with these endpoints.
fn catalog_slice(port: u16, eps: &[Ep]) -> Value {
    slice("catalog-1", "catalog", "http", port, eps)
}

/// Seeds the catalog: its Service (port `http` 80), a Pod per (name, version) and slice
/// `catalog-1` with these endpoints.
fn seed_catalog(api: &TestApiServer, port: u16, pods: &[(&str, &str)], eps: &[Ep]) {
    let st = api.store();
    st.create(service("catalog", &[("http", 80)])).unwrap();
    for &(name, version) in pods {
        st.apply(pod(name, version)).unwrap();
    }
    st.create(catalog_slice(port, eps)).unwrap();
}

/// The catalog with two endpoints: "plain" (Pod `pa`, no sidecar) and "mesh" (Pod `pb`,
/// injected), both ready.
async fn plain_and_mesh_catalog(api: &TestApiServer) -> Vec<Backend> {
    let (b, port) = backends(&["plain", "mesh"]).await;
    let st = api.store();
    st.apply(k8s::pod(NS, "pa", &[("app", "catalog")])).unwrap();
    st.create(service("catalog", &[("http", 80)])).unwrap();
    let eps = [(b[0].addr.ip(), true, "pa"), (b[1].addr.ip(), true, "pb")];
    st.create(catalog_slice(port, &eps)).unwrap();
    b
}

/// Deletes the DestinationRule `catalog` in `NS`.
fn delete_catalog_rule(api: &TestApiServer) {
    let dr = ("networking.istio.io/v1", "DestinationRule");
    api.store().delete(dr.0, dr.1, Some(NS), "catalog").unwrap();
}

/// A DestinationRule whose subsets select by `version`: (subset name, version).
fn destination_rule(name: &str, host: &str, subsets: &[(&str, &str)]) -> Value {
    let labels: Vec<[(&str, &str); 1]> = subsets.iter().map(|&(_, v)| [("version", v)]).collect();
    let subsets: Vec<(&str, &[(&str, &str)])> = subsets
        .iter()
        .zip(&labels)
        .map(|(&(n, _), l)| (n, &l[..]))
        .collect();
    k8s::destination_rule(NS, name, host, &subsets)
}

async fn eventually_refused(gw: &KubeGw, sni: &str, reason: &str) {
    let (listen, admin) = (gw.listen, gw.admin);
    let what = format!("{sni} refused with {reason}");
    eventually(&what, WAIT, || async move {
        let before = rejected(admin, reason).await;
        who(listen, sni).await.is_none() && rejected(admin, reason).await > before
    })
    .await;
}

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

#[tokio::test]
async fn routes_appear_when_a_service_and_its_slices_are_created() {
    let api = api_server(false).await;
    let gw = kube_gateway(&api, |_| {}).await;
    let (b, port) = backends(&["a", "b"]).await;
    let host = CATALOG;
    assert!(who(gw.listen, &sni(80, "", host)).await.is_none());

    api.store()
        .create(service("catalog", &[("http", 80)]))
        .unwrap();
    api.store()
        .create(catalog_slice(port, &[(b[0].addr.ip(), true, "catalog-a")]))
        .unwrap();
    // A second slice of the same service adds to it.
    api.store()
        .create(slice(
            "catalog-2",
            "catalog",
            "http",
            port,
            &[(b[1].addr.ip(), true, "catalog-b")],
        ))
        .unwrap();
    eventually_served_by(gw.listen, &sni(80, "", host), &["a", "b"]).await;

    let m = metrics(gw.admin).await;
    assert_eq!(metric(&m, "gateway_discovery_route_table_routes"), 1.0);
    assert_eq!(metric(&m, "gateway_discovery_route_table_endpoints"), 2.0);
    assert_eq!(
        metric(&m, "gateway_discovery_route_table_stale_seconds"),
        0.0
    );
    // Another port of the service is not an SNI the slices serve.
    assert!(who(gw.listen, &sni(81, "", host)).await.is_none());
}

/// Endpoints that are not Istio mTLS workloads take no 15443 connection, as Istio's gateway
/// sends SNI-routed bytes only to those (`EndpointsWithMTLSFilter`): the API server's own
/// endpoints (`default/kubernetes`, a slice without a Pod) and a pod without a sidecar.
#[tokio::test]
async fn endpoints_that_are_not_mesh_workloads_take_no_classic_connection() {
    let api = api_server(false).await;
    let (b, port) = backends(&["apiserver", "plain", "mesh"]).await;
    let st = api.store();
    st.apply(namespace_json("default")).unwrap();
    let https = k8s::ServicePort {
        name: "https",
        port: 443,
        target_port: port,
    };
    let mut kubernetes = k8s::service("default", "kubernetes", &[https]);
    kubernetes["spec"]
        .as_object_mut()
        .unwrap()
        .remove("selector");
    st.create(kubernetes).unwrap();
    let mut own = k8s::endpoint_slice(
        "default",
        "kubernetes",
        "kubernetes",
        ("https", port),
        "test",
        &[],
    );
    own["endpoints"] =
        json!([{"addresses": [b[0].addr.ip().to_string()], "conditions": {"ready": true}}]);
    st.create(own).unwrap();
    // Pod pa without a sidecar, pb with one.
    st.apply(k8s::pod(NS, "pa", &[("app", "catalog")])).unwrap();
    st.create(service("catalog", &[("http", 80)])).unwrap();
    let eps = [(b[1].addr.ip(), true, "pa"), (b[2].addr.ip(), true, "pb")];
    st.create(catalog_slice(port, &eps)).unwrap();
    let gw = kube_gateway(&api, |_| {}).await;

    let catalog = sni(80, "", CATALOG);
    eventually_served_by(gw.listen, &catalog, &["mesh"]).await;
    let api_sni = sni(443, "", "kubernetes.default.svc.cluster.local");
    eventually_refused(&gw, &api_sni, "no_healthy_endpoint").await;
    // Listed, so `/debug/routes` says why.
    let (_, body) = http_get(gw.admin, "/debug/routes?host=kubernetes.default").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let e = &v["routes"][0]["endpoints"][0];
    assert_eq!(e["mtls"], false, "{body}");
    let why = "no Pod labelled security.istio.io/tlsMode: istio";
    assert_eq!(e["mtls_off"], why, "{body}");
    // Injected, pa takes connections too.
    st.apply(k8s::sidecar_pod(NS, "pa", &[("app", "catalog")]))
        .unwrap();
    eventually_served_by(gw.listen, &catalog, &["plain", "mesh"]).await;
    assert_eq!(b[0].accepted(), 0, "nothing reached the API server");
}

/// A DestinationRule's TLS mode decides which endpoints take 15443, over each Pod's mark, as
/// in istiod's `mtlsChecker`: ISTIO_MUTUAL admits every endpoint (a workload terminating Istio
/// mTLS without the injector's label), another mode none; a subset reads its own policy
/// only. Before, the rule's mode was not read (documented as not followed).
#[tokio::test]
async fn a_destination_rules_tls_mode_decides_which_endpoints_take_15443() {
    let api = api_server(true).await;
    let _backends = plain_and_mesh_catalog(&api).await;
    let st = api.store();
    let rule = |top: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "catalog", "namespace": NS},
            "spec": {"host": "catalog", "trafficPolicy": top, "subsets": [
                {"name": "all", "labels": {}},
                {"name": "off", "labels": {}, "trafficPolicy": {"tls": {"mode": "DISABLE"}}}]}})
    };
    st.apply(rule(json!({"tls": {"mode": "ISTIO_MUTUAL"}})))
        .unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["plain", "mesh"]).await;
    // `/debug/routes` says what the route does: every endpoint is an mTLS one by the rule.
    let offs = |body: &str| -> Vec<(Value, Value)> {
        let v: Value = serde_json::from_str(body).unwrap();
        let eps = v["routes"][0]["endpoints"].as_array().unwrap().clone();
        eps.iter()
            .map(|e| (e["mtls"].clone(), e["mtls_off"].clone()))
            .collect()
    };
    let (_, body) = http_get(gw.admin, "/debug/routes?host=catalog.").await;
    assert_eq!(offs(&body), vec![(json!(true), Value::Null); 2], "{body}");
    // A subset without its own policy: each Pod's mark. One whose policy is DISABLE: none.
    eventually_served_by(gw.listen, &sni(80, "all", CATALOG), &["mesh"]).await;
    eventually_refused(&gw, &sni(80, "off", CATALOG), "no_healthy_endpoint").await;
    // SIMPLE for port 80: no endpoint of the whole route.
    let simple =
        json!({"portLevelSettings": [{"port": {"number": 80}, "tls": {"mode": "SIMPLE"}}]});
    st.apply(rule(simple)).unwrap();
    eventually_refused(&gw, &sni(80, "", CATALOG), "no_healthy_endpoint").await;
    let (_, body) = http_get(gw.admin, "/debug/routes?host=catalog.").await;
    let why = json!("the DestinationRule's TLS mode for this port is not ISTIO_MUTUAL");
    assert_eq!(offs(&body), vec![(json!(false), why); 2], "{body}");
    // No mode: back to the marks.
    st.apply(rule(json!({}))).unwrap();
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["mesh"]).await;
}

/// A PeerAuthentication in `NS`; `spec` as written.
fn peer_authentication(ns: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "security.istio.io/v1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns}, "spec": spec})
}

/// A server with Istio's DestinationRule and PeerAuthentication CRDs, the root namespace, and
/// the catalog served by "a" (Pod `pa`, v1) and "b" (Pod `pb`, v2), both injected.
async fn istio_catalog() -> (TestApiServer, Vec<Backend>, u16) {
    let api = api_server(true).await;
    api.install_peer_authentication_crd();
    let (b, port) = backends(&["a", "b"]).await;
    let eps = [(b[0].addr.ip(), true, "pa"), (b[1].addr.ip(), true, "pb")];
    seed_catalog(&api, port, &[("pa", "v1"), ("pb", "v2")], &eps);
    api.store().create(namespace_json("istio-system")).unwrap();
    (api, b, port)
}

/// PeerAuthentications decide which sidecars take 15443, as in istiod's `mtlsChecker`: one
/// whose composed mode for its own port is DISABLE takes none (its sidecar would not terminate
/// the mesh's mTLS there), a narrower policy or a port-level mode overriding a wider one; a
/// DestinationRule's TLS mode decides over both. Before, PeerAuthentications were not read.
#[tokio::test]
async fn a_peer_authentication_that_disables_mtls_takes_sidecars_off_15443() {
    let (api, _b, port) = istio_catalog().await;
    let st = api.store();
    // Mesh-wide STRICT changes nothing.
    let strict = json!({"mtls": {"mode": "STRICT"}});
    st.create(peer_authentication("istio-system", "default", strict))
        .unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    let catalog = sni(80, "", CATALOG);
    eventually_served_by(gw.listen, &catalog, &["a", "b"]).await;
    // The namespace's DISABLE overrides it: no endpoint left.
    let off = json!({"mtls": {"mode": "DISABLE"}});
    st.create(peer_authentication(NS, "plain", off)).unwrap();
    eventually_refused(&gw, &catalog, "no_healthy_endpoint").await;
    let (_, body) = http_get(gw.admin, "/debug/routes?host=catalog.").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let e = &v["routes"][0]["endpoints"][0];
    assert_eq!(e["mtls"], false, "{body}");
    let why = "a PeerAuthentication disables mTLS on its port";
    assert_eq!(e["mtls_off"], why, "{body}");
    // v2's own policy turns its port (the endpoint's, not the Service's) back to STRICT.
    let v2 = json!({"selector": {"matchLabels": {"version": "v2"}},
        "portLevelMtls": {port.to_string(): {"mode": "STRICT"}}});
    st.create(peer_authentication(NS, "v2", v2)).unwrap();
    eventually_served_by(gw.listen, &catalog, &["b"]).await;
    // A DestinationRule's ISTIO_MUTUAL decides over every PeerAuthentication.
    st.apply(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "catalog", "namespace": NS},
        "spec": {"host": "catalog", "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}}}}),
    )
    .unwrap();
    eventually_served_by(gw.listen, &catalog, &["a", "b"]).await;
    delete_catalog_rule(&api);
    eventually_served_by(gw.listen, &catalog, &["b"]).await;
    // Without the namespace's policy, both again.
    let pa = ("security.istio.io/v1", "PeerAuthentication");
    st.delete(pa.0, pa.1, Some(NS), "plain").unwrap();
    eventually_served_by(gw.listen, &catalog, &["a", "b"]).await;
}

/// Which DestinationRules reach the gateway, as istiod picks them for a proxy in the
/// gateway's namespace (`default`, the test kubeconfig's; the root namespace is
/// `istio-system`): the gateway's namespace's own, else the Service's namespace's exported
/// ones, else the root namespace's. A rule in any other namespace never applies, whatever its
/// `exportTo`: before, one written in namespace `evil` with ISTIO_MUTUAL made the gateway
/// splice 15443 connections to endpoints that are no mesh workloads (the API server's, in an
/// audit's repro) and its subsets replaced the Service owner's.
#[tokio::test]
async fn only_the_gateways_the_services_and_the_root_namespaces_rules_apply() {
    let api = api_server(true).await;
    let b = plain_and_mesh_catalog(&api).await;
    let st = api.store();
    for ns in ["evil", "istio-system", "default"] {
        st.apply(namespace_json(ns)).unwrap();
    }
    let rule = |ns: &str, name: &str, export_to: &[&str], policy: Value, subset: &str| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"host": CATALOG, "exportTo": export_to, "trafficPolicy": policy,
                     "subsets": [{"name": subset, "labels": {}}]}})
    };
    let mutual = || json!({"tls": {"mode": "ISTIO_MUTUAL"}});
    st.create(rule("evil", "grab", &["*"], mutual(), "evil"))
        .unwrap();
    st.create(rule("evil", "grab-gw", &["default"], mutual(), "evil2"))
        .unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    // The Service's own rule, written after evil's: once its subset routes, evil's were read.
    st.create(rule(NS, "catalog", &[], json!({}), "all"))
        .unwrap();
    eventually_served_by(gw.listen, &sni(80, "all", CATALOG), &["mesh"]).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["mesh"]).await;
    for subset in ["evil", "evil2"] {
        eventually_refused(&gw, &sni(80, subset, CATALOG), "no_route").await;
    }
    assert_eq!(
        b[0].accepted(),
        0,
        "nothing reached the workload outside the mesh"
    );

    // The root namespace's rule waits behind the Service's, and applies without it.
    st.create(rule("istio-system", "mesh-wide", &[], mutual(), "root"))
        .unwrap();
    eventually_refused(&gw, &sni(80, "root", CATALOG), "no_route").await;
    delete_catalog_rule(&api);
    // Its ISTIO_MUTUAL admits the Pod without a sidecar on the whole route; its subset
    // reads only its own policy (none), so the Pods' marks.
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["plain", "mesh"]).await;
    eventually_served_by(gw.listen, &sni(80, "root", CATALOG), &["mesh"]).await;
    // The gateway's own namespace's rule comes first, private to it or not.
    let disable = json!({"tls": {"mode": "DISABLE"}});
    st.create(rule("default", "mine", &["."], disable, "mine"))
        .unwrap();
    eventually_refused(&gw, &sni(80, "", CATALOG), "no_healthy_endpoint").await;
    eventually_refused(&gw, &sni(80, "root", CATALOG), "no_route").await;
}

/// Rules for one host in one namespace merge as istiod merges them: the oldest rule with a
/// `trafficPolicy` gives the whole policy, so a newer rule's TLS mode is dropped even when
/// the older policy has none (before, the oldest rule *with a TLS mode* won).
#[tokio::test]
async fn the_oldest_traffic_policy_is_kept_whole() {
    let api = api_server(true).await;
    let b = plain_and_mesh_catalog(&api).await;
    let st = api.store();
    let rule = |name: &str, policy: Value, subset: &str| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"host": "catalog", "trafficPolicy": policy,
                     "subsets": [{"name": subset, "labels": {}}]}})
    };
    let pool = json!({"connectionPool": {"tcp": {"maxConnections": 100}}});
    st.create(rule("a-pool", pool, "one")).unwrap();
    st.create(rule(
        "b-tls",
        json!({"tls": {"mode": "ISTIO_MUTUAL"}}),
        "two",
    ))
    .unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    // Both rules were read (their subsets merge); the Pods' marks still decide.
    eventually_served_by(gw.listen, &sni(80, "two", CATALOG), &["mesh"]).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["mesh"]).await;
    assert_eq!(b[0].accepted(), 0);
}

/// Istio's per-cluster subsets (istio.io "Partitioning Services"): a DestinationRule
/// selecting on `topology.istio.io/cluster` matches every endpoint of the gateway's cluster
/// (`--cluster-id`), as istiod adds that label to each; another cluster's subset has none.
#[tokio::test]
async fn per_cluster_subsets_match_the_gateways_cluster() {
    let api = api_server(true).await;
    let (b, port) = backends(&["a", "b"]).await;
    let eps = [(b[0].addr.ip(), true, "pa"), (b[1].addr.ip(), true, "pb")];
    seed_catalog(&api, port, &[], &eps);
    let cluster = |c: &'static str| [("topology.istio.io/cluster", c)];
    let (west, east) = (cluster("west"), cluster("east"));
    let subsets: [(&str, &[(&str, &str)]); 2] = [("cluster-west", &west), ("cluster-east", &east)];
    let rule = k8s::destination_rule(NS, "catalog", "catalog", &subsets);
    api.store().create(rule).unwrap();
    let gw = kube_gateway(&api, |o| o.cluster_id = "west".into()).await;
    eventually_served_by(gw.listen, &sni(80, "cluster-west", CATALOG), &["a", "b"]).await;
    eventually_refused(
        &gw,
        &sni(80, "cluster-east", CATALOG),
        "no_healthy_endpoint",
    )
    .await;
}

/// A Service Istio's `networking.istio.io/exportTo` hides from the gateway's namespace (here
/// `default`, the test kubeconfig's) is not routed, as istiod builds no listener for it on
/// its own east-west gateway; exported to it, or to `*`, it is; the annotation is followed.
#[tokio::test]
async fn services_hidden_by_export_to_are_not_routed() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a"]).await;
    seed_catalog(&api, port, &[], &[(b[0].addr.ip(), true, "pa")]);
    let gw = kube_gateway(&api, |_| {}).await;
    let name = sni(80, "", CATALOG);
    eventually_served_by(gw.listen, &name, &["a"]).await;
    let st = api.store();
    for (export_to, routed) in [
        (".", false),
        ("default", true),
        ("~", false),
        ("other,*", true),
    ] {
        let mut svc = service("catalog", &[("http", 80)]);
        svc["metadata"]["annotations"] = json!({"networking.istio.io/exportTo": export_to});
        st.apply(svc).unwrap();
        if routed {
            eventually_served_by(gw.listen, &name, &["a"]).await;
        } else {
            eventually_refused(&gw, &name, "no_route").await;
        }
    }
}

#[tokio::test]
async fn service_ports_map_to_slice_ports_by_name() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a"]).await;
    let dead = refused_port([127, 0, 0, 9].into(), 0).await;
    api.store()
        .create(service("catalog", &[("http", 80), ("admin", 8080)]))
        .unwrap();
    let mut s = catalog_slice(port, &[(b[0].addr.ip(), true, "p")]);
    // "admin" maps to a port nothing listens on; an unnamed port matches neither.
    s["ports"] = json!([{"name": "http", "port": port}, {"name": "admin", "port": dead.port()}, {"port": 1}]);
    api.store().create(s).unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["a"]).await;
    let table = gw.bound.routes.load().unwrap();
    let admin = table.lookup(CATALOG, 8080).unwrap();
    assert_eq!(admin.endpoints[0].state.addr.port(), dead.port());
    assert_eq!(
        table.lookup(CATALOG, 80).unwrap().endpoints[0].state.addr,
        b[0].addr
    );
}

#[tokio::test]
async fn endpoints_leave_when_not_ready_terminating_or_deleted() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a", "b", "c"]).await;
    api.store()
        .create(service("catalog", &[("http", 80)]))
        .unwrap();
    let all: Vec<Ep> = vec![
        (b[0].addr.ip(), true, "pa"),
        (b[1].addr.ip(), true, "pb"),
        (b[2].addr.ip(), true, "pc"),
    ];
    api.store().create(catalog_slice(port, &all)).unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    let name = sni(80, "", CATALOG);
    eventually_served_by(gw.listen, &name, &["a", "b", "c"]).await;

    // b turns not ready.
    let mut s = catalog_slice(port, &[all[0], (b[1].addr.ip(), false, "pb"), all[2]]);
    api.store().apply(s.clone()).unwrap();
    eventually_served_by(gw.listen, &name, &["a", "c"]).await;

    // c is terminating (still ready, as during a graceful shutdown).
    s["endpoints"][2]["conditions"] = json!({"ready": true, "serving": true, "terminating": true});
    api.store().apply(s).unwrap();
    eventually_served_by(gw.listen, &name, &["a"]).await;

    // The slice goes away: the route stays (the Service does) with nothing to dial.
    api.store()
        .delete(
            "discovery.k8s.io/v1",
            "EndpointSlice",
            Some(NS),
            "catalog-1",
        )
        .unwrap();
    eventually_refused(&gw, &name, "no_healthy_endpoint").await;

    // The Service goes away: no route at all.
    api.store()
        .delete("v1", "Service", Some(NS), "catalog")
        .unwrap();
    eventually_refused(&gw, &name, "no_route").await;
    assert!(b[0].accepted() > 0);
}

#[tokio::test]
async fn without_the_crd_only_the_empty_subset_routes() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a"]).await;
    seed_catalog(&api, port, &[("pa", "v1")], &[(b[0].addr.ip(), true, "pa")]);
    let gw = kube_gateway(&api, |_| {}).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["a"]).await;
    eventually_refused(&gw, &sni(80, "v1", CATALOG), "no_route").await;
}

#[tokio::test]
async fn subsets_follow_destination_rules_and_pod_labels() {
    let api = api_server(true).await;
    let (b, port) = backends(&["a", "b"]).await;
    seed_catalog(
        &api,
        port,
        &[("pa", "v1"), ("pb", "v2")],
        &[(b[0].addr.ip(), true, "pa"), (b[1].addr.ip(), true, "pb")],
    );
    let st = api.store();
    // A short host, resolved in the rule's namespace.
    st.create(destination_rule(
        "catalog",
        "catalog",
        &[("v1", "v1"), ("v2", "v2")],
    ))
    .unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    // Ready means the rules were read: subsets route from the first table on.
    assert_eq!(who(gw.listen, &sni(80, "v1", CATALOG)).await.unwrap(), "a");
    eventually_served_by(gw.listen, &sni(80, "v1", CATALOG), &["a"]).await;
    eventually_served_by(gw.listen, &sni(80, "v2", CATALOG), &["b"]).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["a", "b"]).await;

    // Relabel pod b: subset v1 now has both, v2 none.
    st.apply(pod("pb", "v1")).unwrap();
    eventually_served_by(gw.listen, &sni(80, "v1", CATALOG), &["a", "b"]).await;
    eventually_refused(&gw, &sni(80, "v2", CATALOG), "no_healthy_endpoint").await;

    // The rule drops v2 and adds v3 (FQDN host form): v2 is no longer a route.
    st.apply(destination_rule(
        "catalog",
        CATALOG,
        &[("v1", "v1"), ("v3", "v3")],
    ))
    .unwrap();
    eventually_refused(&gw, &sni(80, "v2", CATALOG), "no_route").await;
    eventually_refused(&gw, &sni(80, "v3", CATALOG), "no_healthy_endpoint").await;

    // Deleting the rule removes every subset.
    delete_catalog_rule(&api);
    eventually_refused(&gw, &sni(80, "v1", CATALOG), "no_route").await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["a", "b"]).await;
}

#[tokio::test]
async fn destination_rule_crd_installed_later_is_picked_up() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a"]).await;
    seed_catalog(&api, port, &[("pa", "v1")], &[(b[0].addr.ip(), true, "pa")]);
    let st = api.store();
    let gw = kube_gateway(&api, |o| o.crd_recheck = Duration::from_millis(200)).await;
    eventually_refused(&gw, &sni(80, "v1", CATALOG), "no_route").await;
    api.install_destination_rule_crd();
    st.create(destination_rule("catalog", CATALOG, &[("v1", "v1")]))
        .unwrap();
    eventually_served_by(gw.listen, &sni(80, "v1", CATALOG), &["a"]).await;
}

#[tokio::test]
async fn namespaces_limit_what_is_watched() {
    let api = api_server(false).await;
    api.store().create(namespace_json("other")).unwrap();
    let (b, port) = backends(&["a"]).await;
    let st = api.store();
    for ns in [NS, "other"] {
        let mut s = service("catalog", &[("http", 80)]);
        s["metadata"]["namespace"] = json!(ns);
        st.create(s).unwrap();
        let mut sl = catalog_slice(port, &[(b[0].addr.ip(), true, "pa")]);
        sl["metadata"]["namespace"] = json!(ns);
        st.create(sl).unwrap();
    }
    let gw = kube_gateway(&api, |o| o.namespaces = vec![NS.into()]).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["a"]).await;
    let table = gw.bound.routes.load().unwrap();
    assert_eq!(table.len(), 1);
    assert!(
        table
            .lookup("catalog.other.svc.cluster.local", 80)
            .is_none()
    );
}

/// With `--namespace`, Istio's rules in the root namespace still apply, as istiod reads them
/// for every proxy: a root DestinationRule's subsets and a mesh-wide PeerAuthentication. (An
/// audit found both unread before: the rule watches covered `--namespace` only.)
#[tokio::test]
async fn with_namespaces_the_root_namespaces_rules_still_apply() {
    let (api, _b, _) = istio_catalog().await;
    let st = api.store();
    let v1 = [("version", "v1")];
    st.create(k8s::destination_rule(
        "istio-system",
        "catalog",
        CATALOG,
        &[("v1", &v1[..])],
    ))
    .unwrap();
    let gw = kube_gateway(&api, |o| o.namespaces = vec![NS.into()]).await;
    eventually_served_by(gw.listen, &sni(80, "v1", CATALOG), &["a"]).await;
    let off = json!({"mtls": {"mode": "DISABLE"}});
    st.create(peer_authentication("istio-system", "default", off))
        .unwrap();
    eventually_refused(&gw, &sni(80, "", CATALOG), "no_healthy_endpoint").await;
}

#[tokio::test]
async fn a_410_gone_is_survived_without_losing_the_table() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a", "b"]).await;
    seed_catalog(&api, port, &[], &[(b[0].addr.ip(), true, "pa")]);
    let st = api.store();
    let gw = kube_gateway(&api, |_| {}).await;
    let name = sni(80, "", CATALOG);
    eventually_served_by(gw.listen, &name, &["a"]).await;
    let generation = gw.bound.routes.load().unwrap().generation;

    // Compact history and change things at once: every watch gets 410 and re-lists.
    api.expire_watches();
    st.apply(catalog_slice(
        port,
        &[(b[0].addr.ip(), true, "pa"), (b[1].addr.ip(), true, "pb")],
    ))
    .unwrap();
    // The table keeps serving throughout.
    for _ in 0..5 {
        assert!(who(gw.listen, &name).await.is_some());
    }
    eventually_served_by(gw.listen, &name, &["a", "b"]).await;
    // Again, with a deletion that only a re-list can see.
    api.expire_watches();
    st.apply(catalog_slice(port, &[(b[1].addr.ip(), true, "pb")]))
        .unwrap();
    eventually_served_by(gw.listen, &name, &["b"]).await;
    assert!(gw.bound.routes.load().unwrap().generation > generation);
    let (code, _) = http_get(gw.admin, "/healthz/ready").await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_restarted_api_server_is_survived() {
    let api = api_server(false).await;
    let (b, port) = backends(&["a", "b"]).await;
    seed_catalog(&api, port, &[], &[(b[0].addr.ip(), true, "pa")]);
    let gw = kube_gateway(&api, |_| {}).await;
    let name = sni(80, "", CATALOG);
    eventually_served_by(gw.listen, &name, &["a"]).await;

    // Down: the last table keeps serving, and staleness shows.
    let stopped = api.stop().await;
    let admin = gw.admin;
    eventually(
        "stale_seconds > 0 while the API server is down",
        WAIT,
        || async move {
            metric(
                &metrics(admin).await,
                "gateway_discovery_route_table_stale_seconds",
            ) >= 1.0
        },
    )
    .await;
    for _ in 0..5 {
        assert_eq!(who(gw.listen, &name).await.as_deref(), Some("a"));
    }
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 200);

    // Changed while down, then back on the same port: the change arrives, staleness clears.
    stopped
        .store()
        .apply(catalog_slice(port, &[(b[1].addr.ip(), true, "pb")]))
        .unwrap();
    let api = stopped.restart().await.unwrap();
    eventually_served_by(gw.listen, &name, &["b"]).await;
    eventually("stale_seconds back to 0", WAIT, || async move {
        metric(
            &metrics(admin).await,
            "gateway_discovery_route_table_stale_seconds",
        ) == 0.0
    })
    .await;

    // Down and back with nothing changed: still serving, and healthy again.
    let stopped = api.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(who(gw.listen, &name).await.as_deref(), Some("b"));
    let api = stopped.restart().await.unwrap();
    eventually(
        "stale_seconds back to 0 after a quiet restart",
        WAIT,
        || async move {
            metric(
                &metrics(admin).await,
                "gateway_discovery_route_table_stale_seconds",
            ) == 0.0
        },
    )
    .await;
    // And it still follows changes.
    api.store()
        .apply(catalog_slice(port, &[(b[0].addr.ip(), true, "pa")]))
        .unwrap();
    eventually_served_by(gw.listen, &name, &["a"]).await;
}

/// A TCP relay in front of the API server that forwards while open and, when closed, holds
/// every byte (on open connections too) until opened again: a server gone slow.
struct Gate {
    addr: SocketAddr,
    open: tokio::sync::watch::Sender<bool>,
    held: Arc<AtomicUsize>,
}

async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: tokio::sync::watch::Receiver<bool>,
    held: Arc<AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !*open.borrow() {
            held.fetch_add(1, Ordering::SeqCst);
            if open.wait_for(|o| *o).await.is_err() {
                return;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    let _ = to.shutdown().await;
}

async fn gate(upstream: SocketAddr) -> Gate {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (open, rx) = tokio::sync::watch::channel(true);
    let held = Arc::new(AtomicUsize::new(0));
    let held2 = held.clone();
    tokio::spawn(async move {
        while let Ok((down, _)) = l.accept().await {
            let Ok(up) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            tokio::spawn(relay(dr, uw, rx.clone(), held2.clone()));
            tokio::spawn(relay(ur, dw, rx.clone(), held2.clone()));
        }
    });
    Gate { addr, open, held }
}

#[tokio::test]
async fn not_ready_until_the_first_full_sync() {
    let api = api_server(true).await;
    let (b, port) = backends(&["a"]).await;
    seed_catalog(&api, port, &[], &[(b[0].addr.ip(), true, "pa")]);
    let g = gate(api.addr()).await;
    let kubeconfig = api
        .kubeconfig("east")
        .replace(&api.url(), &format!("https://{}", g.addr));
    let gw = gateway_for(&kubeconfig, |_| {}).await.unwrap();
    // The start-up checks passed. On this single-threaded test runtime the watch tasks
    // have not run yet, so closing now holds every list they send.
    g.open.send_replace(false);
    let held = g.held.clone();
    eventually("watch connections held at the gate", WAIT, || {
        let held = held.clone();
        async move { held.load(Ordering::SeqCst) >= 1 }
    })
    .await;
    // However long the lists take, the gateway stays unready and routes nothing.
    for _ in 0..10 {
        let (code, body) = http_get(gw.admin, "/healthz/ready").await;
        assert_eq!(code, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(gw.bound.routes.load().is_none());
    assert!(who(gw.listen, &sni(80, "", CATALOG)).await.is_none());

    g.open.send(true).unwrap();
    let admin = gw.admin;
    eventually("ready after the first sync", WAIT, || async move {
        http_get(admin, "/healthz/ready").await.0 == 200
    })
    .await;
    assert_eq!(
        who(gw.listen, &sni(80, "", CATALOG)).await.as_deref(),
        Some("a")
    );
}

#[tokio::test]
async fn configuration_errors_fail_the_build_clearly() {
    init();
    let api = api_server(false).await;
    let err = |e: Result<KubeGw, BuildError>| match e {
        Ok(_) => panic!("build should fail"),
        Err(e) => e.to_string(),
    };

    let missing = kube_config("/nonexistent/kubeconfig".into(), |_| {});
    let e = app::build(missing).await.err().expect("missing file");
    assert_each_cause_once(&e);
    let e = e.to_string();
    assert!(e.contains("/nonexistent/kubeconfig"), "{e}");

    let e = err(gateway_for(&api.kubeconfig("east"), |o| o.context = Some("west".into())).await);
    assert!(
        e.contains("no context \"west\"") && e.contains("east"),
        "{e}"
    );

    let e = err(gateway_for("not: [valid", |_| {}).await);
    assert!(e.contains("kubeconfig"), "{e}");

    let kc = api.kubeconfig("east");
    let url = api.url();
    let _stopped = api.stop().await;
    let e = err(gateway_for(&kc, |_| {}).await);
    assert!(
        e.contains("unreachable") && e.contains(url.trim_start_matches("https://")),
        "{e}"
    );
}

const STALE: &str = "gateway_discovery_route_table_stale_seconds";

/// Whether the catalog route's endpoints are exactly `ip`.
fn routed_to(gw: &KubeGw, ip: IpAddr) -> bool {
    gw.bound.routes.load().is_some_and(|t| {
        t.lookup(CATALOG, 80).is_some_and(|r| {
            !r.endpoints.is_empty() && r.endpoints.iter().all(|e| e.state.addr.ip() == ip)
        })
    })
}

/// A gateway serving catalog from backend "a", its backends, and the slice to change it by.
async fn catalog_on_a(api: &TestApiServer) -> (KubeGw, Vec<Backend>, u16) {
    let (b, port) = backends(&["a", "b"]).await;
    seed_catalog(api, port, &[], &[(b[0].addr.ip(), true, "pa")]);
    let gw = kube_gateway(api, |_| {}).await;
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["a"]).await;
    (gw, b, port)
}

/// Stops the API server until staleness shows (watches are failing and backing off), moves
/// catalog to backend "b" while it is down, and restarts it on the same port.
async fn outage_with_a_change(
    api: TestApiServer,
    gw: &KubeGw,
    b: &[Backend],
    port: u16,
) -> (TestApiServer, Instant) {
    let stopped = api.stop().await;
    let admin = gw.admin;
    eventually(
        "stale_seconds >= 2 while the API server is down",
        WAIT,
        || async move { metric(&metrics(admin).await, STALE) >= 2.0 },
    )
    .await;
    stopped
        .store()
        .apply(catalog_slice(port, &[(b[1].addr.ip(), true, "pb")]))
        .unwrap();
    let api = stopped.restart().await.unwrap();
    (api, Instant::now())
}

#[tokio::test]
async fn after_a_restart_410_means_relist_now_not_back_off() {
    let api = api_server(false).await;
    let (gw, b, port) = catalog_on_a(&api).await;
    let (api, restarted) = outage_with_a_change(api, &gw, &b, port).await;
    eventually("the change made during the outage is routed", WAIT, || {
        let ok = routed_to(&gw, b[1].addr.ip());
        async move { ok }
    })
    .await;
    let took = restarted.elapsed();
    println!("change routed {took:?} after the restart");
    assert!(
        took < Duration::from_secs(2),
        "routed {took:?} after the API server came back"
    );
    // The watches resumed with their old resourceVersions and were told 410.
    assert!(api.store().expired_watch_answers() >= 1);
    eventually_served_by(gw.listen, &sni(80, "", CATALOG), &["b"]).await;
}

#[tokio::test]
async fn stale_seconds_clears_only_when_every_watch_has_relisted() {
    let api = api_server(false).await;
    let (gw, b, port) = catalog_on_a(&api).await;
    let (_api, _) = outage_with_a_change(api, &gw, &b, port).await;
    // Sample until the change is routed: staleness may read 0 only once the re-lists are
    // done, i.e. at most one table rebuild before the change shows.
    let deadline = Instant::now() + WAIT;
    let mut cleared: Option<Instant> = None;
    let routed = loop {
        assert!(Instant::now() < deadline, "change never routed");
        let stale = metric(&metrics(gw.admin).await, STALE);
        if stale == 0.0 && cleared.is_none() {
            cleared = Some(Instant::now());
        }
        if routed_to(&gw, b[1].addr.ip()) {
            break Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "stale_seconds read 0 {:?} before the change was routed",
        cleared.map(|c| routed.saturating_duration_since(c))
    );
    if let Some(cleared) = cleared {
        let early = routed.duration_since(cleared);
        assert!(
            early < Duration::from_millis(500),
            "stale_seconds read 0 {early:?} before the re-listed table was routed"
        );
    }
    let admin = gw.admin;
    eventually("stale_seconds back to 0", WAIT, || async move {
        metric(&metrics(admin).await, STALE) == 0.0
    })
    .await;
}

#[tokio::test]
async fn a_deleted_destination_rule_crd_stops_its_watch_and_its_return_is_noticed() {
    let api = api_server(true).await;
    let (b, port) = backends(&["a"]).await;
    seed_catalog(&api, port, &[("pa", "v1")], &[(b[0].addr.ip(), true, "pa")]);
    let st = api.store();
    st.create(destination_rule("catalog", "catalog", &[("v1", "v1")]))
        .unwrap();
    let recheck = Duration::from_millis(300);
    let gw = kube_gateway(&api, |o| o.crd_recheck = recheck).await;
    let v1 = sni(80, "v1", CATALOG);
    eventually_served_by(gw.listen, &v1, &["a"]).await;

    st.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "destinationrules.networking.istio.io",
    )
    .unwrap();
    eventually_refused(&gw, &v1, "no_route").await;
    // Services and slices are healthy: a missing CRD is not staleness. Watch it for a few
    // health ticks (a failing watch would show 1 s after its first error).
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        assert_eq!(metric(&metrics(gw.admin).await, STALE), 0.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        who(gw.listen, &sni(80, "", CATALOG)).await.as_deref(),
        Some("a")
    );

    api.install_destination_rule_crd();
    st.create(destination_rule("catalog", "catalog", &[("v1", "v1")]))
        .unwrap();
    let back = Instant::now();
    eventually_served_by(gw.listen, &v1, &["a"]).await;
    let took = back.elapsed();
    println!("subsets routed {took:?} after the CRD came back");
    assert!(
        took < recheck + Duration::from_secs(2),
        "subsets routed {took:?} after the CRD came back"
    );
    assert_eq!(metric(&metrics(gw.admin).await, STALE), 0.0);
}

#[tokio::test]
async fn a_refused_credential_is_named_with_its_fix_and_each_cause_once() {
    let api = api_server(false).await;
    let bad = api.kubeconfig_with_token("east", "not-a-valid-token");
    let e = match gateway_for(&bad, |_| {}).await {
        Ok(_) => panic!("build should fail with a refused credential"),
        Err(e) => e,
    };
    let text = e.to_string();
    println!("{text}");
    assert!(
        text.contains("refused the credential (401 Unauthorized)")
            && text.contains("context \"east\" in kubeconfig")
            && text.contains("fix: renew that user's token"),
        "{text}"
    );
    assert!(!text.contains("unreachable"), "{text}");
    assert_each_cause_once(&e);
}

/// What `main` prints is the message, then each cause under "Caused by:". No cause may
/// repeat what an earlier line already said.
fn assert_each_cause_once(e: &dyn std::error::Error) {
    let mut lines = vec![e.to_string()];
    let mut src = e.source();
    while let Some(s) = src {
        lines.push(s.to_string());
        src = s.source();
    }
    for (i, l) in lines.iter().enumerate().skip(1) {
        assert!(
            !lines[..i]
                .iter()
                .any(|earlier| earlier.contains(l.as_str())),
            "cause {l:?} repeats an earlier line: {lines:#?}"
        );
    }
}
