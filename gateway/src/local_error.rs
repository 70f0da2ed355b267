//! Errors caused by the gateway's own host, not by a peer: out of descriptors, buffers,
//! memory or local ports. They say nothing about an endpoint's health, so they must not feed
//! outlier detection (a gateway one descriptor short would otherwise eject healthy endpoints).

use std::io;

use rustix::io::Errno;

/// What ran out locally, for the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// EMFILE, ENFILE: the process or system descriptor limit.
    Descriptors,
    /// ENOBUFS, ENOMEM: kernel buffers or memory.
    Memory,
    /// EADDRNOTAVAIL: no free local port (or address) to connect from.
    LocalPorts,
}

impl Exhausted {
    pub const ALL: [Exhausted; 3] = [
        Exhausted::Descriptors,
        Exhausted::Memory,
        Exhausted::LocalPorts,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Exhausted::Descriptors => "out_of_descriptors",
            Exhausted::Memory => "out_of_memory",
            Exhausted::LocalPorts => "out_of_local_ports",
        }
    }
}

/// `Some` when `e` is a local resource error rather than something a peer did (refused,
/// timed out, unreachable, reset).
pub fn classify(e: &io::Error) -> Option<Exhausted> {
    let errno = Errno::from_raw_os_error(e.raw_os_error()?);
    match errno {
        Errno::MFILE | Errno::NFILE => Some(Exhausted::Descriptors),
        Errno::NOBUFS | Errno::NOMEM => Some(Exhausted::Memory),
        Errno::ADDRNOTAVAIL => Some(Exhausted::LocalPorts),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(errno: Errno) -> io::Error {
        io::Error::from_raw_os_error(errno.raw_os_error())
    }

    #[test]
    fn local_and_peer_errors() {
        assert_eq!(classify(&os(Errno::MFILE)), Some(Exhausted::Descriptors));
        assert_eq!(classify(&os(Errno::NFILE)), Some(Exhausted::Descriptors));
        assert_eq!(classify(&os(Errno::NOBUFS)), Some(Exhausted::Memory));
        assert_eq!(classify(&os(Errno::NOMEM)), Some(Exhausted::Memory));
        assert_eq!(
            classify(&os(Errno::ADDRNOTAVAIL)),
            Some(Exhausted::LocalPorts)
        );
        for peer in [
            Errno::CONNREFUSED,
            Errno::TIMEDOUT,
            Errno::HOSTUNREACH,
            Errno::NETUNREACH,
            Errno::CONNRESET,
        ] {
            assert_eq!(classify(&os(peer)), None, "{peer:?}");
        }
        assert_eq!(classify(&io::ErrorKind::TimedOut.into()), None);
    }
}
