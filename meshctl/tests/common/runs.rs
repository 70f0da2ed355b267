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

/// Runs meshctl until it prints a line containing `said` (on stdout or stderr), then runs
/// `then` (what the test plays at that moment: a finalizer coming off), then waits for it to
/// exit; all within `limit`, or the test fails. Replaces a fixed timer, which a slow machine
/// could let fire before meshctl began what the test meant to interrupt. If meshctl exits
/// without saying it, `then` does not run and its output is returned for the test to show.
pub async fn meshctl_then(
    limit: Duration,
    args: &[&str],
    said: &str,
    then: impl std::future::Future<Output = ()>,
) -> (Output, Duration) {
    use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut child = tokio::process::Command::new(MESHCTL)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run meshctl");
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    let read = |r: Box<dyn AsyncRead + Unpin + Send>, tx: tokio::sync::watch::Sender<bool>| {
        let said = said.to_string();
        tokio::spawn(async move {
            let mut lines = BufReader::new(r).lines();
            let mut all = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l.contains(&said) {
                    tx.send_replace(true);
                }
                all.push_str(&l);
                all.push('\n');
            }
            all
        })
    };
    let stdout = read(Box::new(child.stdout.take().unwrap()), tx.clone());
    let stderr = read(Box::new(child.stderr.take().unwrap()), tx);
    match tokio::time::timeout_at(deadline, rx.wait_for(|s| *s)).await {
        Ok(Ok(_)) => then.await,
        // Both streams closed without it: meshctl has exited.
        Ok(Err(_)) => {}
        Err(_) => panic!("meshctl {args:?} did not say {said:?} within {limit:?}"),
    }
    let status = tokio::time::timeout_at(deadline, child.wait())
        .await
        .unwrap_or_else(|_| panic!("meshctl {args:?} still running after {limit:?}"))
        .expect("wait for meshctl");
    let out = Output {
        status,
        stdout: stdout.await.unwrap().into_bytes(),
        stderr: stderr.await.unwrap().into_bytes(),
    };
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

/// Runs meshctl with stdout a pipe whose reading end is already closed (what `| head` leaves
/// once it has its lines): every write to stdout fails with EPIPE. (exit code, stderr)
pub async fn with_stdout_closed(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // spawn, not `output()`: tokio's `output()` replaces stdout with a pipe of its own.
    let child = tokio::process::Command::new(MESHCTL)
        .args(args)
        .env_remove("KUBECONFIG")
        .stdout(std::process::Stdio::from(writer))
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("meshctl finished within 60s")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs meshctl, which must succeed: (stdout, stderr).
pub async fn stdout_of(args: &[&str]) -> (String, String) {
    let (out, _) = meshctl_within(Duration::from_secs(60), args).await;
    assert!(out.status.success(), "meshctl {args:?}:\n{}", text(&out));
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// `stdout` is exactly one JSON value (serde_json on the whole text) without a private key.
pub fn one_json(what: &str, stdout: &str) -> serde_json::Value {
    assert!(!stdout.contains("PRIVATE KEY"), "{what}: a key:\n{stdout}");
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("{what}: stdout is not one JSON value ({e}):\n{stdout}"))
}
