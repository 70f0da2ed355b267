//! WorkloadEntries (VMs) behind Kubernetes Services, and ServiceEntries, through the
//! in-process Kubernetes API TEST SERVER with Istio's WorkloadEntry and ServiceEntry CRDs: the gateway runs in process (`app::build` on
//! 127.0.0.1:0), the pod and the "VM" are mTLS test backends on 127.0.0.x, and calls go
//! through real sockets.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::wait::eventually;

const NS: &str = testkit::mesh::NAMESPACE;
const WAIT: Duration = Duration::from_secs(10);
const WE: (&str, &str) = ("networking.istio.io/v1", "WorkloadEntry");
const SE: (&str, &str) = ("networking.istio.io/v1", "ServiceEntry");
const DB: &str = "db.mesh.local";

/// A server with the WorkloadEntry CRD, `NS`, and the root namespace on network `east-net`.
async fn api_server() -> TestApiServer {
    init();
    let mut opts = Options::new("east");
    // The backends listen on 127.0.0.x; a real API server would refuse these slices.
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.install_workload_entry_crd();
    api.install_service_entry_crd();
    let st = api.store();
    st.create(namespace_json(NS)).unwrap();
    let mut root = namespace_json("istio-system");
    root["metadata"]["labels"] = json!({"topology.istio.io/network": "east-net"});
    st.create(root).unwrap();
    api
}

async fn kube_gateway(api: &TestApiServer) -> KubeGw {
    kube_gateway_ready(&api.kubeconfig("east"), |_| {}).await
}

/// The catalog Service (selector `app: catalog`) with `ports` (name, port, targetPort).
fn catalog_service(ports: &[(&str, u16, Value)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(name, port, target)| {
            json!({"name": name, "port": port, "protocol": "TCP", "targetPort": target})
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "catalog", "namespace": NS},
        "spec": {"ports": ports, "selector": {"app": "catalog"}}})
}

/// The catalog (port 80 targeting `port`) served by its injected Pod `p` at `ip`.
fn pod_catalog(api: &TestApiServer, port: u16, ip: IpAddr) {
    let st = api.store();
    st.create(catalog_service(&[("http", 80, json!(port))]))
        .unwrap();
    st.create(k8s::sidecar_pod(NS, "p", &[("app", "catalog")]))
        .unwrap();
    let slice = k8s::one_endpoint_slice(NS, "catalog", ("http", port), ip, "p");
    st.create(slice).unwrap();
}

/// The VM `vm` at `ip`, selected by the catalog, with a service account.
fn vm(ip: IpAddr) -> Value {
    k8s::workload_entry(NS, "vm", ip, &[("app", "catalog")], Some("vm-sa"))
}

/// istiod adds a WorkloadEntry to every Service in its namespace whose selector its labels
/// contain, next to the slices' pods; the gateway does too, with istiod's rules: only an
/// mTLS entry (a service account, or the TLS-mode label) takes 15443, health checks count
/// only with their annotation, an entry on another network is not dialed, and a deleted one
/// goes. Before, WorkloadEntries were not read: the VM was never reached.
#[tokio::test]
async fn a_service_that_selects_a_vm_is_served_by_its_pod_and_the_vm() {
    let api = api_server().await;
    let (b, port) = backends(&["pod", "vm"]).await;
    let st = api.store();
    pod_catalog(&api, port, b[0].addr.ip());
    st.create(vm(b[1].addr.ip())).unwrap();
    let gw = kube_gateway(&api).await;
    let catalog = sni(80, "", CATALOG);
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod", "vm"]).await;

    // No service account and no TLS-mode label: not an mTLS endpoint.
    let mut plain = vm(b[1].addr.ip());
    plain["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccount");
    st.apply(plain).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod"]).await;
    let mut labelled = vm(b[1].addr.ip());
    labelled["spec"]["labels"]["security.istio.io/tlsMode"] = json!("istio");
    labelled["spec"]
        .as_object_mut()
        .unwrap()
        .remove("serviceAccount");
    st.apply(labelled).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod", "vm"]).await;

    // Health checks on: out until its agent reports it healthy.
    let mut checked = vm(b[1].addr.ip());
    checked["metadata"]["annotations"] = json!({"proxy.istio.io/health-checks-enabled": "true"});
    st.apply(checked.clone()).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod"]).await;
    checked["status"] = json!({"conditions": [{"type": "Healthy", "status": "True"}]});
    st.apply(checked).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod", "vm"]).await;

    // On another network than the cluster's (`east-net`): not dialed from here.
    let mut away = vm(b[1].addr.ip());
    away["spec"]["network"] = json!("west-net");
    st.apply(away).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod"]).await;
    let mut here = vm(b[1].addr.ip());
    here["spec"]["network"] = json!("east-net");
    st.apply(here).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod", "vm"]).await;

    // `/debug/routes` shows the VM as an endpoint like any other.
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    assert!(body.contains(&b[1].addr.ip().to_string()), "{body}");

    st.delete(WE.0, WE.1, Some(NS), "vm").unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod"]).await;
}

/// A VM's `weight` is its share of new connections against the pod's 1, as Envoy weighs
/// hosts istiod sends with `load_balancing_weight`; `/debug/routes` shows it. Before, weights
/// were not read and every endpoint took an equal share.
#[tokio::test]
async fn a_vms_weight_is_its_share_of_connections() {
    let api = api_server().await;
    let (b, port) = backends(&["pod", "vm"]).await;
    let st = api.store();
    pod_catalog(&api, port, b[0].addr.ip());
    let mut heavy = vm(b[1].addr.ip());
    heavy["spec"]["weight"] = json!(9);
    st.create(heavy).unwrap();
    let gw = kube_gateway(&api).await;
    let catalog = sni(80, "", CATALOG);
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod", "vm"]).await;
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    assert!(body.contains(r#""weight": 9"#), "{body}");
    // One connection at a time: 9 in 10 to the VM (expected 90 of 100, deviation 3).
    let mut to_vm = 0;
    for _ in 0..100 {
        let by = who(gw.bound.listen_addr, &catalog).await;
        to_vm += u32::from(by.as_deref() == Some("vm"));
    }
    assert!(
        (75..101).contains(&to_vm),
        "{to_vm} of 100 to the VM of weight 9"
    );
}

/// istiod's port rules for an entry (`serviceInstanceFromWorkloadInstance`): a named
/// `targetPort` is the entry's port of that name, and an entry without it does not serve that
/// Service port; a numeric one is overridden by the entry's port named as the Service port.
#[tokio::test]
async fn a_vm_serves_the_ports_its_entry_names() {
    let api = api_server().await;
    let (b, port) = backends(&["vm"]).await;
    let st = api.store();
    // Port 80 targets `web` by name; port 90 targets a closed port by number, which the
    // entry's own `grpc` port overrides.
    let closed = refused_port(b[0].addr.ip(), 0).await.port();
    st.create(catalog_service(&[
        ("http", 80, json!("web")),
        ("grpc", 90, json!(closed)),
    ]))
    .unwrap();
    let mut entry = vm(b[0].addr.ip());
    entry["spec"]["ports"] = json!({"web": port, "grpc": port});
    st.create(entry).unwrap();
    let gw = kube_gateway(&api).await;
    eventually_served_by(gw.bound.listen_addr, &sni(80, "", CATALOG), &["vm"]).await;
    eventually_served_by(gw.bound.listen_addr, &sni(90, "", CATALOG), &["vm"]).await;

    let vm_at = format!("{}:{port}", b[0].addr.ip());
    let vm_only = std::slice::from_ref(&vm_at);
    assert_eq!(listed(gw.bound.admin_addr, CATALOG, 80).await, vm_only);
    assert_eq!(listed(gw.bound.admin_addr, CATALOG, 90).await, vm_only);
    // Without `web`, port 80 has no endpoint; port 90 is still served.
    let mut entry = vm(b[0].addr.ip());
    entry["spec"]["ports"] = json!({"grpc": port});
    st.apply(entry).unwrap();
    eventually_served_by(gw.bound.listen_addr, &sni(80, "", CATALOG), &[]).await;
    eventually_served_by(gw.bound.listen_addr, &sni(90, "", CATALOG), &["vm"]).await;
    assert!(listed(gw.bound.admin_addr, CATALOG, 80).await.is_empty());
    assert_eq!(listed(gw.bound.admin_addr, CATALOG, 90).await, [vm_at]);
}

/// A headless Service gets no entries (istiod adds them only to client-side load-balanced
/// Services), and neither does one without a selector.
#[tokio::test]
async fn headless_and_selectorless_services_get_no_vms() {
    let api = api_server().await;
    let (b, port) = backends(&["vm"]).await;
    let st = api.store();
    let mut headless = catalog_service(&[("http", 80, json!(port))]);
    headless["spec"]["clusterIP"] = json!("None");
    st.create(headless).unwrap();
    let mut other = catalog_service(&[("http", 80, json!(port))]);
    other["metadata"]["name"] = json!("orders");
    other["spec"].as_object_mut().unwrap().remove("selector");
    st.create(other).unwrap();
    st.create(vm(b[0].addr.ip())).unwrap();
    let gw = kube_gateway(&api).await;
    let orders = sni(80, "", "orders.istioinaction.svc.cluster.local");
    eventually_served_by(gw.bound.listen_addr, &sni(80, "", CATALOG), &[]).await;
    eventually_served_by(gw.bound.listen_addr, &orders, &[]).await;
    // The same Service with a cluster IP takes the VM.
    st.delete("v1", "Service", Some(NS), "catalog").unwrap();
    st.create(catalog_service(&[("http", 80, json!(port))]))
        .unwrap();
    eventually_served_by(gw.bound.listen_addr, &sni(80, "", CATALOG), &["vm"]).await;
}

/// ServiceEntry `name` in `NS` for [`DB`], port 5432 (`tcp-db`) targeting `port`, with
/// `extra` over its spec.
fn db_entry_named(name: &str, port: u16, extra: Value) -> Value {
    let mut spec = json!({"hosts": [DB], "location": "MESH_INTERNAL", "resolution": "STATIC",
        "ports": [{"number": 5432, "name": "tcp-db", "protocol": "TCP", "targetPort": port}]});
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    json!({"apiVersion": SE.0, "kind": SE.1, "metadata": {"name": name, "namespace": NS},
        "spec": spec})
}

/// ServiceEntry `db` ([`db_entry_named`]) with one inline endpoint at `inline`, unless
/// `extra` names its endpoints.
fn db_entry(inline: IpAddr, port: u16, extra: Value) -> Value {
    let mut entry = db_entry_named("db", port, extra.clone());
    if extra.get("endpoints").is_none() {
        let ep = json!([{"address": inline.to_string(), "serviceAccount": "db"}]);
        entry["spec"]["endpoints"] = ep;
    }
    entry
}

/// A `MESH_INTERNAL` ServiceEntry with static (or no) resolution is a route for each host,
/// as istiod gives its east-west gateway an SNI cluster for it: here two entries of one
/// namespace for one host, one with an inline endpoint, one with a selector (its
/// WorkloadEntries; an entry with both serves only those it selects), serve it together.
/// Before, ServiceEntries were not read (`no_route`).
#[tokio::test]
async fn a_mesh_internal_service_entry_is_served_by_its_endpoints_and_selected_vms() {
    let api = api_server().await;
    let (b, port) = backends(&["inline", "vm"]).await;
    let st = api.store();
    st.create(db_entry(b[0].addr.ip(), port, json!({})))
        .unwrap();
    let selector = json!({"workloadSelector": {"labels": {"app": "db"}}});
    st.create(db_entry_named("db-vms", port, selector.clone()))
        .unwrap();
    let vm = k8s::workload_entry(NS, "db-vm", b[1].addr.ip(), &[("app", "db")], Some("db"));
    st.create(vm).unwrap();
    let gw = kube_gateway(&api).await;
    let listen = gw.bound.listen_addr;
    let db = sni(5432, "", DB);
    eventually_served_by(listen, &db, &["inline", "vm"]).await;

    // The older entry, `db`, owns the host: outside the mesh or resolved by DNS, the host has
    // no route here, as istiod builds no SNI cluster for it. Not exported to the gateway's
    // namespace, it leaves the host to `db-vms`, and its endpoint still serves (istiod keys
    // endpoints by host and namespace, whatever each entry's `exportTo`).
    let pod_and_vm: &[&str] = &["inline", "vm"];
    for (why, extra, want) in [
        (
            "outside the mesh",
            json!({"location": "MESH_EXTERNAL"}),
            &[][..],
        ),
        ("resolved by DNS", json!({"resolution": "DNS"}), &[]),
        ("not exported", json!({"exportTo": ["."]}), pod_and_vm),
    ] {
        st.apply(db_entry(b[0].addr.ip(), port, extra)).unwrap();
        eventually_served_by(listen, &db, want).await;
        println!("{why}: served by {want:?}");
        st.apply(db_entry(b[0].addr.ip(), port, json!({}))).unwrap();
        eventually_served_by(listen, &db, pod_and_vm).await;
    }
    // Neither exported to the gateway's namespace: no route.
    let hidden = json!({"exportTo": ["."]});
    st.apply(db_entry(b[0].addr.ip(), port, hidden.clone()))
        .unwrap();
    let mut vms_hidden = selector.clone();
    vms_hidden["exportTo"] = json!(["."]);
    st.apply(db_entry_named("db-vms", port, vms_hidden))
        .unwrap();
    eventually_served_by(listen, &db, &[]).await;
    st.apply(db_entry(b[0].addr.ip(), port, json!({}))).unwrap();
    // With a selector too, the inline endpoint is not read.
    let mut both = selector;
    let ep = json!([{"address": b[0].addr.ip().to_string(), "serviceAccount": "db"}]);
    both["endpoints"] = ep;
    st.apply(db_entry_named("db-vms", port, both)).unwrap();
    st.delete(SE.0, SE.1, Some(NS), "db").unwrap();
    eventually_served_by(listen, &db, &["vm"]).await;
    st.delete(SE.0, SE.1, Some(NS), "db-vms").unwrap();
    eventually_served_by(listen, &db, &[]).await;
}

/// A ServiceEntry in a Kubernetes Service's namespace naming its host adds its endpoints to
/// the Service's route on the Service ports whose name it has, as istiod's endpoint builder
/// reads every registry's endpoints of a host and namespace; it never replaces the Service.
#[tokio::test]
async fn a_service_entry_adds_to_a_services_host_by_port_name() {
    let api = api_server().await;
    let (b, port) = backends(&["pod", "entry"]).await;
    let st = api.store();
    pod_catalog(&api, port, b[0].addr.ip());
    let mut entry = db_entry(b[1].addr.ip(), port, json!({"hosts": [CATALOG]}));
    entry["spec"]["ports"][0]["number"] = json!(80);
    st.create(entry.clone()).unwrap();
    let gw = kube_gateway(&api).await;
    let catalog = sni(80, "", CATALOG);
    // Its port is `tcp-db`, the Service's `http`: nothing added.
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod"]).await;
    entry["spec"]["ports"][0]["name"] = json!("http");
    st.apply(entry).unwrap();
    eventually_served_by(gw.bound.listen_addr, &catalog, &["pod", "entry"]).await;
}

/// The endpoints (`ip:port`) `/debug/routes` lists for `host`'s port `port`.
async fn listed(admin: std::net::SocketAddr, host: &str, port: u16) -> Vec<String> {
    let (_, body) = http_get(admin, &format!("/debug/routes?host={host}")).await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let routes = v["routes"].as_array().cloned().unwrap_or_default();
    (routes.iter())
        .filter(|r| r["host"] == host && r["port"] == port)
        .flat_map(|r| r["endpoints"].as_array().cloned().unwrap_or_default())
        .map(|e| e["address"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// What the gateway leaves out is said once in its log: a mesh-internal ServiceEntry resolved
/// by DNS (a warning: a sidecar may expect its hosts here) and a WorkloadEntry on another
/// network (information: it is reached through that network's gateway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_left_out_is_named_once() {
    let api = api_server().await;
    let st = api.store();
    let ip: IpAddr = [127, 0, 0, 9].into();
    st.create(db_entry(ip, 5432, json!({"resolution": "DNS"})))
        .unwrap();
    let mut away = vm(ip);
    away["spec"]["network"] = json!("west-net");
    st.create(away).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = api.kubeconfig("east");
    let path = dir.path().to_owned();
    let gw = tokio::task::spawn_blocking(move || {
        GatewayProcess::start_kube(&path, &kubeconfig, "warn,gateway=info", &[])
    })
    .await
    .unwrap();
    let said = |needle: &'static str| {
        move |v: &Value| v["message"].as_str().is_some_and(|m| m.contains(needle))
    };
    let dns = "mesh-internal ServiceEntry is resolved by DNS";
    let line = gw.wait_line(&said(dns));
    assert_eq!(line["entry"], format!("{NS}/db"), "{line}");
    assert_eq!(line["level"], "WARN", "{line}");
    let elsewhere = "WorkloadEntry is on another network";
    let line = gw.wait_line(&said(elsewhere));
    assert_eq!(line["entry"], format!("{NS}/vm"), "{line}");
    assert_eq!(line["network"], "west-net", "{line}");
    // A change elsewhere rebuilds the table; neither is said again.
    let db = sni(5432, "", DB);
    let mut other = db_entry(ip, 5432, json!({}));
    other["metadata"]["name"] = json!("other");
    other["spec"]["hosts"] = json!(["other.mesh.local"]);
    st.create(other).unwrap();
    let admin = gw.admin;
    eventually("the other entry routed", WAIT, || async move {
        let (_, body) = http_get(admin, "/debug/routes?host=other.").await;
        body.contains("other.mesh.local")
    })
    .await;
    assert!(who(gw.listen, &db).await.is_none());
    assert_eq!(gw.count_lines(&said(dns)), 1);
    assert_eq!(gw.count_lines(&said(elsewhere)), 1);
}
