//! Hostile input: a kubeconfig (local or stored in a remote secret) that does not parse never
//! prints its text (tokens); devices and FIFOs are refused instead of read; keys are never
//! written through a symlinked or shared directory; `create-remote-secret` checks `--server`,
//! `--service-account` and `--tls-server-name` before it changes anything.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

/// Stand-in token: it must appear in no output.
const SENTINEL: &str = "tok-SENTINEL-5b2f0c4e9a7d";

/// `kubeconfig` with its first `token:` line followed by a YAML syntax error.
fn broken_after_token(kubeconfig: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for line in kubeconfig.lines() {
        out.push_str(line);
        out.push('\n');
        if !done && line.trim_start().starts_with("token:") {
            out.push_str("    bogus: [\n");
            done = true;
        }
    }
    assert!(done, "no token line in {kubeconfig}");
    out
}

fn sentinel_kubeconfig(dir: &Path) -> String {
    let yaml = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: west\nclusters:\n- name: west\n  \
         cluster:\n    server: https://10.0.0.1:6443\ncontexts:\n- name: west\n  context:\n    \
         cluster: west\n    user: west\nusers:\n- name: west\n  user:\n    token: {SENTINEL}\n"
    );
    let path = dir.join("bad.kubeconfig");
    std::fs::write(&path, broken_after_token(&yaml)).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn a_local_kubeconfig_that_does_not_parse_prints_no_token() {
    let dir = tempfile::tempdir().unwrap();
    let bad = sentinel_kubeconfig(dir.path());
    for args in [
        vec!["check", "--context", "west", "--kubeconfig", &bad],
        vec![
            "check",
            "--context",
            "west",
            "--kubeconfig",
            &bad,
            "-o",
            "json",
        ],
        remote_secret_args(&bad, &[]),
    ] {
        let out = meshctl(&args).await;
        let t = text(&out);
        assert!(!out.status.success(), "{args:?}: {t}");
        assert!(!t.contains(SENTINEL), "{args:?} printed the token: {t}");
        assert!(t.contains("line 17"), "{args:?}: no location: {t}");
    }
    // Through KUBECONFIG (several files, merged).
    let good = dir.path().join("good.kubeconfig");
    std::fs::write(&good, "apiVersion: v1\nkind: Config\n").unwrap();
    let out = tokio::process::Command::new(MESHCTL)
        .args(["check", "--context", "west"])
        .env("KUBECONFIG", format!("{}:{bad}", good.display()))
        .output()
        .await
        .unwrap();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(!t.contains(SENTINEL), "{t}");
    assert!(t.contains("line 17"), "{t}");
}

/// Whether `out` holds any 20 characters of `token` (a snippet may crop the line).
fn leaks(out: &str, token: &str) -> bool {
    let chars: Vec<char> = token.chars().collect();
    chars
        .windows(20)
        .any(|w| out.contains(&w.iter().collect::<String>()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_kubeconfig_that_does_not_parse_prints_no_token() {
    let m = joined_mesh().await;
    let name = "istio-remote-secret-west";
    let mut sec = secret(&m.east, name).unwrap();
    let stored = stored_kubeconfig(&sec, "west");
    let v: Value = serde_yaml::from_str(&stored).unwrap();
    let token = v["users"][0]["user"]["token"].as_str().unwrap().to_string();
    assert!(token.len() > 16);
    sec["data"]["west"] =
        json!(base64::engine::general_purpose::STANDARD.encode(broken_after_token(&stored)));
    m.east.store().apply(sec).unwrap();

    let out = meshctl(&check_args(m.kc(), &[])).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(!leaks(&t, &token), "check printed the stored token: {t}");
    assert!(t.contains("the stored kubeconfig cannot be used"), "{t}");
    let out = meshctl(&check_args(m.kc(), &["-o", "json"])).await;
    let t = text(&out);
    assert!(
        !t.contains(&token),
        "check -o json printed the stored token: {t}"
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let i = check_item(&v, "secret for west in east", "kubeconfig works");
    assert_eq!(i["status"], "fail", "{i}");
    assert!(i["detail"].as_str().unwrap().contains("line "), "{i}");
    // credentials status: the unreadable secret is an error of its own, without its token.
    let mut args = both_contexts("credentials", m.kc());
    args.insert(1, "status");
    let out = meshctl(&args).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        !leaks(&t, &token),
        "credentials status printed the stored token: {t}"
    );
    assert!(t.contains("does not parse"), "{t}");
}

#[cfg(unix)]
#[tokio::test]
async fn devices_and_fifos_are_refused_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = meshctl(&["check", "--context", "west", "--kubeconfig", "/dev/zero"]).await;
    let t = text(&out);
    assert!(!out.status.success());
    assert!(t.contains("character device"), "{t}");

    // A bundle whose ca-cert.pem is /dev/zero.
    let bundle = dir.path().join("west");
    meshctl(&[
        "certs",
        "init",
        "--clusters",
        "west",
        "--out",
        p(dir.path()),
    ])
    .await;
    std::fs::remove_file(bundle.join("ca-cert.pem")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", bundle.join("ca-cert.pem")).unwrap();
    let out = meshctl(&["certs", "verify", p(&bundle)]).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("character device"), "{t}");

    // A kubeconfig that is a FIFO nobody writes: refused, not waited on.
    let fifo = dir.path().join("fifo");
    if std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        let out = meshctl(&["check", "--context", "west", "--kubeconfig", p(&fifo)]).await;
        assert!(text(&out).contains("FIFO"), "{}", text(&out));
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(60));
}

#[cfg(unix)]
#[tokio::test]
async fn keys_are_not_written_through_symlinked_or_shared_directories() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target1");
    std::fs::create_dir(&target).unwrap();
    let link = dir.path().join("s1");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = meshctl(&["certs", "root", "--out", p(&link)]).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("symlink") && t.contains("real"), "{t}");
    assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);

    let ww = dir.path().join("ww");
    std::fs::create_dir(&ww).unwrap();
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = meshctl(&["certs", "root", "--out", p(&ww)]).await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("chmod 700"), "{t}");
    assert_eq!(std::fs::read_dir(&ww).unwrap().count(), 0);
    // Fixed as the error says: written.
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o700)).unwrap();
    meshctl(&["certs", "root", "--out", p(&ww)]).await;
    assert!(ww.join("root-key.pem").exists());

    // A root to reuse in a shared directory is refused too (`--root-key`).
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = meshctl(&intermediate_args(
        &ww.join("root-cert.pem"),
        &ww.join("root-key.pem"),
        "west",
        &dir.path().join("west"),
        &[],
    ))
    .await;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("chmod 700"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_remote_secret_checks_its_flags_before_changing_anything() {
    let m = mesh().await;
    let before = snapshot(&m.west);
    let strict = |extra: &[&'static str]| {
        let mut a: Vec<String> = remote_secret_args(m.kc(), &[])
            .into_iter()
            .filter(|a| *a != "--allow-loopback-server")
            .map(str::to_string)
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for (extra, want) in [
        (&["--server", "http://172.18.0.2:6443"][..], "plaintext"),
        (&["--server", "https://a b"], "not a valid URL"),
        (&["--server", "https://[::ffff:127.0.0.1]:6443"], "loopback"),
        (&["--server", "https://127.1"], "dotted-quad"),
        (&["--server", "https://2130706433"], "127.0.0.1"),
        (&["--server", "https://0x7f000001"], "127.0.0.1"),
        (&["--service-account", "Bad SA"], "--service-account"),
        (&["--tls-server-name", "a\nb"], "--tls-server-name"),
    ] {
        let args = strict(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = meshctl(&args).await;
        let t = text(&out);
        assert!(!out.status.success(), "{extra:?}: {t}");
        assert!(t.contains(want), "{extra:?}: {t}");
        assert_eq!(snapshot(&m.west), before, "{extra:?} changed the cluster");
    }
    // The opt-out still works for a (spelled-out) loopback address.
    m.ok(&remote_secret_args(
        m.kc(),
        &["--server", "https://[::ffff:127.0.0.1]:6443", "--dry-run"],
    ))
    .await;
}
