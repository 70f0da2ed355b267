//! The real binary against hostile inputs: an endpoints file that becomes a FIFO or a link to
//! `/dev/zero`, a relative `--endpoints` path, an invalid `TOKIO_WORKER_THREADS`, and an
//! expired `--hbone-certs` certificate. Each is refused with a clear error, the last good state
//! keeps serving, and the process still reloads and exits on SIGTERM.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const ERRORS: &str = "gateway_discovery_route_table_reload_errors_total";
const GENERATION: &str = "gateway_discovery_route_table_generation";

fn mkfifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success());
}

/// The binary with JSON logs on loopback, started in `cwd` with `args` and `env`.
fn command(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.current_dir(cwd)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--log-format", "json"])
        .args(["--drain-grace", "200ms", "--drain-timeout", "2s"])
        .args(args)
        .env_remove("TOKIO_WORKER_THREADS")
        .env_remove("GATEWAY_WORKERS")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd`, which must fail to start: it exits non-zero within [`TIMEOUT`]; returns stderr.
fn start_fails(cmd: Command) -> String {
    let (status, text) = exit_of(cmd, "a start that must fail");
    assert!(!status.success(), "started: {text}");
    assert!(!text.contains("gateway listening"), "{text}");
    text
}

/// Defect 1: the file replaced by a FIFO with no writer was opened blocking: the reload
/// thread hung, later changes and SIGHUP were ignored and SIGTERM did not end the process.
#[test]
fn a_fifo_is_refused_and_later_changes_still_reload() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let mut gw = GatewayProcess::spawn(command(
        dir.path(),
        &["--endpoints", eps.to_str().unwrap()],
        &[],
    ));
    gw.wait_metric(GENERATION, 1.0);
    std::fs::remove_file(&eps).unwrap();
    mkfifo(&eps);
    gw.wait_metric(ERRORS, 1.0);
    gw.wait_log_count(REJECTED, 1);
    assert_eq!(gw.log_count("is a FIFO, not a regular file"), 1);
    assert_eq!(gw.metric(GENERATION), 1.0, "the last good table stays");
    // SIGHUP reads again, and is refused again without blocking.
    gw.signal("HUP");
    gw.wait_metric(ERRORS, 2.0);
    replace_file(&eps, &catalog_yaml(3001));
    gw.wait_metric(GENERATION, 2.0);
    assert!(gw.terminate(), "exits 0 on SIGTERM");

    // At start: a clear error, and no hang.
    std::fs::remove_file(&eps).unwrap();
    mkfifo(&eps);
    let err = start_fails(command(
        dir.path(),
        &["--endpoints", eps.to_str().unwrap()],
        &[],
    ));
    assert!(err.contains("is a FIFO, not a regular file"), "{err}");
}

/// Defect 3: a link to `/dev/zero` swapped in was read until the memory ran out.
#[test]
fn a_link_to_a_device_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let gw = GatewayProcess::spawn(command(
        dir.path(),
        &["--endpoints", eps.to_str().unwrap()],
        &[],
    ));
    gw.wait_metric(GENERATION, 1.0);
    let tmp = dir.path().join("tmp");
    std::os::unix::fs::symlink("/dev/zero", &tmp).unwrap();
    std::fs::rename(&tmp, &eps).unwrap();
    gw.wait_metric(ERRORS, 1.0);
    gw.wait_log_count(REJECTED, 1);
    assert_eq!(gw.log_count("is a character device, not a regular file"), 1);
    // A sparse file over the cap is refused from its size, not read.
    let big = std::fs::File::create(&tmp).unwrap();
    big.set_len(17 << 20).unwrap();
    std::fs::rename(&tmp, &eps).unwrap();
    gw.wait_metric(ERRORS, 2.0);
    gw.wait_log_count(REJECTED, 2);
    assert_eq!(gw.log_count("larger than 16 MiB"), 1);
    assert_eq!(gw.metric(GENERATION), 1.0);
    replace_file(&eps, &catalog_yaml(3001));
    gw.wait_metric(GENERATION, 2.0);
}

/// Defect 2: with a relative `--endpoints`, no file event ever matched, so only SIGHUP
/// reloaded it.
#[test]
fn a_relative_path_is_reloaded_on_change() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("conf")).unwrap();
    let eps = dir.path().join("conf/endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    for arg in ["conf/endpoints.yaml", "./conf/../conf/endpoints.yaml"] {
        let gw = GatewayProcess::spawn(command(dir.path(), &["--endpoints", arg], &[]));
        let base = gw.metric(GENERATION);
        // In place.
        std::fs::write(&eps, catalog_yaml(3001)).unwrap();
        gw.wait_metric(GENERATION, base + 1.0);
        // Atomically replaced.
        replace_file(&eps, &catalog_yaml(3002));
        gw.wait_metric(GENERATION, base + 2.0);
        std::fs::write(&eps, catalog_yaml(3000)).unwrap();
        gw.wait_metric(GENERATION, base + 3.0);
    }
}

/// Defect 4: TOKIO_WORKER_THREADS=100000 started 100,000 workers (bypassing --workers'
/// 1-1024); `0` and `abc` were silently ignored.
#[test]
fn tokio_worker_threads_is_bounded_like_workers() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let args = ["--endpoints", eps.to_str().unwrap()];
    for bad in ["100000", "1025", "0", "abc", ""] {
        let err = start_fails(command(dir.path(), &args, &[("TOKIO_WORKER_THREADS", bad)]));
        assert!(
            err.contains(&format!(
                "TOKIO_WORKER_THREADS={bad:?} is not a worker count"
            )) && err.contains("1 to 1024"),
            "{bad:?}: {err}"
        );
    }
    // A valid one is used; --workers wins over it.
    let gw = GatewayProcess::spawn(command(dir.path(), &args, &[("TOKIO_WORKER_THREADS", "3")]));
    assert_eq!(gw.count_lines(&|v| v["workers"] == 3), 1);
    let mut with_flag = args.to_vec();
    with_flag.extend(["--workers", "2"]);
    let gw = GatewayProcess::spawn(command(
        dir.path(),
        &with_flag,
        &[("TOKIO_WORKER_THREADS", "100000")],
    ));
    assert_eq!(gw.count_lines(&|v| v["workers"] == 2), 1);
}

/// Defect 5: an expired serving certificate was accepted at start (no warning; every HBONE
/// handshake then failed).
#[test]
fn an_expired_hbone_certificate_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let day = |d: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let secs = u64::try_from(now + d * 86_400).unwrap();
        rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs)
    };
    // A leaf that expired a year ago, under a CA valid now (pki signs nothing with an expired
    // CA; the gateway checks every certificate of the chain the same way).
    let root = pki::RootCa::generate(&pki::RootOptions {
        not_before: Some(day(-800)),
        ..Default::default()
    })
    .unwrap();
    let mut io = pki::IntermediateOptions::new("east");
    io.not_before = Some(day(-700));
    let ca = root.issue_intermediate(&io).unwrap();
    let mut wo = pki::WorkloadOptions::new("istio-system", "istio-eastwestgateway");
    wo.not_before = Some(day(-600));
    wo.not_after = Some(day(-365));
    let w = ca.issue_workload(&wo).unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    std::fs::write(certs.join("cert-chain.pem"), &w.chain_pem).unwrap();
    std::fs::write(certs.join("key.pem"), &w.key_pem).unwrap();
    std::fs::write(certs.join("root-cert.pem"), &w.root_pem).unwrap();
    let err = start_fails(command(
        dir.path(),
        &[
            "--endpoints",
            eps.to_str().unwrap(),
            "--hbone-listen",
            "127.0.0.1:0",
            "--hbone-certs",
            certs.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        err.contains("cert-chain.pem")
            && err.contains("expired: notAfter")
            && err.contains("meshctl certs workload"),
        "{err}"
    );
}
