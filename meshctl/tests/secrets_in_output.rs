//! No private key and no real token in any dry run or `-o yaml|json` output of any command
//! (issue 9, items 1–3), and the CA key only where the user asks for it (`--show-secrets`).
//! Every test runs the real binary against two TEST API servers after a real `join`, so the
//! reader's token Secrets already exist (the re-run case that used to leak the token).

mod common;

use base64::Engine as _;
use common::*;
use serde_json::Value;

const PLACEHOLDER_TOKEN: &str = "<dry-run: token issued on apply>";

/// Byte strings that must never be printed: each cluster's and the root's private key (each
/// PEM body line, and the base64 of the whole file as in a Secret's `data`) and each reader
/// token (raw and base64).
fn secrets(m: &Mesh) -> Vec<(String, String)> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut out = Vec::new();
    for key in [
        m.certs.join("root-key.pem"),
        m.certs.join("west/ca-key.pem"),
        m.certs.join("east/ca-key.pem"),
    ] {
        let pem = std::fs::read_to_string(&key).unwrap();
        // Each full base64 line of the PEM body, whatever the printed form joins them with.
        for (i, line) in pem.lines().filter(|l| l.len() >= 40).enumerate() {
            out.push((
                format!("{} (PEM line {i})", key.display()),
                line.to_string(),
            ));
        }
        out.push((format!("{} (base64)", key.display()), b64(pem.as_bytes())));
    }
    for (name, s) in [("west", &m.west), ("east", &m.east)] {
        let t = secret(s, "istio-reader-service-account-istio-remote-secret-token")
            .unwrap_or_else(|| panic!("{name}: join created no token Secret"));
        let token = base64::engine::general_purpose::STANDARD
            .decode(t["data"]["token"].as_str().expect("token filled"))
            .unwrap();
        let token = String::from_utf8(token).unwrap();
        assert!(token.len() > 20, "{token}");
        out.push((
            format!("{name} reader token (base64)"),
            b64(token.as_bytes()),
        ));
        out.push((format!("{name} reader token"), token));
    }
    out
}

fn assert_no_secret(what: &str, out: &str, secrets: &[(String, String)]) {
    for (name, bytes) in secrets {
        assert!(
            !out.contains(bytes.as_str()),
            "{what} printed {name}:\n{out}"
        );
    }
    assert!(!out.contains("PRIVATE KEY"), "{what} printed a key:\n{out}");
}

/// A joined pair (token Secrets and cacerts exist in both clusters).
async fn joined() -> (Mesh, Vec<(String, String)>) {
    let m = joined_mesh().await;
    let s = secrets(&m);
    (m, s)
}

/// Runs meshctl, expects success, returns stdout+stderr.
async fn run(args: &[&str]) -> String {
    let out = meshctl(args).await;
    assert!(out.status.success(), "meshctl {args:?}:\n{}", text(&out));
    text(&out)
}

/// Every dry run and every `-o yaml|json` form, each with and without `-o json`.
fn every_output_form(m: &Mesh) -> Vec<Vec<String>> {
    let kc = m.kc().to_string();
    let west = m.certs.join("west").display().to_string();
    let base: Vec<Vec<&str>> = vec![
        cacerts_apply_args(&kc, &west, "west", &["--dry-run"]),
        remote_secret_args(&kc, &["--dry-run"]),
        remote_secret_args(&kc, &["--dry-run", "--token-ttl", "1h"]),
        m.join_args(&["--dry-run"]),
        m.unjoin_args(&["--dry-run"]),
        vec!["gateway", "manifest", "--network", "west-network"],
        vec![
            "gateway",
            "install",
            "--network",
            "west-network",
            "--kubeconfig",
            &kc,
            "--context",
            "west",
            "--dry-run",
        ],
        vec![
            "label-network",
            "west-network",
            "--kubeconfig",
            &kc,
            "--context",
            "west",
            "--dry-run",
        ],
    ];
    let mut forms = Vec::new();
    for b in base {
        for o in ["yaml", "json"] {
            let mut args: Vec<String> = b.iter().map(|s| s.to_string()).collect();
            args.extend(["-o".to_string(), o.to_string()]);
            forms.push(args);
        }
    }
    forms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_dry_run_or_output_form_prints_a_private_key_or_a_real_token() {
    let (m, secrets) = joined().await;
    for args in every_output_form(&m) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args).await;
        assert_no_secret(&format!("meshctl {args:?}"), &out, &secrets);
    }
    // check (text and JSON) reads the live cacerts, key included, and must not echo it.
    m.make_gateways_ready();
    for o in ["yaml", "json"] {
        let args = check_args(m.kc(), &["-o", o]);
        let out = run(&args).await;
        assert_no_secret(&format!("meshctl {args:?}"), &out, &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_print_the_placeholder_token_even_when_a_token_secret_exists() {
    let (m, _) = joined().await;
    for args in every_output_form(&m)
        .into_iter()
        .filter(|a| a[0] == "create-remote-secret" || a[0] == "join")
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args).await;
        assert!(
            out.contains(PLACEHOLDER_TOKEN),
            "meshctl {args:?} lacks the placeholder token:\n{out}"
        );
    }
    // --show-secrets shows the CA key, never a token that a dry run did not mint.
    let secrets = secrets(&m);
    let tokens: Vec<_> = secrets
        .iter()
        .filter(|(n, _)| n.contains("token"))
        .cloned()
        .collect();
    let out = run(&m.join_args(&["--dry-run", "--show-secrets"])).await;
    let tokenless: Vec<_> = secrets
        .iter()
        .filter(|(n, _)| !n.contains("token"))
        .collect();
    assert!(out.contains(PLACEHOLDER_TOKEN), "{out}");
    for (name, bytes) in &tokens {
        assert!(
            !out.contains(bytes.as_str()),
            "join --show-secrets printed {name}"
        );
    }
    for (name, bytes) in tokenless {
        if name.contains("(base64)") && !name.contains("root-key") {
            assert!(
                out.contains(bytes.as_str()),
                "--show-secrets hid {name}:\n{out}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_apply_dry_run_shows_the_key_only_with_show_secrets() {
    let (m, secrets) = joined().await;
    let key_b64 = base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(m.certs.join("west/ca-key.pem")).unwrap());
    let west = m.certs.join("west");
    for o in ["yaml", "json"] {
        let base = cacerts_apply_args(m.kc(), p(&west), "west", &["--dry-run", "-o", o]);
        let out = run(&base).await;
        assert_no_secret("cacerts apply --dry-run", &out, &secrets);
        assert!(out.contains("<redacted"), "{out}");
        let mut shown = base.to_vec();
        shown.push("--show-secrets");
        let out = run(&shown).await;
        assert!(out.contains(&key_b64), "--show-secrets hid the key:\n{out}");
    }
}

/// `check` verifies the live cacerts from memory: with TMPDIR pointing at a directory that
/// does not exist (any temporary file would fail) and at an empty one (which must stay empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_verifies_cacerts_without_writing_the_key_to_disk() {
    let (m, _) = joined().await;
    m.make_gateways_ready();
    let empty = m.dir.path().join("tmp-empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = m.dir.path().join("tmp-missing");
    for tmp in [&empty, &missing] {
        let out = tokio::process::Command::new(MESHCTL)
            .args(check_args(m.kc(), &["-o", "json"]))
            .env("TMPDIR", tmp)
            .output()
            .await
            .unwrap();
        let v: Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        for scope in ["cluster west", "cluster east"] {
            let item = check_item(&v, scope, "cacerts present and valid");
            assert_eq!(item["status"], "pass", "TMPDIR={}: {item}", tmp.display());
        }
    }
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert!(!missing.exists());
}
