//! Kubernetes discovery of ambient services, against the in-process Kubernetes API TEST
//! SERVER: a global Service's endpoints whose pods are ambient are reached over HBONE on
//! `podIP:15008` (real rustls, real h2 CONNECT on the gateway's 15008, a plain TCP app on
//! the pod's 15008 standing in for its ztunnel); the classic 15443 route is unchanged.
//! Capture follows istio-cni: the Namespace's or the Pod's `istio.io/dataplane-mode=ambient`,
//! a Pod's `none` opts out, injected sidecars never. A Service bound to a ready waypoint (its
//! own or its Namespace's `istio.io/use-waypoint`, a Gateway API Gateway with
//! `status.addresses`) takes straight to its pods only tunnels a waypoint sent
//! (`x-istio-source: waypoint`); the others go to the waypoint's pods at 15008. Relabels,
//! Gateways and the Gateway CRD itself take effect without a restart.

mod common;
mod hbone_support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use common::*;
use gateway::app;
use gateway::config::{Config, Discovery, KubeOptions};
use hbone_support::{App, AppMode, Outer, connect_with, outer, read_n};
use http::StatusCode;
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::wait::eventually;

const NS: &str = testkit::mesh::NAMESPACE;
const WAIT: Duration = Duration::from_secs(10);
const HBONE_PORT: u16 = 15008;

/// Pod addresses of this file only (other test files use 127.0.0.x).
fn pod_ip(last: u8) -> IpAddr {
    [127, 0, 13, last].into()
}

struct KubeHboneGw {
    _bound: app::Bound,
    listen: SocketAddr,
    admin: SocketAddr,
    hbone: SocketAddr,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn setup() -> (TestApiServer, KubeHboneGw) {
    setup_with(|_| {}).await
}

async fn setup_with(kube: impl FnOnce(&mut KubeOptions)) -> (TestApiServer, KubeHboneGw) {
    init();
    let mut opts = Options::new("east");
    // The pods listen on 127.0.13.x; a real API server would refuse these slices.
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();

    let kdir = tempfile::tempdir().unwrap();
    let path = kdir.path().join("kubeconfig");
    std::fs::write(&path, api.kubeconfig("east")).unwrap();
    let certs = hbone_support::gateway_certs();
    let mut kube_opts = KubeOptions {
        kubeconfig: Some(path),
        context: Some("east".into()),
        // The Gateway API CRD is installed by some tests after the gateway started.
        crd_recheck: Duration::from_millis(200),
        ..KubeOptions::default()
    };
    kube(&mut kube_opts);
    let mut cfg = Config::new(Discovery::Kubernetes(kube_opts));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin = "127.0.0.1:0".parse().unwrap();
    cfg.hbone_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.hbone_certs = Some(certs.path().to_path_buf());
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.drain_grace = Duration::from_millis(50);
    cfg.drain_timeout = Duration::from_secs(1);
    let bound = app::build(cfg).await.unwrap();
    let gw = KubeHboneGw {
        listen: bound.listen_addr,
        admin: bound.admin_addr,
        hbone: bound.hbone_addr.expect("HBONE listener on"),
        _bound: bound,
        _dirs: (kdir, certs),
    };
    let admin = gw.admin;
    eventually("gateway ready", WAIT, || async move {
        http_get(admin, "/healthz/ready").await.0 == 200
    })
    .await;
    (api, gw)
}

/// A Service `name` in `NS` (port `http` 80 → 9080) with these labels.
fn service(name: &str, labels: &[(&str, &str)]) -> Value {
    let mut s = k8s::service(
        NS,
        name,
        &[k8s::ServicePort {
            name: "http",
            port: 80,
            target_port: 9080,
        }],
    );
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect();
    s["metadata"]["labels"] = Value::Object(labels);
    s
}

/// The slice of `catalog`: pods `catalog-a` on `pod_ip(first)` and `catalog-b` on the next.
fn slice_a_b(port: u16, first: u8) -> Value {
    let eps = [
        (pod_ip(first), "catalog-a"),
        (pod_ip(first + 1), "catalog-b"),
    ];
    slice("catalog", port, &eps)
}

/// Pod `last`'s HBONE address, as `/debug/routes` shows it.
fn hbone_at(last: u8) -> String {
    format!("{}:15008", pod_ip(last))
}

/// The slice `<svc>-1` of `svc`: port `http` on `port`, one ready endpoint per (ip, pod).
fn slice(svc: &str, port: u16, eps: &[(IpAddr, &str)]) -> Value {
    let eps: Vec<k8s::Endpoint> = eps
        .iter()
        .map(|&(address, pod)| k8s::Endpoint {
            address,
            ready: true,
            pod,
        })
        .collect();
    k8s::endpoint_slice(NS, &format!("{svc}-1"), svc, ("http", port), "test", &eps)
}

const GLOBAL: (&str, &str) = ("istio.io/global", "true");
const AMBIENT: (&str, &str) = ("istio.io/dataplane-mode", "ambient");

/// `hbone_endpoints` of `host:80` in `/debug/routes` (addresses, sorted).
async fn hbone_endpoints(admin: SocketAddr, host: &str) -> Vec<String> {
    let (_, body) = http_get(admin, &format!("/debug/routes?host={host}")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<String> = v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["host"] == host && r["port"] == 80)
        .flat_map(|r| r["hbone_endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["address"].as_str().unwrap_or_default().to_string())
        .collect();
    out.sort();
    out
}

/// The waypoint `/debug/routes` shows for `host:80`, if any.
async fn waypoint_of(admin: SocketAddr, host: &str) -> Option<String> {
    let (_, body) = http_get(admin, &format!("/debug/routes?host={host}")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["host"] == host && r["port"] == 80)
        .and_then(|r| r["waypoint"].as_str().map(str::to_owned))
}

async fn eventually_waypoint(admin: SocketAddr, host: &str, want: Option<&str>) {
    let what = format!("{host}:80 waypoint {want:?}");
    eventually(&what, WAIT, || async move {
        waypoint_of(admin, host).await.as_deref() == want
    })
    .await;
}

/// The host of waypoint `name` in `ns`, as its Gateway's status gives it.
fn waypoint_host(ns: &str, name: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

/// A waypoint as istiod deploys one: the Gateway `name` in `ns` (its HBONE listener allowing
/// `allowed`, labelled `labels`, ready: `status.addresses` set), its Service (`mesh` 15008)
/// and that Service's slice with one pod on `pod_ip(last)`, whose 15008 is an echo app
/// greeting `greeting`.
async fn ready_waypoint(
    st: &k8s_test_server::Store,
    (ns, name): (&str, &str),
    allowed: Value,
    labels: Value,
    (last, greeting): (u8, &str),
) -> App {
    st.apply(waypoint_gateway((ns, name), allowed, labels, true))
        .unwrap();
    let mut svc = k8s::service(
        ns,
        name,
        &[k8s::ServicePort {
            name: "mesh",
            port: HBONE_PORT,
            target_port: HBONE_PORT,
        }],
    );
    svc["metadata"]["labels"] = json!({"gateway.istio.io/managed": "istio.io-mesh-controller"});
    st.create(svc).unwrap();
    let pod = format!("{name}-pod");
    let eps = [k8s::Endpoint {
        address: pod_ip(last),
        ready: true,
        pod: &pod,
    }];
    let slice = k8s::endpoint_slice(
        ns,
        &format!("{name}-1"),
        name,
        ("mesh", HBONE_PORT),
        "test",
        &eps,
    );
    st.create(slice).unwrap();
    ztunnel(greeting, last).await
}

/// Waypoint `name`'s Gateway; with `ready`, its status has the Service's hostname.
fn waypoint_gateway((ns, name): (&str, &str), allowed: Value, labels: Value, ready: bool) -> Value {
    let status = if ready {
        json!({"addresses": [{"type": "Hostname", "value": waypoint_host(ns, name)}]})
    } else {
        json!({})
    };
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"gatewayClassName": "istio-waypoint", "listeners": [
            {"name": "mesh", "port": HBONE_PORT, "protocol": "HBONE", "allowedRoutes": allowed}]},
        "status": status})
}

async fn eventually_hbone_endpoints(admin: SocketAddr, host: &str, want: &[String]) {
    let what = format!("{host}:80 hbone endpoints {want:?}");
    eventually(&what, WAIT, || async move {
        hbone_endpoints(admin, host).await == want
    })
    .await;
}

/// The classic endpoints `/debug/routes` lists for `host:80`: (address, takes 15443).
async fn classic_endpoints(admin: SocketAddr, host: &str) -> Vec<(String, bool)> {
    let (_, body) = http_get(admin, &format!("/debug/routes?host={host}")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out: Vec<(String, bool)> = v["routes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["host"] == host && r["port"] == 80)
        .flat_map(|r| r["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| {
            (
                e["address"].as_str().unwrap_or_default().to_string(),
                e["mtls"] == true,
            )
        })
        .collect();
    out.sort();
    out
}

/// Classic calls through 15443 reach exactly the backends in `want`, within a bound; with
/// `want` empty, every call is refused (no endpoint is an mTLS workload).
async fn eventually_classic(gw: SocketAddr, host: &str, want: &[&str]) {
    let sni = sni(80, "", host);
    let what = format!("{sni} served by {want:?}");
    eventually(&what, WAIT, || {
        let sni = sni.clone();
        async move {
            if want.is_empty() {
                for _ in 0..3 {
                    if call(gw, &sni).await.is_ok() {
                        return false;
                    }
                }
                return true;
            }
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..(want.len() * 6) {
                match call(gw, &sni).await {
                    Ok(line) => {
                        let who = line.split(' ').next().unwrap_or_default().to_string();
                        if !want.contains(&who.as_str()) {
                            return false;
                        }
                        seen.insert(who);
                    }
                    Err(_) => return false,
                }
            }
            seen.len() == want.len()
        }
    })
    .await;
}

/// An outer HBONE connection to the gateway with the test client's mesh identity.
async fn hbone_client(gw: &KubeHboneGw) -> Outer {
    outer(gw.hbone, Some(&hbone_support::pki().client))
        .await
        .unwrap()
}

/// `n` tunnels to catalog:80, each answered with `greeting`.
async fn tunnels_reach(o: &mut Outer, n: usize, greeting: &[u8]) {
    for _ in 0..n {
        let (status, got) = tunnel(o, CATALOG, greeting.len()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got, greeting);
    }
}

/// One CONNECT to `host:80`: the status and, when 200, the greeting of the app reached.
async fn tunnel(o: &mut Outer, host: &str, greeting_len: usize) -> (StatusCode, Vec<u8>) {
    tunnel_with(o, host, greeting_len, &[]).await
}

/// The same CONNECT as a waypoint sends it (`x-istio-source: waypoint`).
async fn waypoint_tunnel(o: &mut Outer, host: &str, greeting_len: usize) -> (StatusCode, Vec<u8>) {
    tunnel_with(o, host, greeting_len, &[("x-istio-source", "waypoint")]).await
}

async fn tunnel_with(
    o: &mut Outer,
    host: &str,
    greeting_len: usize,
    headers: &[(&str, &str)],
) -> (StatusCode, Vec<u8>) {
    let (status, io) = connect_with(o, &format!("{host}:80"), headers)
        .await
        .unwrap();
    match io {
        Some((_tx, mut rx)) => (status, read_n(&mut rx, greeting_len).await),
        None => (status, Vec::new()),
    }
}

/// Classic backends "a" and "b" on pod addresses `first` and `first + 1` sharing one port.
/// Each test uses its own addresses: the pods' 15008 is a fixed port.
async fn classic_backends(first: u8) -> (Vec<Backend>, u16) {
    for _ in 0..20 {
        let a = Backend::start("a", pod_ip(first), 0).await.unwrap();
        let port = a.addr.port();
        if let Ok(b) = Backend::start("b", pod_ip(first + 1), port).await {
            return (vec![a, b], port);
        }
    }
    panic!("no free shared port on 127.0.13.x");
}

#[tokio::test]
async fn global_service_with_ambient_pods_is_reached_over_hbone_on_15008() {
    let (api, gw) = setup().await;
    let (_classic, port) = classic_backends(1).await;
    // Each pod's "ztunnel" on podIP:15008; pod b is not ambient, so its must stay unused.
    let zt_a = ztunnel("ztunnel-a", 1).await;
    let zt_b = ztunnel("ztunnel-b", 2).await;
    let st = api.store();
    st.create(service("catalog", &[GLOBAL])).unwrap();
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    st.create(k8s::sidecar_pod(NS, "catalog-b", &[("app", "catalog")]))
        .unwrap();
    st.create(slice_a_b(port, 1)).unwrap();

    eventually_hbone_endpoints(gw.admin, CATALOG, &[hbone_at(1)]).await;
    let mut o = hbone_client(&gw).await;
    tunnels_reach(&mut o, 6, b"ztunnel-a\n").await;
    assert_eq!(zt_a.accepted(), 6);
    assert_eq!(
        zt_b.accepted(),
        0,
        "a pod that is not ambient is never dialed"
    );
    // Through 15443 only the sidecar's pod is reached, as Istio's gateway sends SNI-routed
    // bytes only to mTLS endpoints; the ambient pod is listed and never dialed there.
    eventually_classic(gw.listen, CATALOG, &["b"]).await;
    let listed = classic_endpoints(gw.admin, CATALOG).await;
    let at = |last| format!("{}:{port}", pod_ip(last));
    assert_eq!(listed, [(at(1), false), (at(2), true)]);

    // Pod b opts in: it joins the HBONE endpoints; opting out again removes it.
    st.apply(k8s::pod(NS, "catalog-b", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    let both = [hbone_at(1), hbone_at(2)];
    eventually_hbone_endpoints(gw.admin, CATALOG, &both).await;
    st.apply(k8s::pod(
        NS,
        "catalog-b",
        &[("app", "catalog"), ("istio.io/dataplane-mode", "none")],
    ))
    .unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &both[..1]).await;
}

#[tokio::test]
async fn services_not_global_have_no_hbone_endpoints_and_bound_ones_go_through_their_waypoint() {
    let (api, gw) = setup().await;
    let (_classic, port) = classic_backends(11).await;
    let zt = ztunnel("ztunnel-a", 11).await;
    let st = api.store();
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    st.create(service("catalog", &[])).unwrap();
    st.create(slice("catalog", port, &[(pod_ip(11), "catalog-a")]))
        .unwrap();
    let listed = [(format!("{}:{port}", pod_ip(11)), false)];
    eventually("catalog listed", WAIT, || async {
        classic_endpoints(gw.admin, CATALOG).await == listed
    })
    .await;
    eventually_classic(gw.listen, CATALOG, &[]).await;
    assert!(hbone_endpoints(gw.admin, CATALOG).await.is_empty());
    let mut o = hbone_client(&gw).await;
    let (status, _) = tunnel(&mut o, CATALOG, 0).await;
    assert_ne!(
        status,
        StatusCode::OK,
        "not global: not reachable over HBONE"
    );

    // Global and bound to a waypoint that is not ready (no Gateway API here at all): istiod
    // ignores the binding, and so does the gateway: every tunnel reaches the pod.
    st.apply(service(
        "catalog",
        &[GLOBAL, ("istio.io/use-waypoint", "waypoint")],
    ))
    .unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &[hbone_at(11)]).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"ztunnel-a\n"[..])
    );
    assert_eq!(waypoint_of(gw.admin, CATALOG).await, None);

    // The Gateway API installed and the waypoint ready: tunnels go to the waypoint's pod,
    // those a waypoint sent still straight to the service's.
    api.install_gateway_api_crds();
    let wp = ready_waypoint(
        st,
        (NS, "waypoint"),
        json!(null),
        json!({}),
        (13, "waypoint-1"),
    )
    .await;
    let host = waypoint_host(NS, "waypoint");
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    for _ in 0..3 {
        let (status, greeting) = tunnel(&mut o, CATALOG, 11).await;
        assert_eq!(
            (status, greeting.as_slice()),
            (StatusCode::OK, &b"waypoint-1\n"[..])
        );
    }
    assert_eq!((wp.accepted(), zt.accepted()), (3, 1));
    let (status, greeting) = waypoint_tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"ztunnel-a\n"[..])
    );
    assert_eq!((wp.accepted(), zt.accepted()), (3, 2));

    // The label flipped to global alone: every tunnel reaches the pod again.
    st.apply(service("catalog", &[GLOBAL])).unwrap();
    eventually_waypoint(gw.admin, CATALOG, None).await;
    assert_eq!(hbone_endpoints(gw.admin, CATALOG).await, [hbone_at(11)]);
    let (status, greeting) = tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"ztunnel-a\n"[..])
    );
    assert_eq!((wp.accepted(), zt.accepted()), (3, 3));
    eventually_classic(gw.listen, CATALOG, &[]).await;
}

/// A waypoint is used only while istiod would: its Gateway ready, taking Service traffic
/// (`istio.io/waypoint-for` on it, else on its GatewayClass), and allowing the Service's
/// namespace (`allowedRoutes`).
#[tokio::test]
async fn a_waypoint_is_used_only_when_ready_for_services_and_allowed() {
    let (api, gw) = setup().await;
    api.install_gateway_api_crds();
    let (_classic, port) = classic_backends(61).await;
    let _zt = ztunnel("ztunnel-a", 61).await;
    let st = api.store();
    st.create(namespace_json("infra")).unwrap();
    let _wp = ready_waypoint(
        st,
        ("infra", "shared"),
        json!(null),
        json!({}),
        (63, "shared-1"),
    )
    .await;
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    let bound = [
        GLOBAL,
        ("istio.io/use-waypoint", "shared"),
        ("istio.io/use-waypoint-namespace", "infra"),
    ];
    st.create(service("catalog", &bound)).unwrap();
    st.create(slice("catalog", port, &[(pod_ip(61), "catalog-a")]))
        .unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &[hbone_at(61)]).await;
    let host = waypoint_host("infra", "shared");
    let from = |from: Value| json!({"namespaces": from});
    // The waypoint's Gateway as given: its HBONE listener's allowedRoutes, labels, readiness.
    let shared = |allowed: &Value, labels: Value, ready: bool| {
        st.apply(waypoint_gateway(
            ("infra", "shared"),
            allowed.clone(),
            labels,
            ready,
        ))
        .unwrap();
    };
    shared(&from(json!({"from": "All"})), json!({}), true);
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    // `allowedRoutes` defaults to the waypoint's own namespace: denied, straight to the pod.
    shared(&json!(null), json!({}), true);
    eventually_waypoint(gw.admin, CATALOG, None).await;
    shared(&from(json!({"from": "All"})), json!({}), true);
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    let mut o = hbone_client(&gw).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 9).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"shared-1\n"[..])
    );
    // A selector over the Service's Namespace labels.
    let team = from(json!({"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}));
    shared(&team, json!({}), true);
    eventually_waypoint(gw.admin, CATALOG, None).await;
    st.apply(namespace(&[("team", "shop")])).unwrap();
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    // A waypoint for workloads only takes no Service traffic.
    let workload = json!({"istio.io/waypoint-for": "workload"});
    shared(&team, workload, true);
    eventually_waypoint(gw.admin, CATALOG, None).await;
    shared(&team, json!({"istio.io/waypoint-for": "all"}), true);
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    // Without a label of its own, the GatewayClass's decides; the Gateway's overrides it.
    shared(&team, json!({}), true);
    let class = |label: &str| {
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "istio-waypoint", "labels": {"istio.io/waypoint-for": label}},
            "spec": {"controllerName": "istio.io/mesh-controller"}})
    };
    st.apply(class("workload")).unwrap();
    eventually_waypoint(gw.admin, CATALOG, None).await;
    shared(&team, json!({"istio.io/waypoint-for": "service"}), true);
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    st.apply(class("all")).unwrap();
    shared(&team, json!({}), true);
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    // A sandwiched waypoint: its class's inbound binding names the PROXY listener, whose
    // allowedRoutes count instead of the HBONE listener's.
    let sandwiched = |class_binding: Option<&str>| {
        let mut gw = waypoint_gateway(("infra", "shared"), json!(null), json!({}), true);
        gw["spec"]["listeners"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "proxy",
            "port": 15088, "protocol": "istio.io/PROXY",
            "allowedRoutes": {"namespaces": {"from": "All"}}}));
        st.apply(gw).unwrap();
        let mut c = class("all");
        if let Some(b) = class_binding {
            c["metadata"]["annotations"] = json!({"ambient.istio.io/waypoint-inbound-binding": b});
        }
        st.apply(c).unwrap();
    };
    sandwiched(None);
    eventually_waypoint(gw.admin, CATALOG, None).await;
    sandwiched(Some("PROXY/15088"));
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    // Not ready (no addresses in its status): the binding is ignored.
    shared(&team, json!({}), false);
    eventually_waypoint(gw.admin, CATALOG, None).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"ztunnel-a\n"[..])
    );
}

/// With `--namespace`, a waypoint in a namespace the gateway does not watch cannot be seen:
/// tunnels to a Service bound to it are refused (503) rather than sent around it, which
/// would skip its policy; a waypoint's own tunnels still reach the pods, and a waypoint in
/// a watched namespace is used.
#[tokio::test]
async fn a_waypoint_outside_the_watched_namespaces_is_not_bypassed() {
    let (api, gw) = setup_with(|k| k.namespaces = vec![NS.into()]).await;
    api.install_gateway_api_crds();
    let (_classic, port) = classic_backends(81).await;
    let _zt = ztunnel("ztunnel-a", 81).await;
    let st = api.store();
    st.create(namespace_json("infra")).unwrap();
    let all = json!({"namespaces": {"from": "All"}});
    let _shared = ready_waypoint(st, ("infra", "shared"), all, json!({}), (83, "shared-1")).await;
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    let in_infra = [
        GLOBAL,
        ("istio.io/use-waypoint", "shared"),
        ("istio.io/use-waypoint-namespace", "infra"),
    ];
    st.create(service("catalog", &in_infra)).unwrap();
    st.create(slice("catalog", port, &[(pod_ip(81), "catalog-a")]))
        .unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &[hbone_at(81)]).await;
    eventually_waypoint(gw.admin, CATALOG, Some("infra/shared")).await;
    let mut o = hbone_client(&gw).await;
    assert_eq!(
        tunnel(&mut o, CATALOG, 0).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, greeting) = waypoint_tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"ztunnel-a\n"[..])
    );
    let _local = ready_waypoint(st, (NS, "local"), json!(null), json!({}), (84, "local-1")).await;
    st.apply(service(
        "catalog",
        &[GLOBAL, ("istio.io/use-waypoint", "local")],
    ))
    .unwrap();
    eventually_waypoint(gw.admin, CATALOG, Some(&waypoint_host(NS, "local"))).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 8).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"local-1\n"[..])
    );
}

/// The canary `/debug/routes` shows for `host:80`, as `(host, weight)`.
async fn canary_of(admin: SocketAddr, host: &str) -> Option<(String, u64)> {
    let (_, body) = http_get(admin, &format!("/debug/routes?host={host}")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let routes = v["routes"].as_array().cloned().unwrap_or_default();
    let r = routes
        .iter()
        .find(|r| r["host"] == host && r["port"] == 80)?;
    let c = &r["canary"];
    Some((c["host"].as_str()?.to_owned(), c["weight"].as_u64()?))
}

async fn eventually_canary(admin: SocketAddr, host: &str, want: Option<(String, u64)>) {
    let what = format!("{host}:80 canary {want:?}");
    eventually(&what, WAIT, || {
        let want = want.clone();
        async move { canary_of(admin, host).await == want }
    })
    .await;
}

/// A canary waypoint named by the Service's labels and weighted by its annotation takes
/// that share of the tunnels; the Namespace's canary goes with the Namespace's waypoint;
/// an invalid weight or a canary that is not ready leaves every tunnel to the waypoint.
#[tokio::test]
async fn a_canary_waypoint_takes_its_weight_as_labelled() {
    let (api, gw) = setup().await;
    api.install_gateway_api_crds();
    let (_classic, port) = classic_backends(91).await;
    let _zt = ztunnel("ztunnel-a", 91).await;
    let st = api.store();
    let all = || json!({"namespaces": {"from": "All"}});
    let _wp = ready_waypoint(st, (NS, "wp"), all(), json!({}), (93, "primary")).await;
    let _canary = ready_waypoint(st, (NS, "wp2"), all(), json!({}), (94, "canary1")).await;
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    let labelled = |weight: Option<&str>| {
        let mut s = service(
            "catalog",
            &[
                GLOBAL,
                ("istio.io/use-waypoint", "wp"),
                ("istio.io/use-waypoint-canary", "wp2"),
            ],
        );
        if let Some(w) = weight {
            s["metadata"]["annotations"] = json!({"istio.io/use-waypoint-canary-weight": w});
        }
        s
    };
    st.create(labelled(Some("100"))).unwrap();
    st.create(slice("catalog", port, &[(pod_ip(91), "catalog-a")]))
        .unwrap();
    let (wp, wp2) = (waypoint_host(NS, "wp"), waypoint_host(NS, "wp2"));
    eventually_waypoint(gw.admin, CATALOG, Some(&wp)).await;
    eventually_canary(gw.admin, CATALOG, Some((wp2.clone(), 100))).await;
    let mut o = hbone_client(&gw).await;
    tunnels_reach(&mut o, 4, b"canary1\n").await;
    // At 30 percent, both take some of 48 tunnels (each side empty about once in 10^7).
    st.apply(labelled(Some("30"))).unwrap();
    eventually_canary(gw.admin, CATALOG, Some((wp2.clone(), 30))).await;
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..48 {
        let (status, got) = tunnel(&mut o, CATALOG, 7).await;
        assert_eq!(status, StatusCode::OK);
        *seen
            .entry(String::from_utf8(got).unwrap().trim_end().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["canary1", "primary"],
        "{seen:?}"
    );
    // Not a whole number from 0 to 100: no canary, as istiod falls back.
    st.apply(labelled(Some("30%"))).unwrap();
    eventually_canary(gw.admin, CATALOG, None).await;
    tunnels_reach(&mut o, 4, b"primary\n").await;
    // The canary not ready: no canary.
    st.apply(labelled(Some("100"))).unwrap();
    eventually_canary(gw.admin, CATALOG, Some((wp2.clone(), 100))).await;
    st.apply(waypoint_gateway((NS, "wp2"), all(), json!({}), false))
        .unwrap();
    eventually_canary(gw.admin, CATALOG, None).await;
    tunnels_reach(&mut o, 4, b"primary\n").await;
    st.apply(waypoint_gateway((NS, "wp2"), all(), json!({}), true))
        .unwrap();
    // The Namespace names waypoint and canary; the Service takes both from it.
    st.apply(service("catalog", &[GLOBAL])).unwrap();
    eventually_waypoint(gw.admin, CATALOG, None).await;
    let mut ns = namespace(&[
        ("istio.io/use-waypoint", "wp"),
        ("istio.io/use-waypoint-canary", "wp2"),
    ]);
    ns["metadata"]["annotations"] = json!({"istio.io/use-waypoint-canary-weight": "100"});
    st.apply(ns).unwrap();
    eventually_waypoint(gw.admin, CATALOG, Some(&wp)).await;
    eventually_canary(gw.admin, CATALOG, Some((wp2, 100))).await;
    tunnels_reach(&mut o, 4, b"canary1\n").await;
    // A Service naming its own waypoint does not take the Namespace's canary.
    st.apply(service(
        "catalog",
        &[GLOBAL, ("istio.io/use-waypoint", "wp")],
    ))
    .unwrap();
    eventually_canary(gw.admin, CATALOG, None).await;
    tunnels_reach(&mut o, 4, b"primary\n").await;
}

/// Pod `last`'s "ztunnel": an echo app on `pod_ip(last)`:15008.
async fn ztunnel(name: &str, last: u8) -> App {
    App::start(name, pod_ip(last), HBONE_PORT, AppMode::Echo)
        .await
        .unwrap()
}

/// The test namespace labelled `ns_labels`, holding the global Service `catalog`.
fn global_catalog_in(st: &k8s_test_server::Store, ns_labels: &[(&str, &str)]) {
    st.apply(namespace(ns_labels)).unwrap();
    st.create(service("catalog", &[GLOBAL])).unwrap();
}

/// The test namespace with these labels (applied: created or relabelled).
fn namespace(labels: &[(&str, &str)]) -> Value {
    let mut ns = namespace_json(NS);
    ns["metadata"]["labels"] = labels
        .iter()
        .map(|(k, v)| (k.to_string(), json!(v)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    ns
}

#[tokio::test]
async fn the_namespace_label_captures_its_pods_unless_they_opt_out_and_relabels_are_followed() {
    let (api, gw) = setup().await;
    let (_classic, port) = classic_backends(21).await;
    let zt_a = ztunnel("ztunnel-a", 21).await;
    let zt_b = ztunnel("ztunnel-b", 22).await;
    let st = api.store();
    global_catalog_in(st, &[AMBIENT]);
    // Pod a has no dataplane label (its namespace's applies); pod b opts out with `none`.
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog")]))
        .unwrap();
    st.create(k8s::pod(
        NS,
        "catalog-b",
        &[("app", "catalog"), ("istio.io/dataplane-mode", "none")],
    ))
    .unwrap();
    st.create(slice_a_b(port, 21)).unwrap();

    let a = [hbone_at(21)];
    eventually_hbone_endpoints(gw.admin, CATALOG, &a).await;
    let mut o = hbone_client(&gw).await;
    tunnels_reach(&mut o, 4, b"ztunnel-a\n").await;
    assert_eq!(zt_a.accepted(), 4);
    assert_eq!(zt_b.accepted(), 0, "a pod labelled none is never dialed");
    eventually_classic(gw.listen, CATALOG, &[]).await;

    // The namespace loses its label at run time: no pod is ambient any more.
    st.apply(namespace(&[])).unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &[]).await;
    let (status, _) = tunnel(&mut o, CATALOG, 0).await;
    assert_ne!(status, StatusCode::OK, "no ambient endpoint left");
    eventually_classic(gw.listen, CATALOG, &[]).await;
    // And gets it back: pod a follows, pod b still opts out.
    st.apply(namespace(&[AMBIENT])).unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &a).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(greeting, b"ztunnel-a\n");
    assert_eq!(zt_b.accepted(), 0);
    eventually_classic(gw.listen, CATALOG, &[]).await;
}

#[tokio::test]
async fn pods_with_an_injected_sidecar_are_not_ambient() {
    let (api, gw) = setup().await;
    let (_classic, port) = classic_backends(31).await;
    let zt = ztunnel("ztunnel-a", 31).await;
    let st = api.store();
    global_catalog_in(st, &[AMBIENT]);
    // Labelled ambient, in an ambient namespace, but the injector annotated it.
    let pod = k8s::sidecar_pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]);
    st.create(pod).unwrap();
    st.create(k8s::pod(NS, "catalog-b", &[("app", "catalog")]))
        .unwrap();
    st.create(slice_a_b(port, 31)).unwrap();
    // Pod b (no sidecar) is ambient through its namespace; pod a never is.
    eventually_hbone_endpoints(gw.admin, CATALOG, &[hbone_at(32)]).await;
    // Through 15443 the sidecar's pod only.
    eventually_classic(gw.listen, CATALOG, &["a"]).await;

    // Without its sidecar annotation (a re-created pod), pod a is ambient again.
    st.apply(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    let both = [hbone_at(31), hbone_at(32)];
    eventually_hbone_endpoints(gw.admin, CATALOG, &both).await;
    assert_eq!(zt.accepted(), 0);
}

#[tokio::test]
async fn a_namespace_waypoint_binds_its_services_unless_a_service_opts_out() {
    let (api, gw) = setup().await;
    api.install_gateway_api_crds();
    let (_classic, port) = classic_backends(41).await;
    let st = api.store();
    let _wp = ready_waypoint(
        st,
        (NS, "waypoint"),
        json!(null),
        json!({}),
        (43, "waypoint-1"),
    )
    .await;
    st.apply(namespace(&[AMBIENT, ("istio.io/use-waypoint", "waypoint")]))
        .unwrap();
    st.create(service("catalog", &[GLOBAL])).unwrap();
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog")]))
        .unwrap();
    st.create(slice("catalog", port, &[(pod_ip(41), "catalog-a")]))
        .unwrap();
    // Bound through its namespace: tunnels go to the waypoint, except a waypoint's.
    let a = [hbone_at(41)];
    eventually_hbone_endpoints(gw.admin, CATALOG, &a).await;
    let host = waypoint_host(NS, "waypoint");
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    // The Service's own `none` overrides its namespace's waypoint.
    st.apply(service(
        "catalog",
        &[GLOBAL, ("istio.io/use-waypoint", "none")],
    ))
    .unwrap();
    eventually_waypoint(gw.admin, CATALOG, None).await;
    // Unlabelled again, then the namespace drops its waypoint: open to every tunnel.
    st.apply(service("catalog", &[GLOBAL])).unwrap();
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    st.apply(namespace(&[AMBIENT])).unwrap();
    eventually_waypoint(gw.admin, CATALOG, None).await;
    assert_eq!(hbone_endpoints(gw.admin, CATALOG).await, a);
    eventually_classic(gw.listen, CATALOG, &[]).await;
}

#[tokio::test]
async fn with_namespace_the_watched_namespaces_labels_are_followed() {
    let (api, gw) = setup_with(|o| o.namespaces = vec![NS.into()]).await;
    let (_classic, port) = classic_backends(51).await;
    let st = api.store();
    // Another namespace's labels change nothing here.
    st.create(namespace_json("elsewhere")).unwrap();
    st.create(service("catalog", &[GLOBAL])).unwrap();
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog")]))
        .unwrap();
    st.create(slice("catalog", port, &[(pod_ip(51), "catalog-a")]))
        .unwrap();
    let listed = [(format!("{}:{port}", pod_ip(51)), false)];
    eventually("catalog listed", WAIT, || async {
        classic_endpoints(gw.admin, CATALOG).await == listed
    })
    .await;
    assert!(hbone_endpoints(gw.admin, CATALOG).await.is_empty());
    st.apply(namespace(&[AMBIENT])).unwrap();
    let a = [hbone_at(51)];
    eventually_hbone_endpoints(gw.admin, CATALOG, &a).await;
    let mut other = namespace_json("elsewhere");
    other["metadata"]["labels"] = json!({"istio.io/use-waypoint": "wp"});
    st.apply(other).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hbone_endpoints(gw.admin, CATALOG).await, a);
    st.apply(namespace(&[])).unwrap();
    eventually_hbone_endpoints(gw.admin, CATALOG, &[]).await;
    eventually_classic(gw.listen, CATALOG, &[]).await;
}

/// The Gateway API CRD deleted: waypoints are forgotten (tunnels straight to the pods) and
/// the table is not stale; installed again, they are found again without a restart.
#[tokio::test]
async fn a_deleted_gateway_crd_forgets_waypoints_until_it_returns() {
    let (api, gw) = setup().await;
    api.install_gateway_api_crds();
    let (_classic, port) = classic_backends(71).await;
    let _zt = ztunnel("ztunnel-a", 71).await;
    let st = api.store();
    let _wp = ready_waypoint(
        st,
        (NS, "waypoint"),
        json!(null),
        json!({}),
        (73, "waypoint-1"),
    )
    .await;
    st.create(k8s::pod(NS, "catalog-a", &[("app", "catalog"), AMBIENT]))
        .unwrap();
    st.create(service(
        "catalog",
        &[GLOBAL, ("istio.io/use-waypoint", "waypoint")],
    ))
    .unwrap();
    st.create(slice("catalog", port, &[(pod_ip(71), "catalog-a")]))
        .unwrap();
    let host = waypoint_host(NS, "waypoint");
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;

    let crd = ("apiextensions.k8s.io/v1", "CustomResourceDefinition");
    st.delete(crd.0, crd.1, None, "gateways.gateway.networking.k8s.io")
        .unwrap();
    eventually_waypoint(gw.admin, CATALOG, None).await;
    let mut o = hbone_client(&gw).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 10).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"ztunnel-a\n"[..])
    );
    let stale = "gateway_discovery_route_table_stale_seconds";
    let (_, body) = http_get(gw.admin, "/metrics").await;
    assert_eq!(metric(&body, stale), 0.0, "a missing CRD is not staleness");

    api.install_gateway_api_crds();
    st.apply(waypoint_gateway(
        (NS, "waypoint"),
        json!(null),
        json!({}),
        true,
    ))
    .unwrap();
    eventually_waypoint(gw.admin, CATALOG, Some(&host)).await;
    let (status, greeting) = tunnel(&mut o, CATALOG, 11).await;
    assert_eq!(
        (status, greeting.as_slice()),
        (StatusCode::OK, &b"waypoint-1\n"[..])
    );
}
