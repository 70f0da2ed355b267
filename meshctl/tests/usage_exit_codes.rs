//! A usage error found after parsing (a flag's value or a combination of flags is wrong)
//! exits 2, as clap's own usage errors and `certs` do, in create-remote-secret, join,
//! unjoin, check and credentials, before anything is read or changed; a failure of the
//! cluster or a file still exits 1. Real meshctl processes against TEST API servers.

mod common;

use common::*;

/// Runs meshctl and expects exit 2 with `want` in the message.
async fn usage_error_saying(args: &[&str], want: &str) {
    let t = usage_error(args).await;
    assert!(t.contains(want), "{args:?}: {want:?} not in:\n{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_flags_exit_2_and_change_nothing() {
    let m = mesh().await;
    let before = m.settled_snapshots().await;
    let kc = m.kc();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            create_remote_secret_args(kc, "west", "West_1", &[]),
            "DNS-1123",
        ),
        (
            create_remote_secret_args(kc, "west", "west", &["--server", "https://localhost:6443"]),
            "loopback",
        ),
        (
            m.join_args(&["--service-annotation", "noequals"]),
            "expected KEY=VALUE",
        ),
        (
            m.join_args(&["--gateway-address", "east=10.0.0.1"]),
            "add --ambient",
        ),
        (
            m.join_args(&["--network", "north=n"]),
            "not one of the --context",
        ),
        (
            vec![
                "join",
                "--kubeconfig",
                kc,
                "--context",
                "west",
                "--context",
                "west",
                "--certs",
                "/nonexistent",
            ],
            "given twice",
        ),
        (m.unjoin_args(&["-n", "Bad_NS"]), "namespace"),
        (
            check_args(kc, &["--cluster-name", "west=Not_A_Label"]),
            "--cluster-name",
        ),
        (
            vec![
                "credentials",
                "status",
                "--kubeconfig",
                kc,
                "--context",
                "west",
                "--cluster-name",
                "north=x",
            ],
            "not one of the --context",
        ),
        (
            vec![
                "credentials",
                "cronjob",
                "--context",
                "west",
                "--image",
                "x",
                "--schedule",
                "hourly",
            ],
            "expected five cron fields",
        ),
    ];
    for (args, want) in &cases {
        usage_error_saying(args, want).await;
    }
    assert_eq!(m.settled_snapshots().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flag_error_comes_before_reading_files_or_clusters() {
    // A wrong flag with a kubeconfig that does not exist: the flag is named, exit 2.
    usage_error_saying(
        &[
            "join",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--context",
            "a",
            "--context",
            "b",
            "--certs",
            "/nonexistent",
            "--service-annotation",
            "noequals",
        ],
        "expected KEY=VALUE",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_clusters_and_files_still_exit_1() {
    let m = mesh().await;
    let kc = m.kc();
    for (args, want) in [
        (
            create_remote_secret_args(kc, "north", "north", &[]),
            "context \"north\" not found",
        ),
        (
            m.join_certs_args(&["--allow-loopback-server"])
                .into_iter()
                .map(|a| if a == p(&m.certs) { "/nonexistent" } else { a })
                .collect(),
            "no certificate bundle",
        ),
    ] {
        let out = meshctl(&args).await;
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}:\n{t}");
        assert!(t.contains(want), "{t}");
    }
}

/// `-n` is checked when parsed, by every command that takes it: a name that is no namespace
/// exits 2 before anything is read (before, `check` and `rotate` sent it and failed with
/// "invalid uri character", and `cacerts apply` and `certs renew` exited 1; found by an
/// audit session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_is_no_name_exits_2_everywhere() {
    let m = mesh().await;
    let kc = m.kc();
    let west = m.certs.join("west");
    let commands: Vec<Vec<&str>> = vec![
        check_args(kc, &[]),
        m.join_args(&[]),
        m.unjoin_args(&[]),
        vec![
            "rotate",
            "prepare",
            "--kubeconfig",
            kc,
            "--context",
            "west",
            "--context",
            "east",
            "--dir",
            "/nonexistent",
        ],
        cacerts_apply_args(kc, p(&west), "west", &[]),
        gateway_install_args(kc, &[]),
    ];
    for bad in ["istio system", "Istio-System", "a_b"] {
        for args in &commands {
            let mut a = args.clone();
            a.extend(["-n", bad]);
            let t = usage_error(&a).await;
            assert!(t.contains("DNS-1123"), "{a:?}: {t}");
        }
    }
}

/// `certs workload --trust-domain` is checked when parsed, as `-n` and `-s` are (before, an
/// invalid one exited 1 after the CA was read; found by an audit session).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trust_domain_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("w");
    let args = [
        "certs",
        "workload",
        "--ca",
        "/nonexistent",
        "--namespace",
        "default",
        "-s",
        "app",
        "--out",
        p(&out),
        "--trust-domain",
        "Not A Domain",
    ];
    let t = usage_error(&args).await;
    assert!(t.contains("--trust-domain"), "{t}");
    assert!(!out.exists());
}
