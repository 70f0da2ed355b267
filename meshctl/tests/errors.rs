//! What meshctl says when a cluster cannot be used: a refused (401) credential is named as
//! such with the fix, never "cannot reach"; an unreachable server says so; and each cause of
//! an error is printed once.

mod common;

use common::*;
use std::path::PathBuf;

/// A kubeconfig like the mesh's, but west's user carries `token`.
fn kubeconfig_with_west_token(m: &Mesh, token: &str) -> PathBuf {
    let path = m.dir.path().join("revoked-kubeconfig");
    let yaml = m.west.kubeconfig_with_token("west", token);
    std::fs::write(&path, yaml).unwrap();
    path
}

/// No ": "-separated part of the message appears twice (a cause repeated by its wrapper).
fn assert_each_cause_once(stderr: &str) {
    let line = stderr.trim();
    let parts: Vec<&str> = line.split(": ").map(str::trim).collect();
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !parts[..i].contains(p),
            "{p:?} is printed twice in:\n{stderr}"
        );
    }
    assert!(!line.contains("Caused by"), "{stderr}");
}

async fn stderr_of(args: &[&str]) -> String {
    let out = meshctl(args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_credential_is_named_with_the_fix() {
    let m = mesh().await;
    let kc = kubeconfig_with_west_token(&m, "revoked-or-wrong-token");
    let err = stderr_of(&remote_secret_args(p(&kc), &[])).await;
    assert!(!err.contains("cannot reach"), "{err}");
    assert!(
        err.contains("refused the credential") && err.contains("401"),
        "{err}"
    );
    assert!(
        err.contains("user \"west\"") && err.contains("new credentials"),
        "the fix: {err}"
    );
    assert!(
        !err.contains("revoked-or-wrong-token"),
        "never print tokens: {err}"
    );
    assert_each_cause_once(&err);

    // check: the server answered, the credential did not pass.
    let out = meshctl(&[
        "check",
        "--kubeconfig",
        p(&kc),
        "--context",
        "west",
        "-o",
        "json",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |name: &str| check_item(&v, "cluster west", name);
    assert_eq!(find("API server reachable")["status"], "pass");
    let cred = find("credential accepted");
    assert_eq!(cred["status"], "fail");
    assert!(
        cred["hint"].as_str().unwrap().contains("new credentials"),
        "{cred}"
    );
    assert!(!v.to_string().contains("cannot reach"), "{v:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_remote_secret_token_is_named_with_the_fix() {
    let m = joined_ready_mesh().await;
    // Deleting the token Secret revokes the long-lived token the remote secret in west holds.
    m.east
        .store()
        .delete(
            "v1",
            "Secret",
            Some("istio-system"),
            "istio-reader-service-account-istio-remote-secret-token",
        )
        .unwrap();
    let out = meshctl(&check_args(m.kc(), &["-o", "json"])).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let i = check_item(&v, "secret for east in west", "kubeconfig works");
    assert_eq!(i["status"], "fail", "{i}");
    let d = i["detail"].as_str().unwrap();
    assert!(
        d.contains("refused the stored token") && d.contains("401") && !d.contains("cannot reach"),
        "{d}"
    );
    assert!(
        i["hint"].as_str().unwrap().contains("issue a new token"),
        "{i}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_says_so_and_prints_each_cause_once() {
    let m = mesh().await;
    let Mesh {
        west,
        dir: _dir,
        kubeconfig,
        ..
    } = m;
    let _stopped = west.stop().await;
    let err = stderr_of(&remote_secret_args(p(&kubeconfig), &[])).await;
    assert!(err.contains("cannot reach the API server"), "{err}");
    assert!(!err.contains("refused the credential"), "{err}");
    assert_each_cause_once(&err);
}
