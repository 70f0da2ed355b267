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
