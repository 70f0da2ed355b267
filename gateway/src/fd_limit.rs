//! The process's descriptor limit. Every forwarded connection holds two sockets (and a pipe
//! per spliced direction, [`pipes`]), so the soft `RLIMIT_NOFILE` decides how many
//! connections fit before accepts fail with EMFILE. Container runtimes increasingly start
//! processes with a soft limit of 1024 under a far higher hard one (containerd 2, systemd
//! services), expecting each program to raise its own, as Go's runtime and HAProxy do. The
//! gateway raises it at start; where the result cannot hold the connection limits (15443's,
//! and HBONE's outer connections and tunnels when that listener is on), [`plan`] lowers those
//! left at their defaults to fit and warns about those set too high.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

use crate::pipes;

/// Descriptors the gateway holds besides its connections: listeners, epoll and its wakeup,
/// the endpoints file's watcher, API server and istiod connections (64), what the admin and
/// status listeners may hold at once, and the descriptor each keeps in reserve for probes
/// when the rest run out (`admin::reserve`).
const RESERVE: u64 =
    64 + 2 * crate::admin::limits::MAX_CONNECTIONS as u64 + crate::admin::reserve::SPARES;

/// Used when the hard limit reads as unlimited, which Linux does not allow for descriptors
/// (`fs.nr_open`, 1,048,576 by default, bounds it); never expected in practice.
const FALLBACK_CEILING: u64 = 1 << 20;

/// What start-up did to the limit, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// The soft limit already was the hard one.
    Already(u64),
    /// Raised from the first to the second.
    To { from: u64, to: u64 },
    /// The kernel refused; the soft limit stays.
    Refused { soft: u64, wanted: u64 },
}

impl Raised {
    /// The soft limit in force afterwards.
    pub fn soft(self) -> u64 {
        match self {
            Raised::Already(n) | Raised::To { to: n, .. } | Raised::Refused { soft: n, .. } => n,
        }
    }
}

/// Raises the soft descriptor limit to the hard one.
pub fn raise() -> Raised {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(FALLBACK_CEILING);
    if soft >= hard {
        return Raised::Already(soft);
    }
    // The hard limit is passed as read (or as the ceiling, where it read as unlimited: Linux
    // refuses an unlimited descriptor limit).
    let raised = Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => Raised::To {
            from: soft,
            to: hard,
        },
        Err(_) => Raised::Refused { soft, wanted: hard },
    }
}

/// The connection limits that hold descriptors, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `--max-connections`: two descriptors each (client and upstream).
    pub max_connections: usize,
    /// `--max-undecided`: one each, on 15443 and HBONE handshakes alike.
    pub max_undecided: usize,
    /// With the HBONE listener on: `--hbone-max-connections` (one descriptor each) and
    /// `--hbone-max-tunnels` (one upstream socket each).
    pub hbone: Option<(usize, usize)>,
}

impl Limits {
    pub fn of(cfg: &crate::config::Config) -> Limits {
        Limits {
            max_connections: cfg.max_connections,
            max_undecided: cfg.max_undecided,
            hbone: cfg
                .hbone_enabled()
                .then_some((cfg.hbone_max_connections, cfg.hbone_max_tunnels)),
        }
    }
}

impl Limits {
    /// Puts these limits into `cfg`.
    pub fn apply(&self, cfg: &mut crate::config::Config) {
        cfg.max_connections = self.max_connections;
        cfg.max_undecided = self.max_undecided;
        if let Some((outer, tunnels)) = self.hbone {
            cfg.hbone_max_connections = outer;
            cfg.hbone_max_tunnels = tunnels;
        }
    }
}

/// Descriptors the connection limits can take at once.
fn connection_fds(l: &Limits) -> u64 {
    let (outer, tunnels) = l.hbone.unwrap_or((0, 0));
    2 * l.max_connections as u64 + l.max_undecided as u64 + outer as u64 + tunnels as u64
}

/// The descriptors the connection limits can take at once, the pipes' at their default cap,
/// and [`RESERVE`] for the rest.
fn needed(l: &Limits) -> u64 {
    connection_fds(l) + 2 * pipes::MAX as u64 + RESERVE
}

/// Which connection limits were left at their defaults: start-up may lower those to fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Defaulted {
    pub max_connections: bool,
    pub max_undecided: bool,
    pub hbone_max_connections: bool,
    pub hbone_max_tunnels: bool,
}

/// The limits start-up runs with under a descriptor limit, and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub limits: Limits,
    /// The cap on splice pipes open at once ([`pipes::set_max`]).
    pub pipes: usize,
    /// Set when defaulted limits were lowered: the warning naming the new values.
    pub lowered: Option<String>,
    /// Set when the limits in force still do not fit (set explicitly too high).
    pub short: Option<String>,
}

/// No limit is lowered below this (or below its own value, if smaller): with fewer places the
/// gateway could not serve at all, while the reserve it would protect is an upper estimate.
const FLOOR: usize = 64;

/// Fits the limits into `soft` descriptors. When the defaults do not fit, the pipe cap
/// shrinks to an eighth of what is left after [`RESERVE`], and the limits left at their
/// defaults shrink in proportion (each at least [`FLOOR`]) to fit the rest: the limits then refuse
/// connections (`over_limit`, HBONE's `connection_limit`, shed) before descriptors run out, so the API server and
/// istiod connections keep theirs. Limits set explicitly are kept, and warned about when they
/// do not fit (HAProxy does the same with `maxconn`); when they alone do not fit, nothing is
/// lowered, as that would make no room.
pub fn plan(soft: u64, asked: &Limits, defaulted: Defaulted) -> Plan {
    if soft >= needed(asked) {
        return Plan {
            limits: *asked,
            pipes: pipes::MAX,
            lowered: None,
            short: None,
        };
    }
    let budget = soft.saturating_sub(RESERVE);
    let pipe_cap = (pipes::MAX as u64).min(budget / 16);
    let room = budget - 2 * pipe_cap;
    let (outer, tunnels) = asked.hbone.unwrap_or((0, 0));
    let d = defaulted;
    // (descriptors per place, limit, left at its default).
    let parts = [
        (2, asked.max_connections, d.max_connections),
        (1, asked.max_undecided, d.max_undecided),
        (1, outer, d.hbone_max_connections && asked.hbone.is_some()),
        (1, tunnels, d.hbone_max_tunnels && asked.hbone.is_some()),
    ];
    let fds = |(per, n, _): (u64, usize, bool)| per * n as u64;
    let fixed: u64 = parts.iter().filter(|p| !p.2).map(|&p| fds(p)).sum();
    let flexible: u64 = parts.iter().filter(|p| p.2).map(|&p| fds(p)).sum();
    let mut limits = *asked;
    let mut lowered = None;
    // When the explicit limits alone do not fit, lowering the others makes no room: it would
    // only cripple them (an undecided budget of 1 sheds every handshake but one).
    if fixed + flexible > room && flexible > 0 && fixed <= room {
        let [mc, mu, hc, ht] = shrink(parts, room - fixed, flexible);
        limits = Limits {
            max_connections: mc,
            max_undecided: mu,
            hbone: asked.hbone.map(|_| (hc, ht)),
        };
        lowered = Some(lowered_text(soft, asked, &limits, pipe_cap));
    }
    let short =
        (connection_fds(&limits) > room).then(|| shortfall_text(soft, &limits, 2 * pipe_cap));
    Plan {
        limits,
        pipes: pipe_cap as usize,
        lowered,
        short,
    }
}

/// The limits left at their defaults (`parts`: descriptors per place, limit, defaulted) scaled
/// by `share / flexible`. Those that would fall under [`FLOOR`] are held there first, and the
/// rest share what is left, so the floors do not push the total past `share` when it can hold
/// them.
fn shrink(parts: [(u64, usize, bool); 4], share: u64, flexible: u64) -> [usize; 4] {
    let scaled = |n: usize, share: u64, flexible: u64| -> usize {
        let n128 = n as u128 * share as u128 / flexible.max(1) as u128;
        usize::try_from(n128).unwrap_or(n).min(n)
    };
    let floored = parts.map(|(_, n, dflt)| dflt && scaled(n, share, flexible) < n.min(FLOOR));
    let mut share_left = share;
    let mut flexible_left = flexible;
    for (i, &(per, n, _)) in parts.iter().enumerate() {
        if floored[i] {
            share_left = share_left.saturating_sub(per * n.min(FLOOR) as u64);
            flexible_left -= per * n as u64;
        }
    }
    let mut out = [0; 4];
    for (i, &(_, n, dflt)) in parts.iter().enumerate() {
        out[i] = match (dflt, floored[i]) {
            (false, _) => n,
            (true, true) => n.min(FLOOR),
            (true, false) => scaled(n, share_left, flexible_left).max(n.min(FLOOR)),
        };
    }
    out
}

/// The flags whose values changed, as `--flag from → to`.
fn lowered_text(soft: u64, asked: &Limits, now: &Limits, pipe_cap: u64) -> String {
    let mut changed = Vec::new();
    let mut note = |flag: &str, from: usize, to: usize| {
        if from != to {
            changed.push(format!("{flag} {from} → {to}"));
        }
    };
    note(
        "--max-connections",
        asked.max_connections,
        now.max_connections,
    );
    note("--max-undecided", asked.max_undecided, now.max_undecided);
    if let (Some((ac, at)), Some((nc, nt))) = (asked.hbone, now.hbone) {
        note("--hbone-max-connections", ac, nc);
        note("--hbone-max-tunnels", at, nt);
    }
    format!(
        "descriptor limit {soft} is below the {} the default connection limits can take: lowered \
         {} (and splice pipes to {pipe_cap} at once), so connections are refused by the limits \
         before descriptors run out and the API server and istiod connections keep theirs; raise \
         the hard limit (LimitNOFILE=, ulimit -Hn, the container runtime's default) to keep the \
         defaults, or set the flags to choose the split",
        needed(asked),
        changed.join(", ")
    )
}

/// The warning for limits in force that do not fit in `soft` with `pipe_fds` set aside.
fn shortfall_text(soft: u64, l: &Limits, pipe_fds: u64) -> String {
    let need = connection_fds(l) + pipe_fds + RESERVE;
    let Limits {
        max_connections: mc,
        max_undecided: mu,
        hbone,
    } = *l;
    // With nothing else open, which is when the most can be forwarded.
    let fits = soft.saturating_sub(RESERVE + pipe_fds) / 2;
    let (limits, lower) = match hbone {
        None => (
            format!("--max-connections {mc} and --max-undecided {mu}"),
            "--max-connections",
        ),
        Some((hc, ht)) => (
            format!(
                "--max-connections {mc}, --max-undecided {mu}, --hbone-max-connections {hc} \
                 and --hbone-max-tunnels {ht}"
            ),
            "--max-connections, --hbone-max-connections or --hbone-max-tunnels",
        ),
    };
    let other = if hbone.is_some() {
        " on 15443 (fewer while HBONE holds descriptors: one per outer connection and one per tunnel)"
    } else {
        ""
    };
    format!(
        "descriptor limit {soft} is below the {need} that {limits} can take: past about {fits} \
         forwarded connections{other}, accepts fail (gateway_accept_errors_total) and upstream \
         dials are refused as local_resource before the connection limits refuse anything, while \
         the status and admin listeners answer one connection at a time on a reserved descriptor \
         (gateway_admin_reserved_accepts_total); raise the hard limit (LimitNOFILE=, ulimit -Hn, \
         the container runtime's default) or lower {lower}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLASSIC: Limits = Limits {
        max_connections: 65_536,
        max_undecided: 1024,
        hbone: None,
    };
    const WITH_HBONE: Limits = Limits {
        hbone: Some((65_536, 65_536)),
        ..CLASSIC
    };

    /// All four left at their defaults.
    const ALL: Defaulted = Defaulted {
        max_connections: true,
        max_undecided: true,
        hbone_max_connections: true,
        hbone_max_tunnels: true,
    };

    /// The warning for explicit limits that do not fit; `None` when they do.
    fn shortfall(soft: u64, l: &Limits) -> Option<String> {
        plan(soft, l, Defaulted::default()).short
    }

    fn limits(max_connections: usize, max_undecided: usize) -> Limits {
        Limits {
            max_connections,
            max_undecided,
            hbone: None,
        }
    }

    #[test]
    fn defaults_need_two_descriptors_per_connection_and_two_per_pipe() {
        assert_eq!(needed(&CLASSIC), 131_072 + 1024 + 2048 + 64 + 512 + 2);
        assert_eq!(shortfall(1_048_576, &CLASSIC), None);
        assert_eq!(shortfall(needed(&limits(100, 10)), &limits(100, 10)), None);
        let p = plan(1_048_576, &WITH_HBONE, ALL);
        assert_eq!(
            (p.limits, p.pipes, &p.lowered, &p.short),
            (WITH_HBONE, 1024, &None, &None)
        );
    }

    #[test]
    fn hbone_adds_one_per_outer_connection_and_one_per_tunnel() {
        assert_eq!(needed(&WITH_HBONE), needed(&CLASSIC) + 65_536 + 65_536);
        let l = Limits {
            hbone: Some((10, 20)),
            ..limits(100, 10)
        };
        assert_eq!(needed(&l), 200 + 10 + 10 + 20 + 2048 + RESERVE);
        // The default 1,048,576 still fits both listeners.
        assert_eq!(shortfall(1_048_576, &WITH_HBONE), None);
        let msg = shortfall(needed(&CLASSIC), &WITH_HBONE).unwrap();
        assert!(msg.contains("below the 265794"), "{msg}");
        assert!(
            msg.contains("--hbone-max-connections 65536 and --hbone-max-tunnels 65536"),
            "{msg}"
        );
        assert!(msg.contains("fewer while HBONE holds descriptors"), "{msg}");
        assert!(
            msg.contains("LimitNOFILE")
                && msg.ends_with(
                    "lower --max-connections, --hbone-max-connections or --hbone-max-tunnels"
                ),
            "{msg}"
        );
    }

    #[test]
    fn a_short_limit_says_how_many_fit_and_the_fix() {
        let msg = shortfall(20_000, &CLASSIC).unwrap();
        assert!(
            msg.contains("descriptor limit 20000 is below the 134722"),
            "{msg}"
        );
        assert!(msg.contains("about 8687 forwarded connections,"), "{msg}");
        // Probes still have their way in, and the operator learns where it is counted.
        assert!(
            msg.contains("status and admin listeners answer one connection at a time")
                && msg.contains("gateway_admin_reserved_accepts_total"),
            "{msg}"
        );
        assert!(!msg.contains("hbone"), "{msg}");
        assert!(msg.contains("LimitNOFILE") && msg.ends_with("lower --max-connections"));
        // containerd 2's soft limit, had it not been raised: (1024 - 578) / 16 = 27 pipes.
        assert!(
            shortfall(1024, &CLASSIC)
                .unwrap()
                .contains("about 196 forwarded")
        );
        // A limit under the reserve fits none, without underflow.
        assert!(
            shortfall(10, &limits(1, 1))
                .unwrap()
                .contains("about 0 forwarded")
        );
    }

    /// Limits left at their defaults shrink in proportion to fit, the pipes to an eighth of
    /// what the reserve leaves; the result fits, and the warning names each change and the fix.
    #[test]
    fn defaults_are_lowered_to_fit() {
        let p = plan(65_535, &CLASSIC, ALL);
        assert_eq!(p.pipes, 1024);
        // (65,535 - 578 - 2,048) = 62,909 descriptors for 132,096 asked.
        assert_eq!(p.limits, limits(31_210, 487));
        assert!(connection_fds(&p.limits) + 2 * 1024 + RESERVE <= 65_535);
        assert_eq!(p.short, None);
        let msg = p.lowered.unwrap();
        assert!(
            msg.contains("--max-connections 65536 → 31210, --max-undecided 1024 → 487")
                && msg.contains("(and splice pipes to 1024 at once)")
                && msg.contains("LimitNOFILE")
                && msg.contains("below the 134722"),
            "{msg}"
        );

        // With HBONE on, all four shrink alike; a small limit leaves fewer pipes.
        let p = plan(4096, &WITH_HBONE, ALL);
        assert_eq!(p.pipes, (4096 - RESERVE as usize) / 16);
        let (outer, tunnels) = p.limits.hbone.unwrap();
        assert!(outer == tunnels && outer > 0);
        assert!(connection_fds(&p.limits) + 2 * p.pipes as u64 + RESERVE <= 4096);
        assert!(p.lowered.unwrap().contains("--hbone-max-tunnels 65536 → "));
    }

    /// A flag set explicitly is kept; the defaulted ones make room around it, and when it
    /// alone does not fit the others go to 1 and the shortfall is warned about.
    #[test]
    fn explicit_limits_are_kept() {
        let only_undecided = Defaulted {
            max_undecided: true,
            ..Defaulted::default()
        };
        let p = plan(20_000, &limits(5_000, 1024), only_undecided);
        assert_eq!(
            p.limits,
            limits(5_000, 1024),
            "10,000 + 1,024 fit in 17,374"
        );
        assert_eq!((p.lowered, p.short), (None, None));

        // The explicit 65,536 alone do not fit: lowering the undecided budget would make no
        // room, only shed handshakes; it is kept, and the shortfall warned about.
        let p = plan(20_000, &CLASSIC, only_undecided);
        assert_eq!((p.limits, p.lowered), (CLASSIC, None));
        assert!(
            p.short
                .unwrap()
                .contains("about 8687 forwarded connections")
        );

        // Explicit 8,000 leave 1,374 of 17,374 for the rest (HBONE on): the undecided budget
        // is held at the floor, 64, and HBONE's two share the other 1,310.
        let rest = Defaulted {
            max_connections: false,
            ..ALL
        };
        let asked = Limits {
            max_connections: 8_000,
            ..WITH_HBONE
        };
        let p = plan(20_000, &asked, rest);
        assert_eq!(
            p.limits,
            Limits {
                max_connections: 8_000,
                max_undecided: 64,
                hbone: Some((655, 655)),
            }
        );
        assert!(p.lowered.unwrap().contains("--max-undecided 1024 → 64"));
        assert_eq!(
            p.short, None,
            "16,000 + 64 + 655 + 655 fill the 17,374 exactly"
        );

        // Nothing defaulted: nothing lowered, the old warning.
        let p = plan(20_000, &CLASSIC, Defaulted::default());
        assert_eq!((p.limits, p.lowered), (CLASSIC, None));
        assert!(p.short.is_some());
        // HBONE's flags count only when HBONE is on.
        let p = plan(
            65_535,
            &CLASSIC,
            Defaulted {
                hbone_max_connections: true,
                hbone_max_tunnels: true,
                ..Defaulted::default()
            },
        );
        assert_eq!((p.limits, p.lowered.is_none()), (CLASSIC, true));
    }

    /// Under the reserve nothing fits: each defaulted limit goes to the floor, no pipes, no
    /// panic.
    #[test]
    fn a_limit_under_the_reserve_lowers_to_the_floor() {
        let p = plan(64, &WITH_HBONE, ALL);
        assert_eq!(p.pipes, 0);
        assert_eq!(
            p.limits,
            Limits {
                hbone: Some((64, 64)),
                ..limits(64, 64)
            }
        );
        assert!(p.short.is_some() && p.lowered.is_some());
    }

    #[test]
    fn raised_reports_the_limit_in_force() {
        assert_eq!(Raised::Already(7).soft(), 7);
        assert_eq!(Raised::To { from: 1, to: 9 }.soft(), 9);
        assert_eq!(Raised::Refused { soft: 3, wanted: 9 }.soft(), 3);
    }
}
