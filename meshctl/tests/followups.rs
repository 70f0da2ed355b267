//! What `join`, `unjoin`, `cacerts apply` and `certs renew --apply` print while they change
//! things, and the notes of the `certs` commands:
//! - a closed stdout (`| head`) never stops a command between clusters: every cluster is
//!   done and it exits 0;
//! - with `-o json` a real run's stdout is exactly one JSON value (progress on stderr), and
//!   never holds a private key unless `--show-secrets`;
//! - a certificate cut to end when its signer does is said on stderr (`warning: ...`);
//! - a root file with an expired root listed before the one that signs still signs.

mod common;

use std::path::{Path, PathBuf};

use common::runs::*;
use common::*;
use serde_json::Value;

fn gateway_of(s: &k8s_test_server::TestApiServer) -> Option<Value> {
    s.store().get(
        "apps/v1",
        "Deployment",
        Some("istio-system"),
        "istio-eastwestgateway",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_never_stops_join_unjoin_or_cacerts_apply() {
    let m = mesh().await;
    // join prints a line after west's cacerts and gateway: it used to panic there (exit
    // 101), east never joined and no "interrupted" message said so.
    let (code, err) = with_stdout_closed(&m.join_args(&[])).await;
    assert_eq!(code, Some(0), "join: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(gateway_of(&m.east).is_some(), "east's gateway");
    assert!(secret(&m.west, "istio-remote-secret-east").is_some());
    assert!(secret(&m.east, "istio-remote-secret-west").is_some());

    let (code, err) = with_stdout_closed(&m.unjoin_args(&[])).await;
    assert_eq!(code, Some(0), "unjoin: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(gateway_of(&m.west).is_none() && gateway_of(&m.east).is_none());
    assert!(secret(&m.east, "istio-remote-secret-west").is_none());

    let m = mesh().await;
    let west = m.certs.join("west");
    let (code, err) = with_stdout_closed(&cacerts_apply_args(m.kc(), p(&west), "west", &[])).await;
    assert_eq!(code, Some(0), "cacerts apply: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(secret(&m.west, "cacerts").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_join_and_unjoin_with_o_json_print_one_document() {
    let m = mesh().await;
    let (out, err) = stdout_of(&m.join_args(&["-o", "json"])).await;
    let v = one_json("join -o json", &out);
    let clusters = v["clusters"].as_array().unwrap();
    assert_eq!(clusters.len(), 2, "{v:#}");
    assert_eq!(
        (&clusters[0]["context"], &clusters[1]["context"]),
        (&"west".into(), &"east".into())
    );
    assert_eq!(clusters[0]["network"], "west-network");
    assert_eq!(clusters[0]["cacerts"], "applied", "{v:#}");
    let applied: Vec<&str> = clusters[0]["applied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    for want in [
        "Secret istio-system/cacerts",
        "Deployment istio-system/istio-eastwestgateway",
        "Secret istio-system/istio-remote-secret-east",
    ] {
        assert!(applied.contains(&want), "{want} in {applied:?}");
    }
    // The progress, on stderr.
    says(
        &err,
        &[
            "west: cacerts applied; namespace istio-system labelled",
            "east: remote secret istio-remote-secret-west (cluster west) applied",
        ],
    );

    // Again: nothing changes, and -o yaml is one YAML document of the same shape.
    let (out, _) = stdout_of(&m.join_args(&["-o", "yaml"])).await;
    let v: Value = serde_yaml::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(v["clusters"][1]["cacerts"], "unchanged", "{out}");
    // Said unchanged, so not listed as applied too (found by an audit session).
    let applied = v["clusters"][1]["applied"].as_array().unwrap();
    assert!(
        !applied.iter().any(|a| a == "Secret istio-system/cacerts"),
        "{out}"
    );

    // Without -o: the human lines on stdout, as before.
    let out = m.join(&[]).await;
    assert!(out.contains("west: cacerts unchanged"), "{out}");

    let (out, err) = stdout_of(&m.unjoin_args(&["-o", "json"])).await;
    let v = one_json("unjoin -o json", &out);
    let removed = v["clusters"][1]["removed"].as_array().unwrap();
    assert!(
        removed.contains(&"Deployment istio-system/istio-eastwestgateway".into()),
        "{v:#}"
    );
    assert!(
        removed.contains(&"Namespace istio-system (label and annotation)".into()),
        "{v:#}"
    );
    assert!(err.contains("east: removed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_cacerts_apply_and_renew_with_o_json_print_the_secret_redacted() {
    use base64::Engine as _;
    let m = mesh().await;
    let west = m.certs.join("west");
    let (out, err) = stdout_of(&cacerts_apply_args(
        m.kc(),
        p(&west),
        "west",
        &["-o", "json"],
    ))
    .await;
    let v = one_json("cacerts apply -o json", &out);
    assert_eq!(v["kind"], "Secret", "{v:#}");
    assert_eq!(v["metadata"]["namespace"], "istio-system");
    assert!(
        v["data"]["ca-key.pem"]
            .as_str()
            .unwrap()
            .starts_with("<redacted"),
        "{v:#}"
    );
    assert!(err.contains("cacerts applied in context \"west\""), "{err}");
    let key_b64 = |m: &Mesh| {
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(m.certs.join("west/ca-key.pem")).unwrap())
    };
    assert!(!out.contains(&key_b64(&m)), "{out}");
    // --show-secrets shows it (base64, in the Secret's data).
    let (out, err) = stdout_of(&cacerts_apply_args(
        m.kc(),
        p(&west),
        "west",
        &["-o", "json", "--show-secrets"],
    ))
    .await;
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}:\n{out}"));
    assert_eq!(v["data"]["ca-key.pem"], key_b64(&m).as_str());
    assert!(err.contains("is up to date"), "{err}");

    // renew --apply -o json: the files it wrote and the apply on stderr, the Secret on stdout.
    let args = renew_west_args(&m, &m.certs, &["-o", "json"]);
    let (out, err) = stdout_of(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    let v = one_json("certs renew --apply -o json", &out);
    assert_eq!(v["kind"], "Secret", "{v:#}");
    assert!(
        v["data"]["ca-key.pem"]
            .as_str()
            .unwrap()
            .starts_with("<redacted"),
        "{v:#}"
    );
    assert!(!out.contains(&key_b64(&m)), "{out}");
    says(
        &err,
        &[
            "wrote ",
            "renewed the intermediate CA of west",
            "cacerts applied in context \"west\"",
        ],
    );
    // A dry run with -o json: the plan only; the files it would write on stderr.
    let args = renew_west_args(&m, &m.certs, &["--dry-run", "-o", "json"]);
    let (out, err) = stdout_of(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    one_json("certs renew --apply --dry-run -o json", &out);
    assert!(err.contains("# dry run: would write"), "{err}");
    // -o without --apply has nothing to print: a usage error, nothing written.
    let before = std::fs::read(west.join("ca-cert.pem")).unwrap();
    let t = usage_error(&[
        "certs",
        "renew",
        "--ca",
        p(&west),
        "--root-cert",
        p(&m.certs.join("root-cert.pem")),
        "--root-key",
        p(&m.certs.join("root-key.pem")),
        "-o",
        "json",
    ])
    .await;
    assert!(t.contains("add --apply"), "{t}");
    assert_eq!(std::fs::read(west.join("ca-cert.pem")).unwrap(), before);
}

/// A root valid from `from` to `to` days from now, written to `dir` (root-cert.pem,
/// root-key.pem).
fn root_in(dir: &Path, from: i64, to: i64) -> PathBuf {
    let now = time::OffsetDateTime::now_utc();
    let root = pki::RootCa::generate(&pki::RootOptions {
        not_before: Some(now + time::Duration::days(from)),
        not_after: Some(now + time::Duration::days(to)),
        ..Default::default()
    })
    .unwrap();
    root.write_dir(dir, false).unwrap();
    dir.to_path_buf()
}

const CLAMPED: &str = "(a certificate cannot outlive its signer)";

#[tokio::test]
async fn a_certificate_cut_to_its_signers_end_is_said() {
    let d = tempfile::tempdir().unwrap();
    let root = root_in(&d.path().join("root"), -1, 10);
    let (rc, rk) = (root.join("root-cert.pem"), root.join("root-key.pem"));

    // intermediate: 365 days asked, the root ends in 10.
    let x = d.path().join("x");
    let t = succeeds(&intermediate_args(&rc, &rk, "x", &x, &["--days", "365"])).await;
    says(
        &t,
        &[
            "warning: the intermediate CA of x: the certificate ends on",
            CLAMPED,
        ],
    );
    // Within the root's life: no warning.
    let y = d.path().join("y");
    let t = succeeds(&intermediate_args(&rc, &rk, "y", &y, &["--days", "5"])).await;
    assert!(!t.contains("warning"), "{t}");

    // workload: 720 hours asked of y, which ends in 5 days.
    let w = d.path().join("w");
    let t = succeeds(&workload_args(&y, "default", "sa", &w, &["--hours", "720"])).await;
    says(
        &t,
        &[
            "warning: the workload certificate: the certificate ends on",
            "(--hours 720)",
        ],
    );

    // renew: 365 days asked again (the root still ends in 10).
    let t = succeeds(&renew_args(&x, &rc, &rk, &["--days", "365"])).await;
    says(&t, &["warning: the intermediate CA of x: ", CLAMPED]);

    // init: the root's 10 days, the intermediates' 365.
    let out = d.path().join("init");
    let t = succeeds(&[
        "certs",
        "init",
        "--clusters",
        "a,b",
        "--root-days",
        "10",
        "--days",
        "365",
        "--out",
        p(&out),
    ])
    .await;
    says(
        &t,
        &[
            "warning: the intermediate CA of a: ",
            "warning: the intermediate CA of b: ",
        ],
    );
}

#[tokio::test]
async fn renewing_a_ca_that_names_no_cluster_names_its_directory() {
    let d = tempfile::tempdir().unwrap();
    let root = root_in(&d.path().join("root"), -1, 3650);
    let (rc, rk) = (root.join("root-cert.pem"), root.join("root-key.pem"));
    // A CA made elsewhere, without L (no cluster name) in its subject.
    let r = pki::RootCa::load_files(&rc, &rk).unwrap();
    let ca = r
        .issue_intermediate(&pki::IntermediateOptions {
            renewal: true,
            ..pki::IntermediateOptions::new("")
        })
        .unwrap();
    let dir = d.path().join("nameless");
    ca.write_dir(&dir, false).unwrap();
    let t = succeeds(&renew_args(&dir, &rc, &rk, &[])).await;
    says(
        &t,
        &[&format!(
            "renewed the intermediate CA in {} (new key",
            dir.display()
        )],
    );
    assert!(!t.contains("of  ("), "{t}");
}

#[tokio::test]
async fn an_expired_root_listed_first_does_not_stop_the_root_that_signs() {
    let d = tempfile::tempdir().unwrap();
    let old = root_in(&d.path().join("old"), -20, -1);
    let new = root_in(&d.path().join("new"), -1, 3650);
    // Mid-rotation: the old (now expired) root first, then the new one, whose key signs.
    let roots = d.path().join("roots.pem");
    std::fs::write(
        &roots,
        format!(
            "{}{}",
            std::fs::read_to_string(old.join("root-cert.pem")).unwrap(),
            std::fs::read_to_string(new.join("root-cert.pem")).unwrap()
        ),
    )
    .unwrap();
    let key = new.join("root-key.pem");
    let x = d.path().join("x");
    let t = succeeds(&intermediate_args(&roots, &key, "x", &x, &[])).await;
    assert!(!t.contains("expired"), "{t}");
    // The new CA chains to the new root.
    let chain = std::fs::read_to_string(x.join("cert-chain.pem")).unwrap();
    assert!(
        chain.ends_with(&std::fs::read_to_string(new.join("root-cert.pem")).unwrap()),
        "{chain}"
    );
    // renew with that root file, of a bundle that trusts the new root only (one that still
    // lists the expired root is refused by its own verification, as `certs verify` does).
    let y = d.path().join("y");
    succeeds(&intermediate_args(
        &new.join("root-cert.pem"),
        &key,
        "y",
        &y,
        &[],
    ))
    .await;
    let t = succeeds(&renew_args(&y, &roots, &key, &[])).await;
    says(&t, &["renewed the intermediate CA of y"]);

    // The old root's own key still refuses, naming the expired root.
    let t = interrupted(&intermediate_args(
        &roots,
        &old.join("root-key.pem"),
        "z",
        &d.path().join("z"),
        &[],
    ))
    .await;
    says(&t, &["expired on", "cannot sign a new intermediate"]);
}
