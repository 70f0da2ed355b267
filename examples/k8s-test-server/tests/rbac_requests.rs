//! How a request's RBAC attributes are read, as kube-apiserver reads them: a list or watch
//! that selects one name (`fieldSelector=metadata.name=<n>`) is a request for that name, so
//! `resourceNames` rules apply to it (`endpoints/request/requestinfo.go`); and a rule's
//! `pods/*` is no wildcard for subresources, only `*/<sub>` is (`ResourceMatches`).

mod common;

use common::{role_and_binding, server_with, service_account_client, status_code};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_test_server::TestApiServer;
use kube::Client;
use kube::api::{Api, ListParams, WatchParams};
use serde_json::json;

/// A server whose ServiceAccount `team/app` is granted `rules` in `team`; its client.
async fn app_with_rules(name: &str, rules: serde_json::Value) -> (TestApiServer, Client) {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "app", "namespace": "team"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": "team"}}),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "other", "namespace": "team"}}),
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}),
    ]
    .into_iter()
    .chain(role_and_binding(Some("team"), "app", rules, ("team", "app")));
    let (server, admin) = server_with(name, objects).await;
    let app = service_account_client(&server, &admin, "team", "app").await;
    (server, app)
}

/// Fails without the fix: the lists and the watch selecting `cacerts` were 403.
#[tokio::test]
async fn a_list_or_watch_of_one_name_is_allowed_by_a_rule_for_that_name() {
    let (_server, app) = app_with_rules(
        "by-name",
        json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["cacerts"],
            "verbs": ["get", "list", "watch"]}]),
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(app, "team");
    let one = secrets
        .list(&ListParams::default().fields("metadata.name=cacerts"))
        .await
        .unwrap();
    assert_eq!(one.items.len(), 1);
    secrets
        .list(&ListParams::default().fields("metadata.namespace=team,metadata.name==cacerts"))
        .await
        .unwrap();
    assert!(
        secrets
            .watch(
                &WatchParams::default()
                    .fields("metadata.name=cacerts")
                    .timeout(1),
                "0"
            )
            .await
            .is_ok()
    );
    for refused in ["", "metadata.name=other", "metadata.name!=other"] {
        let err = secrets
            .list(&ListParams::default().fields(refused))
            .await
            .unwrap_err();
        assert_eq!(status_code(&err), Some(403), "fieldSelector {refused:?}");
    }
    let err = secrets
        .watch(
            &WatchParams::default()
                .fields("metadata.name=other")
                .timeout(1),
            "0",
        )
        .await
        .err()
        .expect("a watch of another Secret is refused");
    assert_eq!(status_code(&err), Some(403));
}

/// Fails without the fix: `pods/*` allowed `pods/status`.
#[tokio::test]
async fn a_resource_slash_star_rule_is_no_subresource_wildcard() {
    let (_server, app) = app_with_rules(
        "subresources",
        json!([{"apiGroups": [""], "resources": ["pods/*"], "verbs": ["get"]}]),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(app.clone(), "team");
    assert_eq!(
        status_code(&pods.get_status("p").await.unwrap_err()),
        Some(403)
    );
    assert_eq!(status_code(&pods.get("p").await.unwrap_err()), Some(403));

    let (_server, app) = app_with_rules(
        "star-sub",
        json!([{"apiGroups": [""], "resources": ["*/status"], "verbs": ["get"]}]),
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(app, "team");
    pods.get_status("p").await.unwrap();
    assert_eq!(status_code(&pods.get("p").await.unwrap_err()), Some(403));
}
