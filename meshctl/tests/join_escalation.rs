//! `meshctl join` with a context that may write RBAC objects but does not hold the reader
//! role's rules: a real API server refuses that role (RBAC escalation prevention), and so
//! does the TEST API server, so join's preflight must name what is missing before it
//! writes anything. Real meshctl processes against TEST API servers.

mod common;

use common::*;
use serde_json::{Value, json};

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// A ServiceAccount `default/maker` of `s` that may read and write everything join touches,
/// except that it may not list or watch Nodes (which the reader role grants), plus
/// `extra` rules; a kubeconfig user for it replaces `user` in the mesh's kubeconfig.
async fn maker_context(m: &Mesh, s: &k8s_test_server::TestApiServer, user: usize, extra: Value) {
    let all = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let mut rules = vec![
        json!({"apiGroups": [""], "resources": ["namespaces", "secrets", "serviceaccounts",
            "services", "pods", "configmaps", "endpoints", "serviceaccounts/token"], "verbs": all}),
        json!({"apiGroups": ["apps"], "resources": ["deployments"], "verbs": all}),
        json!({"apiGroups": ["policy"], "resources": ["poddisruptionbudgets"], "verbs": all}),
        json!({"apiGroups": ["autoscaling"], "resources": ["horizontalpodautoscalers"], "verbs": all}),
        json!({"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": all}),
        json!({"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": all}),
        json!({"apiGroups": ["networking.istio.io", "security.istio.io", "gateway.networking.k8s.io"],
            "resources": ["*"], "verbs": all}),
        json!({"apiGroups": ["rbac.authorization.k8s.io"], "resources":
            ["clusterroles", "clusterrolebindings", "roles", "rolebindings"], "verbs": all}),
    ];
    if !extra.is_null() {
        rules.push(extra);
    }
    let store = s.store();
    store
        .apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "maker", "namespace": "default"}}))
        .unwrap();
    store
        .apply(
            json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "maker"},
            "rules": rules}),
        )
        .unwrap();
    store
        .apply(json!({"apiVersion": RBAC, "kind": "ClusterRoleBinding", "metadata": {"name": "maker"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "maker"},
            "subjects": [{"kind": "ServiceAccount", "name": "maker", "namespace": "default"}]}))
        .unwrap();
    let admin = client_from_yaml(&s.kubeconfig(s.cluster_name())).await;
    let token =
        testkit::kube_client::service_account_token(&admin, "default", "maker", &[], Some(3600))
            .await;
    let mut kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&m.kubeconfig).unwrap()).unwrap();
    kc["users"][user]["user"]["token"] = json!(token);
    std::fs::write(&m.kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();
}

/// Fails without the preflight's grant check: join passed its preflight, changed west and
/// east, and only then got the API server's 403 for the reader ClusterRole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_names_the_reader_rules_a_context_cannot_grant_before_any_change() {
    let m = mesh().await;
    maker_context(&m, &m.east, 1, Value::Null).await;
    let before = m.settled_snapshots().await;
    let t = m.fails(&m.join_args(&[])).await;
    assert!(t.contains("context \"east\""), "{t}");
    assert!(
        t.contains("list nodes (core)") && t.contains("watch nodes (core)"),
        "{t}"
    );
    assert!(t.contains("escalate clusterroles"), "{t}");
    assert!(t.contains("Nothing was changed"), "{t}");
    assert_eq!(
        settled_snapshot(&m.west).await,
        before.0,
        "west changed: {t}"
    );
    assert_eq!(
        settled_snapshot(&m.east).await,
        before.1,
        "east changed: {t}"
    );
}

/// The other side: a context that is no cluster-admin but holds every rule join grants
/// passes the preflight, and the API server takes its roles and bindings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_a_context_holding_the_rules_it_grants_succeeds() {
    let m = mesh().await;
    let nodes = json!({"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]});
    maker_context(&m, &m.east, 1, nodes).await;
    m.join(&[]).await;
    assert!(reader_role(&m.east)["rules"].is_array());
}
