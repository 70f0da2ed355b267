//! What the two demos (`demo` and `rotation-demo`) share: started processes with their logs,
//! waiting for them to listen, scene headers, and the closing tally of checks.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
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

/// Prints the tally of `checks`, removes the work dir when everything passed (unless `keep`),
/// and fails if the run or any check failed.
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
    if !keep && result.is_ok() && failed.is_empty() {
        let _ = std::fs::remove_dir_all(work);
    } else {
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
         afterwards; by default it is removed"
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
