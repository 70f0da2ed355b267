//! Revoked tokens as a real API server treats them: a success stays cached for 10 s
//! (kube-apiserver's `TokenSuccessCacheTTL`), a failure is not cached, and a TokenRequest
//! token bound to an object dies with it. Time is the server clock.

mod common;

use common::{
    client_from_yaml, filled_token_secret, obj, role_and_binding, server_with, status_code,
};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_test_server::TestApiServer;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use std::time::Duration;
use testkit::kube_client::{service_account_token, token_claims};

/// A server with ServiceAccount `app` in `apps`, allowed to list Services.
async fn server_with_app(name: &str) -> (TestApiServer, Client) {
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "apps"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "app", "namespace": "apps"}}),
    ]
    .into_iter()
    .chain(role_and_binding(
        None,
        "svc",
        json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]),
        ("apps", "app"),
    ));
    server_with(name, objects).await
}

async fn list_services(server: &TestApiServer, token: &str) -> Result<(), Option<u16>> {
    let c = client_from_yaml(&server.kubeconfig_with_token("t", token)).await;
    Api::<Service>::all(c)
        .list(&ListParams::default())
        .await
        .map(drop)
        .map_err(|e| status_code(&e))
}

async fn review(admin: &Client, token: &str, audiences: &[&str]) -> bool {
    let r: TokenReview = obj(json!({"spec": {"token": token, "audiences": audiences}}));
    Api::<TokenReview>::all(admin.clone())
        .create(&PostParams::default(), &r)
        .await
        .unwrap()
        .status
        .unwrap()
        .authenticated
        == Some(true)
}

/// Fails without the cache: the request after the deletion was a 401 at once.
#[tokio::test]
async fn a_revoked_token_used_in_the_last_ten_seconds_works_until_its_entry_expires() {
    let (server, admin) = server_with_app("cache").await;
    let token = service_account_token(&admin, "apps", "app", &[], Some(3600)).await;
    assert_eq!(list_services(&server, &token).await, Ok(()));
    assert!(review(&admin, &token, &[]).await);
    Api::<ServiceAccount>::namespaced(admin.clone(), "apps")
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    // Revoked, but authenticated moments ago: the cached success still answers, for
    // requests and for TokenReviews with the audiences asked before ...
    server.clock().advance(Duration::from_secs(9));
    assert_eq!(list_services(&server, &token).await, Ok(()));
    assert!(review(&admin, &token, &[]).await);
    assert_eq!(
        server.authenticate(&token).map(|i| i.user).as_deref(),
        Some("system:serviceaccount:apps:app")
    );
    // ... but not for other audiences (another cache key), looked up afresh.
    assert!(
        !review(
            &admin,
            &token,
            &["https://kubernetes.default.svc.cluster.local", "other"]
        )
        .await
    );
    // The entry was made at the first use; 10 s later the revocation shows.
    server.clock().advance(Duration::from_secs(1));
    assert_eq!(list_services(&server, &token).await, Err(Some(401)));
    assert!(!review(&admin, &token, &[]).await);
}

/// Failures are not cached (`TokenFailureCacheTTL` 0), and nothing is cached for a token
/// that was never used: revoking it before its first use refuses it at once.
#[tokio::test]
async fn a_token_revoked_before_any_use_is_refused_at_once() {
    let (server, admin) = server_with_app("unused").await;
    let token = service_account_token(&admin, "apps", "app", &[], Some(3600)).await;
    Api::<ServiceAccount>::namespaced(admin.clone(), "apps")
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(list_services(&server, &token).await, Err(Some(401)));
    assert_eq!(list_services(&server, "not-a-token").await, Err(Some(401)));
}

/// A legacy Secret token: deleting the Secret revokes it, 10 s after its last success.
#[tokio::test]
async fn a_deleted_token_secret_revokes_its_token_after_the_cache_entry() {
    let (server, admin) = server_with_app("legacy").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "apps");
    secrets
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "app-token",
            "annotations": {"kubernetes.io/service-account.name": "app"}},
            "type": "kubernetes.io/service-account-token"})),
        )
        .await
        .unwrap();
    let filled = filled_token_secret(&secrets, "app-token").await;
    let token = String::from_utf8(filled.data.unwrap()["token"].0.clone()).unwrap();
    assert_eq!(list_services(&server, &token).await, Ok(()));
    secrets
        .delete("app-token", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(list_services(&server, &token).await, Ok(()));
    server.clock().advance(Duration::from_secs(10));
    assert_eq!(list_services(&server, &token).await, Err(Some(401)));
}

async fn bound_token(admin: &Client, kind: &str, name: &str, uid: &str) -> Result<String, u16> {
    let tr: TokenRequest = obj(json!({"spec": {"audiences": [], "expirationSeconds": 3600,
        "boundObjectRef": {"apiVersion": "v1", "kind": kind, "name": name, "uid": uid}}}));
    Api::<ServiceAccount>::namespaced(admin.clone(), "apps")
        .create_token_request("app", &PostParams::default(), &tr)
        .await
        .map(|t| t.status.unwrap().token.unwrap())
        .map_err(|e| status_code(&e).unwrap_or(0))
}

/// Fails without the bound-object check: the token outlived its Secret and Pod.
#[tokio::test]
async fn a_bound_token_dies_with_its_object() {
    let (server, admin) = server_with_app("bound").await;
    let s = server.store();
    let secret = s
        .create(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "anchor", "namespace": "apps"}}))
        .unwrap();
    let uid = secret["metadata"]["uid"].as_str().unwrap().to_string();
    s.create(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "other-sa", "namespace": "apps"},
        "spec": {"serviceAccountName": "default", "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap();

    // What TokenRequest refuses (token.go): a missing object, another uid, a Pod of another
    // service account, a kind that cannot be bound.
    assert_eq!(bound_token(&admin, "Secret", "missing", "").await, Err(404));
    assert_eq!(
        bound_token(&admin, "Secret", "anchor", "wrong-uid").await,
        Err(409)
    );
    assert_eq!(bound_token(&admin, "Pod", "other-sa", "").await, Err(400));
    assert_eq!(
        bound_token(&admin, "ConfigMap", "anchor", "").await,
        Err(400)
    );

    let token = bound_token(&admin, "Secret", "anchor", &uid).await.unwrap();
    // Its claims name the object, as the real token's do.
    assert_eq!(
        token_claims(&token)["kubernetes.io"]["secret"],
        json!({"name": "anchor", "uid": uid})
    );
    assert_eq!(list_services(&server, &token).await, Ok(()));
    Api::<Secret>::namespaced(admin.clone(), "apps")
        .delete("anchor", &DeleteParams::default())
        .await
        .unwrap();
    server.clock().advance(Duration::from_secs(10));
    assert_eq!(list_services(&server, &token).await, Err(Some(401)));
    // A new object of the same name is another object (uid).
    s.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "anchor", "namespace": "apps"}}))
        .unwrap();
    assert_eq!(list_services(&server, &token).await, Err(Some(401)));
}

/// The cache lives in the API server's memory: after a restart, a token revoked while it was
/// cached is refused at once. Fails if the cache survives `restart`.
#[tokio::test]
async fn a_restarted_server_has_an_empty_cache() {
    let (server, admin) = server_with_app("cache-restart").await;
    let token = service_account_token(&admin, "apps", "app", &[], Some(3600)).await;
    assert_eq!(list_services(&server, &token).await, Ok(()));
    Api::<ServiceAccount>::namespaced(admin.clone(), "apps")
        .delete("app", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(list_services(&server, &token).await, Ok(()), "still cached");
    let server = server.stop().await.restart().await.unwrap();
    assert_eq!(list_services(&server, &token).await, Err(Some(401)));
}
