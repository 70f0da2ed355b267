//! A child process that cannot outlive its test: [`ChildGuard`] kills and reaps it on drop,
//! also when the test panics, so no gateway or workload keeps a port or a namespace busy.

use std::ops::{Deref, DerefMut};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How often [`ChildGuard::wait_exit`] looks at the child.
const POLL: Duration = Duration::from_millis(20);

/// Owns a [`Child`]; dropping it kills the process (SIGKILL) and waits for it, so it leaves
/// no zombie. Derefs to the `Child` for `id()`, `try_wait()`, its pipes and so on.
#[derive(Debug)]
pub struct ChildGuard(Child);

impl ChildGuard {
    /// Guards an already spawned child.
    pub fn new(child: Child) -> ChildGuard {
        ChildGuard(child)
    }

    /// Spawns `cmd` and guards the child.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<ChildGuard> {
        cmd.spawn().map(ChildGuard)
    }

    /// Kills (SIGKILL) and reaps the child; harmless if it already exited.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Sends a signal by name (`TERM`, `HUP`, ...) with `kill(1)`; false if that failed.
    pub fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.0.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits up to `timeout` for the child to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.0.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL);
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `pid` is still a process of ours (a reaped child has no /proc entry, a
    /// zombie has one with state Z).
    fn alive(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    }

    #[test]
    fn drop_kills_and_reaps() {
        let g = ChildGuard::spawn(Command::new("sleep").arg("30")).unwrap();
        let pid = g.id();
        assert!(alive(pid));
        drop(g);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn signal_and_wait_exit() {
        let mut g = ChildGuard::spawn(Command::new("sleep").arg("30")).unwrap();
        assert_eq!(g.wait_exit(Duration::from_millis(100)), None);
        assert!(g.signal("TERM"));
        let status = g.wait_exit(Duration::from_secs(10)).expect("exited");
        assert!(!status.success());
    }
}
