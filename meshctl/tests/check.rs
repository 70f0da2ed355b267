//! `meshctl check` on a joined pair of TEST API servers, then on each broken setup: the
//! failing item, its hint, and a non-zero exit.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// A mesh joined under cluster IDs `west-cluster` and `east-cluster` (bundle directories
/// named for them), gateways ready.
async fn joined_with_cluster_ids() -> Mesh {
    let m = mesh().await;
    for c in ["west", "east"] {
        std::fs::rename(m.certs.join(c), m.certs.join(format!("{c}-cluster"))).unwrap();
    }
    m.join(&[
        "--cluster-name",
        "west=west-cluster",
        "--cluster-name",
        "east=east-cluster",
    ])
    .await;
    m.make_gateways_ready();
    m
}

/// Runs `meshctl check -o json` (loopback test servers allowed unless `strict`).
async fn check(m: &Mesh, extra: &[&str], strict: bool) -> (i32, Vec<Value>) {
    check_json(m.kc(), extra, strict).await
}

/// The text checklist of `meshctl check` (stdout and stderr), whatever its exit code.
async fn check_text(kubeconfig: &str) -> String {
    text(&meshctl(&check_args(kubeconfig, &[])).await)
}

/// Asserts exit 1 and that exactly the named item failed with a hint containing `hint`.
fn assert_fails(code: i32, items: &[Value], scope: &str, name: &str, hint: &str) -> String {
    assert_eq!(code, 1, "{}", serde_json::to_string_pretty(items).unwrap());
    let i = item(items, scope, name);
    assert_eq!(i["status"], "fail", "{i}");
    let h = i["hint"].as_str().unwrap_or_else(|| panic!("no hint: {i}"));
    assert!(h.contains(hint), "hint {h:?} lacks {hint:?}");
    i["detail"].as_str().unwrap().to_string()
}

fn edit_remote_token(s: &k8s_test_server::TestApiServer, name: &str, key: &str, token: &str) {
    let mut sec = secret(s, name).unwrap();
    let yaml = stored_kubeconfig(&sec, key);
    let mut k: Value = serde_yaml::from_str(&yaml).unwrap();
    k["users"][0]["user"]["token"] = json!(token);
    sec["data"][key] =
        json!(base64::engine::general_purpose::STANDARD.encode(serde_yaml::to_string(&k).unwrap()));
    s.store().apply(sec).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_on_a_joined_pair() {
    let m = joined_ready_mesh().await;
    let (code, items) = check(&m, &[], false).await;
    let bad: Vec<&Value> = items.iter().filter(|i| i["status"] == "fail").collect();
    assert_eq!(code, 0, "{bad:?}");
    for scope in ["cluster west", "cluster east"] {
        for name in [
            "API server reachable",
            "cacerts present and valid",
            "network label",
            "gateway Service has an external address",
            "gateway pods ready",
        ] {
            assert_eq!(item(&items, scope, name)["status"], "pass");
        }
    }
    for scope in ["secret for west in east", "secret for east in west"] {
        for name in [
            "remote secret present",
            "no loopback server address",
            "token expiry",
            "reader account",
            "kubeconfig works",
            "reader permissions",
        ] {
            assert_eq!(
                item(&items, scope, name)["status"],
                "pass",
                "{scope} {name}"
            );
        }
    }
    let d = item(&items, "secret for west in east", "reader permissions")["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        d.contains("list/watch") && d.contains("gateways.gateway.networking.k8s.io"),
        "{d}"
    );
    for name in [
        "roots identical across clusters",
        "network labels distinct",
        "cluster names unique",
    ] {
        assert_eq!(item(&items, "mesh", name)["status"], "pass");
    }
    // The human checklist.
    let out = m.ok(&check_args(m.kc(), &[])).await;
    assert!(
        out.contains("cluster west\n  ✔ API server reachable") && !out.contains('✘'),
        "{out}"
    );
    assert!(out.contains("0 failed"), "{out}");
    // The cluster names recorded by join are found without flags.
    assert!(
        item(&items, "mesh", "cluster names unique")["detail"]
            .as_str()
            .unwrap()
            .contains("west, east")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_missing_cacerts_and_different_roots() {
    let m = joined_ready_mesh().await;
    m.east
        .store()
        .delete("v1", "Secret", Some("istio-system"), "cacerts")
        .unwrap();
    let (code, items) = check(&m, &[], false).await;
    assert_fails(
        code,
        &items,
        "cluster east",
        "cacerts present and valid",
        "meshctl cacerts apply certs/east --context east",
    );
    assert_fails(
        code,
        &items,
        "mesh",
        "roots identical across clusters",
        "meshctl cacerts apply",
    );
    // A bundle from another root.
    let other = m.dir.path().join("other");
    m.ok(&["certs", "init", "--clusters", "east", "--out", p(&other)])
        .await;
    m.ok(&cacerts_apply_args(
        m.kc(),
        p(&other.join("east")),
        "east",
        &[],
    ))
    .await;
    let (code, items) = check(&m, &[], false).await;
    assert_eq!(
        item(&items, "cluster east", "cacerts present and valid")["status"],
        "pass"
    );
    let d = assert_fails(
        code,
        &items,
        "mesh",
        "roots identical across clusters",
        "meshctl certs init",
    );
    assert!(d.contains("east"), "{d}");
    // Text output marks it and carries the hint.
    let t = check_text(m.kc()).await;
    assert!(
        t.contains("✘ roots identical across clusters") && t.contains("hint: "),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_missing_and_duplicate_network_labels() {
    let m = joined_ready_mesh().await;
    let mut ns = istio_namespace(&m.east);
    ns["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("topology.istio.io/network");
    m.east.store().apply(ns.clone()).unwrap();
    let (code, items) = check(&m, &[], false).await;
    assert_fails(
        code,
        &items,
        "cluster east",
        "network label",
        "meshctl label-network",
    );
    ns["metadata"]["labels"]["topology.istio.io/network"] = json!("west-network");
    m.east.store().apply(ns).unwrap();
    let mut svc = gateway_service(&m.east);
    svc["metadata"]["labels"]["topology.istio.io/network"] = json!("west-network");
    m.east.store().apply(svc).unwrap();
    let (code, items) = check(&m, &[], false).await;
    assert_eq!(
        item(&items, "cluster east", "network label")["status"],
        "pass"
    );
    assert_fails(
        code,
        &items,
        "mesh",
        "network labels distinct",
        "its own network",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_a_pending_load_balancer_and_unready_gateway_pods() {
    let m = joined_ready_mesh().await;
    set_lb(&m.east, None);
    let (code, items) = check(&m, &[], false).await;
    let d = assert_fails(
        code,
        &items,
        "cluster east",
        "gateway Service has an external address",
        "MetalLB",
    );
    assert!(d.contains("pending"), "{d}");
    set_lb(&m.east, Some("172.18.0.20"));
    gateway_pod(&m.east, "gw-1", false);
    let (code, items) = check(&m, &[], false).await;
    let d = assert_fails(
        code,
        &items,
        "cluster east",
        "gateway pods ready",
        "describe pods -l app=istio-eastwestgateway",
    );
    assert!(d.contains("0 of 1"), "{d}");
    m.east
        .store()
        .delete("v1", "Pod", Some("istio-system"), "gw-1")
        .unwrap();
    let (code, items) = check(&m, &[], false).await;
    assert_fails(
        code,
        &items,
        "cluster east",
        "gateway pods ready",
        "kubectl",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_a_missing_remote_secret_and_a_bad_token() {
    let m = joined_ready_mesh().await;
    edit_remote_token(
        &m.west,
        "istio-remote-secret-east",
        "east",
        "not-a-valid-token",
    );
    m.east
        .store()
        .delete(
            "v1",
            "Secret",
            Some("istio-system"),
            "istio-remote-secret-west",
        )
        .unwrap();
    let (code, items) = check(&m, &[], false).await;
    assert_fails(
        code,
        &items,
        "secret for west in east",
        "remote secret present",
        "meshctl join",
    );
    let d = assert_fails(
        code,
        &items,
        "secret for east in west",
        "kubeconfig works",
        "re-run meshctl join",
    );
    assert!(d.contains("401") || d.contains("Unauthorized"), "{d}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_loopback_servers_expired_tokens_and_duplicate_cluster_names() {
    let m = joined_ready_mesh().await;
    let (code, items) = check(&m, &[], true).await;
    assert_fails(
        code,
        &items,
        "secret for west in east",
        "no loopback server address",
        "--server west=https://<control-plane-address>:6443",
    );
    // An expired JWT.
    let b = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let expired = format!(
        "{}.{}.sig",
        b(r#"{"alg":"RS256"}"#),
        b(
            r#"{"exp":1000000000,"sub":"system:serviceaccount:istio-system:istio-reader-service-account"}"#
        )
    );
    edit_remote_token(&m.east, "istio-remote-secret-west", "west", &expired);
    let (code, items) = check(&m, &[], false).await;
    let d = assert_fails(
        code,
        &items,
        "secret for west in east",
        "token expiry",
        "issue a new token",
    );
    assert!(d.contains("expired"), "{d}");
    // Same cluster name twice.
    let (code, items) = check(&m, &["--cluster-name", "east=west"], false).await;
    assert_fails(
        code,
        &items,
        "mesh",
        "cluster names unique",
        "--cluster-name",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warns_of_a_token_request_token_that_expires_within_a_day() {
    let m = mesh().await;
    m.join(&["--token-ttl", "1h"]).await;
    m.make_gateways_ready();
    let (code, items) = check(&m, &[], false).await;
    assert_eq!(code, 0);
    let i = item(&items, "secret for west in east", "token expiry");
    assert_eq!(i["status"], "warn", "{i}");
    assert!(i["detail"].as_str().unwrap().contains("expires in"), "{i}");
    // Past the expiry on the server's clock, the stored kubeconfig no longer works.
    m.west.clock().advance(std::time::Duration::from_secs(3601));
    let (code, items) = check(&m, &[], false).await;
    assert_fails(
        code,
        &items,
        "secret for west in east",
        "kubeconfig works",
        "meshctl join",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_a_reader_role_without_a_permission_istiod_needs() {
    let m = joined_ready_mesh().await;
    // Someone trims east's reader role: no Gateway API gateways, no watch on pods.
    let mut role = reader_role(&m.east);
    let rules: Vec<Value> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["apiGroups"][0] != "gateway.networking.k8s.io")
        .map(|r| {
            let mut r = r.clone();
            if r["resources"][0] == "pods" {
                r["verbs"] = json!(["list"]);
            }
            r
        })
        .collect();
    role["rules"] = json!(rules);
    m.east.store().apply(role).unwrap();
    let (code, items) = check(&m, &[], false).await;
    let d = assert_fails(
        code,
        &items,
        "secret for east in west",
        "reader permissions",
        "re-run meshctl join",
    );
    for missing in [
        "list gateways.gateway.networking.k8s.io",
        "watch gateways.gateway.networking.k8s.io",
        "watch pods",
    ] {
        assert!(d.contains(missing), "{missing} not in {d}");
    }
    assert!(!d.contains("list pods"), "{d}");
    // West's reader is untouched.
    assert_eq!(
        item(&items, "secret for west in east", "reader permissions")["status"],
        "pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_cluster_fails_once_and_skips_what_needs_its_data() {
    let m = joined_with_cluster_ids().await;
    let Mesh {
        west,
        east,
        dir: _dir,
        kubeconfig,
        ..
    } = m;
    let _stopped = east.stop().await;
    let (code, items) = check_json(p(&kubeconfig), &[], false).await;
    assert_eq!(code, 1);
    let failed: Vec<&Value> = items.iter().filter(|i| i["status"] == "fail").collect();
    assert_eq!(failed.len(), 1, "only the reachability fails: {failed:#?}");
    assert_eq!(failed[0]["scope"], "cluster east");
    assert_eq!(failed[0]["check"], "API server reachable");
    // Nothing suggests registering east again (its secret exists under its real ID).
    let all = serde_json::to_string(&items).unwrap();
    assert!(
        !all.contains("create-remote-secret --context east"),
        "{all}"
    );
    assert!(secret(&west, "istio-remote-secret-east-cluster").is_some());
    for (scope, check) in [
        ("mesh", "roots identical across clusters"),
        ("mesh", "network labels distinct"),
        ("mesh", "cluster names unique"),
        ("secret for east in west", "remote secret present"),
        ("secret for west-cluster in east", "remote secret present"),
        ("cluster east", "cacerts present and valid"),
        ("cluster east", "network label"),
        ("cluster east", "gateway Service has an external address"),
        ("cluster east", "gateway pods ready"),
    ] {
        let i = item(&items, scope, check);
        assert_eq!(i["status"], "skip", "{i}");
        assert!(i.get("hint").is_none(), "a skipped check has no hint: {i}");
        assert!(
            i["detail"].as_str().unwrap().contains("unreachable"),
            "the reason: {i}"
        );
    }
    // West's own checks still run.
    assert_eq!(
        item(&items, "cluster west", "cacerts present and valid")["status"],
        "pass"
    );
    // With east's cluster ID given, the secret in west is checked; what needs east is skipped.
    let (code, items) = check_json(
        p(&kubeconfig),
        &["--cluster-name", "east=east-cluster"],
        false,
    )
    .await;
    assert_eq!(code, 1);
    let scope = "secret for east-cluster in west";
    assert_eq!(
        item(&items, scope, "remote secret present")["status"],
        "pass"
    );
    assert_eq!(item(&items, scope, "token expiry")["status"], "pass");
    for check in ["kubeconfig works", "reader permissions"] {
        let i = item(&items, scope, check);
        assert_eq!(i["status"], "skip", "{i}");
    }
    // The text checklist marks skips and counts them.
    let t = check_text(p(&kubeconfig)).await;
    assert!(
        t.contains("  - roots identical across clusters: ") && t.contains(" skipped\n"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessed_cluster_id_does_not_send_the_user_to_register_the_cluster_again() {
    let m = joined_with_cluster_ids().await;
    // East was registered under its ID, but its namespace no longer records it (e.g. the
    // namespace was recreated): check can only guess the context name.
    let mut ns = istio_namespace(&m.east);
    ns["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .retain(|k, _| !k.contains("cluster"));
    m.east.store().apply(ns).unwrap();
    let (code, items) = check(&m, &[], false).await;
    let i = item(&items, "secret for east in west", "remote secret present");
    assert_eq!(code, 1);
    assert_eq!(i["status"], "fail", "{i}");
    let hint = i["hint"].as_str().unwrap();
    assert!(
        hint.starts_with("east records no cluster ID") && hint.contains("--cluster-name east=<"),
        "{hint}"
    );
    // With the ID given, all is well.
    let (code, _) = check(&m, &["--cluster-name", "east=east-cluster"], false).await;
    assert_eq!(code, 0);
}
