//! The process's descriptor limit. Every forwarded connection holds two sockets (four more
//! descriptors while both directions splice), so the soft `RLIMIT_NOFILE` decides how many
//! connections fit before accepts fail with EMFILE. Container runtimes increasingly start
//! processes with a soft limit of 1024 under a far higher hard one (containerd 2, systemd
//! services), expecting each program to raise its own, as Go's runtime and HAProxy do. The
//! gateway raises it at start and says when the result cannot hold its connection limits
//! (15443's, and HBONE's outer connections and tunnels when that listener is on).

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

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

/// The descriptors the connection limits can take at once, and [`RESERVE`] for the rest.
pub fn needed(l: &Limits) -> u64 {
    let (outer, tunnels) = l.hbone.unwrap_or((0, 0));
    2 * l.max_connections as u64 + l.max_undecided as u64 + outer as u64 + tunnels as u64 + RESERVE
}

/// The warning for a soft limit below [`needed`], naming the ways out; `None` when it fits.
pub fn shortfall(soft: u64, l: &Limits) -> Option<String> {
    let need = needed(l);
    if soft >= need {
        return None;
    }
    let Limits {
        max_connections: mc,
        max_undecided: mu,
        hbone,
    } = *l;
    // With nothing else open, which is when the most can be forwarded.
    let fits = soft.saturating_sub(RESERVE) / 2;
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
    Some(format!(
        "descriptor limit {soft} is below the {need} that {limits} can take: past about {fits} \
         forwarded connections{other}, accepts fail (gateway_accept_errors_total) and upstream \
         dials are refused as local_resource before the connection limits refuse anything, while \
         the status and admin listeners answer one connection at a time on a reserved descriptor \
         (gateway_admin_reserved_accepts_total); raise the hard limit (LimitNOFILE=, ulimit -Hn, \
         the container runtime's default) or lower {lower}"
    ))
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

    fn limits(max_connections: usize, max_undecided: usize) -> Limits {
        Limits {
            max_connections,
            max_undecided,
            hbone: None,
        }
    }

    #[test]
    fn defaults_need_two_descriptors_per_connection() {
        assert_eq!(needed(&CLASSIC), 131_072 + 1024 + 64 + 512 + 2);
        assert_eq!(shortfall(1_048_576, &CLASSIC), None);
        assert_eq!(shortfall(needed(&limits(100, 10)), &limits(100, 10)), None);
    }

    #[test]
    fn hbone_adds_one_per_outer_connection_and_one_per_tunnel() {
        assert_eq!(needed(&WITH_HBONE), needed(&CLASSIC) + 65_536 + 65_536);
        let l = Limits {
            hbone: Some((10, 20)),
            ..limits(100, 10)
        };
        assert_eq!(needed(&l), 200 + 10 + 10 + 20 + RESERVE);
        // The default 1,048,576 still fits both listeners.
        assert_eq!(shortfall(1_048_576, &WITH_HBONE), None);
        let msg = shortfall(needed(&CLASSIC), &WITH_HBONE).unwrap();
        assert!(msg.contains("below the 263746"), "{msg}");
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
            msg.contains("descriptor limit 20000 is below the 132674"),
            "{msg}"
        );
        assert!(msg.contains("about 9711 forwarded connections,"), "{msg}");
        // Probes still have their way in, and the operator learns where it is counted.
        assert!(
            msg.contains("status and admin listeners answer one connection at a time")
                && msg.contains("gateway_admin_reserved_accepts_total"),
            "{msg}"
        );
        assert!(!msg.contains("hbone"), "{msg}");
        assert!(msg.contains("LimitNOFILE") && msg.ends_with("lower --max-connections"));
        // containerd 2's soft limit, had it not been raised.
        assert!(
            shortfall(1024, &CLASSIC)
                .unwrap()
                .contains("about 223 forwarded")
        );
        // A limit under the reserve fits none, without underflow.
        assert!(
            shortfall(10, &limits(1, 1))
                .unwrap()
                .contains("about 0 forwarded")
        );
    }

    #[test]
    fn raised_reports_the_limit_in_force() {
        assert_eq!(Raised::Already(7).soft(), 7);
        assert_eq!(Raised::To { from: 1, to: 9 }.soft(), 9);
        assert_eq!(Raised::Refused { soft: 3, wanted: 9 }.soft(), 3);
    }
}
