//! `--ip-family-policy` on the commands that install the gateway Service (`gateway install`,
//! `join`), through the real binary against TEST API servers that model Service IP families
//! as kube-apiserver does: unset, meshctl sends no policy and a patched one stays; set, the
//! Service carries it (both families on a dual-stack cluster for PreferDualStack); a policy
//! the cluster refuses (RequireDualStack on a single-stack cluster) fails with the fix before
//! anything is changed; anything but Kubernetes' three values is a usage error.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_test_server::StoreConfig;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const DUAL: &[&str] = &["IPv4", "IPv6"];
const POLICY: &str = "--ip-family-policy";

/// Two clusters with both IP families (IPv4 primary) and a certificate tree.
async fn dual_stack_mesh() -> Mesh {
    let (west, east) = servers_with(StoreConfig {
        ip_families: DUAL,
        ..StoreConfig::default()
    })
    .await;
    mesh_of(west, east).await
}

/// `meshctl gateway install` in west, plus `extra`.
fn install_args<'a>(m: &'a Mesh, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "gateway",
        "install",
        "--kubeconfig",
        m.kc(),
        "--context",
        "west",
    ];
    args.extend(["--network", "west-network"]);
    args.extend_from_slice(extra);
    args
}

/// (ipFamilyPolicy, ipFamilies, number of cluster IPs) of a Service.
fn families(svc: &Value) -> (Value, Value, usize) {
    let spec = &svc["spec"];
    let ips = spec["clusterIPs"].as_array().map_or(0, Vec::len);
    (
        spec["ipFamilyPolicy"].clone(),
        spec["ipFamilies"].clone(),
        ips,
    )
}

/// The Service in what `args` (a `-o json` manifest or dry-run plan) prints.
fn printed_service(out: &str) -> Value {
    let doc: Value = serde_json::from_str(out).unwrap();
    let items: Vec<Value> = match doc["items"].as_array() {
        Some(items) => items.clone(),
        None => doc["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| c["objects"].as_array().unwrap().clone())
            .collect(),
    };
    items
        .into_iter()
        .find(|o| o["kind"] == "Service")
        .expect("a Service printed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_sends_no_policy_and_keeps_a_patched_one() {
    let m = dual_stack_mesh().await;
    // What is applied, as printed: no policy.
    let manifest = m
        .ok(&[
            "gateway",
            "manifest",
            "--network",
            "west-network",
            "-o",
            "json",
        ])
        .await;
    assert_eq!(
        printed_service(&manifest)["spec"].get("ipFamilyPolicy"),
        None
    );
    let plan = m.ok(&install_args(&m, &["--dry-run", "-o", "json"])).await;
    assert_eq!(printed_service(&plan)["spec"].get("ipFamilyPolicy"), None);

    m.ok(&install_args(&m, &[])).await;
    assert_eq!(
        families(&gateway_service(&m.west)),
        (json!("SingleStack"), json!(["IPv4"]), 1)
    );

    // A user opts in with kubectl patch; meshctl's re-apply keeps it.
    let west = client_from_yaml(&m.west.kubeconfig("west")).await;
    let pp = PatchParams {
        field_manager: Some("kubectl-patch".into()),
        ..PatchParams::default()
    };
    Api::<Service>::namespaced(west, "istio-system")
        .patch(
            "istio-eastwestgateway",
            &pp,
            &Patch::Merge(&json!({"spec": {"ipFamilyPolicy": "PreferDualStack"}})),
        )
        .await
        .unwrap();
    let patched = gateway_service(&m.west);
    assert_eq!(
        families(&patched),
        (json!("PreferDualStack"), json!(DUAL), 2)
    );
    m.ok(&install_args(&m, &[])).await;
    let after = gateway_service(&m.west);
    assert_eq!(families(&after), families(&patched));
    assert_eq!(after["spec"]["clusterIPs"], patched["spec"]["clusterIPs"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_dual_stack_gives_two_families_and_can_be_switched() {
    let m = dual_stack_mesh().await;
    let manifest = m
        .ok(&[
            "gateway",
            "manifest",
            "--network",
            "n",
            "-o",
            "json",
            POLICY,
            "PreferDualStack",
        ])
        .await;
    assert_eq!(
        printed_service(&manifest)["spec"]["ipFamilyPolicy"],
        "PreferDualStack"
    );

    m.ok(&install_args(&m, &[POLICY, "PreferDualStack"])).await;
    let dual = gateway_service(&m.west);
    assert_eq!(families(&dual), (json!("PreferDualStack"), json!(DUAL), 2));
    // Dropping the flag later keeps the policy (an update without one keeps the old one).
    m.ok(&install_args(&m, &[])).await;
    assert_eq!(families(&gateway_service(&m.west)), families(&dual));
    // Back to one family: allowed, the primary address kept.
    m.ok(&install_args(&m, &[POLICY, "SingleStack"])).await;
    let single = gateway_service(&m.west);
    assert_eq!(
        families(&single),
        (json!("SingleStack"), json!(["IPv4"]), 1)
    );
    assert_eq!(single["spec"]["clusterIP"], dual["spec"]["clusterIP"]);
    // And to both again, required this time.
    m.ok(&install_args(&m, &[POLICY, "RequireDualStack"])).await;
    assert_eq!(
        families(&gateway_service(&m.west)),
        (json!("RequireDualStack"), json!(DUAL), 2)
    );

    // join passes it to every cluster's gateway.
    m.join(&[POLICY, "PreferDualStack"]).await;
    for s in [&m.west, &m.east] {
        assert_eq!(
            families(&gateway_service(s)),
            (json!("PreferDualStack"), json!(DUAL), 2)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_dual_stack_on_a_single_stack_cluster_fails_with_the_fix_and_changes_nothing() {
    let m = mesh().await;
    let says_the_fix = |t: &str| {
        for want in [
            "--ip-family-policy RequireDualStack",
            "context \"west\"",
            "not configured for dual-stack",
            "PreferDualStack",
            "leave the flag out",
        ] {
            assert!(t.contains(want), "{want:?} not in:\n{t}");
        }
        assert!(t.to_lowercase().contains("nothing was changed"), "{t}");
    };
    let before = m.settled_snapshots().await;
    // No istio-system yet: join, gateway install and its dry run refuse it, and write nothing.
    says_the_fix(&m.fails(&m.join_args(&[POLICY, "RequireDualStack"])).await);
    says_the_fix(
        &m.fails(&install_args(&m, &[POLICY, "RequireDualStack"]))
            .await,
    );
    let dry = install_args(&m, &[POLICY, "RequireDualStack", "--dry-run"]);
    says_the_fix(&m.fails(&dry).await);
    assert_eq!(m.settled_snapshots().await, before);

    // An installed gateway: switching it to RequireDualStack is refused the same way, and
    // the Service keeps its one family.
    m.ok(&install_args(&m, &[])).await;
    let before = settled_snapshot(&m.west).await;
    says_the_fix(
        &m.fails(&install_args(&m, &[POLICY, "RequireDualStack"]))
            .await,
    );
    assert_eq!(settled_snapshot(&m.west).await, before);
    assert_eq!(
        families(&gateway_service(&m.west)),
        (json!("SingleStack"), json!(["IPv4"]), 1)
    );
    // PreferDualStack is what works here: one family.
    m.ok(&install_args(&m, &[POLICY, "PreferDualStack"])).await;
    assert_eq!(
        families(&gateway_service(&m.west)),
        (json!("PreferDualStack"), json!(["IPv4"]), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_the_three_policies_is_a_usage_error() {
    let m = mesh().await;
    let before = m.settled_snapshots().await;
    let manifest = ["gateway", "manifest", "--network", "n", POLICY];
    for bad in ["DualStack", "singlestack", "prefer-dual-stack", ""] {
        for mut args in [
            manifest.to_vec(),
            install_args(&m, &[POLICY]),
            m.join_args(&[POLICY]),
        ] {
            args.push(bad);
            let t = usage_error(&args).await;
            assert!(
                t.contains("[possible values: SingleStack, PreferDualStack, RequireDualStack]"),
                "{args:?}:\n{t}"
            );
        }
    }
    assert_eq!(m.settled_snapshots().await, before);
}
