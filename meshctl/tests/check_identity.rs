//! `check` knows which cluster each context and each stored credential reaches (the UID of
//! namespace kube-system, the cluster ID istioctl uses): two contexts of one cluster are one
//! failure, not a list of hints that would relabel it or register it as its own remote; and
//! a remote secret made from the wrong context, which passed every check while istiod read the
//! wrong cluster, fails. Found by an audit session (2026-12-06).

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_secret_that_reaches_another_cluster_fails() {
    let m = joined_ready_mesh().await;
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 0);
    let ok = item(
        &items,
        "secret for east in west",
        "reaches the cluster it is for",
    );
    assert_eq!(ok["status"], "pass", "{ok}");

    // What create-remote-secret from the wrong context stores: west's own server and a
    // working west reader token, under east's name.
    let out = m
        .ok(&create_remote_secret_args(
            m.kc(),
            "west",
            "east",
            &["--allow-loopback-server"],
        ))
        .await;
    let wrong = printed_kubeconfig(&out, "east");
    let mut sec = secret(&m.west, "istio-remote-secret-east").unwrap();
    sec["data"]["east"] = json!(base64::engine::general_purpose::STANDARD.encode(wrong));
    m.west.store().apply(sec).unwrap();

    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 1);
    let scope = "secret for east in west";
    // Everything else still passes: only this check sees it.
    for name in [
        "remote secret present",
        "kubeconfig works",
        "reader permissions",
    ] {
        assert_eq!(item(&items, scope, name)["status"], "pass", "{name}");
    }
    let i = item(&items, scope, "reaches the cluster it is for");
    assert_eq!(i["status"], "fail", "{i}");
    let detail = i["detail"].as_str().unwrap();
    assert!(
        detail.contains("reaches the cluster it is stored in (context west) itself"),
        "{detail}"
    );
    assert!(
        i["hint"].as_str().unwrap().contains("--context east"),
        "{i}"
    );
}

/// A kubeconfig whose context `east-alias` reaches east's API server too.
fn with_alias(m: &Mesh) -> std::path::PathBuf {
    let mut k: Value = serde_yaml::from_str(&std::fs::read_to_string(m.kc()).unwrap()).unwrap();
    let alias = json!({"name": "east-alias", "context": {"cluster": "east", "user": "east"}});
    k["contexts"].as_array_mut().unwrap().push(alias);
    let path = m.dir.path().join("aliased");
    std::fs::write(&path, serde_yaml::to_string(&k).unwrap()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_contexts_of_one_cluster_are_one_failure() {
    let m = joined_ready_mesh().await;
    let kc = with_alias(&m);
    let args = [
        "check",
        "--kubeconfig",
        p(&kc),
        "--context",
        "west",
        "--context",
        "east",
        "--context",
        "east-alias",
        "--allow-loopback-server",
        "-o",
        "json",
    ];
    let out = meshctl(&args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["checks"].as_array().unwrap();
    let i = item(items, "mesh", "one cluster per context");
    assert_eq!(i["status"], "fail", "{i}");
    assert!(
        i["detail"]
            .as_str()
            .unwrap()
            .contains("contexts east and east-alias reach the same cluster"),
        "{i}"
    );
    assert!(
        i["hint"]
            .as_str()
            .unwrap()
            .contains("drop --context east-alias"),
        "{i}"
    );
    // The pairs between them are not checked (they would compare the cluster with itself).
    let pair = item(
        items,
        "secret for east in east-alias",
        "remote secret present",
    );
    assert_eq!(pair["status"], "skip", "{pair}");
    // A healthy two-context check passes it.
    let (_, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(
        item(&items, "mesh", "one cluster per context")["status"],
        "pass"
    );
}

/// A context that may read everything but Secrets (Kubernetes' `view`): that cluster's
/// objects fail to be read and the rest of the report still comes (before, the 403 ended the
/// whole run with no report, and `-o json` printed nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_that_may_not_read_secrets_fails_its_cluster_only() {
    let m = joined_ready_mesh().await;
    let store = m.east.store();
    store
        .apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "viewer", "namespace": "default"}}))
        .unwrap();
    let view = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "view-no-secrets"},
        "rules": [{"apiGroups": [""], "verbs": ["get", "list", "watch"],
            "resources": ["namespaces", "services", "pods", "nodes"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}]});
    store.apply(view).unwrap();
    store
        .apply(
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "view-no-secrets"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                "name": "view-no-secrets"},
            "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": "default"}]}),
        )
        .unwrap();
    let admin = client_from_yaml(&m.east.kubeconfig("east")).await;
    let token =
        testkit::kube_client::service_account_token(&admin, "default", "viewer", &[], Some(3600))
            .await;
    let mut kc: Value =
        serde_yaml::from_str(&kubeconfig_yaml(&[("west", &m.west), ("east", &m.east)])).unwrap();
    kc["users"][1]["user"]["token"] = json!(token);
    std::fs::write(&m.kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();

    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 1);
    let i = item(&items, "cluster east", "objects readable");
    assert_eq!(i["status"], "fail", "{i}");
    assert!(i["detail"].as_str().unwrap().contains("403"), "{i}");
    assert!(
        i["hint"]
            .as_str()
            .unwrap()
            .contains("view role excludes Secrets"),
        "{i}"
    );
    // West is still checked in full.
    assert_eq!(
        item(&items, "cluster west", "cacerts present and valid")["status"],
        "pass"
    );
}

/// A remote secret for a cluster none of the checked contexts is (one that left the mesh) is
/// named with the command that deletes it (before, it was never mentioned).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_secret_for_an_unknown_cluster_is_named() {
    let m = joined_ready_mesh().await;
    let mut sec = secret(&m.west, "istio-remote-secret-east").unwrap();
    let kubeconfig = sec["data"]["east"].clone();
    sec["metadata"] = json!({"name": "istio-remote-secret-north", "namespace": "istio-system",
        "labels": {"istio/multiCluster": "true"}});
    sec["data"] = json!({"north": kubeconfig});
    m.west.store().apply(sec).unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 0, "a warning, not a failure");
    let i = item(&items, "cluster west", "remote secrets of known clusters");
    assert_eq!(i["status"], "warn", "{i}");
    assert!(
        i["detail"]
            .as_str()
            .unwrap()
            .contains("istio-system/istio-remote-secret-north registers cluster \"north\""),
        "{i}"
    );
    assert!(
        i["hint"]
            .as_str()
            .unwrap()
            .contains("delete secret istio-remote-secret-north"),
        "{i}"
    );
}
