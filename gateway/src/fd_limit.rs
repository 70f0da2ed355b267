//! The process's descriptor limit. Every forwarded connection holds two sockets (four more
//! descriptors while both directions splice), so the soft `RLIMIT_NOFILE` decides how many
//! connections fit before accepts fail with EMFILE. Container runtimes increasingly start
//! processes with a soft limit of 1024 under a far higher hard one (containerd 2, systemd
//! services), expecting each program to raise its own, as Go's runtime and HAProxy do. The
//! gateway raises it at start and says when the result cannot hold `--max-connections`.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Descriptors the gateway holds besides its connections: listeners, epoll and its wakeup,
/// the endpoints file's watcher, API server and istiod connections (64), and what the admin
/// and status listeners may hold at once.
const RESERVE: u64 = 64 + 2 * crate::admin::limits::MAX_CONNECTIONS as u64;

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

/// The descriptors the connection limits can take at once: two per decided connection, one
/// per undecided one, and [`RESERVE`] for the rest.
pub fn needed(max_connections: usize, max_undecided: usize) -> u64 {
    2 * max_connections as u64 + max_undecided as u64 + RESERVE
}

/// The warning for a soft limit below [`needed`], naming both ways out; `None` when it fits.
pub fn shortfall(soft: u64, max_connections: usize, max_undecided: usize) -> Option<String> {
    let need = needed(max_connections, max_undecided);
    if soft >= need {
        return None;
    }
    // With no connection undecided, which is when the most can be forwarded.
    let fits = soft.saturating_sub(RESERVE) / 2;
    Some(format!(
        "descriptor limit {soft} is below the {need} that --max-connections {max_connections} \
         and --max-undecided {max_undecided} can take: past about {fits} forwarded connections, \
         accepts fail (gateway_accept_errors_total) and upstream dials are refused as \
         local_resource before --max-connections refuses anything; raise the hard limit \
         (LimitNOFILE=, ulimit -Hn, the container runtime's default) or lower --max-connections"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_need_two_descriptors_per_connection() {
        assert_eq!(needed(65_536, 1024), 131_072 + 1024 + 64 + 512);
        assert_eq!(shortfall(1_048_576, 65_536, 1024), None);
        assert_eq!(shortfall(needed(100, 10), 100, 10), None);
    }

    #[test]
    fn a_short_limit_says_how_many_fit_and_the_fix() {
        let msg = shortfall(20_000, 65_536, 1024).unwrap();
        assert!(
            msg.contains("descriptor limit 20000 is below the 132672"),
            "{msg}"
        );
        assert!(msg.contains("about 9712 forwarded connections"), "{msg}");
        assert!(msg.contains("LimitNOFILE") && msg.contains("lower --max-connections"));
        // containerd 2's soft limit, had it not been raised.
        assert!(
            shortfall(1024, 65_536, 1024)
                .unwrap()
                .contains("about 224 forwarded")
        );
        // A limit under the reserve fits none, without underflow.
        assert!(shortfall(10, 1, 1).unwrap().contains("about 0 forwarded"));
    }

    #[test]
    fn raised_reports_the_limit_in_force() {
        assert_eq!(Raised::Already(7).soft(), 7);
        assert_eq!(Raised::To { from: 1, to: 9 }.soft(), 9);
        assert_eq!(Raised::Refused { soft: 3, wanted: 9 }.soft(), 3);
    }
}
