//! `--endpoints` a symlink into another directory, and that directory removed and made again
//! under the same path (`rm -rf conf && mkdir conf`, a volume mounted again): the link never
//! changes and the old directory's watch died with it, so only a watch on the directory's
//! parent sees the new one. The gateway, the real binary, routes to the new table's endpoint
//! without SIGHUP, and still does not read the file again when nothing changed.
//!
//! A directory on the way replaced: a directory symlink swapped by rename (Capistrano's
//! `current -> releases/N`), the file's own directory removed and made again, and a ConfigMap
//! volume's `..data` swapped twice; after each, a further atomic replacement of the file is
//! read too (the watches follow the new directory). Before, the file's directory was watched
//! once, by path: the swap went unseen, and after the directory was made again no later change
//! was, until SIGHUP, while `last_reload_ok` stayed 1. The in-process ConfigMap test is in
//! endpoints_file.rs.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

const RELOADS: &str = "gateway_discovery_route_table_reloads_total";
const ERRORS: &str = "gateway_discovery_route_table_reload_errors_total";
/// The debug line each read of an unchanged file logs: it counts reads.
const UNCHANGED: &str = "endpoints file unchanged";

/// The catalog service routed to the one backend `to` (its port is shared by all of them).
fn table(to: &Backend) -> String {
    endpoints_yaml(CATALOG, to.addr.port(), &[(to.addr.ip(), "v1", true)])
}

/// Who answers a call through the gateway (`None` while the call fails).
fn answer(rt: &tokio::runtime::Runtime, gw: &GatewayProcess) -> Option<String> {
    let greeting = rt.block_on(call(gw.listen, &sni(80, "v1", CATALOG))).ok()?;
    greeting.split(' ').next().map(str::to_string)
}

/// Calls until `want` answers, bounded by [`TIMEOUT`]; returns how long that took.
fn wait_answer(rt: &tokio::runtime::Runtime, gw: &GatewayProcess, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let got = answer(rt, gw);
        if got.as_deref() == Some(want) {
            return start.elapsed();
        }
        if start.elapsed() > TIMEOUT {
            let log = gw.lines.lock().unwrap().clone();
            panic!("still answered by {got:?}, not {want}, without SIGHUP; log: {log:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that reading the file, its link and the directories on the way, and touching
/// other files there, makes no read of the file (no feeding on reads, ours or others').
fn assert_no_reads(gw: &GatewayProcess, link: &Path, target: &Path) {
    let snap = |gw: &GatewayProcess| {
        (
            gw.metric(RELOADS),
            gw.metric(ERRORS),
            gw.log_count(UNCHANGED),
        )
    };
    // Settled first: the counters of the read that produced the answer just seen move after
    // the table does, and a change made in several steps may still be read (QUIET, 150 ms).
    let mut before = snap(gw);
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let now = snap(gw);
        if now == before {
            break;
        }
        before = now;
    }
    let dir = target.parent().unwrap();
    std::fs::read(target).unwrap();
    std::fs::read(link).unwrap();
    let _ = std::fs::read_dir(dir).unwrap().count();
    let _ = std::fs::read_dir(dir.parent().unwrap()).unwrap().count();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    std::fs::remove_file(dir.join("notes.txt")).unwrap();
    std::fs::create_dir(dir.parent().unwrap().join("other")).unwrap();
    std::fs::remove_dir(dir.parent().unwrap().join("other")).unwrap();
    let end = Instant::now() + Duration::from_millis(1200);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            snap(gw),
            before,
            "(reloads, errors, reads) moved without a change"
        );
    }
}

/// `conf/endpoints.yaml -> <link_text>`, which names `<tmp>/<target>`. Each round removes the
/// tree `remove` (a directory on the way to the target), and makes it again:
/// - round 1 waits for the gateway to read the missing file before making it again (the
///   case the old watcher missed: nothing watched saw the new directory);
/// - round 2 makes it again and writes the file at once (one burst of events).
///
/// Returns the time from each write of the new file to the first call it routes.
fn removed_and_made_again(link_text: &str, target: &str, remove: &str) -> Vec<Duration> {
    let rt = multi_thread_runtime(1);
    let (backends, _port) = rt.block_on(backends(&["catalog-1", "catalog-2"]));
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("conf");
    std::fs::create_dir(&conf).unwrap();
    let target: PathBuf = tmp.path().join(target);
    let remove = tmp.path().join(remove);
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, table(&backends[0])).unwrap();
    let link = conf.join("endpoints.yaml");
    let link_text = link_text.replace("<tmp>", tmp.path().to_str().unwrap());
    std::os::unix::fs::symlink(&link_text, &link).unwrap();

    let gw = GatewayProcess::start(
        &link,
        &["--hbone-listen", "off"],
        "info,gateway::discovery=debug",
    );
    assert_eq!(answer(&rt, &gw).as_deref(), Some("catalog-1"));

    let mut took = vec![];
    // Round 1: the gateway reads the missing file (refused, the table kept), then the
    // directory comes back.
    std::fs::remove_dir_all(&remove).unwrap();
    gw.wait_metric(ERRORS, 1.0);
    assert_eq!(answer(&rt, &gw).as_deref(), Some("catalog-1"), "table kept");
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(&target, table(&backends[1])).unwrap();
    let written = Instant::now();
    wait_answer(&rt, &gw, "catalog-2");
    took.push(written.elapsed());
    assert_no_reads(&gw, &link, &target);

    // Round 2: removed, made again and written in one burst; the new directory is watched
    // again, so a later in-place write is seen too.
    std::fs::remove_dir_all(&remove).unwrap();
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::write(&target, table(&backends[0])).unwrap();
    let written = Instant::now();
    wait_answer(&rt, &gw, "catalog-1");
    took.push(written.elapsed());
    std::thread::sleep(Duration::from_millis(400));
    std::fs::write(&target, table(&backends[1])).unwrap();
    let written = Instant::now();
    wait_answer(&rt, &gw, "catalog-2");
    took.push(written.elapsed());
    assert_no_reads(&gw, &link, &target);

    assert_eq!(gw.log_count("SIGHUP"), 0);
    assert_eq!(
        gw.metric("gateway_discovery_route_table_last_reload_ok"),
        1.0
    );
    took
}

#[test]
fn an_absolute_link_whose_directory_is_made_again_is_followed() {
    let took = removed_and_made_again("<tmp>/real/endpoints.yaml", "real/endpoints.yaml", "real");
    eprintln!("write to first routed call: {took:?}");
}

#[test]
fn a_relative_link_whose_directory_is_made_again_is_followed() {
    removed_and_made_again("../real/endpoints.yaml", "real/endpoints.yaml", "real");
}

/// Two levels gone: the nearest directory left is watched for the first missing one, and
/// each level is followed as it comes back.
#[test]
fn a_removed_tree_made_again_is_followed() {
    removed_and_made_again("../a/b/endpoints.yaml", "a/b/endpoints.yaml", "a");
}

/// Asserts, once the file was replaced or swapped, that the gateway read it without SIGHUP and
/// that nothing says the table is stale (it was not).
fn assert_followed(gw: &GatewayProcess) {
    assert_eq!(gw.log_count("SIGHUP"), 0);
    assert_eq!(
        gw.metric("gateway_discovery_route_table_last_reload_ok"),
        1.0
    );
    assert_eq!(gw.metric(ERRORS), 0.0);
}

/// Capistrano: `--endpoints cap/current/ep.yaml`, `current -> rel1` swapped for `rel2` by
/// renaming a new link over it (`ln -sfn rel2 current.tmp && mv -T current.tmp current`), then
/// the file in `rel2` replaced atomically, then `current` swapped back.
#[test]
fn a_directory_symlink_swapped_by_rename_is_followed() {
    let rt = multi_thread_runtime(1);
    let (backends, _port) = rt.block_on(backends(&["catalog-1", "catalog-2"]));
    let tmp = tempfile::tempdir().unwrap();
    let cap = tmp.path().join("cap");
    for (rel, to) in [("rel1", &backends[0]), ("rel2", &backends[1])] {
        std::fs::create_dir_all(cap.join(rel)).unwrap();
        std::fs::write(cap.join(rel).join("ep.yaml"), table(to)).unwrap();
    }
    std::os::unix::fs::symlink("rel1", cap.join("current")).unwrap();
    let swap = |to: &str| {
        std::os::unix::fs::symlink(to, cap.join("current.tmp")).unwrap();
        std::fs::rename(cap.join("current.tmp"), cap.join("current")).unwrap();
    };
    let path = cap.join("current/ep.yaml");
    let gw = GatewayProcess::start(
        &path,
        &["--hbone-listen", "off"],
        "info,gateway::discovery=debug",
    );
    assert_eq!(answer(&rt, &gw).as_deref(), Some("catalog-1"));

    swap("rel2");
    wait_answer(&rt, &gw, "catalog-2");
    replace_file(&cap.join("rel2/ep.yaml"), &table(&backends[0]));
    wait_answer(&rt, &gw, "catalog-1");
    assert_no_reads(&gw, &path, &cap.join("rel2/ep.yaml"));
    // The old release changes nothing now.
    replace_file(&cap.join("rel1/ep.yaml"), &table(&backends[1]));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(answer(&rt, &gw).as_deref(), Some("catalog-1"));

    swap("rel1");
    wait_answer(&rt, &gw, "catalog-2");
    replace_file(&cap.join("rel1/ep.yaml"), &table(&backends[0]));
    wait_answer(&rt, &gw, "catalog-1");
    assert_followed(&gw);
}

/// `--endpoints d1/cfg/ep.yaml` with no symlink: `rm -rf d1/cfg; mkdir d1/cfg` and the file
/// written again is read, and so are atomic replacements in the new `d1/cfg` afterwards.
#[test]
fn the_files_directory_removed_and_made_again_is_followed() {
    let rt = multi_thread_runtime(1);
    let (backends, _port) = rt.block_on(backends(&["catalog-1", "catalog-2"]));
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("d1/cfg");
    std::fs::create_dir_all(&cfg).unwrap();
    let path = cfg.join("ep.yaml");
    std::fs::write(&path, table(&backends[0])).unwrap();
    let gw = GatewayProcess::start(
        &path,
        &["--hbone-listen", "off"],
        "info,gateway::discovery=debug",
    );
    assert_eq!(answer(&rt, &gw).as_deref(), Some("catalog-1"));

    for round in 0..2 {
        std::fs::remove_dir_all(&cfg).unwrap();
        std::fs::create_dir(&cfg).unwrap();
        std::fs::write(&path, table(&backends[1])).unwrap();
        wait_answer(&rt, &gw, "catalog-2");
        replace_file(&path, &table(&backends[0]));
        wait_answer(&rt, &gw, "catalog-1");
        replace_file(&path, &table(&backends[1]));
        wait_answer(&rt, &gw, "catalog-2");
        if round == 0 {
            assert_no_reads(&gw, &path, &path);
        }
        replace_file(&path, &table(&backends[0]));
        wait_answer(&rt, &gw, "catalog-1");
    }
    assert_followed(&gw);
}

/// A ConfigMap volume as the kubelet lays it out and updates it: `cm/ep.yaml ->
/// ..data/ep.yaml`, `..data -> ..2026_12_05_<n>`; each update writes a new timestamped
/// directory, renames a new `..data_tmp` link over `..data` and removes the old directory.
#[test]
fn configmap_data_swaps_are_followed() {
    let rt = multi_thread_runtime(1);
    let (backends, _port) = rt.block_on(backends(&["catalog-1", "catalog-2"]));
    let tmp = tempfile::tempdir().unwrap();
    let cm = tmp.path().join("cm");
    let stamp = |n: usize| format!("..2026_12_05_{n:02}");
    let publish = |n: usize, to: &Backend| {
        let dir = cm.join(stamp(n));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ep.yaml"), table(to)).unwrap();
        std::os::unix::fs::symlink(stamp(n), cm.join("..data_tmp")).unwrap();
        std::fs::rename(cm.join("..data_tmp"), cm.join("..data")).unwrap();
        if n > 0 {
            std::fs::remove_dir_all(cm.join(stamp(n - 1))).unwrap();
        }
    };
    publish(0, &backends[0]);
    let path = cm.join("ep.yaml");
    std::os::unix::fs::symlink("..data/ep.yaml", &path).unwrap();
    let gw = GatewayProcess::start(
        &path,
        &["--hbone-listen", "off"],
        "info,gateway::discovery=debug",
    );
    assert_eq!(answer(&rt, &gw).as_deref(), Some("catalog-1"));
    for n in 1..4 {
        let (to, name) = match n % 2 {
            1 => (&backends[1], "catalog-2"),
            _ => (&backends[0], "catalog-1"),
        };
        publish(n, to);
        wait_answer(&rt, &gw, name);
    }
    assert_no_reads(&gw, &path, &cm.join(stamp(3)).join("ep.yaml"));
    assert_followed(&gw);
}
