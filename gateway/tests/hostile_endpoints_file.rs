//! The real binary against a hostile endpoints file: a YAML alias bomb, a private key or a
//! password file in its place, a symlink into another directory, a file truncated to nothing,
//! a host that forges log lines, and a subset named in capitals. Each is refused with a clear
//! error that quotes nothing of the file, or served as Istio would; the last good table keeps
//! serving.

mod common;
mod hbone_support;

use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GENERATION: &str = "gateway_discovery_route_table_generation";
const ERRORS: &str = "gateway_discovery_route_table_reload_errors_total";
const RELOADS: &str = "gateway_discovery_route_table_reloads_total";
const LAST_OK: &str = "gateway_discovery_route_table_last_reload_ok";

/// The binary with JSON logs on loopback over `eps`, under an address-space limit of
/// `vm_kib` (a runaway parse then aborts the gateway instead of exhausting the machine).
fn start_capped(eps: &Path, vm_kib: u64) -> GatewayProcess {
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        &format!("ulimit -v {vm_kib} && exec \"$0\" \"$@\""),
        env!("CARGO_BIN_EXE_gateway"),
    ])
    .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
    .args(["--log-format", "json", "--hbone-listen", "off"])
    .args([
        "--drain-grace",
        "200ms",
        "--drain-timeout",
        "2s",
        "--endpoints",
    ])
    .arg(eps)
    .env("RUST_LOG", "info,gateway::discovery=debug")
    .env("NO_COLOR", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    GatewayProcess::spawn(cmd)
}

/// Runs the binary with `args`, which must fail to start within [`TIMEOUT`]: returns its exit
/// code and stderr.
fn start_fails(args: &[&str]) -> (Option<i32>, String) {
    let mut cmd = loopback_command();
    cmd.args(args);
    let (status, text) = exit_of(cmd, "a start that must fail");
    assert!(!status.success(), "started: {text}");
    (status.code(), text)
}

/// Every log line so far, as text.
fn log_text(gw: &GatewayProcess) -> String {
    let lines = gw.lines.lock().unwrap();
    lines.iter().map(|l| l.to_string() + "\n").collect()
}

/// The peak resident memory of `pid`, in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The auditor's file: 10,000 services each reusing one anchored list of 10,000 endpoints,
/// 1 MB of text that expands to 10^8 endpoints.
fn alias_bomb(list: usize, services: usize) -> String {
    let mut y = String::from(
        "services:\n  - host: s0.ns.svc.cluster.local\n    ports: &P [{port: 80, targetPort: 23000}]\n    endpoints: &EL\n",
    );
    for i in 0..list {
        y.push_str(&format!(
            "      - {{address: 10.{}.{}.{}}}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    for j in 1..services {
        y.push_str(&format!(
            "  - {{host: s{j}.ns.svc.cluster.local, ports: *P, endpoints: *EL}}\n"
        ));
    }
    y
}

/// The same through labels: 10,000 endpoints each reusing one anchored map of 10,000 labels
/// (10^8 label entries from 0.4 MB), within the endpoint limit.
fn label_bomb(labels: usize, endpoints: usize) -> String {
    let map: Vec<String> = (0..labels).map(|i| format!("k{i}: v")).collect();
    let mut y = format!(
        "services:\n  - host: s0.ns.svc.cluster.local\n    ports: [{{port: 80}}]\n    endpoints:\n      - address: 10.0.0.0\n        labels: &L {{{}}}\n",
        map.join(", ")
    );
    for i in 1..endpoints {
        y.push_str(&format!(
            "      - {{address: 10.{}.{}.{}, labels: *L}}\n",
            (i >> 16) & 255,
            (i >> 8) & 255,
            i & 255
        ));
    }
    y
}

/// Finding 1: the reload of a 1 MB alias bomb aborted the gateway (`memory allocation
/// failed`, under a 4 GB limit) or woke the OOM killer. Now it is refused at once, in little
/// memory, and the last table keeps serving.
#[test]
fn an_alias_bomb_is_refused_and_the_table_kept() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let gw = start_capped(&eps, 4_000_000);
    gw.wait_metric(GENERATION, 1.0);
    const EXPANDS: &str = "its YAML aliases (`*name`) expand it to over 2 times its own size";
    for (i, bomb) in [alias_bomb(10_000, 10_000), label_bomb(10_000, 10_000)]
        .iter()
        .enumerate()
    {
        assert!(bomb.len() < 1_100_000, "{}", bomb.len());
        let t0 = Instant::now();
        replace_file(&eps, bomb);
        gw.wait_metric(ERRORS, (i + 1) as f64);
        let took = t0.elapsed();
        gw.wait_log_count(REJECTED, i + 1);
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(gw.log_count(EXPANDS), i + 1, "{}", log_text(&gw));
    }
    assert_eq!(gw.metric(GENERATION), 1.0, "the last good table stays");
    assert_eq!(gw.metric(LAST_OK), 0.0);
    let peak = peak_rss_kib(gw.child.id());
    assert!(peak < 200 * 1024, "peak RSS {peak} KiB");
    replace_file(&eps, &catalog_yaml(3001));
    gw.wait_metric(GENERATION, 2.0);
    assert_eq!(gw.metric(LAST_OK), 1.0);
}

/// Finding 2: `--endpoints key.pem` quoted the whole private key into stderr, and a reload
/// into the ERROR log; a password file's line came out as an unknown field. Errors now keep
/// the kind and the place, never the content.
#[test]
fn a_key_or_password_file_is_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let key = &hbone_support::pki().gateway.key_pem;
    assert!(key.contains("PRIVATE KEY"));
    // Pieces of the key that must not appear: its base64 lines.
    let pieces: Vec<&str> = key
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(|l| &l[..16])
        .collect();
    assert!(!pieces.is_empty());
    let leaked =
        |text: &str| text.contains("PRIVATE KEY") || pieces.iter().any(|p| text.contains(p));

    let key_path = dir.path().join("key.pem");
    std::fs::write(&key_path, key).unwrap();
    let (code, err) = start_fails(&["--endpoints", key_path.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(!leaked(&err), "{err}");
    assert!(
        err.contains("not a valid endpoints file: invalid type: string, expected a mapping with a `services` list at line 1 column 1"),
        "{err}"
    );

    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let gw = GatewayProcess::start(&eps, &["--hbone-listen", "off"], "info");
    gw.wait_metric(GENERATION, 1.0);
    const SENTINEL: &str = "SENTINEL-5ee1";
    let hostile = [
        key.clone(),
        format!("root:{SENTINEL}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"),
        format!("services: [{{host: a.local, ports: [{{port: 80}}], {SENTINEL}: 1}}]"),
        format!(
            "services: [{{host: a.local, ports: [{{port: 80}}], endpoints: [{{address: 10.0.0.1, labels: {{{SENTINEL}: [x]}}}}]}}]"
        ),
        format!("services: [{{host: a.local, ports: [{{port: {SENTINEL}}}]}}]"),
        format!("services:\n  - host: a.local\n    ports: [{{port: 80}}]\n    hbone: {SENTINEL}\n"),
    ];
    for (i, text) in hostile.iter().enumerate() {
        replace_file(&eps, text);
        gw.wait_metric(ERRORS, (i + 1) as f64);
        gw.wait_log_count(REJECTED, i + 1);
    }
    let log = log_text(&gw);
    assert!(!leaked(&log) && !log.contains(SENTINEL), "{log}");
    // Each still says what is wrong and where.
    for want in [
        "invalid type: string, expected a mapping with a `services` list at line 1 column 1",
        "unknown field, expected `services` at line 1 column 1",
        "services[0]: unknown field, expected one of `host`, `ports`",
        "services[0].endpoints[0].labels: invalid type: sequence, expected a string at line 1",
        "services[0].ports[0].port: invalid type: string, expected u16 at line 1",
        "services[0]: none of the forms allowed here (`hbone` takes true, false or {port: N})",
    ] {
        assert_eq!(gw.log_count(want), 1, "{want}: {log}");
    }
    assert_eq!(gw.metric(GENERATION), 1.0);
}

/// Finding 3: `--endpoints` a symlink to a file in another directory was never reloaded on
/// change (only the link's directory was watched). The target's directory is watched too,
/// and followed when the link moves; reading it still triggers nothing.
#[test]
fn a_symlink_into_another_directory_is_reloaded_on_change() {
    let dir = tempfile::tempdir().unwrap();
    let (conf, real, third) = (
        dir.path().join("conf"),
        dir.path().join("real"),
        dir.path().join("third"),
    );
    for d in [&conf, &real, &third] {
        std::fs::create_dir(d).unwrap();
    }
    let target = real.join("endpoints.yaml");
    std::fs::write(&target, catalog_yaml(3000)).unwrap();
    let link = conf.join("endpoints.yaml");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let gw = GatewayProcess::start(
        &link,
        &["--hbone-listen", "off"],
        "info,gateway::discovery=debug",
    );
    gw.wait_metric(GENERATION, 1.0);

    // The target replaced atomically, then written in place.
    replace_file(&target, &catalog_yaml(3001));
    gw.wait_metric(GENERATION, 2.0);
    std::fs::write(&target, catalog_yaml(3002)).unwrap();
    gw.wait_metric(GENERATION, 3.0);
    let (_, routes) = admin_get(gw.admin, "/debug/routes");
    assert!(routes.contains(":3002"), "{routes}");

    // Reading the target and touching its neighbours reads nothing (no feeding on reads).
    let still = |gw: &GatewayProcess| {
        let snap =
            |gw: &GatewayProcess| (gw.metric(RELOADS), gw.log_count("endpoints file unchanged"));
        let before = snap(gw);
        std::fs::read(&target).unwrap();
        std::fs::read(&link).unwrap();
        std::fs::write(real.join("notes.txt"), "x").unwrap();
        std::fs::remove_file(real.join("notes.txt")).unwrap();
        let end = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
            assert_eq!(snap(gw), before, "read again without a change");
        }
    };
    still(&gw);

    // The link moved to a third directory: followed there, and the old one let go.
    let third_file = third.join("endpoints.yaml");
    std::fs::write(&third_file, catalog_yaml(3003)).unwrap();
    let tmp = conf.join("link.tmp");
    std::os::unix::fs::symlink(&third_file, &tmp).unwrap();
    std::fs::rename(&tmp, &link).unwrap();
    gw.wait_metric(GENERATION, 4.0);
    std::fs::write(&third_file, catalog_yaml(3004)).unwrap();
    gw.wait_metric(GENERATION, 5.0);
    let reloads = gw.metric(RELOADS);
    std::fs::write(&target, catalog_yaml(3009)).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(
        gw.metric(RELOADS),
        reloads,
        "the old target is no longer watched"
    );
    assert_eq!(gw.metric(GENERATION), 5.0);
    assert_eq!(gw.metric(ERRORS), 0.0);
}

/// Finding 8: a file truncated to nothing (a writer that died after `O_TRUNC`, `cat > file` on
/// a full disk) published an empty table as a success. It is refused, at start too; an empty
/// table is written `services: []`.
#[test]
fn a_truncated_file_keeps_the_table() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let gw = GatewayProcess::start(&eps, &["--hbone-listen", "off"], "info");
    gw.wait_metric(GENERATION, 1.0);
    std::fs::File::create(&eps).unwrap();
    gw.wait_metric(ERRORS, 1.0);
    gw.wait_log_count(REJECTED, 1);
    assert_eq!(gw.metric(LAST_OK), 0.0);
    assert_eq!(gw.metric(GENERATION), 1.0);
    assert_eq!(gw.metric("gateway_discovery_route_table_routes"), 1.0);
    assert_eq!(admin_get(gw.admin, "/healthz/ready").0, 200);
    assert_eq!(gw.log_count("for an empty table write `services: []`"), 1);
    std::fs::write(&eps, "# no services yet\nservices: []\n").unwrap();
    gw.wait_metric(GENERATION, 2.0);
    assert_eq!(gw.metric("gateway_discovery_route_table_routes"), 0.0);
    assert_eq!(gw.metric(LAST_OK), 1.0);

    std::fs::write(&eps, "\n  # nothing\n").unwrap();
    let (code, err) = start_fails(&["--endpoints", eps.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("is empty") && err.contains("services: []"),
        "{err}"
    );
}

/// Finding 7: a host holding a newline and ESC forged a line of the plain log through the
/// error's `services[0] (<host>)`. Values are quoted escaped now.
#[test]
fn a_host_cannot_forge_a_plain_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, catalog_yaml(3000)).unwrap();
    let mut cmd = loopback_command();
    cmd.args(["--log-format", "plain", "--endpoints"])
        .arg(&eps)
        .env("RUST_LOG", "info");
    let mut child = testkit::proc::ChildGuard::spawn(&mut cmd).unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let wait_for = |needle: &str, lines: &mut Vec<String>| {
        let deadline = Instant::now() + TIMEOUT;
        while !lines.iter().any(|l: &String| l.contains(needle)) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(l) => lines.push(l),
                Err(_) => panic!("no line with {needle:?} in {lines:#?}"),
            }
        }
    };
    wait_for("gateway listening", &mut lines);
    const FORGED: &str =
        "2031-01-01T06:00:00.000000Z  INFO gateway::discovery: route table published";
    replace_file(
        &eps,
        &format!(
            "services:\n  - host: \"x\\n{FORGED} source=\\\"file\\\" generation=9\\e[2K\"\n    ports: [{{port: 80}}]\n"
        ),
    );
    wait_for("route update rejected", &mut lines);
    // What else that error wrote (a forged line would follow it).
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(500)) {
        lines.push(l);
    }
    assert!(
        !lines
            .iter()
            .any(|l| l.starts_with("2031-01-01") || l.contains('\u{1b}')),
        "{lines:#?}"
    );
    let rejected = lines
        .iter()
        .find(|l| l.contains("route update rejected"))
        .unwrap();
    assert!(
        rejected.contains(r#"services[0] ("x\n2031-01-01T06:00:00.000000Z  INFO"#),
        "{rejected}"
    );
}

/// Finding 5: a subset named `V1` was accepted but unreachable (the SNI parser lower-cases,
/// the table kept `V1`). Istio accepts capitals in subset names and sidecars send them, so the
/// table keeps names lower-cased and both spellings route.
#[tokio::test]
async fn a_subset_named_in_capitals_is_reachable() {
    let (b, port) = backends(&["catalog-1"]).await;
    let text = endpoints_yaml(CATALOG, port, &[(b[0].addr.ip(), "v1", true)])
        .replace("name: v1", "name: V1");
    assert!(text.contains("name: V1"));
    let gw = gateway(&text).await;
    for subset in ["V1", "v1"] {
        assert_eq!(
            served_by(gw.listen, &sni(80, subset, CATALOG)).await,
            "catalog-1"
        );
    }
    let (_, routes) = http_get(gw.admin, "/debug/routes").await;
    assert!(
        routes.contains("\"v1\"") && !routes.contains("\"V1\""),
        "{routes}"
    );
}
