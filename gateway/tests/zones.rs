//! Zone preference (`trafficDistribution: PreferClose`): a service that asks for it is served
//! by its endpoints in the gateway's zone while one of them can be dialed, by the others only
//! then; and a DestinationRule's locality failover (its `outlierDetection`), which keeps the
//! zone's connections there while enough of its endpoints are healthy and spills a share as
//! Envoy does. Through the endpoints file (`--zone`) and through the Kubernetes API TEST SERVER (the
//! zone learned from the EndpointSlice that lists the gateway's own pod), with real mTLS
//! backends on 127.0.0.x and real sockets.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway::app;
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::wait::eventually;

const WAIT: Duration = Duration::from_secs(10);

/// The backends that answered `n` calls through `gw` (each call must succeed).
async fn served(gw: SocketAddr, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        seen.insert(served_by(gw, &sni(80, "", CATALOG)).await);
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// The catalog on three backends, two in zone-a and one in zone-b, with `extra` service keys.
fn zoned_yaml(port: u16, b: &[Backend], extra: &str, ready_a: bool) -> String {
    let ep = |i: usize, zone: &str, ready: bool| {
        format!(
            "      - {{address: {}, zone: {zone}, ready: {ready}}}\n",
            b[i].addr.ip()
        )
    };
    format!(
        "services:\n  - host: {CATALOG}\n    ports: [{{port: 80, targetPort: {port}}}]\n{extra}    endpoints:\n{}{}{}",
        ep(0, "zone-a", ready_a),
        ep(1, "zone-a", ready_a),
        ep(2, "zone-b", true)
    )
}

#[tokio::test]
async fn the_gateways_zone_serves_while_it_can_then_the_others() {
    let (b, port) = backends(&["a1", "a2", "b1"]).await;
    let prefer = "    traffic_distribution: PreferClose\n";
    let gw = gateway_with(&zoned_yaml(port, &b, prefer, true), |c| {
        c.zone = Some(Arc::from("zone-a"));
    })
    .await;
    // Both endpoints of zone-a, never zone-b's.
    assert_eq!(served(gw.listen, 30).await, set(&["a1", "a2"]));
    let spills = || async {
        let (_, m) = http_get(gw.admin, "/metrics").await;
        metric(&m, "gateway_upstream_zone_spills_total")
    };
    assert_eq!(spills().await, 0.0);
    let (_, routes) = http_get(gw.admin, "/debug/routes").await;
    let v: Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(v["routes"][0]["prefer_zone"], "zone-a");
    let zones: Vec<&str> = v["routes"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["zone"].as_str().unwrap())
        .collect();
    assert_eq!(zones, ["zone-a", "zone-a", "zone-b"]);

    // One of zone-a down: the other takes every call (a refused connect is retried there
    // first).
    b[0].stop();
    assert_eq!(served(gw.listen, 20).await, set(&["a2"]));
    assert_eq!(spills().await, 0.0);
    // Both down: zone-b's endpoint, with no call failing; each of those dials counted.
    b[1].stop();
    assert_eq!(served(gw.listen, 20).await, set(&["b1"]));
    assert_eq!(spills().await, 20.0);
    assert_eq!(rejected(gw.admin, "connect_failed").await, 0.0);

    // Not ready in zone-a (a reload): zone-b's at once, no connect attempted in zone-a.
    let (b2, port2) = backends(&["a1", "a2", "b1"]).await;
    gw.write_endpoints(&zoned_yaml(port2, &b2, prefer, false));
    gw.wait_generation(2).await;
    assert_eq!(served(gw.listen, 10).await, set(&["b1"]));
    assert_eq!(b2[0].accepted() + b2[1].accepted(), 0);
}

/// Outlier detection ejects at most half of a service: the other dead endpoints of a zone
/// stay candidates. A connection's last attempt after a failed one leaves the zone, so
/// none fails for them, even with two attempts.
#[tokio::test]
async fn a_zone_whose_endpoints_all_fail_costs_a_connection_only_its_other_attempts() {
    let (b, port) = backends(&["b1"]).await;
    let mut yaml = format!(
        "services:\n  - host: {CATALOG}\n    ports: [{{port: 80, targetPort: {port}}}]\n    traffic_distribution: PreferClose\n    endpoints:\n      - {{address: {}, zone: zone-b}}\n",
        b[0].addr.ip()
    );
    for i in 7..=9u8 {
        let dead = refused_port([127, 0, 0, i].into(), port).await;
        yaml.push_str(&format!(
            "      - {{address: {}, zone: zone-a}}\n",
            dead.ip()
        ));
    }
    let gw = gateway_with(&yaml, |c| {
        c.zone = Some(Arc::from("zone-a"));
        c.connect_attempts = 2;
    })
    .await;
    assert_eq!(served(gw.listen, 40).await, set(&["b1"]));
    assert_eq!(rejected(gw.admin, "connect_failed").await, 0.0);
    let (_, m) = http_get(gw.admin, "/metrics").await;
    // At most half of the four ejected: the zone's third dead endpoint stays a candidate.
    assert!(metric(&m, "gateway_endpoint_ejections_total") <= 2.0);
}

#[tokio::test]
async fn no_preference_without_the_services_ask_or_the_gateways_zone() {
    let (b, port) = backends(&["a1", "a2", "b1"]).await;
    let all = set(&["a1", "a2", "b1"]);
    // The gateway knows its zone; the service does not ask.
    let gw = gateway_with(&zoned_yaml(port, &b, "", true), |c| {
        c.zone = Some(Arc::from("zone-a"));
    })
    .await;
    assert_eq!(served(gw.listen, 60).await, all);
    let (_, routes) = http_get(gw.admin, "/debug/routes").await;
    assert!(!routes.contains("prefer_zone"), "{routes}");
    drop(gw);
    // The service asks; the gateway does not know its zone.
    let prefer = "    traffic_distribution: PreferSameZone\n";
    let gw = gateway(&zoned_yaml(port, &b, prefer, true)).await;
    assert_eq!(served(gw.listen, 60).await, all);
    drop(gw);
    // A zone with no endpoint of the service: all of them.
    let gw = gateway_with(&zoned_yaml(port, &b, prefer, true), |c| {
        c.zone = Some(Arc::from("zone-c"));
    })
    .await;
    assert_eq!(served(gw.listen, 60).await, all);
}

async fn api_server() -> TestApiServer {
    init();
    let mut opts = Options::new("east");
    // The backends listen on 127.0.0.x; a real API server would refuse these slices.
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.store().create(namespace_json("shop")).unwrap();
    api.store().create(namespace_json("istio-system")).unwrap();
    // The pods `zoned_slice` names, injected: only a sidecar's endpoint takes 15443.
    for i in 0..4 {
        let pod = k8s::sidecar_pod("shop", &format!("p{i}"), &[]);
        api.store().create(pod).unwrap();
    }
    api
}

/// The catalog's Service in `shop` (port `http` 80) with this `trafficDistribution`.
fn catalog_service(traffic_distribution: &str) -> Value {
    let port = k8s::ServicePort {
        name: "http",
        port: 80,
        target_port: 9080,
    };
    let mut svc = k8s::service("shop", "catalog", &[port]);
    svc["spec"]["trafficDistribution"] = json!(traffic_distribution);
    svc
}

/// A slice of `svc` listing (address, zone) endpoints, ready, port `http` on `port`.
fn zoned_slice(ns: &str, name: &str, svc: &str, port: u16, eps: &[(IpAddr, &str)]) -> Value {
    let list: Vec<k8s::Endpoint> = eps
        .iter()
        .map(|&(address, _)| k8s::Endpoint {
            address,
            ready: true,
            pod: "p",
        })
        .collect();
    let mut s = k8s::endpoint_slice(ns, name, svc, ("http", port), "test", &list);
    for (i, (_, zone)) in eps.iter().enumerate() {
        s["endpoints"][i]["zone"] = json!(zone);
        s["endpoints"][i]["targetRef"]["name"] = json!(format!("p{i}"));
    }
    s
}

#[tokio::test]
async fn in_kubernetes_the_zone_is_learned_from_the_gateways_own_endpoint() {
    let api = api_server().await;
    let (b, port) = backends(&["a1", "a2", "b1"]).await;
    let st = api.store();
    st.create(catalog_service("PreferClose")).unwrap();
    let eps = [
        (b[0].addr.ip(), "zone-a"),
        (b[1].addr.ip(), "zone-a"),
        (b[2].addr.ip(), "zone-b"),
    ];
    st.create(zoned_slice("shop", "catalog-1", "catalog", port, &eps))
        .unwrap();
    // The gateway's own Service lists its pod (127.0.0.9) in zone-b.
    let gw_ip: IpAddr = [127, 0, 0, 9].into();
    st.create(k8s::service(
        "istio-system",
        "eastwest",
        &[k8s::ServicePort {
            name: "http",
            port: 15443,
            target_port: 15443,
        }],
    ))
    .unwrap();
    let own = zoned_slice(
        "istio-system",
        "eastwest-1",
        "eastwest",
        15443,
        &[(gw_ip, "zone-b")],
    );
    st.create(own).unwrap();

    let (_dir, mut cfg) = kube_test_config(&api.kubeconfig("east"), |o| o.pod_ip = Some(gw_ip));
    cfg.drain_grace = Duration::from_millis(50);
    cfg.drain_timeout = Duration::from_secs(1);
    let bound = app::build(cfg).await.unwrap();
    let (listen, admin) = (bound.listen_addr, bound.admin_addr);
    eventually("gateway ready", WAIT, || async move {
        http_get(admin, "/healthz/ready").await.0 == 200
    })
    .await;
    let sni = sni(80, "", "catalog.shop.svc.cluster.local");
    let only = |want: &'static [&'static str]| {
        let sni = sni.clone();
        move || {
            let sni = sni.clone();
            async move {
                let mut seen = BTreeSet::new();
                for _ in 0..20 {
                    match call(listen, &sni).await {
                        Ok(line) => seen.insert(line.split(' ').next().unwrap().to_string()),
                        Err(_) => return false,
                    };
                }
                seen == set(want)
            }
        }
    };
    // zone-b: b1 alone.
    eventually("served in zone-b", WAIT, only(&["b1"])).await;
    let (_, routes) = http_get(admin, "/debug/routes?host=catalog").await;
    let v: Value = serde_json::from_str(&routes).unwrap();
    assert_eq!(v["routes"][0]["prefer_zone"], "zone-b", "{routes}");

    // Istio's annotation instead of the field (its case ignored): the same.
    let get = || st.get("v1", "Service", Some("shop"), "catalog").unwrap();
    let mut s = get();
    s["spec"]
        .as_object_mut()
        .unwrap()
        .remove("trafficDistribution");
    s["metadata"]["annotations"] =
        json!({"networking.istio.io/traffic-distribution": "preferclose"});
    st.apply(s).unwrap();
    eventually("annotation read", WAIT, only(&["b1"])).await;
    // No slice lists the gateway any more (its Service re-created, say): the zone is kept.
    let generation = || bound.routes.load().map_or(0, |t| t.generation);
    let before = generation();
    st.delete(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some("istio-system"),
        "eastwest-1",
    )
    .unwrap();
    eventually("table rebuilt", WAIT, || async { generation() > before }).await;
    assert!(only(&["b1"])().await, "the zone kept");
    // Listed again in another zone (a test's liberty: a pod never moves): a1 and a2.
    let own = zoned_slice(
        "istio-system",
        "eastwest-2",
        "eastwest",
        15443,
        &[(gw_ip, "zone-a")],
    );
    st.create(own).unwrap();
    eventually("served in zone-a", WAIT, only(&["a1", "a2"])).await;
    // No zone preference asked: everyone.
    let mut s = get();
    s["metadata"].as_object_mut().unwrap().remove("annotations");
    st.apply(s).unwrap();
    eventually("no preference", WAIT, only(&["a1", "a2", "b1"])).await;
    drop(bound);
}

/// The test server refuses what the real one refuses: a `trafficDistribution` outside the
/// supported values is a 422, and nothing is stored.
#[tokio::test]
async fn the_api_test_server_refuses_an_unknown_traffic_distribution() {
    let api = api_server().await;
    let err = api
        .store()
        .create(catalog_service("Nearby"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spec.trafficDistribution: Unsupported value: \"Nearby\""),
        "{err}"
    );
    assert!(
        api.store()
            .get("v1", "Service", Some("shop"), "catalog")
            .is_none()
    );
}

/// A DestinationRule with `outlierDetection` turns on Istio's locality failover (the mesh's
/// default): the gateway's zone serves while its endpoints are healthy; with one of its two
/// ejected, Envoy's priority load keeps 70 % there and sends 30 % to the other zone. With
/// `localityLbSetting.enabled: false`, no zone is preferred.
#[tokio::test]
async fn a_rules_outlier_detection_turns_on_locality_failover() {
    init();
    let mut opts = Options::new("east");
    opts.store.allow_loopback_endpoint_addresses = true;
    opts.destination_rule_crd = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    let st = api.store();
    st.create(namespace_json("shop")).unwrap();
    for i in 0..3 {
        st.create(k8s::sidecar_pod("shop", &format!("p{i}"), &[]))
            .unwrap();
    }
    let (b, port) = backends(&["a1", "a2", "b1"]).await;
    let svc_port = k8s::ServicePort {
        name: "http",
        port: 80,
        target_port: port,
    };
    st.create(k8s::service("shop", "catalog", &[svc_port]))
        .unwrap();
    let eps = [
        (b[0].addr.ip(), "zone-a"),
        (b[1].addr.ip(), "zone-a"),
        (b[2].addr.ip(), "zone-b"),
    ];
    st.create(zoned_slice("shop", "catalog-1", "catalog", port, &eps))
        .unwrap();
    let od =
        json!({"consecutive5xxErrors": 1, "maxEjectionPercent": 100, "baseEjectionTime": "1h"});
    let rule = |policy: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "catalog", "namespace": "shop"},
            "spec": {"host": "catalog", "trafficPolicy": policy}})
    };
    st.create(rule(json!({"outlierDetection": od}))).unwrap();
    let (_dir, mut cfg) = kube_test_config(&api.kubeconfig("east"), |_| {});
    cfg.zone = Some(Arc::from("zone-a"));
    let bound = app::build(cfg).await.unwrap();
    let (listen, admin) = (bound.listen_addr, bound.admin_addr);
    let failover = || async move {
        let (_, body) = http_get(admin, "/debug/routes?host=catalog.").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        let r = &v["routes"][0];
        (r["prefer_zone"].clone(), r["locality_failover"].clone())
    };
    eventually("the rule's failover applied", WAIT, || async move {
        failover().await == (json!("zone-a"), json!(true))
    })
    .await;
    let shop = sni(80, "", "catalog.shop.svc.cluster.local");
    let mut first = BTreeSet::new();
    for _ in 0..30 {
        first.insert(served_by(listen, &shop).await);
    }
    assert_eq!(first, set(&["a1", "a2"]));

    // a1 stops: ejected at its first failure, its connection retried. Zone-a's health is
    // then 1.4 × 1/2 = 70 %: about 30 % of connections go to zone-b first.
    b[0].stop();
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for _ in 0..100 {
        let by = served_by(listen, &sni(80, "", "catalog.shop.svc.cluster.local")).await;
        *counts.entry(by).or_default() += 1;
    }
    eprintln!("100 connections with a1 ejected: {counts:?}");
    let to_b = counts.get("b1").copied().unwrap_or(0);
    assert!(
        (12..=50).contains(&to_b),
        "{counts:?}: about 30 of 100 to zone-b"
    );
    assert_eq!(counts.get("a1").copied().unwrap_or(0), 0, "{counts:?}");

    // Locality failover off: no zone preferred.
    let off =
        json!({"outlierDetection": od, "loadBalancer": {"localityLbSetting": {"enabled": false}}});
    st.apply(rule(off)).unwrap();
    eventually("the failover off", WAIT, || async move {
        failover().await == (Value::Null, Value::Null)
    })
    .await;
    drop(bound);
}
