//! Every reader service account gets its own ClusterRole and ClusterRoleBinding, so making a
//! remote secret for one never revokes or widens another's access; a reader that lost its
//! binding is told so by `check` (not that its token is wrong); names derived from the
//! service account that Kubernetes would refuse are usage errors before any write.
//! Real meshctl processes against TEST API servers.

mod common;

use common::*;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use testkit::kube_client::self_access;

const RBAC: &str = "rbac.authorization.k8s.io/v1";

fn binding(s: &k8s_test_server::TestApiServer, name: &str) -> Option<Value> {
    s.store().get(RBAC, "ClusterRoleBinding", None, name)
}

fn subjects(s: &k8s_test_server::TestApiServer, name: &str) -> Value {
    binding(s, name).unwrap_or_else(|| panic!("no ClusterRoleBinding {name}"))["subjects"].clone()
}

fn sa_subject(sa: &str) -> Value {
    json!([{"kind": "ServiceAccount", "name": sa, "namespace": "istio-system"}])
}

/// Whether the holder of `kubeconfig` may `verb` `resource` cluster-wide.
async fn may(kubeconfig: &str, verb: &str, resource: &str) -> bool {
    let client = client_from_yaml(kubeconfig).await;
    self_access(&client, json!({"verb": verb, "resource": resource})).await
}

fn status<'a>(items: &'a [Value], check: &str) -> &'a Value {
    &item(items, "secret for west in east", check)["status"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_for_another_service_account_leaves_the_first_bound() {
    let m = joined_ready_mesh().await;
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(
        (code, status(&items, "kubeconfig works")),
        (0, &json!("pass"))
    );

    // The auditor's command: a second remote secret for west with another account.
    let out = m
        .ok(&create_remote_secret_args(
            m.kc(),
            "west",
            "w2",
            &["--allow-loopback-server", "--service-account", "other-sa"],
        ))
        .await;
    assert_eq!(
        subjects(&m.west, "meshctl-istio-reader-istio-system"),
        sa_subject("istio-reader-service-account"),
        "the default reader's binding is untouched"
    );
    assert_eq!(
        subjects(&m.west, "meshctl-istio-reader-istio-system.other-sa"),
        sa_subject("other-sa")
    );
    // Both readers work: the one join stored in east, and the new one.
    let (code, items) = check_json(m.kc(), &[], false).await;
    for check in ["kubeconfig works", "reader permissions"] {
        assert_eq!(status(&items, check), "pass", "{check}: {items:?}");
    }
    assert_eq!(code, 0);
    let w2 = client_from_yaml(&printed_kubeconfig(&out, "w2")).await;
    Api::<Service>::all(w2)
        .list(&ListParams::default())
        .await
        .expect("the second reader lists services");

    // unjoin removes every reader's role and binding, the shared name's and the new one's.
    m.ok(&m.unjoin_args(&[])).await;
    for kind in ["ClusterRole", "ClusterRoleBinding"] {
        let left: Vec<Value> = m
            .west
            .store()
            .list(RBAC, kind, None)
            .into_iter()
            .filter(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("meshctl-istio-reader-")
            })
            .collect();
        assert!(left.is_empty(), "{kind} left after unjoin: {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_reads_granted_to_one_reader_neither_reach_nor_leave_another() {
    let m = mesh().await;
    let create = |extra: &[&'static str]| remote_secret_args(m.kc(), extra);
    let default = printed_kubeconfig(&m.ok(&create(&[])).await, "west");
    let other = printed_kubeconfig(
        &m.ok(&create(&[
            "--service-account",
            "other-sa",
            "--reader-allow-secrets",
        ]))
        .await,
        "west",
    );
    assert!(may(&other, "list", "secrets").await);
    assert!(
        !may(&default, "list", "secrets").await,
        "--reader-allow-secrets for other-sa gave the default reader Secrets"
    );
    // Making the default reader's secret again (no Secrets) leaves other-sa's grant alone.
    m.ok(&create(&[])).await;
    assert!(may(&other, "list", "secrets").await);
    assert!(may(&default, "list", "services").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_lost_its_binding_is_told_so_not_that_its_token_is_wrong() {
    let m = joined_ready_mesh().await;
    m.west
        .store()
        .delete(
            RBAC,
            "ClusterRoleBinding",
            None,
            "meshctl-istio-reader-istio-system",
        )
        .unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 1);
    let i = item(&items, "secret for west in east", "kubeconfig works");
    assert_eq!(i["status"], "fail");
    assert!(i["detail"].as_str().unwrap().contains("403"), "{i}");
    let hint = i["hint"].as_str().unwrap();
    assert!(
        hint.contains("service account istio-system/istio-reader-service-account lacks permission")
            && hint.contains("ClusterRoleBinding meshctl-istio-reader-istio-system ")
            && !hint.contains("expired"),
        "{hint}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_too_long_for_its_names_is_a_usage_error_and_changes_nothing() {
    let m = mesh().await;
    let before = settled_snapshot(&m.west).await;
    // 230 characters: a valid ServiceAccount name, but its token Secret
    // (<sa>-istio-remote-secret-token) and ClusterRoleBinding names would pass 253.
    let sa: String = (0..230)
        .map(|i| if i % 50 == 49 { '.' } else { 'a' })
        .collect();
    let t = usage_error(&remote_secret_args(m.kc(), &["--service-account", &sa])).await;
    assert!(t.contains("is too long") && t.contains("at most"), "{t}");
    assert_eq!(settled_snapshot(&m.west).await, before, "{t}");
}
