//! meshctl against an overloaded or failing API server (the TEST SERVER's injected faults):
//! a 429 is retried after its `Retry-After` and said so, a persistent outage fails within a
//! bounded time with what was changed and how to resume.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::runs::meshctl_within;
use common::{Mesh, mesh, text};
use k8s_test_server::{Fault, FaultRule, TestApiServer};

use serde_json::json;

/// A token of ServiceAccount `default/ops`, bound to `cluster-admin` but not in
/// `system:masters` (which API Priority and Fairness exempts), as most real users are.
async fn ops_token(s: &TestApiServer) -> String {
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "ops", "namespace": "default"}}))
        .unwrap();
    s.store()
        .create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "ops-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "ops", "namespace": "default"}]}))
        .unwrap();
    let admin = common::client_from_yaml(&s.kubeconfig("admin")).await;
    testkit::kube_client::service_account_token(&admin, "default", "ops", &[], None).await
}

/// Rewrites the mesh's kubeconfig so that both contexts use the `ops` tokens.
async fn use_ops_users(m: &Mesh) {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut users = Vec::new();
    for (n, s) in [("west", &m.west), ("east", &m.east)] {
        users.push(json!({"name": n, "user": {"token": ops_token(s).await}}));
    }
    let servers = [("west", &m.west), ("east", &m.east)];
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "west",
        "clusters": servers.iter().map(|(n, s)| json!({"name": n, "cluster": {"server": s.url(), "certificate-authority-data": b64(s.ca_pem())}})).collect::<Vec<_>>(),
        "contexts": servers.iter().map(|(n, _)| json!({"name": n, "context": {"cluster": n, "user": n}})).collect::<Vec<_>>(),
        "users": users,
    });
    std::fs::write(&m.kubeconfig, serde_yaml::to_string(&doc).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_retried_after_its_retry_after_and_the_user_is_told() {
    let m = mesh().await;
    use_ops_users(&m).await;
    let rule = FaultRule::new(Fault::TooManyRequests { retry_after: 1 })
        .verb("patch")
        .resource("secrets")
        .times(2);
    m.west.faults().inject(rule);
    let (out, took) = meshctl_within(Duration::from_secs(60), &m.join_args(&[])).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(m.west.faults().injected(), 2);
    assert_eq!(
        all.matches("answered 429 Too Many Requests").count(),
        2,
        "each retry is announced:\n{all}"
    );
    assert!(all.contains("retrying in 1.0s (retry 1 of 4)"), "{all}");
    assert!(
        took >= Duration::from_secs(2),
        "Retry-After honoured: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_outage_fails_in_bounded_time_with_nothing_changed() {
    let m = mesh().await;
    // East's gateway Deployment cannot be written. join's preflight dry-runs every write (a
    // server-side apply with dryRun=All, cmd/join/preflight.rs `dry_run_writes`), which
    // meets the outage, retries, and stops join before its first change: the real write is
    // never tried, so the outage costs one retry budget, not two, and no cluster is left
    // half joined. (A failure after writing began, naming what was changed, is
    // interrupted.rs `join_ambient_lists_the_announcements_made_and_a_rerun_completes`.)
    let rule = FaultRule::new(Fault::Unavailable)
        .verb("patch")
        .resource("deployments");
    m.east.faults().inject(rule);
    let (out, took) = meshctl_within(Duration::from_secs(90), &m.join_args(&[])).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(30), "bounded: {took:?}\n{all}");
    assert_eq!(
        m.east.faults().injected(),
        5,
        "preflight's dry run, one try and 4 retries, and no write:\n{all}"
    );
    for want in [
        "503 ServiceUnavailable",
        "try again later",
        "did not take up the server-side dry run of Deployment istio-system/istio-eastwestgateway",
        "Nothing was changed",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(!all.contains("interrupted after these changes"), "{all}");
    // Resuming once the server is well completes the join.
    m.east.faults().clear();
    let (out, _) = meshctl_within(Duration::from_secs(60), &m.join_args(&[])).await;
    assert!(out.status.success(), "{}", text(&out));
}

/// Retry notices go to stderr in every output format: a dry run's `-o json` plan on stdout
/// stays one document a script can parse while the notices are shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_notices_leave_json_output_parseable() {
    let m = mesh().await;
    use_ops_users(&m).await;
    let rule = FaultRule::new(Fault::TooManyRequests { retry_after: 1 })
        .verb("get")
        .times(1);
    m.west.faults().inject(rule);
    let (out, _) = meshctl_within(
        Duration::from_secs(60),
        &m.join_args(&["--dry-run", "-o", "json"]),
    )
    .await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert_eq!(m.west.faults().injected(), 1, "{all}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("answered 429 Too Many Requests"), "{all}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{all}"));
    assert!(plan.is_object() || plan.is_array(), "{plan}");
}
