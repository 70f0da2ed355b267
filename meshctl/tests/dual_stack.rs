//! meshctl on dual-stack clusters (TEST API servers with both IP families), through the real
//! binary: the gateway Service stays on the cluster's primary family unless a user opts in,
//! a user's `PreferDualStack` survives meshctl's re-apply, and `join --ambient` announces the
//! primary family's load-balancer address when the balancer lists one per family.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_test_server::StoreConfig;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const DUAL: &[&str] = &["IPv4", "IPv6"];

/// Two dual-stack clusters (IPv4 primary) with the Gateway API, and a certificate tree.
async fn dual_stack_mesh() -> Mesh {
    let (west, east) = servers_with(StoreConfig {
        ip_families: DUAL,
        ..StoreConfig::default()
    })
    .await;
    install_gateway_api(&west);
    install_gateway_api(&east);
    mesh_of(west, east).await
}

fn families(svc: &Value) -> (Value, Value, usize) {
    let spec = &svc["spec"];
    let ips = spec["clusterIPs"].as_array().map_or(0, Vec::len);
    (
        spec["ipFamilyPolicy"].clone(),
        spec["ipFamilies"].clone(),
        ips,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_gateway_is_opt_in_and_announced_on_its_primary_family() {
    let m = dual_stack_mesh().await;
    m.ok(&m.join_args(&["--ambient"])).await;
    // meshctl leaves the policy to the cluster's default: one family, one cluster IP.
    for s in [&m.west, &m.east] {
        assert_eq!(
            families(&gateway_service(s)),
            (json!("SingleStack"), json!(["IPv4"]), 1)
        );
    }

    // A user opts east in, as `kubectl patch` does.
    let east = client_from_yaml(&m.east.kubeconfig("east")).await;
    let pp = PatchParams {
        field_manager: Some("kubectl-patch".into()),
        ..PatchParams::default()
    };
    let opt_in = json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}});
    Api::<Service>::namespaced(east, "istio-system")
        .patch("istio-eastwestgateway", &pp, &Patch::Merge(&opt_in))
        .await
        .unwrap();
    let dual = families(&gateway_service(&m.east));
    assert_eq!(dual, (json!("PreferDualStack"), json!(DUAL), 2));

    // Its load balancer lists an address per family, IPv6 first.
    let mut svc = gateway_service(&m.east);
    svc["status"] =
        json!({"loadBalancer": {"ingress": [{"ip": "2001:db8::20"}, {"ip": "172.18.0.20"}]}});
    m.east.store().apply(svc).unwrap();
    set_lb(&m.west, Some("172.18.0.10"));

    m.join(&["--ambient"]).await;
    // meshctl's re-apply keeps the user's choice ...
    assert_eq!(families(&gateway_service(&m.east)), dual);
    // ... and west's ztunnels are told east's IPv4 address, the family it had before.
    let announce = m
        .west
        .store()
        .get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            Some("istio-system"),
            "meshctl-remote-east-network",
        )
        .expect("east announced to west");
    assert_eq!(
        announce["spec"]["addresses"],
        json!([{"type": "IPAddress", "value": "172.18.0.20"}])
    );
}
