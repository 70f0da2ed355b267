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
    load: Option<usize>,
    pids: Vec<u32>,
    /// The cores' ticks at the start.
    ticks0: CoreTicks,
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
            load: a.load_core,
            pids: a.cpu_pid.clone(),
            ticks0: CoreTicks::read(a.proxy_core, a.load_core),
            pid0: process_times(&a.cpu_pid),
        }
    }

    pub fn stop(&self) -> Cost {
        let (now, then) = (CoreTicks::read(self.core, self.load), &self.ticks0);
        let secs = |b: Option<u64>, a: Option<u64>| Some(b?.saturating_sub(a?) as f64 / TICKS);
        let core_s = secs(now.busy, then.busy);
        let load_s = secs(now.load, then.load);
        let steal_s = secs(now.steal, then.steal);
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
    /// Two windows' costs as one (a figure missing from either is missing from the sum).
    pub fn plus(&self, o: &Cost) -> Cost {
        let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        Cost {
            core_s: add(self.core_s, o.core_s),
            proc_s: add(self.proc_s, o.proc_s),
            user_s: add(self.user_s, o.user_s),
            steal_s: add(self.steal_s, o.steal_s),
            load_s: add(self.load_s, o.load_s),
        }
    }

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

/// The proxy core's busy and steal ticks and the load core's busy ticks, from one read of
/// `/proc/stat`, so all three cover the same instant.
struct CoreTicks {
    busy: Option<u64>,
    steal: Option<u64>,
    load: Option<u64>,
}

impl CoreTicks {
    fn read(core: Option<usize>, load: Option<usize>) -> CoreTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let line = |core: Option<usize>| {
            let name = format!("cpu{}", core?);
            stat.lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
        };
        let proxy = line(core);
        CoreTicks {
            busy: proxy.and_then(parse_busy),
            steal: proxy.and_then(|l| l.split_whitespace().nth(8)?.parse().ok()),
            load: line(load).and_then(parse_busy),
        }
    }
}

/// Busy ticks of one `/proc/stat` core line: user + nice + system + irq + softirq (guest
/// time is already inside user). Steal, time the hypervisor gave to another guest, is not
/// the proxy's.
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
        let t = CoreTicks::read(Some(0), Some(100_000));
        assert!(t.busy.is_some() && t.steal.is_some());
        assert!(t.load.is_none());
    }
}
