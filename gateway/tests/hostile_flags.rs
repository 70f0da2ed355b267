//! The real binary against flags a hostile audit found accepted and then ignored or harmful
//! (an empty or malformed namespace, a longest ejection below the first, durations so short
//! they burn CPU), and the start-up log's fields, which read as plain values.

mod common;
mod hbone_support;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;

/// Runs the binary with `args` and `env` over a valid endpoints file; it must exit (within
/// [`TIMEOUT`]) with a usage error, 2. Returns stderr.
fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, "services: []\n").unwrap();
    let mut cmd = loopback_command();
    cmd.arg("--endpoints")
        .arg(&eps)
        .args(args)
        .env_remove("GATEWAY_NAMESPACES")
        .envs(env.iter().copied());
    let (status, err) = exit_of(cmd, &format!("{args:?} {env:?}: accepted"));
    assert_eq!(status.code(), Some(2), "{args:?} {env:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// Finding 4: `GATEWAY_NAMESPACES="a,,b"` and `--namespace "BAD NS"` were accepted, then
/// listed `/api/v1/namespaces//services` (or failed with `invalid uri character`) forever.
#[test]
fn malformed_namespaces_are_refused_at_start() {
    for (args, env) in [
        (&["--namespace", "BAD NS"][..], &[][..]),
        (&["--namespace=-shop"], &[]),
        (&["--namespace", "Shop"], &[]),
        (&[], &[("GATEWAY_NAMESPACES", "a,,b")]),
        (&[], &[("GATEWAY_NAMESPACES", "shop,")]),
        (&["--namespace", "", "--namespace", "shop"], &[]),
    ] {
        let err = refused(args, env);
        assert!(
            err.contains("--namespace")
                && (err.contains("not a namespace name") || err.contains("empty name in the list")),
            "{args:?} {env:?}: {err}"
        );
    }
}

/// Findings 6 and 9: `--outlier-max-ejection` below `--outlier-base-ejection` was ignored;
/// `--hbone-cert-poll 1ns` re-read the certificate files every millisecond and
/// `--hbone-cert-lifetime 1ms` asked istiod for 0 s.
#[test]
fn inconsistent_or_tiny_durations_are_refused() {
    let err = refused(
        &[
            "--outlier-base-ejection",
            "1h",
            "--outlier-max-ejection",
            "1s",
        ],
        &[],
    );
    assert!(
        err.contains("--outlier-max-ejection (1s)") && err.contains("--outlier-base-ejection (1h)"),
        "{err}"
    );
    for (flag, value, floor) in [
        ("--hbone-cert-poll", "1ns", "100ms"),
        ("--hbone-cert-lifetime", "1ms", "1m"),
        ("--detect-timeout", "1ms", "100ms"),
        ("--idle-timeout", "10ms", "1s"),
    ] {
        let err = refused(&[flag, value], &[]);
        assert!(
            err.contains(flag) && err.contains(&format!("below this flag's minimum, {floor}")),
            "{flag}: {err}"
        );
    }
}

/// Finding 10: start-up and reject lines logged Rust's `Some(…)` (`status_addr=Some(…)`,
/// `spiffe_id="Some(\"spiffe://…\")"`, `kept_generation=Some(5)`); the admin 404 hint left out
/// `/healthz/live`.
#[tokio::test]
async fn log_fields_are_plain_values() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(
        &eps,
        endpoints_yaml(CATALOG, 3000, &[([127, 0, 0, 2].into(), "v1", true)]),
    )
    .unwrap();
    let certs = hbone_support::gateway_certs();
    let args = [
        "--status-listen".to_string(),
        "127.0.0.1:0".into(),
        "--hbone-listen".into(),
        "127.0.0.1:0".into(),
        "--hbone-certs".into(),
        certs.path().display().to_string(),
    ];
    let path = eps.clone();
    let gw = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        GatewayProcess::start(&path, &args, "info")
    })
    .await
    .unwrap();
    let up = gw.wait_line(&|v| v["message"] == "gateway listening");
    for field in ["status_addr", "hbone_addr"] {
        let text = up[field]
            .as_str()
            .unwrap_or_else(|| panic!("{field} in {up}"));
        assert!(text.parse::<SocketAddr>().is_ok(), "{field}: {up}");
    }
    let on = gw.wait_line(&|v| v["message"] == "HBONE listener on");
    assert_eq!(
        on["spiffe_id"],
        hbone_support::pki().gateway.spiffe_id.as_str(),
        "{on}"
    );
    assert_eq!(on["trust_domains"], "cluster.local", "{on}");

    std::fs::write(&eps, "services: [\n").unwrap();
    let gw = tokio::task::spawn_blocking(move || {
        let rejected =
            gw.wait_line(&|v| v["message"] == "route update rejected; keeping the last good table");
        assert_eq!(rejected["kept_generation"], 1, "{rejected}");
        gw
    })
    .await
    .unwrap();
    let (code, body) = http_get(gw.admin, "/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("/healthz/live"), "{body}");

    // Without HBONE or a status listener, the fields are left out, not `None`.
    std::fs::write(&eps, "services: []\n").unwrap();
    let plain = tokio::task::spawn_blocking(move || {
        GatewayProcess::start(&eps, &["--hbone-listen", "off"], "info")
    })
    .await
    .unwrap();
    let up = plain.wait_line(&|v| v["message"] == "gateway listening");
    assert!(
        up.get("status_addr").is_none() && up.get("hbone_addr").is_none(),
        "{up}"
    );
}

/// A bad certificate file is read again at every poll: each failure is counted, but logged
/// once per distinct error, so a short `--hbone-cert-poll` cannot flood the log (at 100 ms it
/// was ten WARN lines a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_certificate_file_is_logged_once_per_error() {
    let p = hbone_support::hbone_process("services: []\n", &["--hbone-cert-poll", "100ms"], "info")
        .await;
    let warned = || {
        p.gw.count_lines(&|v| {
            v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("HBONE certificates not reloaded"))
        })
    };
    let failures = "gateway_hbone_cert_reload_failures_total";
    std::fs::write(p.certs_dir().join("key.pem"), "not a key\n").unwrap();
    let mut counted = 0.0;
    for _ in 0..100 {
        counted = p.gw.metric(failures);
        if counted >= 8.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counted >= 8.0, "{counted} failed reloads counted");
    assert_eq!(warned(), 1, "one line for {counted} failures of one error");
    // Another error is logged once more.
    std::fs::write(p.certs_dir().join("cert-chain.pem"), "").unwrap();
    for _ in 0..100 {
        if warned() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(warned(), 2);
}
