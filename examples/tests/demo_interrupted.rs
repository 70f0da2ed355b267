//! A demo stopped part-way (Ctrl-C, SIGTERM) stops the processes it started and removes its
//! work dir, which holds its CA keys, unless `--keep` was given. Runs the built `demo` (it
//! needs `gateway`, `meshctl` and `mesh-workload` next to it; `cargo test --workspace` builds
//! them).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use testkit::proc::ChildGuard;

/// The pids whose parent is `parent` (from `/proc/<pid>/stat`).
fn children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // `pid (comm) state ppid …`; comm may hold spaces, so read after the last ')'.
            let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
            after.split_whitespace().nth(1) == Some(&parent.to_string())
        })
        .collect()
}

/// Alive and not a zombie.
fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').map_or("", |(_, r)| r.trim_start());
    !state.is_empty() && !state.starts_with('Z')
}

/// Starts the demo, waits until its output has `after` and it has started processes, sends it
/// `signal`, and returns its output, its work dir, the processes it had started and whether it
/// exited 0.
fn interrupt(signal: &str, args: &[&str], after: &str) -> (String, PathBuf, Vec<u32>, bool) {
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_demo"));
    for tool in ["gateway", "meshctl", "mesh-workload"] {
        let p = demo.with_file_name(tool);
        assert!(p.is_file(), "{} is missing: build it first", p.display());
    }
    let mut child = ChildGuard::spawn(
        Command::new(&demo)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut out = String::new();
    let mut work = None;
    let mut started = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while started.is_empty() && Instant::now() < deadline {
        while let Ok(line) = rx.recv_timeout(Duration::from_millis(50)) {
            if let Some((_, w)) = line.split_once("(work dir ") {
                work = Some(PathBuf::from(w.trim_end_matches(')')));
            }
            out.push_str(&line);
            out.push('\n');
        }
        if work.is_some() && out.contains(after) {
            started = children(child.id());
        }
    }
    let work = work.unwrap_or_else(|| panic!("no work dir line:\n{out}"));
    assert!(
        !started.is_empty(),
        "no process started by {after:?}:\n{out}"
    );
    let sent = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = child
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the demo did not stop on {signal}:\n{out}"));
    reader.join().unwrap();
    out.extend(rx.try_iter().map(|l| l + "\n"));
    (out, work, started, status.success())
}

#[test]
fn a_stopped_demo_stops_its_processes_and_removes_its_work_dir() {
    // By scene 3 the gateways and workloads run.
    let (out, work, started, ok) = interrupt("-INT", &[], "━━ 3.");
    assert!(!ok, "an interrupted demo must not exit 0:\n{out}");
    assert!(out.contains("interrupted by SIGINT"), "{out}");
    assert!(out.contains("work dir removed"), "{out}");
    assert!(!work.exists(), "{} left behind:\n{out}", work.display());
    for pid in started {
        assert!(!running(pid), "process {pid} outlived the demo:\n{out}");
    }
}

#[test]
fn keep_keeps_the_work_dir_of_a_stopped_demo() {
    let (out, work, started, ok) = interrupt("-TERM", &["--keep"], "━━ 1.");
    assert!(!ok, "{out}");
    assert!(out.contains("interrupted by SIGTERM"), "{out}");
    assert!(out.contains("work dir kept for inspection"), "{out}");
    assert!(work.is_dir(), "{out}");
    for pid in started {
        assert!(!running(pid), "process {pid} outlived the demo:\n{out}");
    }
    std::fs::remove_dir_all(&work).unwrap();
}
