//! Free ports on loopback addresses, for processes that must be told their address before
//! they bind (the built binaries). In-process servers bind `:0` and report their address.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

/// A port that was free on `ip` a moment ago (the listener is closed on return, so another
/// process may take it; good enough for tests on a private loopback address).
pub fn free_port(ip: Ipv4Addr) -> std::io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
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
}
