//! Kubernetes discovery with a service account that lacks some of the gateway's RBAC (the
//! TEST SERVER enforces RBAC on service-account tokens as the real one does): a missing
//! DestinationRule grant leaves routes without subsets instead of the gateway unready (a
//! missing Gateway grant, waypoint bindings unresolved: refused, never bypassed), and a
//! missing grant on a required type is named with its fix once, retried with a growing
//! back-off rather than every second.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_test_server::{Fault, FaultRule, Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::wait::eventually;

const NS: &str = testkit::mesh::NAMESPACE;
const SA: (&str, &str) = ("istio-system", "gw");

/// Every resource the gateway reads (README "RBAC"), less `without`: no CRDs, which it finds
/// by API discovery.
fn rules(without: &str) -> Value {
    let all = [
        ("", "services"),
        ("", "pods"),
        ("", "namespaces"),
        ("discovery.k8s.io", "endpointslices"),
        ("networking.istio.io", "destinationrules"),
        ("networking.istio.io", "workloadentries"),
        ("networking.istio.io", "serviceentries"),
        ("security.istio.io", "peerauthentications"),
        ("gateway.networking.k8s.io", "gateways"),
        ("gateway.networking.k8s.io", "gatewayclasses"),
    ];
    let rules: Vec<Value> = all
        .iter()
        .filter(|(_, r)| *r != without)
        .map(
            |(g, r)| json!({"apiGroups": [g], "resources": [r], "verbs": ["get", "list", "watch"]}),
        )
        .collect();
    json!(rules)
}

/// A server with the DestinationRule CRD, one routed service, and the gateway's service
/// account bound to every grant but `without`; returns it, the backend's name and a
/// kubeconfig with that account's token.
async fn cluster(without: &str) -> (TestApiServer, Vec<Backend>, String) {
    init();
    let mut opts = Options::new("east");
    opts.destination_rule_crd = true;
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.install_gateway_api_crds();
    api.install_peer_authentication_crd();
    api.install_workload_entry_crd();
    api.install_service_entry_crd();
    let st = api.store();
    st.create(namespace_json(NS)).unwrap();
    st.create(namespace_json(SA.0)).unwrap();
    st.create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": SA.1, "namespace": SA.0}}))
        .unwrap();
    let rbac = "rbac.authorization.k8s.io";
    st.create(
        json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRole",
        "metadata": {"name": "gw"}, "rules": rules(without)}),
    )
    .unwrap();
    st.create(
        json!({"apiVersion": format!("{rbac}/v1"), "kind": "ClusterRoleBinding",
        "metadata": {"name": "gw"},
        "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "gw"},
        "subjects": [{"kind": "ServiceAccount", "name": SA.1, "namespace": SA.0}]}),
    )
    .unwrap();
    let (b, port) = backends(&["a"]).await;
    let svc_port = k8s::ServicePort {
        name: "http",
        port: 80,
        target_port: 9080,
    };
    st.create(k8s::service(NS, "catalog", &[svc_port])).unwrap();
    st.create(k8s::sidecar_pod(NS, "pa", &[])).unwrap();
    let slice = k8s::one_endpoint_slice(NS, "catalog", ("http", port), b[0].addr.ip(), "pa");
    st.create(slice).unwrap();
    let admin = testkit::kube_client::client_from_yaml(&api.kubeconfig("east")).await;
    let token =
        testkit::kube_client::service_account_token(&admin, SA.0, SA.1, &[], Some(3600)).await;
    let kubeconfig = api.kubeconfig_with_token("east", &token);
    (api, b, kubeconfig)
}

/// The gateway binary on `kubeconfig`, logging JSON at `rust_log`. Started off the runtime's
/// threads: it waits for the gateway, which waits for the in-process API server.
async fn gateway(dir: &tempfile::TempDir, kubeconfig: &str, rust_log: &str) -> GatewayProcess {
    gateway_env(dir, kubeconfig, rust_log, &[]).await
}

/// [`gateway`] with these environment variables besides.
async fn gateway_env(
    dir: &tempfile::TempDir,
    kubeconfig: &str,
    rust_log: &str,
    env: &[(&'static str, &'static str)],
) -> GatewayProcess {
    let (dir, kubeconfig, rust_log, env) = (
        dir.path().to_owned(),
        kubeconfig.to_owned(),
        rust_log.to_owned(),
        env.to_vec(),
    );
    tokio::task::spawn_blocking(move || {
        GatewayProcess::start_kube(&dir, &kubeconfig, &rust_log, &env)
    })
    .await
    .unwrap()
}

/// The Service `reviews` in `NS` (port `http` 80 → 9080) with these labels.
fn reviews(labels: Value) -> Value {
    let mut s = k8s::service(
        NS,
        "reviews",
        &[k8s::ServicePort {
            name: "http",
            port: 80,
            target_port: 9080,
        }],
    );
    s["metadata"]["labels"] = labels;
    s
}

/// A `Debug`-printed `Duration` ("800ms", "1.52s") in seconds.
fn secs(debug: &str) -> f64 {
    let num = |s: &str| s.parse::<f64>().unwrap_or_else(|_| panic!("{debug}"));
    if let Some(ms) = debug.strip_suffix("ms") {
        num(ms) / 1e3
    } else if let Some(us) = debug.strip_suffix("µs") {
        num(us) / 1e6
    } else {
        num(debug.strip_suffix('s').unwrap_or(debug))
    }
}

/// A gateway for [`cluster`]`(without)`, once it routes the catalog and is ready, with the
/// first log line that contains `told`, and that line's message.
async fn served_and_told(
    without: &str,
    told: &str,
) -> (TestApiServer, tempfile::TempDir, GatewayProcess, String) {
    let (api, _b, kubeconfig) = cluster(without).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &kubeconfig, "warn,gateway=info").await;
    let start = Instant::now();
    let listen = gw.listen;
    eventually("catalog served", TIMEOUT, || async move {
        call(listen, &sni(80, "", CATALOG)).await.is_ok()
    })
    .await;
    println!("ready and routing {:?} after start", start.elapsed());
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 200);
    let line = gw.wait_line(&|v| v["message"].as_str().is_some_and(|m| m.contains(told)));
    let text = line["message"].as_str().unwrap().to_string();
    (api, dir, gw, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_destination_rule_rights_routes_are_served_without_subsets() {
    let told = "may not read destinationrules.networking.istio.io (403 Forbidden): only the empty subset routes";
    let (_api, _dir, _gw, text) = served_and_told("destinationrules", told).await;
    assert!(
        text.contains("grant list and watch on destinationrules.networking.istio.io"),
        "{text}"
    );
}

/// With `--namespace`, rules are also read in the root namespace. A Role that grants them in
/// the listed namespace only leaves the root's unseen, named with the grant, and keeps the
/// namespace's own: a 403 on one rule watch would stop all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_namespace_it_may_not_read_is_left_out_not_every_rule() {
    let (api, _b, kubeconfig) = cluster("destinationrules").await;
    let st = api.store();
    grant_rules(st, "Role", Some(NS), &["get", "list", "watch"]);
    subset_rule(st, NS, "all");
    let dir = tempfile::tempdir().unwrap();
    let env = [("GATEWAY_NAMESPACES", NS)];
    let gw = gateway_env(&dir, &kubeconfig, "warn,gateway=info", &env).await;
    let told = gw.wait_line(&|v| {
        v["message"].as_str().is_some_and(|m| {
            m.contains(
                "may not list or watch destinationrules.networking.istio.io in namespace istio-system",
            )
        })
    });
    assert!(
        told["message"]
            .as_str()
            .unwrap()
            .contains("grant list and watch on them there"),
        "{told}"
    );
    let listen = gw.listen;
    eventually("subset all served", TIMEOUT, || async move {
        call(listen, &sni(80, "all", CATALOG)).await.is_ok()
    })
    .await;
}

/// A rule namespace left out for a 403 is listed again every recheck: granted later, its
/// rules apply without a restart. Here the root namespace's DestinationRule gives catalog
/// its subset once the gateway may read it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_namespace_granted_later_is_watched_without_a_restart() {
    let (api, _b, kubeconfig) = cluster("destinationrules").await;
    let st = api.store();
    let all = ["get", "list", "watch"];
    grant_rules(st, "Role", Some(NS), &all);
    subset_rule(st, SA.0, "root");
    let (_dir, bound) = in_process(&kubeconfig, &[NS]).await;
    served(&bound, "").await;
    assert!(
        call(bound.listen_addr, &sni(80, "root", CATALOG))
            .await
            .is_err()
    );
    grant_rules(st, "Role", Some(SA.0), &all);
    served(&bound, "root").await;
}

/// A DestinationRule in `ns` giving catalog the subset `subset` (every endpoint).
fn subset_rule(st: &k8s_test_server::Store, ns: &str, subset: &str) {
    st.create(k8s::destination_rule(
        ns,
        "catalog",
        CATALOG,
        &[(subset, &[])],
    ))
    .unwrap();
}

/// The gateway in this process on `kubeconfig`, watching `namespaces` (all when empty) and
/// rechecking its optional types every 200 ms.
async fn in_process(
    kubeconfig: &str,
    namespaces: &[&str],
) -> (tempfile::TempDir, gateway::app::Bound) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    let cfg = kube_path_config(path, |o| {
        o.namespaces = namespaces.iter().map(|n| n.to_string()).collect();
        o.crd_recheck = Duration::from_millis(200);
    });
    (dir, gateway::app::build(cfg).await.unwrap())
}

/// Waits until `bound` routes catalog's subset `subset` (`""`: the service itself).
async fn served(bound: &gateway::app::Bound, subset: &'static str) {
    let listen = bound.listen_addr;
    eventually(
        &format!("catalog's subset {subset:?} served"),
        TIMEOUT,
        || async move { call(listen, &sni(80, subset, CATALOG)).await.is_ok() },
    )
    .await;
}

/// A `kind` (Role or ClusterRole; in `ns` for a Role) granting `verbs` on `resource` (group,
/// plural), bound to the gateway's account.
fn grant(
    st: &k8s_test_server::Store,
    kind: &str,
    ns: Option<&str>,
    resource: (&str, &str),
    verbs: &[&str],
) {
    let rbac = "rbac.authorization.k8s.io";
    let name = format!("{}-{}", resource.1, verbs.join("-"));
    let meta = match ns {
        Some(ns) => json!({"name": name, "namespace": ns}),
        None => json!({"name": name}),
    };
    st.create(
        json!({"apiVersion": format!("{rbac}/v1"), "kind": kind, "metadata": meta,
        "rules": [{"apiGroups": [resource.0], "resources": [resource.1], "verbs": verbs}]}),
    )
    .unwrap();
    st.create(
        json!({"apiVersion": format!("{rbac}/v1"), "kind": format!("{kind}Binding"),
        "metadata": meta,
        "roleRef": {"apiGroup": rbac, "kind": kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": SA.1, "namespace": SA.0}]}),
    )
    .unwrap();
}

/// [`grant`] on DestinationRules.
fn grant_rules(st: &k8s_test_server::Store, kind: &str, ns: Option<&str>, verbs: &[&str]) {
    grant(
        st,
        kind,
        ns,
        ("networking.istio.io", "destinationrules"),
        verbs,
    );
}

/// The generation of `bound`'s table after `rechecks` CRD rechecks of 200 ms, asserting that
/// catalog's subset `subset` is refused at every one: a type the gateway may list but not
/// watch must stay off, not come with each start and go with its watch's 403. (Such a flap
/// lasts milliseconds, which these calls would seldom meet: the generation is what shows it.)
async fn steady_without(bound: &gateway::app::Bound, subset: &str, rechecks: u32) -> u64 {
    for _ in 0..rechecks {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            call(bound.listen_addr, &sni(80, subset, CATALOG))
                .await
                .is_err()
        );
    }
    bound.routes.load().unwrap().generation
}

/// A ClusterRole that grants `list` on DestinationRules but not `watch`: each start of their
/// watches would list them (the rules apply) and then be refused the watch (they go), every
/// recheck. They are not started at all, and the table stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_it_may_list_but_not_watch_stays_off_rather_than_flapping() {
    let (api, _b, kubeconfig) = cluster("destinationrules").await;
    let st = api.store();
    grant_rules(st, "ClusterRole", None, &["get", "list"]);
    subset_rule(st, NS, "all");
    let (_dir, bound) = in_process(&kubeconfig, &[]).await;
    served(&bound, "").await;
    let first = steady_without(&bound, "all", 2).await;
    assert_eq!(steady_without(&bound, "all", 6).await, first);
    // Granted the watch, the rules apply at the next recheck.
    grant_rules(st, "ClusterRole", None, &["watch"]);
    served(&bound, "all").await;
}

/// A Role in the root namespace that grants `list` but not `watch` leaves that namespace out
/// as one that grants nothing does: the listed namespace's rules stay applied throughout, and
/// the root's rule for reviews (which has no rule of its own namespace, so the root's would
/// apply) is never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_namespace_it_may_list_but_not_watch_is_left_out() {
    let (api, b, kubeconfig) = cluster("destinationrules").await;
    let st = api.store();
    grant_rules(st, "Role", Some(NS), &["get", "list", "watch"]);
    grant_rules(st, "Role", Some(SA.0), &["get", "list"]);
    subset_rule(st, NS, "all");
    st.create(reviews(json!({}))).unwrap();
    let port = b[0].addr.port();
    let slice = k8s::one_endpoint_slice(NS, "reviews", ("http", port), b[0].addr.ip(), "pa");
    st.create(slice).unwrap();
    let reviews_host = format!("reviews.{NS}.svc.cluster.local");
    st.create(k8s::destination_rule(
        SA.0,
        "reviews",
        &reviews_host,
        &[("root", &[])],
    ))
    .unwrap();
    let (_dir, bound) = in_process(&kubeconfig, &[NS]).await;
    served(&bound, "all").await;
    let listen = bound.listen_addr;
    eventually("reviews served", TIMEOUT, || {
        let host = reviews_host.clone();
        async move { call(listen, &sni(80, "", &host)).await.is_ok() }
    })
    .await;
    let first = bound.routes.load().unwrap().generation;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(call(listen, &sni(80, "all", CATALOG)).await.is_ok());
        assert!(call(listen, &sni(80, "root", &reviews_host)).await.is_err());
    }
    assert_eq!(bound.routes.load().unwrap().generation, first);
}

/// Gateways forbidden: a Service bound to a waypoint is refused rather than sent around it.
/// Once the Gateway CRD is deleted no waypoint can exist, and the binding no longer holds the
/// Service back (before, the refusal stayed until the CRD came back and could be read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_gateway_crd_deleted_lets_bound_services_go_straight() {
    let (api, _b, kubeconfig) = cluster("gateways").await;
    let st = api.store();
    st.create(reviews(
        json!({"istio.io/global": "true", "istio.io/use-waypoint": "wp"}),
    ))
    .unwrap();
    let (_dir, bound) = in_process(&kubeconfig, &[]).await;
    served(&bound, "").await;
    let admin = bound.admin_addr;
    let waypoint = || async move {
        let (_, body) = http_get(admin, "/debug/routes?host=reviews").await;
        let routes: Value = serde_json::from_str(&body).unwrap();
        routes["routes"]
            .as_array()
            .and_then(|r| r.first())
            .map(|r| r["waypoint"].clone())
    };
    let unresolved = Some(json!(format!("{NS}/wp")));
    eventually("the binding held unresolved", TIMEOUT, || {
        let unresolved = unresolved.clone();
        async move { waypoint().await == unresolved }
    })
    .await;
    st.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "gateways.gateway.networking.k8s.io",
    )
    .unwrap();
    eventually("the binding let go", TIMEOUT, || async move {
        waypoint().await.is_some_and(|w| w.is_null())
    })
    .await;
}

/// Serves without the grant on `resource` of `group`, and checks the log says that `kind`
/// cannot be seen and names the grant.
async fn served_unseen_and_granted(resource: &str, group: &str, kind: &str) {
    let told = format!("may not read {resource}.{group} (403 Forbidden): {kind} cannot be seen");
    let (_api, _dir, _gw, text) = served_and_told(resource, &told).await;
    let grant = format!("grant list and watch on {resource}.{group}");
    assert!(text.contains(&grant), "{text}");
}

/// Without the PeerAuthentication grant routes are served as if no policy disabled mTLS
/// anywhere, and the log names what that means and the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peer_authentication_rights_routes_are_served_and_the_grant_named() {
    served_unseen_and_granted(
        "peerauthentications",
        "security.istio.io",
        "PeerAuthentications",
    )
    .await;
}

/// Without the WorkloadEntry grant (a ClusterRole from before 2026-12-07) Services are served
/// by their pods, and the log names what that means and the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_workload_entry_rights_routes_are_served_and_the_grant_named() {
    served_unseen_and_granted("workloadentries", "networking.istio.io", "WorkloadEntries").await;
}

/// Without the ServiceEntry grant Services are served, and the log names what that means and
/// the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_service_entry_rights_routes_are_served_and_the_grant_named() {
    served_unseen_and_granted("serviceentries", "networking.istio.io", "ServiceEntries").await;
}

/// Without the Gateway grant the waypoints cannot be seen: routes are served, and a global
/// Service bound to a waypoint keeps the binding unresolved (`namespace/name`, answered 503)
/// rather than having its tunnels sent around the waypoint; the log names it and the grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gateway_rights_bound_services_are_refused_not_bypassed() {
    let told = "may not read gateways.gateway.networking.k8s.io (403 Forbidden)";
    let (api, _dir, gw, text) = served_and_told("gateways", told).await;
    assert!(
        text.contains("waypoints cannot be seen")
            && text.contains("refused (503) rather than sent around it")
            && text.contains("grant list and watch on gateways.gateway.networking.k8s.io"),
        "{text}"
    );
    let bound = reviews(json!({"istio.io/global": "true", "istio.io/use-waypoint": "wp"}));
    api.store().create(bound).unwrap();
    let told = gw.wait_line(&|v| {
        v["waypoint"] == format!("{NS}/wp")
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("may not read"))
    });
    assert_eq!(told["service"], format!("reviews.{NS}.svc.cluster.local"));
    assert_eq!(told["level"], "WARN");
    let admin = gw.admin;
    let (_, routes) = http_get(admin, "/debug/routes?host=reviews").await;
    let routes: Value = serde_json::from_str(&routes).unwrap();
    let waypoints: Vec<&Value> = routes["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["waypoint"])
        .collect();
    assert_eq!(waypoints, [&json!(format!("{NS}/wp"))], "{routes}");
}

/// Without the GatewayClass grant a class's inbound binding is unknown: a Service that its
/// waypoint's HBONE listener refuses, and that the PROXY listener a class binding could name
/// allows, is refused (503) rather than sent around the waypoint, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_gateway_class_rights_a_binding_a_class_could_allow_is_refused() {
    let (api, _b, kubeconfig) = cluster("gatewayclasses").await;
    let st = api.store();
    st.create(namespace_json("infra")).unwrap();
    st.apply(
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "wp", "namespace": "infra"},
        "spec": {"gatewayClassName": "sandwiched", "listeners": [
            {"name": "mesh", "port": 15008, "protocol": "HBONE"},
            {"name": "proxy", "port": 15088, "protocol": "istio.io/PROXY",
             "allowedRoutes": {"namespaces": {"from": "All"}}}]},
        "status": {"addresses": [{"type": "Hostname", "value": "wp.infra.svc.cluster.local"}]}}),
    )
    .unwrap();
    st.create(reviews(json!({"istio.io/global": "true",
        "istio.io/use-waypoint": "wp", "istio.io/use-waypoint-namespace": "infra"})))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &kubeconfig, "warn,gateway=info").await;
    let told = gw.wait_line(&|v| {
        v["waypoint"] == "infra/wp"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("gatewayclasses.gateway.networking.k8s.io (403)"))
    });
    assert_eq!(told["service"], format!("reviews.{NS}.svc.cluster.local"));
    let (_, routes) = http_get(gw.admin, "/debug/routes?host=reviews").await;
    let routes: Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(routes["routes"][0]["waypoint"], "infra/wp", "{routes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_required_type_is_named_once_and_backs_off() {
    let (_api, _b, kubeconfig) = cluster("services").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &kubeconfig, "warn,gateway=debug").await;
    // Four retries: kube-runtime's back-off starts at 0.8 s and doubles (with jitter).
    let d: Vec<f64> = service_retries(&gw, 4).await.iter().map(|r| r.1).collect();
    println!("delays after 403 on services: {d:?}");
    assert!(d.len() >= 4, "{d:?}");
    assert!(
        d[3] > 2.0 * d[0] && d[3] >= 2.4,
        "the back-off grows: {d:?}"
    );
    let errors = gw.count_lines(&|v| {
        v["level"] == "ERROR"
            && v["message"].as_str().is_some_and(|m| {
                m.contains("may not list or watch services (403 Forbidden)")
                    && m.contains("grant list and watch")
            })
    });
    assert_eq!(errors, 1, "named once while it lasts");
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 503);
}

/// When (seconds since midnight) `gw` retried its refused Services watch, and the delay it
/// announced each time, once there are `n` (or after 20 s).
async fn service_retries(gw: &GatewayProcess, n: usize) -> Vec<(f64, f64)> {
    let retries = || -> Vec<(f64, f64)> {
        gw.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| {
                v["kind"] == "Service"
                    && v["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("403 Forbidden; retrying"))
            })
            .filter_map(|v| Some((time_of_day(v), secs(v["delay"].as_str()?))))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while retries().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    retries()
}

/// Asserts that there are four retries and each came after its whole announced delay (a
/// wake-up would have cut one short).
fn each_after_its_delay(r: &[(f64, f64)]) {
    assert!(r.len() >= 4, "{r:?}");
    for w in r.windows(2) {
        let gap = (w[1].0 - w[0].0).rem_euclid(86_400.0);
        assert!(
            gap >= 0.9 * w[0].1,
            "retried after {gap} s of a {} s delay: {r:?}",
            w[0].1
        );
    }
}

/// Seconds since midnight of a JSON log line's RFC 3339 `timestamp`.
fn time_of_day(line: &Value) -> f64 {
    let ts = line["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("{line}"));
    let time = ts.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut parts = time.split(':').map(|p| p.parse::<f64>().unwrap());
    let (h, m, s) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    h * 3600.0 + m * 60.0 + s
}

/// Services may be listed but not watched: each retry lists (when the watcher re-lists)
/// or watches and is refused. Its probe must not call that answering, or it would wake the
/// watch at every health tick instead of letting the back-off grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_type_it_may_list_but_not_watch_backs_off_unwoken() {
    let (api, _b, kubeconfig) = cluster("services").await;
    grant(
        api.store(),
        "ClusterRole",
        None,
        ("", "services"),
        &["get", "list"],
    );
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &kubeconfig, "warn,gateway=debug").await;
    let r = service_retries(&gw, 4).await;
    println!("(time of day, delay) of each retry: {r:?}");
    each_after_its_delay(&r);
    let errors = gw.count_lines(&|v| {
        v["level"] == "ERROR"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("may not list or watch services (403 Forbidden)"))
    });
    assert_eq!(errors, 1, "named once while it lasts");
}

/// Services refused (403) and backing off: another type's watch failing and its probe then
/// answering wakes that watch, not the refused one, whose retries keep their whole delays
/// (before, every failing watch was woken whenever any probe answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_watch_is_not_woken_when_another_types_api_answers() {
    let (api, _b, kubeconfig) = cluster("services").await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &kubeconfig, "warn,gateway=debug").await;
    // Into its third back-off (at least 1.6 s): the EndpointSlices watch now fails once
    // (a 500, which the client does not retry by itself), and its probe answers within the
    // health tick of a second.
    let r = service_retries(&gw, 3).await;
    assert!(r.len() >= 3, "{r:?}");
    api.faults().inject(
        FaultRule::new(Fault::Internal)
            .verb("watch")
            .resource("endpointslices")
            .times(1),
    );
    api.end_watches();
    let r = service_retries(&gw, 4).await;
    println!("(time of day, delay) of each retry: {r:?}");
    assert_eq!(
        api.faults().injected(),
        1,
        "the EndpointSlices watch failed once"
    );
    each_after_its_delay(&r);
}
