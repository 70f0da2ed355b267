//! A demo stopped part-way (Ctrl-C in its terminal, SIGTERM) stops the processes it started
//! and removes its work dir, which holds its CA keys, unless `--keep` was given. Runs the
//! built `demo` (it needs `gateway`, `meshctl` and `mesh-workload` next to it; `cargo test
//! --workspace` builds them). One test, the two runs in turn: a demo listens on fixed
//! loopback addresses, so two at once would collide.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
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

/// Sends `signal` (`-INT`, `-KILL`, …) to process group `group`.
fn signal_group(signal: &str, group: u32) -> bool {
    Command::new("kill")
        .args([signal, "--", &format!("-{group}")])
        .status()
        .is_ok_and(|s| s.success())
}

/// A demo in its own process group. Dropped (a failed assertion included), it kills the
/// whole group and removes the work dir, so a failing test leaves no process on the demo's
/// addresses and no CA key behind.
struct Demo {
    child: ChildGuard,
    work: Option<PathBuf>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        signal_group("-KILL", self.child.id());
        if let Some(w) = &self.work {
            let _ = std::fs::remove_dir_all(w);
        }
    }
}

/// What a stopped demo left: its output, its work dir, the processes it had started and
/// whether it exited 0.
struct Stopped {
    out: String,
    work: PathBuf,
    started: Vec<u32>,
    ok: bool,
}

/// Starts the demo in a process group of its own, waits until its output has `after` and it
/// has started processes, sends `signal` as `to_group` says (the group: a terminal's Ctrl-C),
/// and waits for it to exit.
fn interrupt(signal: &str, to_group: bool, args: &[&str], after: &str) -> (Demo, Stopped) {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_demo"));
    for tool in ["gateway", "meshctl", "mesh-workload"] {
        let p = bin.with_file_name(tool);
        assert!(p.is_file(), "{} is missing: build it first", p.display());
    }
    let child = ChildGuard::spawn(
        Command::new(&bin)
            .args(args)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let mut demo = Demo { child, work: None };
    let (tx, rx) = mpsc::channel();
    let stdout = demo.child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut out = String::new();
    let mut started = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    'wait: while started.is_empty() && Instant::now() < deadline {
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => {
                    if let Some((_, w)) = line.split_once("(work dir ") {
                        demo.work = Some(PathBuf::from(w.trim_end_matches(')')));
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(RecvTimeoutError::Timeout) => break,
                // The demo ended before it got there.
                Err(RecvTimeoutError::Disconnected) => break 'wait,
            }
        }
        if demo.work.is_some() && out.contains(after) {
            started = children(demo.child.id());
        }
    }
    let work = demo
        .work
        .clone()
        .unwrap_or_else(|| panic!("no work dir line:\n{out}"));
    assert!(
        !started.is_empty(),
        "no process started by {after:?}:\n{out}"
    );
    let pid = demo.child.id();
    let sent = if to_group {
        signal_group(signal, pid)
    } else {
        Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(sent, "could not send {signal}");
    let status = demo
        .child
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the demo did not stop on {signal}:\n{out}"));
    reader.join().unwrap();
    out.extend(rx.try_iter().map(|l| l + "\n"));
    let stopped = Stopped {
        out,
        work,
        started,
        ok: status.success(),
    };
    (demo, stopped)
}

#[test]
fn a_stopped_demo_stops_its_processes_and_removes_its_work_dir_unless_kept() {
    // Ctrl-C in a terminal: SIGINT to the demo and everything it started, while it waits on
    // a meshctl command (scene 1), which dies of it first.
    let (_demo, s) = interrupt("-INT", true, &[], "━━ 1.");
    let out = &s.out;
    assert!(!s.ok, "an interrupted demo must not exit 0:\n{out}");
    assert!(out.contains("interrupted by SIGINT"), "{out}");
    assert!(out.contains("work dir removed"), "{out}");
    assert!(!s.work.exists(), "{} left behind:\n{out}", s.work.display());
    for pid in s.started {
        assert!(!running(pid), "process {pid} outlived the demo:\n{out}");
    }

    // SIGTERM to the demo alone once its gateways and workloads run (scene 3), with --keep:
    // they stop, and the dir stays, named.
    let (_demo, s) = interrupt("-TERM", false, &["--keep"], "━━ 3.");
    let out = &s.out;
    assert!(!s.ok, "{out}");
    assert!(out.contains("interrupted by SIGTERM"), "{out}");
    assert!(out.contains("work dir kept for inspection"), "{out}");
    assert!(s.work.is_dir(), "{out}");
    for pid in s.started {
        assert!(!running(pid), "process {pid} outlived the demo:\n{out}");
    }
}
