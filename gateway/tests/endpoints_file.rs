//! Watching the endpoints file: only real changes of the file reload it, a file still being
//! written is not published, and `last_reload_ok` follows the last read.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

const RELOADS: &str = "gateway_discovery_route_table_reloads_total";
const ERRORS: &str = "gateway_discovery_route_table_reload_errors_total";
const LAST_OK: &str = "gateway_discovery_route_table_last_reload_ok";
const GENERATION: &str = "gateway_discovery_route_table_generation";
/// The debug line each read of an unchanged file logs: it counts reads.
const UNCHANGED: &str = "endpoints file unchanged";
const BROKEN: &str = "services: [{host: 'not a host', ports: [{port: 80}]}]\n";

fn valid_yaml() -> String {
    endpoints_yaml(CATALOG, 3000, &[([127, 0, 0, 2].into(), "v1", true)])
}

/// Replaces `path` atomically (write a temporary file, rename it over).
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// What a shell, an editor or a log shipper does in the directory without changing the file:
/// read it, read and write other files beside it.
fn unrelated_activity(dir: &Path, eps: &Path) {
    let out = std::process::Command::new("cat").arg(eps).output().unwrap();
    assert!(out.status.success());
    std::fs::read(eps).unwrap();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    std::fs::read(dir.join("notes.txt")).unwrap();
    std::fs::remove_file(dir.join("notes.txt")).unwrap();
    let _ = std::fs::read_dir(dir).unwrap().count();
}

/// Asserts over `hold` that none of the counters moves.
fn assert_still(gw: &GatewayProcess, hold: Duration) {
    let snapshot = |gw: &GatewayProcess| {
        (
            gw.metric(RELOADS),
            gw.metric(ERRORS),
            gw.log_count(REJECTED),
            gw.log_count(UNCHANGED),
        )
    };
    let before = snapshot(gw);
    let end = Instant::now() + hold;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            snapshot(gw),
            before,
            "(reloads, errors, ERROR lines, reads) moved without a change of the file"
        );
    }
}

#[test]
fn reading_the_file_or_touching_others_does_not_reload() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, valid_yaml()).unwrap();
    let gw = GatewayProcess::start(&eps, &[], "info,gateway::discovery=debug");
    gw.wait_metric(GENERATION, 1.0);
    unrelated_activity(dir.path(), &eps);
    assert_still(&gw, Duration::from_millis(1500));
    assert_eq!(gw.metric(RELOADS), 1.0);
    assert_eq!(gw.log_count(UNCHANGED), 0, "the file was read again");
}

#[test]
fn a_broken_file_is_reported_once_per_change() {
    let dir = tempfile::tempdir().unwrap();
    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(&eps, valid_yaml()).unwrap();
    let gw = GatewayProcess::start(&eps, &[], "info");
    gw.wait_metric(GENERATION, 1.0);

    replace(&eps, BROKEN);
    gw.wait_metric(ERRORS, 1.0);
    gw.wait_log_count(REJECTED, 1);
    unrelated_activity(dir.path(), &eps);
    assert_still(&gw, Duration::from_millis(1500));
    assert_eq!(gw.log_count(REJECTED), 1);

    // A second real change, written in place this time: one more error, and no more.
    std::fs::write(&eps, "services: [\n").unwrap();
    gw.wait_metric(ERRORS, 2.0);
    gw.wait_log_count(REJECTED, 2);
    unrelated_activity(dir.path(), &eps);
    assert_still(&gw, Duration::from_millis(1000));
    assert_eq!(gw.log_count(REJECTED), 2);
    assert_eq!(gw.metric(GENERATION), 1.0);
}

/// A writer that is slow and not atomic: it writes 26 of 51 services (a valid file on its
/// own), pauses with the file open, then writes the rest. The half is never published.
#[tokio::test]
async fn a_file_still_being_written_is_not_published() {
    const SERVICES: usize = 51;
    let gw = gateway(&big_endpoints_yaml(1, 1)).await;
    assert_eq!(gw.bound().routes.load().unwrap().len(), 1);
    let first: String = std::iter::once("services:\n".to_string())
        .chain((0..26).map(|s| service_yaml(s, 2)))
        .collect();
    let rest: String = (26..SERVICES).map(|s| service_yaml(s, 2)).collect();
    let path = gw.path.clone();
    let writer = std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(first.as_bytes()).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(600));
        f.write_all(rest.as_bytes()).unwrap();
    });
    let deadline = Instant::now() + TIMEOUT;
    let mut seen = vec![];
    loop {
        let len = gw.bound().routes.load().unwrap().len();
        if seen.last() != Some(&len) {
            seen.push(len);
        }
        if len == SERVICES {
            break;
        }
        assert!(Instant::now() < deadline, "never published: {seen:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.join().unwrap();
    assert_eq!(seen, vec![1, SERVICES], "route counts published");
    // The counter moves just after the table is swapped in: wait for it, not read it once.
    wait_metric(gw.admin, RELOADS, 2.0).await;
    let (_, m) = http_get(gw.admin, "/metrics").await;
    assert_eq!(metric(&m, ERRORS), 0.0);
    assert_eq!(metric(&m, RELOADS), 2.0);
}

#[tokio::test]
async fn restoring_the_good_file_sets_last_reload_ok_again() {
    let good = valid_yaml();
    let gw = gateway(&good).await;
    gw.write_endpoints(BROKEN);
    wait_metric(gw.admin, ERRORS, 1.0).await;
    wait_metric(gw.admin, LAST_OK, 0.0).await;

    // The same content as the table that is serving: nothing to publish, but the read is good.
    gw.write_endpoints(&good);
    wait_metric(gw.admin, LAST_OK, 1.0).await;
    let (_, m) = http_get(gw.admin, "/metrics").await;
    assert_eq!(metric(&m, GENERATION), 1.0);
    assert_eq!(metric(&m, ERRORS), 1.0);
}

/// The same through SIGHUP, on a file whose writes make no event in the watched directory:
/// a hard link, written through its name in another directory (inotify reports a write
/// under the name it went through; a symlink's target directory is watched).
#[test]
fn sighup_after_a_failed_reload_sets_last_reload_ok_again() {
    let dir = tempfile::tempdir().unwrap();
    let (watched, elsewhere) = (dir.path().join("watched"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let target = elsewhere.join("real.yaml");
    std::fs::write(&target, valid_yaml()).unwrap();
    let link = watched.join("endpoints.yaml");
    std::fs::hard_link(&target, &link).unwrap();
    let gw = GatewayProcess::start(&link, &[], "info");
    gw.wait_metric(GENERATION, 1.0);

    std::fs::write(&target, BROKEN).unwrap();
    gw.signal("HUP");
    gw.wait_metric(ERRORS, 1.0);
    assert_eq!(gw.metric(LAST_OK), 0.0);

    std::fs::write(&target, valid_yaml()).unwrap();
    gw.signal("HUP");
    gw.wait_metric(LAST_OK, 1.0);
    assert_eq!(gw.metric(GENERATION), 1.0);
}

/// A ConfigMap volume: `endpoints.yaml -> ..data/endpoints.yaml`, `..data -> ..<timestamp>`;
/// an update swaps `..data` by renaming a new link over it.
#[tokio::test]
async fn a_configmap_symlink_swap_is_seen() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir(d.join("..2026_12_02_1")).unwrap();
    std::fs::write(
        d.join("..2026_12_02_1/endpoints.yaml"),
        big_endpoints_yaml(1, 1),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_12_02_1", d.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/endpoints.yaml", d.join("endpoints.yaml")).unwrap();
    let bound = gateway::app::build(test_config(&d.join("endpoints.yaml")))
        .await
        .unwrap();
    assert_eq!(bound.routes.load().unwrap().len(), 1);

    std::fs::create_dir(d.join("..2026_12_02_2")).unwrap();
    std::fs::write(
        d.join("..2026_12_02_2/endpoints.yaml"),
        big_endpoints_yaml(3, 1),
    )
    .unwrap();
    std::os::unix::fs::symlink("..2026_12_02_2", d.join("..data_tmp")).unwrap();
    std::fs::rename(d.join("..data_tmp"), d.join("..data")).unwrap();
    std::fs::remove_dir_all(d.join("..2026_12_02_1")).unwrap();

    let deadline = Instant::now() + TIMEOUT;
    while bound.routes.load().unwrap().len() != 3 {
        assert!(Instant::now() < deadline, "the swap was not seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, m) = http_get(bound.admin_addr, "/metrics").await;
    assert_eq!(metric(&m, ERRORS), 0.0);
}

async fn wait_metric(admin: std::net::SocketAddr, series: &str, want: f64) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, m) = http_get(admin, "/metrics").await;
        if metric(&m, series) == want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} never became {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A service's `traffic_policy` in the file applies as a DestinationRule's would: round robin
/// takes the endpoints in turn, and past `maxConnections` a connection is closed at once
/// (`upstream_overflow`).
#[tokio::test]
async fn a_services_traffic_policy_applies_as_a_rules() {
    let (b, port) = backends(&["a", "b"]).await;
    let yaml = format!(
        "services:\n  - host: {CATALOG}\n    ports: [{{port: 80, targetPort: {port}}}]\n    traffic_policy:\n      connectionPool: {{tcp: {{maxConnections: 2}}}}\n      loadBalancer: {{simple: ROUND_ROBIN}}\n    endpoints:\n      - {{address: {}}}\n      - {{address: {}}}\n",
        b[0].addr.ip(),
        b[1].addr.ip()
    );
    let gw = gateway(&yaml).await;
    let catalog = sni(80, "", CATALOG);
    let mut seen = Vec::new();
    for _ in 0..6 {
        seen.push(who(gw.listen, &catalog).await.unwrap());
    }
    for turn in seen.chunks(2) {
        let mut names = turn.to_vec();
        names.sort();
        assert_eq!(names, ["a", "b"], "{seen:?}");
    }
    let admin = gw.admin;
    testkit::wait::eventually(
        "earlier connections closed",
        Duration::from_secs(10),
        || async move {
            let (_, body) = http_get(admin, "/debug/routes").await;
            body.contains(r#""open_connections": 0"#)
        },
    )
    .await;
    let _one = open(gw.listen, &catalog, default_client()).await.unwrap();
    let _two = open(gw.listen, &catalog, default_client()).await.unwrap();
    assert_eq!(who(gw.listen, &catalog).await, None);
    assert_eq!(rejected(gw.admin, "upstream_overflow").await, 1.0);
}
