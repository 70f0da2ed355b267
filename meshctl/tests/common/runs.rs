//! Running meshctl against failing clusters: bounded runs, the expected exit, the words.

use std::process::Output;
use std::time::{Duration, Instant};

use k8s_test_server::{Fault, FaultRule, TestApiServer};

use super::{MESHCTL, text};

/// Runs meshctl, killed after `limit` (a hang fails the test instead of stalling it).
pub async fn meshctl_within(limit: Duration, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let child = tokio::process::Command::new(MESHCTL)
        .args(args)
        .env_remove("KUBECONFIG")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, child)
        .await
        .unwrap_or_else(|_| panic!("meshctl {args:?} still running after {limit:?}"))
        .expect("run meshctl");
    (out, started.elapsed())
}

/// Runs meshctl, killed after 60 s; (exit code, time taken, output).
pub async fn run(args: &[&str]) -> (Option<i32>, Duration, String) {
    let (out, took) = meshctl_within(Duration::from_secs(60), args).await;
    (out.status.code(), took, text(&out))
}

/// Runs meshctl, which must fail with exit code 1 in under 30 s; returns its output.
pub async fn interrupted(args: &[&str]) -> String {
    let (code, took, all) = run(args).await;
    assert_eq!(code, Some(1), "meshctl {args:?}:\n{all}");
    assert!(took < Duration::from_secs(30), "bounded: {took:?}\n{all}");
    all
}

pub async fn succeeds(args: &[&str]) -> String {
    let (code, _, all) = run(args).await;
    assert_eq!(code, Some(0), "meshctl {args:?}:\n{all}");
    all
}

/// Every `want` is in `all`.
pub fn says(all: &str, want: &[&str]) {
    for w in want {
        assert!(all.contains(w), "missing {w:?} in:\n{all}");
    }
}

/// `verb` on `resource` answers `fault` until cleared.
pub fn outage(s: &TestApiServer, fault: Fault, verb: &str, resource: &str) {
    s.faults()
        .inject(FaultRule::new(fault).verb(verb).resource(resource));
}
