//! Shared helpers for the TEST SERVER's integration tests (real kube-rs clients).
#![allow(dead_code)]

use k8s_openapi::api::core::v1::Secret;
use k8s_test_server::TestApiServer;
use kube::Client;
use kube::api::Api;
use serde_json::{Value, json};
#[allow(unused_imports)] // not every test file calls it
pub use testkit::kube_client::client_from_yaml;

/// kube with rustls has no automatic crypto provider: install one per test process.
pub fn init() {
    testkit::kube_client::install_crypto_provider();
}

pub async fn admin_client(server: &TestApiServer) -> Client {
    client_from_yaml(&server.kubeconfig(server.cluster_name())).await
}

/// A started server `name` and its admin client.
pub async fn started(name: &str) -> (TestApiServer, Client) {
    init();
    let server = TestApiServer::start(name).await.unwrap();
    let admin = admin_client(&server).await;
    (server, admin)
}

/// A started server `name` holding `objects` (stored as given, in order, without HTTP) and
/// its admin client.
pub async fn server_with(
    name: &str,
    objects: impl IntoIterator<Item = Value>,
) -> (TestApiServer, Client) {
    let (server, admin) = started(name).await;
    for o in objects {
        server.store().create(o).unwrap();
    }
    (server, admin)
}

/// A client of `server` as ServiceAccount `namespace/name`, with a one-hour token that
/// `admin` requests through the TokenRequest API.
pub async fn service_account_client(
    server: &TestApiServer,
    admin: &Client,
    namespace: &str,
    name: &str,
) -> Client {
    let token =
        testkit::kube_client::service_account_token(admin, namespace, name, &[], Some(3600)).await;
    client_from_yaml(&server.kubeconfig_with_token(server.cluster_name(), &token)).await
}

/// A role `name` with `rules` and its binding `name` for ServiceAccount `sa` (namespace,
/// name): a ClusterRole and ClusterRoleBinding, or with a `namespace` a Role and RoleBinding
/// there. Objects to store, e.g. with [`server_with`].
pub fn role_and_binding(
    namespace: Option<&str>,
    name: &str,
    rules: Value,
    sa: (&str, &str),
) -> [Value; 2] {
    let (role_kind, binding_kind) = match namespace {
        Some(_) => ("Role", "RoleBinding"),
        None => ("ClusterRole", "ClusterRoleBinding"),
    };
    let mut metadata = json!({"name": name});
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    let rbac = "rbac.authorization.k8s.io";
    [
        json!({"apiVersion": format!("{rbac}/v1"), "kind": role_kind, "metadata": metadata,
            "rules": rules}),
        json!({"apiVersion": format!("{rbac}/v1"), "kind": binding_kind, "metadata": metadata,
            "roleRef": {"apiGroup": rbac, "kind": role_kind, "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": sa.1, "namespace": sa.0}]}),
    ]
}

/// Secret `name` of `secrets` once the token controller has filled in its `token` (which it
/// does in the background, as the real one does). Bounded: 5 s.
pub async fn filled_token_secret(secrets: &Api<Secret>, name: &str) -> Secret {
    let what = format!("the token controller to fill {name}");
    testkit::wait::eventually_some(&what, std::time::Duration::from_secs(5), || async {
        secrets
            .get(name)
            .await
            .ok()
            .filter(|s| s.data.as_ref().is_some_and(|d| d.contains_key("token")))
    })
    .await
}

/// A typed object from its JSON (a test's literal).
pub fn obj<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("valid object")
}

/// The HTTP status code of a kube API error.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
