//! The commands `meshctl check` (and `cacerts apply`) print as hints run against what was
//! checked: `-n` when it is not the default, `--kubeconfig` when one was given, the token
//! lifetime and reader account of the stored remote secret; a stored kubeconfig no client can
//! be built from is said to be unusable (no request was sent), not blamed on the API server;
//! and a stored token of an account that is not meshctl's reader is warned about.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const NS: &str = "esc";

/// `meshctl join -n esc` of west and east (loopback test servers allowed) plus `extra`.
async fn join_in_esc(m: &Mesh, extra: &[&str]) {
    let mut args = m.join_args(&["-n", NS]);
    args.extend_from_slice(extra);
    m.ok(&args).await;
}

/// `meshctl check -n esc -o json` of west and east with the mesh's kubeconfig.
async fn check_esc(m: &Mesh) -> (i32, Vec<Value>) {
    check_json(m.kc(), &["-n", NS], false).await
}

fn hint(items: &[Value], scope: &str, check: &str) -> String {
    let i = item(items, scope, check);
    i["hint"]
        .as_str()
        .unwrap_or_else(|| panic!("no hint: {i}"))
        .to_string()
}

fn esc_secret(s: &k8s_test_server::TestApiServer, name: &str) -> Value {
    s.store()
        .get("v1", "Secret", Some(NS), name)
        .unwrap_or_else(|| panic!("Secret {NS}/{name}"))
}

/// Rewrites the kubeconfig stored under `key` of remote secret `name` in `esc`.
fn edit_stored(
    s: &k8s_test_server::TestApiServer,
    name: &str,
    key: &str,
    edit: impl FnOnce(&mut Value),
) {
    let mut sec = esc_secret(s, name);
    let mut k: Value = serde_yaml::from_str(&stored_kubeconfig(&sec, key)).unwrap();
    edit(&mut k);
    sec["data"][key] =
        json!(base64::engine::general_purpose::STANDARD.encode(serde_yaml::to_string(&k).unwrap()));
    s.store().apply(sec).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_repeat_the_namespace_the_kubeconfig_and_the_token_lifetime() {
    let m = mesh().await;
    join_in_esc(&m, &["--token-ttl", "2h"]).await;
    m.east
        .store()
        .delete("v1", "Secret", Some(NS), "cacerts")
        .unwrap();
    let (code, items) = check_esc(&m).await;
    assert_eq!(code, 1);
    let kc = m.kc();
    // The token (2h) expires within --warn-before: refresh it, or make the secret again with
    // the same lifetime, in esc, with this kubeconfig.
    let h = hint(&items, "secret for west in east", "token expiry");
    for want in [
        format!(
            "meshctl credentials refresh -n esc --kubeconfig {kc} --context west --context east"
        ),
        format!(
            "meshctl create-remote-secret --kubeconfig {kc} --context west --name west -n esc \
             --token-ttl 2h --server https://<address>:6443 | kubectl --kubeconfig {kc} \
             --context east apply -f -"
        ),
    ] {
        assert!(h.contains(&want), "{want:?} not in {h:?}");
    }
    let h = hint(&items, "cluster east", "cacerts present and valid");
    for want in [
        format!("meshctl cacerts apply certs/east --context east -n esc --kubeconfig {kc}"),
        format!("kubectl --kubeconfig {kc} --context east -n esc rollout restart deploy/istiod"),
    ] {
        assert!(h.contains(&want), "{want:?} not in {h:?}");
    }
    let h = hint(&items, "cluster east", "gateway pods ready");
    assert!(
        h.starts_with(&format!(
            "kubectl --kubeconfig {kc} --context east -n esc describe pods"
        )),
        "{h}"
    );
    let h = hint(&items, "mesh", "roots identical across clusters");
    assert!(h.contains(" -n esc --kubeconfig "), "{h}");
    // No hint names istio-system or leaves out the namespace.
    for i in &items {
        let h = i["hint"].as_str().unwrap_or_default();
        assert!(!h.contains("istio-system"), "{i}");
        for cmd in [
            "meshctl cacerts apply certs/",
            "meshctl credentials refresh",
        ] {
            assert!(!h.contains(cmd) || h.contains("-n esc"), "{i}");
        }
    }
    // `cacerts apply -n esc` names istiod's namespace in its restart hint.
    let out = m
        .ok(&cacerts_apply_args(
            kc,
            p(&m.certs.join("east")),
            "east",
            &["-n", NS],
        ))
        .await;
    assert!(out.contains("cacerts applied"), "{out}");
    let all = text(
        &meshctl(&cacerts_apply_args(
            kc,
            p(&m.certs.join("west")),
            "east",
            &["-n", NS],
        ))
        .await,
    );
    assert!(
        all.contains("kubectl -n esc rollout restart deploy/istiod")
            && !all.contains("istio-system"),
        "{all}"
    );
}

/// A change to a stored kubeconfig.
type Breakage = fn(&mut Value);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_kubeconfig_no_client_can_be_built_from_is_not_blamed_on_the_server() {
    let m = mesh().await;
    join_in_esc(&m, &[]).await;
    let breakages: [(&str, Breakage); 3] = [
        ("CA data that is not base64", |k| {
            k["clusters"][0]["cluster"]["certificate-authority-data"] = json!("!!not base64!!");
        }),
        ("a current-context naming no context", |k| {
            k["current-context"] = json!("nowhere");
        }),
        ("a client key that is not PEM", |k| {
            let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
            let user = &mut k["users"][0]["user"];
            user["client-certificate-data"] = json!(b("not a certificate"));
            user["client-key-data"] = json!(b("not a key"));
        }),
    ];
    let original = esc_secret(&m.east, "istio-remote-secret-west");
    for (what, breakage) in breakages {
        m.east.store().apply(original.clone()).unwrap();
        edit_stored(&m.east, "istio-remote-secret-west", "west", breakage);
        let (code, items) = check_esc(&m).await;
        assert_eq!(code, 1, "{what}");
        let i = item(&items, "secret for west in east", "kubeconfig works");
        assert_eq!(i["status"], "fail", "{what}: {i}");
        let (detail, h) = (i["detail"].as_str().unwrap(), i["hint"].as_str().unwrap());
        assert!(detail.contains("no request was sent"), "{what}: {detail}");
        assert!(
            h.contains("the stored kubeconfig is unusable")
                && h.contains(&format!(
                    "re-create the remote secret: meshctl create-remote-secret --kubeconfig {} \
                     --context west --name west -n esc",
                    m.kc()
                ))
                && !h.contains("answered with an error"),
            "{what}: {h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_token_of_another_account_is_warned_about() {
    let m = mesh().await;
    join_in_esc(&m, &["--token-ttl", "24h"]).await;
    let (_, items) = check_esc(&m).await;
    for scope in ["secret for west in east", "secret for east in west"] {
        let i = item(&items, scope, "reader account");
        assert_eq!(i["status"], "pass", "{i}");
        assert_eq!(i["detail"], "esc/istio-reader-service-account", "{i}");
    }
    // A real token of another account of west, stored in east as west's credential.
    let west = client_from_yaml(&kubeconfig_yaml(&[("west", &m.west)])).await;
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "intruder"}})).unwrap();
    kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        west.clone(),
        "kube-system",
    )
    .create(&Default::default(), &sa)
    .await
    .unwrap();
    let token = testkit::kube_client::service_account_token(
        &west,
        "kube-system",
        "intruder",
        &[],
        Some(86400),
    )
    .await;
    edit_stored(&m.east, "istio-remote-secret-west", "west", |k| {
        k["users"][0]["user"]["token"] = json!(token);
    });
    let (_, items) = check_esc(&m).await;
    let i = item(&items, "secret for west in east", "reader account");
    assert_eq!(i["status"], "warn", "{i}");
    let d = i["detail"].as_str().unwrap();
    assert!(
        d.contains("kube-system/intruder") && d.contains("not meshctl's reader"),
        "{d}"
    );
    let h = i["hint"].as_str().unwrap();
    assert!(
        h.contains("meshctl create-remote-secret")
            && h.contains("-n esc")
            && !h.contains("intruder"),
        "{h}"
    );
    assert_eq!(
        item(&items, "secret for east in west", "reader account")["status"],
        "pass"
    );
    // An account of esc that is not a reader (istiod's namespace, no reader binding).
    kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(west.clone(), NS)
        .create(&Default::default(), &sa)
        .await
        .unwrap();
    let token =
        testkit::kube_client::service_account_token(&west, NS, "intruder", &[], Some(86400)).await;
    edit_stored(&m.east, "istio-remote-secret-west", "west", |k| {
        k["users"][0]["user"]["token"] = json!(token);
    });
    let (_, items) = check_esc(&m).await;
    let i = item(&items, "secret for west in east", "reader account");
    assert_eq!(i["status"], "warn", "{i}");
    assert!(
        i["detail"]
            .as_str()
            .unwrap()
            .contains("no reader binding meshctl-istio-reader-esc.intruder"),
        "{i}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_made_with_another_service_account_passes_and_is_repeated() {
    let m = mesh().await;
    join_in_esc(
        &m,
        &["--service-account", "mesh-reader", "--token-ttl", "1h"],
    )
    .await;
    let (_, items) = check_esc(&m).await;
    let i = item(&items, "secret for west in east", "reader account");
    assert_eq!(i["status"], "pass", "{i}");
    assert!(
        i["detail"].as_str().unwrap().contains(
            "esc/mesh-reader (bound to meshctl's reader role meshctl-istio-reader-esc.mesh-reader)"
        ),
        "{i}"
    );
    let h = hint(&items, "secret for west in east", "token expiry");
    assert!(
        h.contains("--name west -n esc --token-ttl 1h --service-account mesh-reader --server"),
        "{h}"
    );
}
