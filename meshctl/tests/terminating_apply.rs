//! The writers besides `join` and the single-cluster commands (`tests/terminating.rs`) wait
//! for what they write when it is being deleted ("Terminating": a `deletionTimestamp`, held
//! by finalizers): `certs renew --apply` and `rotate` for `cacerts`, `credentials refresh`
//! for the remote secrets it rewrites. A write to such an object succeeds and is then lost
//! with it, so they wait up to `--deletion-wait` (default 2m) before their first change, or
//! change nothing (exit 1). Through the real binary on TEST API servers, which keep an object
//! with finalizers as a real API server does (marked until a write empties them).

mod common;

use std::path::Path;
use std::time::Duration;

use common::runs::{meshctl_then, meshctl_within, says};
use common::*;
use k8s_openapi::api::core::v1::Secret;
use k8s_test_server::{Fault, FaultRule, TestApiServer};
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const HOLD: &str = "test.meshctl.io/hold";
const CACERTS: &str = "Secret istio-system/cacerts";
const REMOTE: &str = "Secret istio-system/istio-remote-secret-west";

fn stored_secret(s: &TestApiServer, name: &str) -> Option<Value> {
    s.store().get("v1", "Secret", Some("istio-system"), name)
}

fn terminating(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// Gives Secret istio-system/`name` a finalizer of the test's own, then deletes it: it stays,
/// marked, until the finalizer is taken off.
fn hold_and_delete(s: &TestApiServer, name: &str) {
    let mut obj = stored_secret(s, name).expect("the Secret exists");
    obj["metadata"]["finalizers"] = json!([HOLD]);
    s.store().apply(obj).unwrap();
    s.store()
        .delete("v1", "Secret", Some("istio-system"), name)
        .unwrap();
    assert!(terminating(&stored_secret(s, name).unwrap()));
}

/// Takes the test's finalizer off Secret istio-system/`name` (a merge patch, as the
/// controller holding it would), which deletes it.
fn release(
    s: &TestApiServer,
    ctx: &str,
    name: &'static str,
) -> impl std::future::Future<Output = ()> + use<> {
    let yaml = s.kubeconfig(ctx);
    async move {
        let client = client_from_yaml(&yaml).await;
        let api: Api<Secret> = Api::namespaced(client, "istio-system");
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    }
}

fn bundle_files(dir: &Path) -> Vec<String> {
    [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ]
    .iter()
    .map(|f| std::fs::read_to_string(dir.join(f)).unwrap())
    .collect()
}

/// `certs renew --apply` with west's `cacerts` being deleted waits (default `--deletion-wait`)
/// for the Secret to go (played once meshctl says it waits), then applies the renewed bundle anew, so
/// `cacerts` exists afterwards. (Without the wait it applied to the Secret being deleted at
/// once, reported success, and `cacerts` was gone once the finalizer came off.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_renew_apply_waits_for_cacerts_being_deleted() {
    let m = mesh_with_cacerts().await;
    hold_and_delete(&m.west, "cacerts");
    let west_dir = m.certs.join("west");
    let files = bundle_files(&west_dir);
    let release = release(&m.west, "west", "cacerts");
    let args = renew_west_args(&m, &m.certs, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let waits = "west: waiting for";
    let (out, _) = meshctl_then(Duration::from_secs(60), &args, waits, release).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    says(
        &all,
        &[&format!(
            "west: waiting for {CACERTS} to finish deleting (finalizers: {HOLD})"
        )],
    );
    let cacerts = stored_secret(&m.west, "cacerts").expect("cacerts exists after the renewal");
    assert!(!terminating(&cacerts), "{cacerts:#}");
    assert_ne!(bundle_files(&west_dir), files, "renewed on disk");
}

/// The deletion outlasts `--deletion-wait 1s`: `certs renew --apply` stops (exit 1) naming
/// the Secret, its finalizer and the flag, with neither the bundle on disk nor the cluster
/// changed; a dry run only says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_renew_apply_changes_nothing_when_the_deletion_outlasts_the_wait() {
    let m = mesh_with_cacerts().await;
    hold_and_delete(&m.west, "cacerts");
    let west_dir = m.certs.join("west");
    let files = bundle_files(&west_dir);
    let before = m.settled_snapshots().await;

    let args = renew_west_args(&m, &m.certs, &["--deletion-wait", "1s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}\n{all}");
    says(
        &all,
        &[
            &format!("west: waiting for {CACERTS} to finish deleting (finalizers: {HOLD})"),
            &format!("{CACERTS} (finalizers: {HOLD}) is still being deleted after 1s"),
            "kubectl --context west get secret -n istio-system cacerts -w",
            "--deletion-wait (now 1s)",
            "Nothing was changed",
            "is unchanged",
        ],
    );
    assert_eq!(
        bundle_files(&west_dir),
        files,
        "the bundle on disk is unchanged"
    );
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");

    let dry = renew_west_args(&m, &m.certs, &["--dry-run"]);
    let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
    let (out, took) = meshctl_within(Duration::from_secs(30), &dry).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    says(
        &all,
        &[&format!(
            "# dry run: context \"west\": {CACERTS} is being deleted (finalizers: {HOLD}); a real run waits up to 2m"
        )],
    );
    assert_eq!(bundle_files(&west_dir), files);
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");
}

/// `rotate prepare` with west's `cacerts` being deleted waits (default `--deletion-wait`)
/// for the Secret to go (played once meshctl says it waits), reads every cluster again and then refuses, as
/// for a cluster without `cacerts`, with nothing changed in east or in `--dir`. (Without the
/// wait it wrote a two-root bundle into the Secret being deleted and exited 0, and the
/// rotation's state in west went with the Secret.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_waits_for_cacerts_being_deleted() {
    let m = mesh_with_cacerts().await;
    hold_and_delete(&m.west, "cacerts");
    let east_before = settled_snapshot(&m.east).await;
    let dir = m.dir.path().join("rotation");
    let release = release(&m.west, "west", "cacerts");
    let args = m.rotate_args("prepare", &dir);
    let waits = "west: waiting for";
    let (out, _) = meshctl_then(Duration::from_secs(60), &args, waits, release).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    says(
        &all,
        &[
            &format!("west: waiting for {CACERTS} to finish deleting (finalizers: {HOLD})"),
            "context \"west\" has no Secret istio-system/cacerts",
            "nothing was changed",
        ],
    );
    assert!(stored_secret(&m.west, "cacerts").is_none());
    assert_eq!(
        settled_snapshot(&m.east).await,
        east_before,
        "east unchanged"
    );
    assert!(!dir.join("root-key.pem").exists(), "no root written");
}

/// The deletion outlasts `--deletion-wait 1s`: `rotate prepare` stops (exit 1) with nothing
/// changed in either cluster or in `--dir`; a dry run says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_changes_nothing_when_the_deletion_outlasts_the_wait() {
    let m = mesh_with_cacerts().await;
    hold_and_delete(&m.west, "cacerts");
    let before = m.settled_snapshots().await;
    let dir = m.dir.path().join("rotation");

    let mut args = m.rotate_args("prepare", &dir);
    args.extend(["--deletion-wait", "1s"]);
    let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}\n{all}");
    says(
        &all,
        &[
            &format!("west: waiting for {CACERTS} to finish deleting (finalizers: {HOLD})"),
            &format!("{CACERTS} (finalizers: {HOLD}) is still being deleted after 1s"),
            "Nothing was changed (in the clusters or on disk)",
        ],
    );
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");
    assert!(!dir.join("root-key.pem").exists(), "no root written");

    let mut dry = m.rotate_args("prepare", &dir);
    dry.push("--dry-run");
    let (out, _) = meshctl_within(Duration::from_secs(30), &dry).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    says(
        &all,
        &[&format!(
            "# dry run: context \"west\": {CACERTS} is being deleted"
        )],
    );
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");
    assert!(!dir.join("root-key.pem").exists(), "no root written");
}

/// Both clusters' tokens (1h) minted 50 minutes ago: both due.
async fn joined_with_due_tokens() -> Mesh {
    let m = mesh().await;
    let age = Duration::from_secs(50 * 60);
    m.west.clock().rewind(age);
    m.east.clock().rewind(age);
    m.join(&["--token-ttl", "1h"]).await;
    m.west.clock().advance(age);
    m.east.clock().advance(age);
    m
}

async fn refresh(m: &Mesh, extra: &[&str]) -> (Option<i32>, Duration, Value, String) {
    let args = refresh_args(m, extra);
    let (out, took) = meshctl_within(Duration::from_secs(60), &args).await;
    let all = text(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (out.status.code(), took, v, all)
}

fn refresh_args<'a>(m: &'a Mesh, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = both_contexts("credentials", m.kc());
    args.insert(1, "refresh");
    args.extend(["-o", "json"]);
    args.extend_from_slice(extra);
    args
}

/// [`refresh`], with `then` played once it says `said`.
async fn refresh_then(
    m: &Mesh,
    said: &str,
    then: impl std::future::Future<Output = ()>,
) -> (Option<i32>, Value, String) {
    let args = refresh_args(m, &[]);
    let (out, _) = meshctl_then(Duration::from_secs(60), &args, said, then).await;
    let all = text(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (out.status.code(), v, all)
}

fn outcome(v: &Value, stored_in: &str, cluster: &str) -> Value {
    v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stored_in"] == stored_in && e["cluster"] == cluster)
        .unwrap_or_else(|| panic!("no {stored_in}/{cluster} in {v:#}"))
        .clone()
}

/// `credentials refresh` with west's remote secret in east being deleted waits (default
/// `--deletion-wait`) for it to go (played once meshctl says it waits) before minting anything, and then has
/// nothing to write there; east's token (stored in west) is refreshed. (Without the wait it
/// wrote a new token into the Secret being deleted at once and reported it refreshed.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refresh_waits_for_a_remote_secret_being_deleted() {
    let m = joined_with_due_tokens().await;
    hold_and_delete(&m.east, "istio-remote-secret-west");
    let release = release(&m.east, "east", "istio-remote-secret-west");
    let (code, v, all) = refresh_then(&m, "east: waiting for", release).await;
    assert_eq!(code, Some(0), "{all}");
    says(
        &all,
        &[&format!(
            "east: waiting for {REMOTE} to finish deleting (finalizers: {HOLD})"
        )],
    );
    assert!(
        v["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["stored_in"] != "east"),
        "the Secret is gone, nothing refreshed into it: {v:#}"
    );
    assert_eq!(outcome(&v, "west", "east")["action"], "refreshed", "{all}");
    assert!(stored_secret(&m.east, "istio-remote-secret-west").is_none());
}

/// The deletion outlasts `--deletion-wait 1s`: that line fails (exit 1) naming the Secret,
/// its finalizer and the flag, no token is requested from west and the Secret is not
/// written, while east's token (stored in west) is refreshed: one Secret stuck in deletion
/// does not let the others' tokens lapse. A dry run says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refresh_fails_only_that_secret_when_the_deletion_outlasts_the_wait() {
    let m = joined_with_due_tokens().await;
    hold_and_delete(&m.east, "istio-remote-secret-west");
    let held_rv =
        stored_secret(&m.east, "istio-remote-secret-west").unwrap()["metadata"]["resourceVersion"]
            .clone();
    // Any TokenRequest to west (which only the held secret needs) fails and is counted.
    m.west.faults().inject(
        FaultRule::new(Fault::Internal)
            .verb("create")
            .resource("serviceaccounts"),
    );

    let (code, took, v, all) = refresh(&m, &["--dry-run"]).await;
    assert_eq!(code, Some(0), "{all}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    says(
        &all,
        &[&format!(
            "# dry run: context \"east\": {REMOTE} is being deleted (finalizers: {HOLD}); a real run waits up to 2m"
        )],
    );
    assert_eq!(outcome(&v, "east", "west")["action"], "would-refresh");

    let (code, took, v, all) = refresh(&m, &["--deletion-wait", "1s"]).await;
    assert_eq!(code, Some(1), "{all}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}\n{all}");
    let held = outcome(&v, "east", "west");
    assert_eq!(held["action"], "failed", "{held}");
    let why = held["reason"].as_str().unwrap();
    let still_deleting = format!("{REMOTE} (finalizers: {HOLD}) is still being deleted after 1s");
    for want in [
        still_deleting.as_str(),
        "kubectl --context east get secret -n istio-system istio-remote-secret-west -w",
        "no token was requested and this key is unchanged",
        "--deletion-wait (now 1s)",
    ] {
        assert!(why.contains(want), "{want:?} not in: {why}");
    }
    says(
        &all,
        &[&format!(
            "east: waiting for {REMOTE} to finish deleting (finalizers: {HOLD})"
        )],
    );
    assert_eq!(outcome(&v, "west", "east")["action"], "refreshed", "{all}");
    assert_eq!(
        m.west.faults().injected(),
        0,
        "a TokenRequest was sent to west"
    );
    let still = stored_secret(&m.east, "istio-remote-secret-west").unwrap();
    assert_eq!(still["metadata"]["resourceVersion"], held_rv, "not written");
}
