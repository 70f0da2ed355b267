//! What a scenario cost the proxy, read from the kernel around the measured window: busy time
//! of the core the proxy is pinned to (the window's length less the core's idle, iowait and
//! steal time from `/proc/stat`, so the kernel's TCP work done on that core counts too) and
//! the CPU time of the proxy's processes (`/proc/<pid>/stat`, all threads). The first is the
//! figure compared; the second is a cross-check that stays right when something else ran on
//! the core.
//!
//! Why length less idle rather than the sum of the busy fields: with tick-based CPU
//! accounting the kernel samples user, system, irq and softirq at its tick (250 Hz here), but
//! it measures idle exactly on a tickless kernel (`get_cpu_idle_time_us`, stamped at every
//! idle entry and exit). The busy fields' sum is kept as `core_sampled_s` for comparison.

use clap::Args;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

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
    /// The proxy core's busy time as the kernel's tick sampled it (user + nice + system +
    /// irq + softirq): the figure `core_s` was before, for comparison.
    pub core_sampled_s: Option<f64>,
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
        let window = now.at.saturating_duration_since(then.at).as_secs_f64();
        let core_s = secs(now.proxy_away, then.proxy_away).map(|away| busy(window, away));
        let load_s = secs(now.load_away, then.load_away).map(|away| busy(window, away));
        let steal_s = secs(now.steal, then.steal);
        let core_sampled_s = secs(now.busy, then.busy);
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
            core_sampled_s,
            load_s,
        }
    }
}

/// Share of `window` (0 to 1) that `core` was busy, counted as every cost window is: for
/// run.sh's check that the proxy core is quiet before a run. `None` without such a core.
pub fn busy_share(core: usize, window: Duration) -> Option<f64> {
    let args = CostArgs {
        proxy_core: Some(core),
        ..CostArgs::default()
    };
    let began = Instant::now();
    let meter = Meter::start(&args);
    std::thread::sleep(window);
    let busy = meter.stop().core_s?;
    Some(busy / began.elapsed().as_secs_f64())
}

/// A core's busy time in a window of `window` seconds of which it spent `away` idle, waiting
/// for I/O or stolen. `/proc/stat` counts in whole hundredths, so a window's figure is good to
/// 10 ms; over many windows those errors average out.
fn busy(window: f64, away: f64) -> f64 {
    (window - away).max(0.0)
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
            core_sampled_s: add(self.core_sampled_s, o.core_sampled_s),
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
            format!("{prefix}core_sampled_s"): self.core_sampled_s,
            format!("{prefix}load_s"): self.load_s,
            format!("{prefix}load_{per}"): per_unit(self.load_s),
        })
    }
}

/// The proxy core's and the load core's ticks away from work (idle, iowait, steal), the proxy
/// core's steal and sampled busy ticks, from one read of `/proc/stat` taken at `at`, so all
/// cover the same instant.
struct CoreTicks {
    at: Instant,
    proxy_away: Option<u64>,
    busy: Option<u64>,
    steal: Option<u64>,
    load_away: Option<u64>,
}

impl CoreTicks {
    fn read(core: Option<usize>, load: Option<usize>) -> CoreTicks {
        let at = Instant::now();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // The numbers of a core's line, parsed once for every figure taken from it.
        let fields = |core: Option<usize>| {
            let name = format!("cpu{}", core?);
            stat.lines()
                .find(|l| l.split_whitespace().next() == Some(name.as_str()))
                .and_then(fields)
        };
        let proxy = fields(core);
        let proxy = proxy.as_deref();
        CoreTicks {
            at,
            proxy_away: proxy.and_then(away),
            busy: proxy.and_then(busy_ticks),
            steal: proxy.and_then(|f| f.get(7).copied()),
            load_away: fields(load).as_deref().and_then(away),
        }
    }
}

// The fields of a `/proc/stat` core line after its name:
// user nice system idle iowait irq softirq steal ...

/// Ticks the core did not work: idle + iowait + steal.
fn away(f: &[u64]) -> Option<u64> {
    Some(f.get(3)? + f.get(4)? + f.get(7)?)
}

/// Busy ticks as the tick samples them: user + nice + system + irq + softirq (guest time is
/// already inside user). Steal, time the hypervisor gave to another guest, is not the proxy's.
fn busy_ticks(f: &[u64]) -> Option<u64> {
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// The numbers of one `/proc/stat` core line, after its name; none if any is not a number.
fn fields(line: &str) -> Option<Vec<u64>> {
    line.split_whitespace()
        .skip(1)
        .map(|x| x.parse().ok())
        .collect()
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
        let l = fields("cpu0 10 1 5 1000 50 2 3 4 0 0").unwrap();
        assert_eq!(busy_ticks(&l), Some(10 + 1 + 5 + 2 + 3));
        assert_eq!(away(&l), Some(1000 + 50 + 4));
        assert_eq!(busy_ticks(&fields("cpu0 1 2").unwrap()), None);
        assert_eq!(away(&fields("cpu0 1 2 3 4 5 6 7").unwrap()), None);
        assert_eq!(fields("cpu0 1 2 3 x 5 6 7 8"), None);
        assert!((busy(1.0, 0.7) - 0.3).abs() < 1e-9);
        // Whole hundredths can put `away` past a short window: never below zero.
        assert_eq!(busy(0.004, 0.01), 0.0);
    }

    #[test]
    fn times_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 5";
        assert_eq!(parse_times(line), Some((7, 3)));
        assert_eq!(parse_times("42 (x) S 1"), None);
    }

    /// On the real kernel: a process spinning on core 0 keeps the core busy for at least its
    /// own CPU time, and for no longer than the window.
    #[test]
    fn a_spinning_process_is_busy_time_of_its_core() {
        let mut spin = std::process::Command::new("taskset")
            .args(["-c", "0", "sh", "-c", "while :; do :; done"])
            .spawn()
            .expect("taskset (util-linux) starts");
        // taskset sets the affinity and execs the shell, keeping its pid.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let args = CostArgs {
            proxy_core: Some(0),
            load_core: None,
            cpu_pid: vec![spin.id()],
        };
        let began = Instant::now();
        let meter = Meter::start(&args);
        std::thread::sleep(std::time::Duration::from_millis(400));
        let cost = meter.stop();
        let window = began.elapsed().as_secs_f64();
        let _ = spin.kill();
        let _ = spin.wait();
        let (core, cpu) = (cost.core_s.unwrap(), cost.proc_s.unwrap());
        assert!(cpu > 0.1, "the spinner ran: {cpu} s");
        // `/proc/stat` and `/proc/<pid>/stat` count in hundredths: 20 ms of rounding each.
        assert!(core + 0.025 >= cpu, "core {core} s < the spinner's {cpu} s");
        assert!(
            core <= window + 0.025,
            "core {core} s > the window's {window} s"
        );
    }

    #[test]
    fn this_machine_has_core_zero() {
        let t = CoreTicks::read(Some(0), Some(100_000));
        assert!(t.busy.is_some() && t.steal.is_some() && t.proxy_away.is_some());
        assert!(t.load_away.is_none());
    }
}
