//! Free ports on loopback addresses, for processes that must be told their address before
//! they bind (the built binaries). In-process servers bind `:0` and report their address.

use std::hash::{BuildHasher, RandomState};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// Ports below the kernel's ephemeral range this far are tried first.
const BELOW_EPHEMERAL: u16 = 8192;

/// A port that was free on `ip` a moment ago (the listener is closed on return, so another
/// process may take it; good enough for tests on a private loopback address).
///
/// Taken below the ephemeral range where it can: a port from `bind(:0)` is an ephemeral
/// one, which the next outgoing connection of any test running alongside may take as its
/// local port before the caller binds it (seen in CI as `EADDRINUSE`).
pub fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    if let Some((base, span)) = below_ephemeral() {
        let random = RandomState::new();
        for i in 0..64u64 {
            let port = base + (random.hash_one(i) % u64::from(span)) as u16;
            if TcpListener::bind((ip, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// The ports tried first, as (first, count): up to [`BELOW_EPHEMERAL`] ports just below the
/// ephemeral range, none under 1024; `None` when there are none or the range is unreadable.
fn below_ephemeral() -> Option<(u16, u16)> {
    let low = ephemeral_low()?;
    let base = low.saturating_sub(BELOW_EPHEMERAL).max(1024);
    let span = low.checked_sub(base).filter(|&n| n > 0)?;
    Some((base, span))
}

/// The first port of `net.ipv4.ip_local_port_range`, if readable.
fn ephemeral_low() -> Option<u16> {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    range.split_whitespace().next()?.parse().ok()
}

/// `ip:port` with a port from [`free_port`].
pub fn free_addr(ip: Ipv4Addr) -> std::io::Result<SocketAddr> {
    Ok(SocketAddr::from((ip, free_port(ip)?)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_can_be_bound() {
        let addr = free_addr(Ipv4Addr::LOCALHOST).unwrap();
        assert_ne!(addr.port(), 0);
        TcpListener::bind(addr).unwrap();
    }

    #[test]
    fn free_ports_avoid_the_ephemeral_range() {
        let Some(low) = ephemeral_low() else { return };
        if low <= 1024 {
            return;
        }
        for _ in 0..20 {
            let port = free_port(Ipv4Addr::LOCALHOST).unwrap();
            assert!(
                port < low,
                "port {port} is in the ephemeral range from {low}"
            );
        }
    }
}
