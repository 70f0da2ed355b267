//! `credentials refresh` issues tokens only for the reader the operator names (join's reader
//! in istiod's namespace, `--service-account`), never for the account a stored token claims:
//! those claims are unverified and anyone who may write Secrets in that namespace sets them.
//! A forged token naming a cluster-admin account is refused, the Secret is left as it is,
//! and no TokenRequest reaches the cluster it reads (a tripwire fault on
//! `create serviceaccounts`, which only TokenRequest uses during a refresh, counts any).
//! Against two TEST API servers, with the real meshctl binary.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use k8s_test_server::{Fault, FaultRule, TestApiServer};
use serde_json::{Value, json};

/// istiod's namespace in these tests (not the default, so the account's namespace counts).
const NS: &str = "esc";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// west and east joined in [`NS`] with 1h tokens; west's token (stored in east) was minted
/// 50 minutes ago, so it is due.
async fn joined(extra: &[&str]) -> Mesh {
    let m = mesh().await;
    let age = Duration::from_secs(50 * 60);
    m.west.clock().rewind(age);
    let mut args = vec!["-n", NS, "--token-ttl", "1h"];
    args.extend_from_slice(extra);
    m.join(&args).await;
    m.west.clock().advance(age);
    m
}

/// The remote secret for west, as stored in east.
fn west_secret(m: &Mesh) -> Value {
    m.east
        .store()
        .get("v1", "Secret", Some(NS), "istio-remote-secret-west")
        .expect("west's remote secret in east")
}

fn rv(s: &Value) -> String {
    s["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An unsigned JWT with these claims (what anyone can write).
fn unsigned_jwt(claims: Value) -> String {
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!("{}.{}.", b(&json!({"alg": "none"})), b(&claims))
}

/// Rewrites the token of west's remote secret in east, as someone who may write Secrets in
/// [`NS`] there can: everything else as stored.
fn store_token(m: &Mesh, token: &str) {
    let mut s = west_secret(m);
    let kc = stored_kubeconfig(&s, "west");
    let kc = kc.replace(&token_of(&kc), token);
    s["data"]["west"] = json!(base64::engine::general_purpose::STANDARD.encode(kc));
    m.east.store().apply(s).unwrap();
}

/// A ServiceAccount in west bound to cluster-admin.
fn powerful(s: &TestApiServer, ns: &str) {
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "powerful", "namespace": ns}}))
        .unwrap();
    s.store()
        .create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("powerful-{ns}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"kind": "ServiceAccount", "name": "powerful", "namespace": ns}]}))
        .unwrap();
}

/// Counts every TokenRequest (and any other `create serviceaccounts`) sent to `s`, failing it.
fn tripwire(s: &TestApiServer) {
    s.faults().inject(
        FaultRule::new(Fault::Internal)
            .verb("create")
            .resource("serviceaccounts"),
    );
}

/// `meshctl credentials refresh` of west and east in [`NS`], `-o json`, plus `extra`.
async fn refresh(m: &Mesh, extra: &[&str]) -> (i32, Value, String) {
    let mut args = both_contexts("credentials", m.kc());
    args.insert(1, "refresh");
    args.extend(["-n", NS, "-o", "json"]);
    args.extend_from_slice(extra);
    let out = meshctl(&args).await;
    let all = text(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (out.status.code().unwrap(), v, all)
}

/// The outcome for west's remote secret stored in east.
fn west_in_east(v: &Value) -> Value {
    v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stored_in"] == "east" && e["cluster"] == "west")
        .unwrap_or_else(|| panic!("no east/west outcome in {v:#}"))
        .clone()
}

/// The account a token authenticates as in `s`.
fn user_of(s: &TestApiServer, token: &str) -> String {
    s.authenticate(token).expect("the token authenticates").user
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_token_claiming_another_account_is_refused_and_nothing_is_issued() {
    let m = joined(&[]).await;
    let legit = west_secret(&m);
    let legit_token = token_of(&stored_kubeconfig(&legit, "west"));
    powerful(&m.west, "kube-system");
    powerful(&m.west, NS);
    // Due (2 minutes left of 1h 2m), as in the audit's reproduction.
    let forged =
        |sub: &str| unsigned_jwt(json!({"sub": sub, "iat": now() - 3600, "exp": now() + 120}));
    for (sub, account) in [
        (
            "system:serviceaccount:kube-system:powerful",
            "kube-system/powerful",
        ),
        // Same namespace as the reader, another account.
        ("system:serviceaccount:esc:powerful", "esc/powerful"),
        // The reader's name in another namespace.
        (
            "system:serviceaccount:kube-system:istio-reader-service-account",
            "kube-system/istio-reader-service-account",
        ),
    ] {
        store_token(&m, &forged(sub));
        let before = west_secret(&m);
        tripwire(&m.west);
        for dry in [false, true] {
            let extra: &[&str] = if dry { &["--dry-run"] } else { &[] };
            let (code, v, all) = refresh(&m, extra).await;
            assert_eq!(code, 1, "{sub} (dry run {dry}): {all}");
            let e = west_in_east(&v);
            assert_eq!(e["action"], "failed", "{sub}: {e}");
            let why = e["reason"].as_str().unwrap();
            let claims = format!("claims service account {account},");
            for want in [
                claims.as_str(),
                "only for the reader esc/istio-reader-service-account",
                "meshctl join",
                "create-remote-secret",
            ] {
                assert!(why.contains(want), "{want:?} not in: {why}");
            }
            assert!(!why.contains("would request"), "{why}");
            assert!(!all.contains("refreshed\""), "{all}");
            // east's own token (stored in west) is fresh: left alone, not failed.
            let other = &v["secrets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["stored_in"] == "west")
                .unwrap()["action"];
            assert_eq!(other, "left-alone", "{all}");
        }
        let after = west_secret(&m);
        assert_eq!(rv(&after), rv(&before), "{sub}: the Secret was written");
        assert_eq!(after["data"], before["data"], "{sub}");
        assert_eq!(
            m.west.faults().injected(),
            0,
            "{sub}: a TokenRequest was sent to west"
        );
        m.west.faults().clear();
    }

    // The legitimate token again: the normal refresh re-issues the reader's, and only it.
    store_token(&m, &legit_token);
    let (code, v, all) = refresh(&m, &[]).await;
    assert_eq!(code, 0, "{all}");
    let e = west_in_east(&v);
    assert_eq!(e["action"], "refreshed", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("token for esc/istio-reader-service-account from context west"),
        "{e}"
    );
    let new = token_of(&stored_kubeconfig(&west_secret(&m), "west"));
    assert_ne!(new, legit_token);
    assert_eq!(
        user_of(&m.west, &new),
        "system:serviceaccount:esc:istio-reader-service-account"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_issues_tokens_for_the_reader_named_by_service_account_only() {
    // join made the reader `esc/mesh-reader`: refresh with the default reader refuses it...
    let m = joined(&["--service-account", "mesh-reader"]).await;
    let before = west_secret(&m);
    tripwire(&m.west);
    let (code, v, all) = refresh(&m, &[]).await;
    assert_eq!(code, 1, "{all}");
    let e = west_in_east(&v);
    assert_eq!(e["action"], "failed", "{e}");
    let why = e["reason"].as_str().unwrap();
    assert!(
        why.contains("claims service account esc/mesh-reader,"),
        "{why}"
    );
    assert!(why.contains("--service-account NAME"), "{why}");
    assert_eq!(rv(&west_secret(&m)), rv(&before));
    assert_eq!(m.west.faults().injected(), 0, "a TokenRequest was sent");
    m.west.faults().clear();

    // ...and refreshes it when told the same --service-account as join.
    let (code, v, all) = refresh(&m, &["--service-account", "mesh-reader"]).await;
    assert_eq!(code, 0, "{all}");
    assert_eq!(west_in_east(&v)["action"], "refreshed", "{all}");
    let new = token_of(&stored_kubeconfig(&west_secret(&m), "west"));
    assert_eq!(
        user_of(&m.west, &new),
        "system:serviceaccount:esc:mesh-reader"
    );

    // Not an object name: a usage error before anything is read.
    let mut args = both_contexts("credentials", m.kc());
    args.insert(1, "refresh");
    args.extend(["-n", NS, "--service-account", "Bad SA"]);
    let out = meshctl(&args).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--service-account"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_passes_the_reader_on_and_grants_nothing() {
    let m = mesh().await;
    let out = m
        .ok(&[
            "credentials",
            "cronjob",
            "--context",
            "west",
            "--context",
            "east",
            "--istio-namespace",
            NS,
            "--image",
            "example.com/meshctl:1",
            "--service-account",
            "mesh-reader",
        ])
        .await;
    assert!(
        out.contains("create on serviceaccounts/token with resourceNames [mesh-reader] in esc"),
        "{out}"
    );
    let docs: Vec<Value> = out
        .split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    // Only the job's own account (no token mounted) and the CronJob: no RBAC anywhere.
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "CronJob"], "{out}");
    assert_eq!(docs[0]["automountServiceAccountToken"], false);
    let cmd: Vec<&str> = docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        [0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let at = cmd
        .iter()
        .position(|c| *c == "--service-account")
        .expect("--service-account");
    assert_eq!(cmd[at + 1], "mesh-reader", "{cmd:?}");
    let n = cmd.iter().position(|c| *c == "-n").unwrap();
    assert_eq!(cmd[n + 1], NS);
    // A bad name is a usage error.
    let bad = usage_error(&[
        "credentials",
        "cronjob",
        "--context",
        "west",
        "--image",
        "i",
        "--service-account",
        "a/b",
    ])
    .await;
    assert!(bad.contains("--service-account"), "{bad}");
}
