//! Processes inside namespaces, and commands run to completion with a time limit.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use testkit::proc::ChildGuard;

pub type Log = Arc<Mutex<Vec<(Instant, String)>>>;

/// A child process inside a namespace (`ip netns exec` execs the program, so the pid is the
/// program's), with its stdout and stderr lines timestamped. Killed on drop.
pub struct Proc {
    pub label: String,
    pub child: ChildGuard,
    pub log: Log,
}

impl Proc {
    pub fn spawn(label: &str, ns: &str, program: &Path, args: &[String]) -> Proc {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            // Killed if this test dies without running its destructors (e.g. SIGKILL).
            .args(["setpriv", "--pdeathsig", "KILL"])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {label} in {ns}: {e}"));
        let mut child = ChildGuard::new(child);
        let log: Log = Arc::default();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        for r in [Box::new(out) as Box<dyn Read + Send>, Box::new(err)] {
            let log = log.clone();
            thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    log.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        Proc {
            label: label.into(),
            child,
            log,
        }
    }

    pub fn find(&self, needle: &str) -> Option<(Instant, String)> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .cloned()
    }

    /// Waits for a log line containing `needle`; an error if the process exits first.
    pub fn wait_for(
        &mut self,
        needle: &str,
        timeout: Duration,
    ) -> Result<(Instant, String), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(hit) = self.find(needle) {
                return Ok(hit);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                thread::sleep(Duration::from_millis(50)); // let the readers finish
                return Err(format!(
                    "{} exited ({status}) before logging {needle:?}:\n{}",
                    self.label,
                    self.tail(20)
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not log {needle:?} within {timeout:?}:\n{}",
                    self.label,
                    self.tail(20)
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = self.child.wait_exit(timeout)?;
        thread::sleep(Duration::from_millis(50)); // let the readers finish
        Some(status)
    }

    pub fn signal(&self, sig: &str) {
        let ok = self.child.signal(sig);
        assert!(
            ok,
            "kill -{sig} {} ({}) failed",
            self.child.id(),
            self.label
        );
    }

    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn tail(&self, n: usize) -> String {
        let log = self.log.lock().unwrap();
        let start = log.len().saturating_sub(n);
        log[start..]
            .iter()
            .map(|(_, l)| format!("  {l}\n"))
            .collect()
    }
}

/// Runs a command to completion (killed after `timeout`), capturing its output.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let what = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            rx.recv().expect("waiter thread")
        }
    };
    out.unwrap_or_else(|e| panic!("wait {what}: {e}"))
}

/// What a one-shot client (`mesh-workload call`, `ztunnel-double call`) run in a namespace
/// did: its exit status, its output, and the `key: value` lines it prints.
pub struct OneShot {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl OneShot {
    /// The value of the first stdout line starting with `key` (e.g. `"reply:"`).
    pub fn field(&self, key: &str) -> Option<String> {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_string())
    }
}

/// Runs `bin args...` in namespace `ns` (at most 20 s), its last stderr line the error, not a
/// backtrace.
pub fn one_shot<S: AsRef<OsStr>>(
    ns: &str,
    bin: &Path,
    args: impl IntoIterator<Item = S>,
) -> OneShot {
    let out = run(
        Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0"),
        Duration::from_secs(20),
    );
    OneShot {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `ip` with whitespace-separated arguments; panics with its error.
pub fn ip(args: &str) {
    let out = run(
        Command::new("ip").args(args.split_whitespace()),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "`ip {args}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

pub fn sh(ns: &str, script: &str) {
    let out = run(
        Command::new("ip").args(["netns", "exec", ns, "sh", "-c", script]),
        Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "in {ns}: `{script}` failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}
