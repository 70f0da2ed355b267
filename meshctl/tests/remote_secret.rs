//! `meshctl create-remote-secret` against a TEST API server: istioctl's output shape field by
//! field, a working kubeconfig, expiring TokenRequest tokens, a reader that cannot read
//! Secrets, and the loopback refusal.

mod common;

use base64::Engine as _;
use common::*;
use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use testkit::kube_client::{self_access, token_claims};

/// `create-remote-secret` for context west, named west-cluster, plus `extra` flags.
fn args<'a>(m: &'a Mesh, extra: &[&'a str]) -> Vec<&'a str> {
    create_remote_secret_args(m.kc(), "west", "west-cluster", extra)
}

/// Whether `client` may `verb` `group`/`resource` in istio-system.
async fn ssar(client: &kube::Client, verb: &str, group: &str, resource: &str) -> bool {
    self_access(
        client,
        json!({"verb": verb, "group": group, "resource": resource, "namespace": "istio-system"}),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_matches_istioctl_shape_field_by_field_and_the_kubeconfig_works() {
    let m = mesh().await;
    let out = m.ok(&args(&m, &["--allow-loopback-server"])).await;
    let s = printed_secret(&out);
    assert_eq!(s["apiVersion"], "v1");
    assert_eq!(s["kind"], "Secret");
    assert!(s.get("type").is_none(), "istioctl sets no type (Opaque)");
    assert!(s.get("data").is_none());
    let md = &s["metadata"];
    assert_eq!(md["name"], "istio-remote-secret-west-cluster");
    assert_eq!(md["namespace"], "istio-system");
    assert_eq!(
        md["labels"]["istio/multiCluster"], "true",
        "a string, quoted"
    );
    assert!(
        out.contains("istio/multiCluster: 'true'") || out.contains("istio/multiCluster: \"true\""),
        "{out}"
    );
    assert_eq!(
        md["annotations"]["networking.istio.io/cluster"],
        "west-cluster"
    );
    assert!(md["creationTimestamp"].is_null() && md.get("creationTimestamp").is_some());
    let data = s["stringData"].as_object().unwrap();
    assert_eq!(data.keys().collect::<Vec<_>>(), vec!["west-cluster"]);
    let kubeconfig = data["west-cluster"].as_str().unwrap();
    assert!(
        out.contains("west-cluster: |"),
        "a literal block like istioctl's:\n{out}"
    );
    let k: Value = serde_yaml::from_str(kubeconfig).unwrap();
    assert_eq!(k["apiVersion"], "v1");
    assert_eq!(k["kind"], "Config");
    assert_eq!(k["preferences"], json!({}));
    assert_eq!(k["current-context"], "west-cluster");
    assert_eq!(k["clusters"].as_array().unwrap().len(), 1);
    assert_eq!(k["clusters"][0]["name"], "west-cluster");
    assert_eq!(k["clusters"][0]["cluster"]["server"], m.west.url());
    let ca = base64::engine::general_purpose::STANDARD
        .decode(
            k["clusters"][0]["cluster"]["certificate-authority-data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(
        ca,
        m.west.ca_pem().as_bytes(),
        "the CA from the token Secret's ca.crt"
    );
    assert_eq!(
        k["contexts"][0],
        json!({"name": "west-cluster", "context": {"cluster": "west-cluster", "user": "west-cluster"}})
    );
    assert_eq!(k["users"][0]["name"], "west-cluster");
    // The long-lived token from the service-account-token Secret istioctl would make.
    let token_secret = secret(
        &m.west,
        "istio-reader-service-account-istio-remote-secret-token",
    )
    .expect("token Secret");
    assert_eq!(token_secret["type"], "kubernetes.io/service-account-token");
    let token = token_of(kubeconfig);
    assert_eq!(stored_kubeconfig(&token_secret, "token"), token);
    assert!(token_claims(&token).get("exp").is_none(), "never expires");
    // It authenticates and lists services.
    let client = client_from_yaml(kubeconfig).await;
    Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .expect("reader lists services");
    // -o json is the same object.
    let j: Value = serde_json::from_str(
        &m.ok(&args(&m, &["--allow-loopback-server", "-o", "json"]))
            .await,
    )
    .unwrap();
    assert_eq!(j["metadata"], s["metadata"]);
    assert_eq!(
        j["stringData"]["west-cluster"], s["stringData"]["west-cluster"],
        "same token on a second run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_gives_an_expiring_token_request_token() {
    let m = mesh().await;
    let t = usage_error(&args(&m, &["--allow-loopback-server", "--token-ttl", "5m"])).await;
    assert!(t.contains("10m"), "{t}");
    let out = m
        .ok(&args(
            &m,
            &["--allow-loopback-server", "--token-ttl", "10m"],
        ))
        .await;
    let s = printed_secret(&out);
    let kubeconfig = s["stringData"]["west-cluster"].as_str().unwrap();
    let token = token_of(kubeconfig);
    let exp = token_claims(&token)["exp"].as_u64().expect("exp claim");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 590..=now + 610).contains(&exp),
        "exp {exp} now {now}"
    );
    assert!(
        secret(
            &m.west,
            "istio-reader-service-account-istio-remote-secret-token"
        )
        .is_none(),
        "no long-lived Secret"
    );
    let client = client_from_yaml(kubeconfig).await;
    Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("valid before expiry");
    m.west.clock().advance(Duration::from_secs(601));
    let err = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 401),
        "{err:?}"
    );
}

/// istiod's remote-cluster reads (see src/mesh/reader_rules.rs for the istio/istio sources), written
/// out again here so that a change to the role must change this test too.
const ISTIOD_REMOTE_READS: &[(&str, &str)] = &[
    ("", "namespaces"),
    ("", "services"),
    ("", "pods"),
    ("", "nodes"),
    ("", "configmaps"),
    ("discovery.k8s.io", "endpointslices"),
    ("gateway.networking.k8s.io", "gateways"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("networking.istio.io", "workloadentries"),
];

/// The stored reader ClusterRole's rules as sorted `(group, resource, verb)` triples.
fn role_triples(s: &k8s_test_server::TestApiServer) -> Vec<(String, String, String)> {
    let role = reader_role(s);
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let mut out = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        for g in strs(&rule["apiGroups"]) {
            for r in strs(&rule["resources"]) {
                for v in strs(&rule["verbs"]) {
                    out.push((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out.sort();
    out
}

fn expected_triples(extra: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    let mut out: Vec<(String, String, String)> = ISTIOD_REMOTE_READS
        .iter()
        .flat_map(|(g, r)| ["list", "watch"].map(|v| (g.to_string(), r.to_string(), v.to_string())))
        .chain(
            extra
                .iter()
                .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string())),
        )
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reader_role_is_exactly_istiods_remote_reads_and_grants_nothing_on_secrets() {
    let m = mesh().await;
    let s = printed_secret(&m.ok(&args(&m, &["--allow-loopback-server"])).await);
    assert_eq!(role_triples(&m.west), expected_triples(&[]));
    let client = client_from_yaml(s["stringData"]["west-cluster"].as_str().unwrap()).await;
    for verb in ["get", "list", "watch", "create"] {
        assert!(!ssar(&client, verb, "", "secrets").await, "{verb} secrets");
    }
    for (group, resource) in ISTIOD_REMOTE_READS {
        for verb in ["list", "watch"] {
            assert!(
                ssar(&client, verb, group, resource).await,
                "{verb} {resource}"
            );
        }
        for verb in ["create", "update", "delete"] {
            assert!(
                !ssar(&client, verb, group, resource).await,
                "{verb} {resource}"
            );
        }
    }
    let err = Api::<Secret>::namespaced(client.clone(), "istio-system")
        .get("cacerts")
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
    let err = Api::<Secret>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 403),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_allow_secrets_adds_secret_reads_and_nothing_else() {
    let m = mesh().await;
    let s = printed_secret(
        &m.ok(&args(
            &m,
            &["--allow-loopback-server", "--reader-allow-secrets"],
        ))
        .await,
    );
    assert_eq!(
        role_triples(&m.west),
        expected_triples(&[
            ("", "secrets", "get"),
            ("", "secrets", "list"),
            ("", "secrets", "watch"),
            ("authorization.k8s.io", "subjectaccessreviews", "create"),
        ])
    );
    let client = client_from_yaml(s["stringData"]["west-cluster"].as_str().unwrap()).await;
    for verb in ["get", "list", "watch"] {
        assert!(ssar(&client, verb, "", "secrets").await, "{verb} secrets");
    }
    assert!(!ssar(&client, "create", "", "secrets").await);
    Api::<Secret>::all(client)
        .list(&ListParams::default())
        .await
        .expect("the reader lists Secrets");
    // Running again without the flag takes the permission back.
    m.ok(&args(&m, &["--allow-loopback-server"])).await;
    assert_eq!(role_triples(&m.west), expected_triples(&[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_server_is_refused_with_the_fix_and_bad_input_changes_nothing() {
    let m = mesh().await;
    let before = snapshot(&m.west);
    let out = m.fails(&args(&m, &[])).await;
    assert!(
        out.contains("loopback")
            && out.contains("--server https://<control-plane-address>:6443")
            && out.contains("--allow-loopback-server"),
        "{out}"
    );
    // Wrong flags are usage errors (exit 2).
    let t = usage_error(&args(&m, &["--server", "https://localhost:6443"])).await;
    assert!(t.contains("loopback"), "{t}");
    let t = usage_error(&create_remote_secret_args(
        m.kc(),
        "west",
        "West_1",
        &["--allow-loopback-server"],
    ))
    .await;
    assert!(t.contains("DNS-1123"), "{t}");
    let out = m
        .fails(&create_remote_secret_args(m.kc(), "north", "north", &[]))
        .await;
    assert!(
        out.contains("context \"north\" not found in") && out.contains("available: west, east"),
        "{out}"
    );
    assert_eq!(snapshot(&m.west), before, "refusals change nothing");
    // --dry-run: placeholders, no change.
    let out = m
        .ok(&args(
            &m,
            &["--server", "https://172.18.0.2:6443", "--dry-run"],
        ))
        .await;
    assert!(
        out.contains("kind: ClusterRole") && out.contains("<dry-run"),
        "{out}"
    );
    assert_eq!(snapshot(&m.west), before);
    // A reachable --server goes into the kubeconfig as given.
    let out = m
        .ok(&args(&m, &["--server", "https://172.18.0.2:6443"]))
        .await;
    let s = printed_secret(&out);
    assert!(
        s["stringData"]["west-cluster"]
            .as_str()
            .unwrap()
            .contains("server: https://172.18.0.2:6443")
    );
}
