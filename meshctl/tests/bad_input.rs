//! Bad input never panics and never leaves partial state: out-of-range validities are usage
//! errors (exit 2), every output path and every cluster is checked before the first write,
//! and an unreadable token expiry is shown for its own line only.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

async fn code_and_text(args: &[&str]) -> (Option<i32>, String) {
    let out = meshctl(args).await;
    (out.status.code(), text(&out))
}

/// Every file under `dir` with its contents.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.insert(path.display().to_string(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn out_of_range_validities_are_usage_errors_not_panics() {
    let m = mesh().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let west = m.certs.join("west");
    let (root_cert, root_key) = (m.certs.join("root-cert.pem"), m.certs.join("root-key.pem"));
    let cases: Vec<Vec<&str>> = vec![
        vec![
            "certs",
            "init",
            "--clusters",
            "w",
            "--days",
            "99999999",
            "--out",
            p(&out),
        ],
        vec![
            "certs",
            "init",
            "--clusters",
            "w",
            "--root-days",
            "36501",
            "--out",
            p(&out),
        ],
        vec![
            "certs",
            "init",
            "--clusters",
            "w",
            "--days",
            "0",
            "--out",
            p(&out),
        ],
        vec!["certs", "root", "--days", "3000000", "--out", p(&out)],
        workload_args(&west, "a", "b", &out, &["--hours", "4000000000"]),
        workload_args(&west, "a", "b", &out, &["--hours", "87601"]),
        intermediate_args(&root_cert, &root_key, "x", &out, &["--days", "4000000"]),
        renew_args(&west, &root_cert, &root_key, &["--days", "99999999"]),
        vec![
            "rotate",
            "prepare",
            "--kubeconfig",
            m.kc(),
            "--context",
            "west",
            "--dir",
            p(&out),
            "--root-days",
            "99999999",
            "--dry-run",
        ],
    ];
    let before = tree(&m.certs);
    for args in cases {
        let (code, t) = code_and_text(&args).await;
        assert_eq!(code, Some(2), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
        assert!(t.contains("is not in 1..="), "{args:?}: {t}");
    }
    assert!(!out.exists());
    assert_eq!(tree(&m.certs), before, "nothing changed on disk");
    // The maxima themselves work, and stay far from 9999-12-31.
    m.ok(&["certs", "root", "--days", "36500", "--out", p(&out)])
        .await;
    m.ok(&workload_args(
        &west,
        "a",
        "b",
        &dir.path().join("w"),
        &["--hours", "87600"],
    ))
    .await;
}

#[tokio::test]
async fn a_cluster_listed_twice_is_a_usage_error_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c");
    let (code, t) = code_and_text(&["certs", "init", "--clusters", "a,a", "--out", p(&out)]).await;
    assert_eq!(code, Some(2), "{t}");
    assert!(t.contains("listed twice"), "{t}");
    assert!(!out.exists());
}

#[tokio::test]
async fn an_output_path_that_cannot_be_a_directory_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::create_dir(&pw).unwrap();
    std::fs::write(pw.join("b"), "x\n").unwrap();
    let (code, t) = code_and_text(&["certs", "init", "--clusters", "a,b", "--out", p(&pw)]).await;
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("is not a directory") && t.contains("nothing was written"),
        "{t}"
    );
    let names: Vec<_> = std::fs::read_dir(&pw)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["b"], "only the file that was there");
}

#[tokio::test]
async fn an_expired_root_says_so_and_how_to_replace_it() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let root = pki::RootCa::generate(&pki::RootOptions {
        not_before: Some(now - time::Duration::days(20)),
        not_after: Some(now - time::Duration::days(1)),
        ..Default::default()
    })
    .unwrap();
    let r = dir.path().join("root");
    root.write_dir(&r, false).unwrap();
    let out = dir.path().join("x");
    let (code, t) = code_and_text(&intermediate_args(
        &r.join("root-cert.pem"),
        &r.join("root-key.pem"),
        "x",
        &out,
        &[],
    ))
    .await;
    assert_eq!(code, Some(1), "{t}");
    assert!(
        t.contains("expired on") && t.contains("rotate prepare"),
        "{t}"
    );
    assert!(!t.contains("is not after notBefore"), "{t}");
    assert!(!out.exists());
}

#[tokio::test]
async fn finish_refuses_a_zero_or_absurd_workload_lifetime() {
    for (value, want) in [
        ("0s", "shorter than 1m"),
        ("59s", "shorter than 1m"),
        ("9999999999h", "longer than 87600h"),
    ] {
        let (code, t) = code_and_text(&[
            "rotate",
            "finish",
            "--context",
            "west",
            "--workload-lifetime",
            value,
        ])
        .await;
        assert_eq!(code, Some(2), "{value}: {t}");
        assert!(t.contains(want) && !t.contains("panicked"), "{value}: {t}");
    }
}

fn jwt(claims: Value) -> String {
    use base64::Engine as _;
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!("{}.{}.sig", b(&json!({"alg": "RS256"})), b(&claims))
}

/// Replaces the token of remote secret `istio-remote-secret-<cluster>` stored in `s`.
fn set_token(s: &k8s_test_server::TestApiServer, cluster: &str, token: &str) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut secret = secret(s, &format!("istio-remote-secret-{cluster}")).unwrap();
    let mut kc: Value = serde_yaml::from_str(&stored_kubeconfig(&secret, cluster)).unwrap();
    kc["users"][0]["user"]["token"] = json!(token);
    secret["data"][cluster] = json!(b64.encode(serde_yaml::to_string(&kc).unwrap()));
    s.store().apply(secret).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_token_expiry_is_shown_as_invalid_on_its_own_line() {
    let m = joined_mesh().await;
    let sub = "system:serviceaccount:istio-system:istio-reader-service-account";
    for exp in [json!(253_402_300_800u64), json!(1e300)] {
        set_token(
            &m.west,
            "east",
            &jwt(json!({"iat": 0, "exp": exp, "sub": sub})),
        );
        let mut args = both_contexts("status", m.kc());
        args.insert(0, "credentials");
        let (code, t) = code_and_text(&args).await;
        assert_eq!(code, Some(0), "{exp}: {t}");
        let line = t
            .lines()
            .find(|l| l.contains("istio-remote-secret-east"))
            .unwrap_or_else(|| panic!("{t}"));
        assert!(line.contains("invalid expiry"), "{exp}: {t}");
        assert!(!line.contains("never expires"), "{exp}: {t}");
        assert!(
            t.contains("istio-remote-secret-west"),
            "the other line is still there: {t}"
        );
        args.extend(["-o", "json"]);
        let out = meshctl(&args).await;
        assert_eq!(out.status.code(), Some(0), "{exp}: {}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = v["credentials"].as_array().unwrap();
        assert_eq!(rows.len(), 2, "{v:#}");
        let bad = rows.iter().find(|r| r["stored_in"] == "west").unwrap();
        assert_eq!(bad["remaining"], "invalid expiry", "{bad:#}");
        assert_eq!(bad["credential"]["kind"], "invalid-expiry", "{bad:#}");
        assert!(
            bad["error"].as_str().unwrap().contains("exp claim"),
            "{bad:#}"
        );
        let good = rows.iter().find(|r| r["stored_in"] == "east").unwrap();
        assert!(good["error"].is_null(), "{good:#}");
    }
}

/// Runs a `join` that must fail, and checks that neither cluster changed.
async fn join_changes_nothing(m: &Mesh, args: &[&str], want: &str) {
    let before = m.settled_snapshots().await;
    let t = m.fails(args).await;
    assert!(t.contains(want), "{t}");
    assert!(
        t.contains("Nothing was changed") || t.contains("nothing was changed"),
        "{t}"
    );
    let after = m.settled_snapshots().await;
    assert_eq!(after.0, before.0, "west changed: {t}");
    assert_eq!(after.1, before.1, "east changed: {t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_validates_every_flag_before_the_first_write() {
    let m = mesh().await;
    let args = m.join_args(&["--protocols", "both", "--trust-domain", "a/b"]);
    let before = settled_snapshot(&m.west).await;
    // Usage errors: exit 2.
    let t = usage_error(&args).await;
    assert!(t.contains("--trust-domain \"a/b\""), "{t}");
    assert_eq!(settled_snapshot(&m.west).await, before, "{t}");
    let args = m.join_args(&["--service-annotation", "no-equals-sign"]);
    let t = usage_error(&args).await;
    assert!(t.contains("expected KEY=VALUE"), "{t}");
    assert_eq!(settled_snapshot(&m.west).await, before, "{t}");
    let args = m.join_args(&["--service-annotation", "=x"]);
    let t = usage_error(&args).await;
    assert!(t.contains("not a valid annotation key"), "{t}");
    assert_eq!(settled_snapshot(&m.west).await, before, "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_checks_secret_name_in_every_cluster_before_writing() {
    let m = mesh().await;
    let args = m.join_args(&["--secret-name", "nope"]);
    join_changes_nothing(&m, &args, "Secret istio-system/nope not found").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_a_read_only_context_changes_no_cluster() {
    let m = mesh().await;
    east_read_only(&m).await;
    let args = m.join_args(&[]);
    join_changes_nothing(&m, &args, "SelfSubjectAccessReview").await;
    let t = m.fails(&args).await;
    assert!(
        t.contains("context \"east\"") && t.contains("secrets"),
        "{t}"
    );
    // Its dry run says so too (before: exit 0).
    let mut dry = args.clone();
    dry.push("--dry-run");
    let t = m.fails(&dry).await;
    assert!(t.contains("SelfSubjectAccessReview"), "{t}");
}

/// unjoin checks every cluster's rights before its first delete: with east read-only, west
/// (listed first) keeps everything too. Before, west was removed and east failed with 403:
/// "The mesh is half removed" (found by an audit session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_with_a_read_only_context_removes_nothing() {
    let m = joined_mesh().await;
    east_read_only(&m).await;
    let before = (snapshot(&m.west), snapshot(&m.east));
    let t = m.fails(&m.unjoin_args(&[])).await;
    assert!(
        t.contains("context \"east\" may not make the changes unjoin makes")
            && t.contains("Nothing was removed"),
        "{t}"
    );
    assert_eq!((snapshot(&m.west), snapshot(&m.east)), before);
    let t = m.fails(&m.unjoin_args(&["--dry-run"])).await;
    assert!(t.contains("SelfSubjectAccessReview"), "{t}");
}

/// Makes the mesh's kubeconfig reach east as a service account that may read everything and
/// write nothing.
async fn east_read_only(m: &Mesh) {
    let store = m.east.store();
    store
        .apply(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "ro", "namespace": "default"}}))
        .unwrap();
    store
        .apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "read-all"},
            "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["get", "list", "watch"]}]}))
        .unwrap();
    store
        .apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "read-all"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "read-all"},
            "subjects": [{"kind": "ServiceAccount", "name": "ro", "namespace": "default"}]}))
        .unwrap();
    let admin = client_from_yaml(&m.east.kubeconfig("east")).await;
    let token =
        testkit::kube_client::service_account_token(&admin, "default", "ro", &[], Some(3600)).await;
    let mut kc: Value =
        serde_yaml::from_str(&kubeconfig_yaml(&[("west", &m.west), ("east", &m.east)])).unwrap();
    kc["users"][1]["user"]["token"] = json!(token);
    std::fs::write(&m.kubeconfig, serde_yaml::to_string(&kc).unwrap()).unwrap();
}

/// A dry run refuses what the run refuses: each read-only check the run makes before its
/// first write is made by the dry run too (before, each of these dry runs exited 0 and the
/// run 1; found by an audit session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_refuse_what_the_runs_refuse() {
    let m = mesh().await;
    let before = (snapshot(&m.west), snapshot(&m.east));
    let cases: [(Vec<&str>, &str); 3] = [
        (
            m.join_args(&["--ambient", "--dry-run"]),
            "gateways.gateway.networking.k8s.io",
        ),
        (
            m.join_args(&["--expose-services", "--dry-run"]),
            "gateways.networking.istio.io",
        ),
        (
            m.join_args(&[
                "--service-account",
                "reader2",
                "--create-service-account=false",
                "--dry-run",
            ]),
            "reader2 not found",
        ),
    ];
    for (args, said) in cases {
        let t = m.fails(&args).await;
        assert!(t.contains(said), "{args:?}: {t}");
    }
    let secret = create_remote_secret_args(
        m.kc(),
        "west",
        "west",
        &[
            "--service-account",
            "reader2",
            "--create-service-account=false",
            "--dry-run",
            "--allow-loopback-server",
        ],
    );
    let t = m.fails(&secret).await;
    assert!(t.contains("reader2 not found"), "{t}");
    assert_eq!((snapshot(&m.west), snapshot(&m.east)), before);
}

/// [`renew_args`] applying the renewed bundle through the mesh's kubeconfig.
fn renew_apply_args<'a>(m: &'a Mesh, ca: &'a Path, cert: &'a Path, key: &'a Path) -> Vec<&'a str> {
    renew_args(ca, cert, key, &["--kubeconfig", m.kc(), "--apply"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_apply_checks_the_cluster_before_rewriting_the_bundle() {
    let m = mesh().await;
    let west = m.certs.join("west");
    let (cert, key) = (m.certs.join("root-cert.pem"), m.certs.join("root-key.pem"));
    let before = tree(&m.certs);
    // An unknown context.
    let mut args = renew_apply_args(&m, &west, &cert, &key);
    args.extend(["--context", "nope"]);
    let t = m.fails(&args).await;
    assert!(t.contains("nope"), "{t}");
    assert_eq!(tree(&m.certs), before, "bundle unchanged: {t}");
    // west's cacerts has another root: applying would be refused, so nothing is written.
    let other = m.dir.path().join("other");
    m.ok(&["certs", "init", "--clusters", "west", "--out", p(&other)])
        .await;
    m.ok(&cacerts_apply_args(
        m.kc(),
        p(&other.join("west")),
        "west",
        &[],
    ))
    .await;
    let mut args = renew_apply_args(&m, &west, &cert, &key);
    args.extend(["--context", "west"]);
    let t = m.fails(&args).await;
    assert!(
        t.contains("different root") && t.contains("nothing was written"),
        "{t}"
    );
    assert_eq!(tree(&m.certs), before, "bundle unchanged: {t}");
}

/// Flag values that would only fail much later (a pull, a certificate SAN, a forged line in a
/// printed manifest) are refused up front.
#[tokio::test]
async fn flag_values_that_fail_later_are_refused_at_once() {
    let m = mesh().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w");
    let west = m.certs.join("west");
    let west = west.to_str().unwrap();
    let workload = |dns: &str| {
        vec![
            "certs".to_string(),
            "workload".into(),
            "--ca".into(),
            west.into(),
            "-n".into(),
            "a".into(),
            "-s".into(),
            "b".into(),
            "--out".into(),
            out.to_str().unwrap().into(),
            format!("--dns={dns}"),
        ]
    };
    for dns in ["", "a b", "-a.example", "a..b"] {
        let args = workload(dns);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, text) = code_and_text(&args).await;
        assert_eq!(code, Some(2), "--dns {dns:?}: {text}");
        assert!(text.contains("is not a DNS name"), "{text}");
    }
    assert!(!out.exists(), "nothing written");
    let args = workload("*.catalog.example");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = code_and_text(&args).await;
    assert_eq!(code, Some(0), "{text}");
    for image in ["", "a b", "img\nx"] {
        let (code, text) = code_and_text(&[
            "gateway",
            "manifest",
            "--network",
            "n",
            "--gateway-image",
            image,
        ])
        .await;
        assert_eq!(code, Some(2), "{image:?}: {text}");
        assert!(text.contains("is not an image reference"), "{text}");
    }
    let (code, text) = code_and_text(&[
        "check",
        "--context",
        "west",
        "--cluster-name",
        "west=BAD_NAME",
    ])
    .await;
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("--cluster-name west=BAD_NAME"), "{text}");
    let (code, text) = code_and_text(&[
        "credentials",
        "cronjob",
        "--context",
        "west\napiVersion: v1",
        "--kubeconfig-secret",
        "k",
        "--image",
        "meshfed/gateway:dev",
    ])
    .await;
    assert_ne!(code, Some(0), "{text}");
    assert!(text.contains("no control characters"), "{text}");
    assert!(!text.contains("kind: CronJob"), "{text}");
}
