//! What a scenario cost the proxy, read from the kernel around the measured window: busy time
//! of the core the proxy is pinned to (`/proc/stat`: everything but idle and iowait, so the
//! kernel's TCP work done on that core counts too) and the CPU time of the proxy's processes
//! (`/proc/<pid>/stat`, all threads). The first is the figure compared; the second is a
//! cross-check that stays right when something else ran on the core.

use clap::Args;
use serde_json::{Value, json};

/// USER_HZ: 100 on every Linux architecture this runs on.
const TICKS: f64 = 100.0;

#[derive(Args, Clone, Debug, Default)]
pub struct CostArgs {
    /// The core the proxy is pinned to (taskset); its busy time is the proxy's cost.
    #[arg(long)]
    pub proxy_core: Option<usize>,
    /// The core the client and backend run on: its busy time is what the traffic costs the
    /// rest of the machine, which a proxy can shift there (bulk through `splice`).
    #[arg(long)]
    pub load_core: Option<usize>,
    /// The proxy's processes (comma-separated); their CPU time is reported too.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pid: Vec<u32>,
}

/// Readings at the start of a window.
pub struct Meter {
    core: Option<usize>,
    pids: Vec<u32>,
    core0: Option<u64>,
    load: Option<usize>,
    load0: Option<u64>,
    steal0: Option<u64>,
    /// (utime, stime) of the processes at the start.
    pid0: (u64, u64),
}

/// Seconds spent in the window.
#[derive(Clone, Copy, Debug)]
pub struct Cost {
    pub core_s: Option<f64>,
    pub proc_s: Option<f64>,
    /// The user-mode part of `proc_s`: the proxy's own code, as against the kernel's
    /// socket and TCP work done for it (the rest).
    pub user_s: Option<f64>,
    /// Time the hypervisor ran another guest on the proxy's core: a disturbed window.
    pub steal_s: Option<f64>,
    /// Busy time of the load generator's core (client and backend).
    pub load_s: Option<f64>,
}

impl Meter {
    pub fn start(a: &CostArgs) -> Meter {
        Meter {
            core: a.proxy_core,
            pids: a.cpu_pid.clone(),
            core0: a.proxy_core.and_then(core_busy_ticks),
            load: a.load_core,
            load0: a.load_core.and_then(core_busy_ticks),
            steal0: a.proxy_core.and_then(core_steal_ticks),
            pid0: process_times(&a.cpu_pid),
        }
    }

    pub fn stop(&self) -> Cost {
        let core_s = match (self.core.and_then(core_busy_ticks), self.core0) {
            (Some(b), Some(a)) => Some(b.saturating_sub(a) as f64 / TICKS),
            _ => None,
        };
        let load_s = match (self.load.and_then(core_busy_ticks), self.load0) {
            (Some(b), Some(a)) => Some(b.saturating_sub(a) as f64 / TICKS),
            _ => None,
        };
        let steal_s = match (self.core.and_then(core_steal_ticks), self.steal0) {
            (Some(b), Some(a)) => Some(b.saturating_sub(a) as f64 / TICKS),
            _ => None,
        };
        let (proc_s, user_s) = if self.pids.is_empty() {
            (None, None)
        } else {
            // One read of each process's stat for both figures, so they cover the same instant.
            let (u1, s1) = process_times(&self.pids);
            let (u0, s0) = self.pid0;
            let user = u1.saturating_sub(u0);
            let all = (u1 + s1).saturating_sub(u0 + s0);
            (Some(all as f64 / TICKS), Some(user as f64 / TICKS))
        };
        Cost {
            core_s,
            proc_s,
            user_s,
            steal_s,
            load_s,
        }
    }
}

impl Cost {
    /// `{prefix}core_s`, `{prefix}cpu_s`, `{prefix}user_s` and, per `units` of work scaled
    /// by `scale` (1e6 for µs per unit), `{prefix}core_{per}`, `{prefix}cpu_{per}` and
    /// `{prefix}user_{per}`.
    pub fn json(&self, prefix: &str, per: &str, units: f64, scale: f64) -> Value {
        let per_unit = |s: Option<f64>| s.filter(|_| units > 0.0).map(|s| s * scale / units);
        json!({
            format!("{prefix}core_s"): self.core_s,
            format!("{prefix}cpu_s"): self.proc_s,
            format!("{prefix}core_{per}"): per_unit(self.core_s),
            format!("{prefix}cpu_{per}"): per_unit(self.proc_s),
            format!("{prefix}user_s"): self.user_s,
            format!("{prefix}user_{per}"): per_unit(self.user_s),
            format!("{prefix}steal_s"): self.steal_s,
            format!("{prefix}load_s"): self.load_s,
            format!("{prefix}load_{per}"): per_unit(self.load_s),
        })
    }
}

/// Busy ticks of one core: user + nice + system + irq + softirq (guest time is already
/// inside user). Steal, time the hypervisor gave to another guest, is not the proxy's.
fn core_busy_ticks(core: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    parse_busy(line)
}

/// Steal ticks of one core.
fn core_steal_ticks(core: usize) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{core}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    line.split_whitespace().nth(8)?.parse().ok()
}

fn parse_busy(line: &str) -> Option<u64> {
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// utime + stime of the processes, in clock ticks (all threads).
pub fn process_ticks(pids: &[u32]) -> u64 {
    let (user, system) = process_times(pids);
    user + system
}

/// (utime, stime) of the processes, summed, in clock ticks (all threads).
fn process_times(pids: &[u32]) -> (u64, u64) {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| parse_times(&s))
        .fold((0, 0), |(u, s), (pu, ps)| (u + pu, s + ps))
}

/// (utime, stime) of one `/proc/<pid>/stat` line.
fn parse_times(stat: &str) -> Option<(u64, u64)> {
    // The command name may hold spaces and parentheses; the fields start after the last ")".
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_excludes_idle_iowait_and_steal() {
        let l = "cpu0 10 1 5 1000 50 2 3 4 0 0";
        assert_eq!(parse_busy(l), Some(10 + 1 + 5 + 2 + 3));
        assert_eq!(parse_busy("cpu0 1 2"), None);
    }

    #[test]
    fn times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5";
        assert_eq!(parse_times(line), Some((7, 3)));
        assert_eq!(parse_times("42 (x) S 1"), None);
    }

    #[test]
    fn this_machine_has_core_zero() {
        assert!(core_busy_ticks(0).is_some());
        assert!(core_busy_ticks(100_000).is_none());
    }
}
