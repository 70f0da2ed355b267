//! kube-rs clients for tests: a `kube::Client` from a kubeconfig's YAML text (as the
//! Kubernetes API test server or `meshctl create-remote-secret` writes it), a
//! ServiceAccount's token from the TokenRequest API and its claims, and what a client may do
//! (SelfSubjectAccessReview).

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Client;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// kube with rustls has no automatic crypto provider: installs aws-lc-rs for this process
/// (a second call, or one after another test installed it, changes nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client for the kubeconfig's current context. Panics (the test fails) when the YAML
/// does not parse or names no usable context.
pub async fn client_from_yaml(yaml: &str) -> Client {
    install_crypto_provider();
    let kc = Kubeconfig::from_yaml(yaml).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config from the kubeconfig's current context");
    Client::try_from(cfg).expect("kube client")
}

/// A token of ServiceAccount `namespace/name` for `audiences` (empty: the API server's own),
/// valid `seconds` if given, through the TokenRequest API as `client`. Panics (the test
/// fails) when the server refuses.
pub async fn service_account_token(
    client: &Client,
    namespace: &str,
    name: &str,
    audiences: &[&str],
    seconds: Option<i64>,
) -> String {
    let mut spec = serde_json::json!({"audiences": audiences});
    if let Some(s) = seconds {
        spec["expirationSeconds"] = s.into();
    }
    let tr: TokenRequest = serde_json::from_value(serde_json::json!({"spec": spec})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_token_request(name, &PostParams::default(), &tr)
        .await
        .expect("TokenRequest")
        .status
        .expect("TokenRequest status")
        .token
        .expect("a token")
}

/// The claims of a JWT (a ServiceAccount token), unverified. Panics (the test fails) when
/// `token` is not three dot-separated parts with a base64url JSON payload.
pub fn token_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .expect("the JWT payload is base64url");
    serde_json::from_slice(&json).expect("the JWT payload is JSON")
}

/// Whether `client` may do what `resource_attributes` describes (`verb`, `resource`, and
/// optionally `group`, `namespace`, `name`, ...): a SelfSubjectAccessReview's `allowed`.
/// Panics (the test fails) when the server refuses the review.
pub async fn self_access(client: &Client, resource_attributes: serde_json::Value) -> bool {
    let review: SelfSubjectAccessReview = serde_json::from_value(
        serde_json::json!({"spec": {"resourceAttributes": resource_attributes}}),
    )
    .expect("a SelfSubjectAccessReview");
    Api::<SelfSubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("SelfSubjectAccessReview")
        .status
        .expect("SelfSubjectAccessReview status")
        .allowed
}
