//! What the two demos (`demo` and `rotation-demo`) share: started processes with their logs,
//! waiting for them to listen, scene headers, and the closing tally of checks.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use rustix::process::{PidfdFlags, Signal, pidfd_open, pidfd_send_signal};
use testkit::proc::ChildGuard;

/// A started binary, killed when dropped; its stderr goes to `log`.
pub struct Proc {
    pub name: String,
    pub child: ChildGuard,
    pub log: PathBuf,
}

pub fn header(n: u32, title: &str) {
    println!("\n━━ {n}. {title}");
}

/// Waits until `addr` accepts TCP, or the process dies, or 10 s pass.
pub fn wait_listening(p: &mut Proc, addr: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = p.child.try_wait()? {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            bail!(
                "{} exited ({status}) before listening on {addr}:\n{log}",
                p.name
            );
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "{} did not listen on {addr} within 10 s (log: {})",
        p.name,
        p.log.display()
    )
}

/// A demo stopped by its user (Ctrl-C, SIGTERM, or its terminal closing).
#[derive(Debug)]
pub struct Interrupted(&'static str);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted by {}", self.0)
    }
}

impl std::error::Error for Interrupted {}

/// The commands scenes wait on ([`output`]), by pidfd (no pid reuse can redirect a signal),
/// and the signal that stopped the demo, once one did.
struct WaitedOn {
    stopped_by: Option<Signal>,
    commands: Vec<(u32, OwnedFd)>,
}

static WAITED_ON: Mutex<WaitedOn> = Mutex::new(WaitedOn {
    stopped_by: None,
    commands: Vec::new(),
});

/// `cmd.output()` (stdin closed, stdout and stderr captured), for a scene: while it waits,
/// a signal stopping the demo is passed on to the command, so the scene does not hold the
/// demo until the command ends on its own (a scene blocks its thread on it). Once the demo
/// was signalled, no command starts (an `Interrupted` error), and one started meanwhile is
/// sent the signal at once.
pub fn output(cmd: &mut Command) -> std::io::Result<Output> {
    let stopped = || {
        std::io::Error::new(
            std::io::ErrorKind::Interrupted,
            "not run: the demo is stopping",
        )
    };
    if lock_waited().stopped_by.is_some() {
        return Err(stopped());
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let id = child.id();
    let pid = rustix::process::Pid::from_child(&child);
    match pidfd_open(pid, PidfdFlags::empty()) {
        Ok(fd) => {
            let mut waited = lock_waited();
            if let Some(sig) = waited.stopped_by {
                let _ = pidfd_send_signal(&fd, sig);
            }
            waited.commands.push((id, fd));
        }
        // A kernel without pidfds (before 5.3): the command runs to its end.
        Err(e) => eprintln!("(a signal to the demo will not reach {id}: pidfd_open: {e})"),
    }
    let out = child.wait_with_output();
    lock_waited().commands.retain(|(waited, _)| *waited != id);
    out
}

fn lock_waited() -> std::sync::MutexGuard<'static, WaitedOn> {
    WAITED_ON.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a demo's scenes until they end or the user stops the demo. Stopping drops the scenes,
/// which kills the processes they started, and is an [`Interrupted`] error. The signals are
/// watched on a worker thread (the runtime must be multi-threaded): a scene may block its
/// thread on a command, which is then sent the same signal ([`output`]). Once per process: the
/// signal stays recorded, so a second call after one would count as interrupted.
pub async fn until_interrupted(
    scenes: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed before the first scene runs.
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    // Told once the watcher has recorded a signal in [`WAITED_ON`], the one record of it.
    let told = std::sync::Arc::new(tokio::sync::Notify::new());
    let tell = told.clone();
    let watcher = tokio::spawn(async move {
        // Every signal reaches the commands waited on then; [`output`] sends the first one
        // to a command started later.
        loop {
            let sig = tokio::select! {
                _ = int.recv() => Signal::INT,
                _ = term.recv() => Signal::TERM,
                _ = hangup.recv() => Signal::HUP,
            };
            let mut waited = lock_waited();
            waited.stopped_by.get_or_insert(sig);
            for (_, fd) in &waited.commands {
                let _ = pidfd_send_signal(fd, sig);
            }
            drop(waited);
            // A permit is kept when nothing waits yet.
            tell.notify_one();
        }
    });
    let stopped = || lock_waited().stopped_by.map(interrupted_by);
    // A signal counts even when the scenes end in the same turn.
    let result = tokio::select! {
        biased;
        _ = told.notified() => Err(stopped().expect("recorded before told").into()),
        r = scenes => r.and_then(|()| match stopped() {
            Some(why) => Err(why.into()),
            None => Ok(()),
        }),
    };
    // The command a scene waited on can die of the signal (Ctrl-C in a terminal signals the
    // whole process group) before the watcher has told: the scene's error waits briefly.
    let result = match result {
        Err(e) if e.downcast_ref::<Interrupted>().is_none() => {
            let _ = tokio::time::timeout(SIGNAL_GRACE, told.notified()).await;
            match stopped() {
                Some(why) => Err(why.into()),
                None => Err(e),
            }
        }
        r => r,
    };
    watcher.abort();
    result
}

/// The interruption a stopping signal names.
fn interrupted_by(sig: Signal) -> Interrupted {
    Interrupted(match sig {
        Signal::INT => "SIGINT",
        Signal::TERM => "SIGTERM",
        Signal::HUP => "SIGHUP",
        _ => "a signal",
    })
}

/// How long a failed scene's error waits for a signal that killed its command.
const SIGNAL_GRACE: Duration = Duration::from_millis(300);

/// Prints the tally of `checks`, removes the work dir when everything passed or the user
/// stopped the demo (unless `keep`), and fails if the run or any check failed. The work dir
/// holds the demo's CA keys: a stopped demo must not leave them in the temporary directory.
pub fn conclude(
    checks: &[(String, bool)],
    result: Result<()>,
    work: &Path,
    keep: bool,
) -> Result<()> {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(w, _)| w.as_str())
        .collect();
    println!(
        "\n━━ Result: {} of {} checks passed",
        checks.len() - failed.len(),
        checks.len()
    );
    let interrupted = result
        .as_ref()
        .err()
        .and_then(|e| e.downcast_ref::<Interrupted>());
    if let (false, Some(why)) = (keep, interrupted) {
        let _ = std::fs::remove_dir_all(work);
        println!(
            "{why}: work dir removed: {} (run with --keep to keep it)",
            work.display()
        );
    } else if !keep && result.is_ok() && failed.is_empty() {
        let _ = std::fs::remove_dir_all(work);
    } else {
        if let Some(why) = interrupted {
            print!("{why}: ");
        }
        println!(
            "work dir kept for inspection: {} (logs: *.log)",
            work.display()
        );
    }
    result?;
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

/// The demos' command line: `--keep` (keep the work directory) and `--help`; anything else is
/// refused before anything starts (exit 2), so a mistyped flag never runs the whole demo.
pub fn keep_flag(name: &str, what: &str) -> bool {
    let usage = format!(
        "usage: {name} [--keep]\n{what}\n  --keep   keep the work directory (certificates, logs) \
         afterwards; by default it is removed unless a check or a step failed"
    );
    let mut keep = false;
    for a in std::env::args().skip(1) {
        match a.as_str() {
            "--keep" => keep = true,
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            other => {
                eprintln!("error: unexpected argument {other:?}\n{usage}");
                std::process::exit(2);
            }
        }
    }
    keep
}
