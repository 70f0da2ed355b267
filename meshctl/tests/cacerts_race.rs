//! Two `meshctl cacerts apply` runs at the same time, with bundles from different roots: the
//! "different root needs --force" guard must hold although both read the cluster before
//! either writes. The write is conditional on what was read (a create that fails if the
//! Secret appeared, an apply carrying the resourceVersion that was compared), and on a 409
//! the loser reads again and refuses.

mod common;

use std::time::Duration;

use common::runs::{run, says};
use common::*;
use k8s_test_server::{Fault, FaultRule};
use serde_json::Value;

/// How many overlapping pairs of runs each race test starts (before the fix about half of
/// them let both runs succeed).
const ROUNDS: usize = 24;

/// The decoded `root-cert.pem` of west's `cacerts`.
fn stored_root(m: &Mesh) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let s = secret(&m.west, "cacerts")?;
    base64::engine::general_purpose::STANDARD
        .decode(s["data"]["root-cert.pem"].as_str()?)
        .ok()
}

/// A second tree from another root, in `<mesh dir>/<name>`.
async fn other_root(m: &Mesh, name: &str) -> std::path::PathBuf {
    let other = m.dir.path().join(name);
    m.ok(&[
        "certs",
        "init",
        "--clusters",
        "west,east",
        "--out",
        p(&other),
    ])
    .await;
    other
}

fn delete_cacerts(m: &Mesh) {
    let _ = m
        .west
        .store()
        .delete("v1", "Secret", Some("istio-system"), "cacerts");
}

/// Starts `cacerts apply` of `a` and of `b` in west at the same time; their exit codes and
/// outputs.
async fn both(m: &Mesh, a: &str, b: &str) -> [(Option<i32>, String); 2] {
    let args_a = cacerts_apply_args(m.kc(), a, "west", &[]);
    let args_b = cacerts_apply_args(m.kc(), b, "west", &[]);
    let ((ca, _, ta), (cb, _, tb)) = tokio::join!(run(&args_a), run(&args_b));
    [(ca, ta), (cb, tb)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_with_different_roots_never_both_succeed() {
    let m = mesh().await;
    let other = other_root(&m, "certs2").await;
    let bundle_a = m.certs.join("west");
    let bundle_b = other.join("west");
    let root_a = std::fs::read(m.certs.join("root-cert.pem")).unwrap();
    let root_b = std::fs::read(other.join("root-cert.pem")).unwrap();
    let started = std::time::Instant::now();
    for round in 0..ROUNDS {
        delete_cacerts(&m);
        // Alternate which one is started first.
        let (first, second) = if round % 2 == 0 {
            (&bundle_a, &bundle_b)
        } else {
            (&bundle_b, &bundle_a)
        };
        let outs = both(&m, p(first), p(second)).await;
        let ok: Vec<&(Option<i32>, String)> = outs.iter().filter(|(c, _)| *c == Some(0)).collect();
        assert_eq!(
            ok.len(),
            1,
            "round {round}: exactly one run may install its root without --force:\n{}\n----\n{}",
            outs[0].1,
            outs[1].1
        );
        let (_, refused) = outs.iter().find(|(c, _)| *c != Some(0)).unwrap();
        says(refused, &["different root certificate", "--force"]);
        // A refusal, not an interruption: no advice to re-run the same command.
        assert!(!refused.contains("re-run the same command"), "{refused}");
        // The Secret holds the winner's root.
        let winner_is_a = outs
            .iter()
            .zip([first, second])
            .any(|((c, _), b)| *c == Some(0) && *b == bundle_a);
        let stored = stored_root(&m).expect("cacerts exists");
        let want = if winner_is_a { &root_a } else { &root_b };
        assert_eq!(
            pem_text(&stored),
            pem_text(want),
            "round {round}: the root of the run that succeeded"
        );
        assert!(started.elapsed() < Duration::from_secs(240), "bounded");
    }
}

/// The certificate blocks of a PEM text (the Secret holds canonical PEM).
fn pem_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_replaced_between_read_and_write_is_not_overwritten() {
    // West has root A; one run applies a renewed bundle of root A while another run
    // replaces the root with --force. Without a conditional write the first could put root A
    // back over root B without --force.
    let m = mesh().await;
    let other = other_root(&m, "certs2").await;
    let (bundle_a, bundle_b) = (m.certs.join("west"), other.join("west"));
    let east_a = m.certs.join("east");
    let root_b = std::fs::read(other.join("root-cert.pem")).unwrap();
    for round in 0..ROUNDS {
        delete_cacerts(&m);
        runs::succeeds(&cacerts_apply_args(m.kc(), p(&bundle_a), "west", &[])).await;
        // Same root, other intermediate (east's bundle): a change, not a new root.
        let plain = cacerts_apply_args(m.kc(), p(&east_a), "west", &[]);
        let forced = cacerts_apply_args(m.kc(), p(&bundle_b), "west", &["--force"]);
        let ((cp, _, tp), (cf, _, tf)) = tokio::join!(run(&plain), run(&forced));
        assert_eq!(cf, Some(0), "round {round}: --force always applies:\n{tf}");
        let stored = stored_root(&m).expect("cacerts exists");
        if cp == Some(0) && pem_text(&stored) != pem_text(&root_b) {
            // The plain run wrote last: it must have compared against root A, i.e. the
            // forced run had not written yet when it wrote. Then the forced run wrote
            // afterwards and the Secret would hold root B; it does not.
            panic!("round {round}: root A was put back over root B without --force:\n{tp}");
        }
        if cp != Some(0) {
            says(&tp, &["different root certificate", "--force"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_with_the_same_root_both_succeed() {
    let m = mesh().await;
    let (west, east) = (m.certs.join("west"), m.certs.join("east"));
    for round in 0..4 {
        delete_cacerts(&m);
        let outs = both(&m, p(&west), p(&east)).await;
        for (code, out) in &outs {
            assert_eq!(*code, Some(0), "round {round}: same root:\n{out}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_is_retried_and_a_writer_that_never_stops_is_named() {
    let m = mesh().await;
    let west = m.certs.join("west");
    let east = m.certs.join("east");
    runs::succeeds(&cacerts_apply_args(m.kc(), p(&west), "west", &[])).await;
    // One 409 on the write: read again, compare again, write again.
    m.west.faults().inject(
        FaultRule::new(Fault::conflict())
            .verb("patch")
            .resource("secrets")
            .times(1),
    );
    let out = runs::succeeds(&cacerts_apply_args(m.kc(), p(&east), "west", &[])).await;
    says(&out, &["cacerts applied"]);
    assert_eq!(m.west.faults().injected(), 1);
    m.west.faults().clear();
    // A 409 on every write: bounded, and says why.
    m.west.faults().inject(
        FaultRule::new(Fault::conflict())
            .verb("patch")
            .resource("secrets"),
    );
    let out = runs::interrupted(&cacerts_apply_args(m.kc(), p(&west), "west", &[])).await;
    says(&out, &["changed by another writer", "was not updated"]);
    assert_eq!(m.west.faults().injected(), 1 + 5);
    m.west.faults().clear();
    let stored: Value = secret(&m.west, "cacerts").unwrap();
    assert!(stored["data"]["ca-cert.pem"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cacerts_deleted_between_read_and_write_is_created_again() {
    // The apply carries the resourceVersion read, so with the Secret gone it would create it,
    // which the API server refuses (500, a resourceVersion on a create): read again, create.
    let m = mesh().await;
    let (west, east) = (m.certs.join("west"), m.certs.join("east"));
    runs::succeeds(&cacerts_apply_args(m.kc(), p(&west), "west", &[])).await;
    let store = m.west.store().clone();
    m.west.faults().interleave("patch", "secrets", move || {
        store
            .delete("v1", "Secret", Some("istio-system"), "cacerts")
            .unwrap();
    });
    let out = runs::succeeds(&cacerts_apply_args(m.kc(), p(&east), "west", &[])).await;
    says(&out, &["cacerts applied"]);
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the delete ran");
    let stored = secret(&m.west, "cacerts").expect("created again");
    let want = std::fs::read(east.join("ca-cert.pem")).unwrap();
    use base64::Engine as _;
    let got = base64::engine::general_purpose::STANDARD
        .decode(stored["data"]["ca-cert.pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(got, want, "east's bundle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_says_what_was_not_done() {
    // A missing cacerts is created with POST (so that a concurrent create gets 409): a failure
    // there is told as a create, and nothing is said to restart.
    let m = mesh().await;
    let east = m.certs.join("east");
    let apply = cacerts_apply_args(m.kc(), p(&east), "east", &["-n", "other"]);
    runs::outage(&m.east, Fault::Unavailable, "create", "secrets");
    let all = runs::interrupted(&apply).await;
    says(
        &all,
        &[
            "creating Secret other/cacerts in context \"east\"",
            "503 ServiceUnavailable",
            "cacerts in context \"east\" was not updated (namespace other may have been \
             created): istiod keeps its current CA; re-run the same command to resume",
        ],
    );
    assert!(!all.contains("restart"), "{all}");
    m.east.faults().clear();
    let out = runs::succeeds(&apply).await;
    says(
        &out,
        &[
            "cacerts applied",
            "kubectl -n other rollout restart deploy/istiod",
        ],
    );
}
