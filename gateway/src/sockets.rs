//! How the gateway's sockets are made: listeners with a real accept queue, and the options
//! every leg gets (client and upstream, on 15443 and 15008). Listeners bind every address by
//! default (`:PORT`): one IPv6 socket that takes IPv4 too, or IPv4 alone on a host without
//! IPv6 (see [`ListenAddr`]).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::str::FromStr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::TcpListener;

/// Asked of `listen(2)` for every listener; Linux caps it at `net.core.somaxconn` (4096 by
/// default since 5.4, and namespaced, so a pod's `sysctls` can raise it), as Envoy and
/// HAProxy leave it. Tokio's `bind` asks for 128: a burst of sidecars reconnecting after a
/// failover overflows that while the worker is busy, and Linux drops the SYNs past it, so
/// each such client waits a second or more for its SYN to be sent again.
pub const BACKLOG: i32 = 65_535;

/// Binds a listener as tokio's `bind` does (address reuse, close-on-exec, non-blocking) but
/// with [`BACKLOG`] and [`set_options`] for the sockets it accepts. Needs a runtime, like
/// `TcpListener::bind`.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    if addr.is_ipv6() {
        // Dual-stack whatever `net.ipv6.bindv6only` says: `[::]` must take IPv4 clients too
        // (as mapped addresses, made canonical by [`canonical`]).
        socket.set_only_v6(false)?;
    }
    // Accepted sockets inherit these (Linux copies the listening socket): no setsockopt per
    // accepted connection.
    set_options(&socket);
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// Where a listener binds: a flag's value, `:PORT` or `IP:PORT` (`[IPv6]:PORT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// `:PORT`, the default: every address of the host. One socket on `[::]` with
    /// `IPV6_V6ONLY` off takes IPv6 and IPv4 (as `::ffff:a.b.c.d`) clients, so the same
    /// default works in IPv4, IPv6 and dual-stack pods; where the host has no IPv6
    /// (`ipv6.disable=1`), `0.0.0.0` instead.
    Any(u16),
    /// Exactly this address, never replaced: `0.0.0.0:PORT` is IPv4 only, `[::]:PORT`
    /// dual-stack (and fails where the host has no IPv6).
    Exact(SocketAddr),
}

impl From<SocketAddr> for ListenAddr {
    fn from(a: SocketAddr) -> Self {
        ListenAddr::Exact(a)
    }
}

impl<I: Into<IpAddr>> From<(I, u16)> for ListenAddr {
    fn from((ip, port): (I, u16)) -> Self {
        ListenAddr::Exact(SocketAddr::new(ip.into(), port))
    }
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(port) = s.strip_prefix(':') {
            return port
                .parse()
                .map(ListenAddr::Any)
                .map_err(|_| format!("{s:?}: the port after ':' is not a number in 0..=65535"));
        }
        s.parse()
            .map(ListenAddr::Exact)
            .map_err(|e| format!("{s:?}: {e}; give :PORT (every address), IP:PORT or [IPv6]:PORT"))
    }
}

/// As the flag is written, so `parse` reads it back.
impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Any(p) => write!(f, ":{p}"),
            ListenAddr::Exact(a) => write!(f, "{a}"),
        }
    }
}

/// Binds `addr` with [`bind`]. For [`ListenAddr::Any`], `[::]:PORT`, falling back to
/// `0.0.0.0:PORT` (with one log line) only when the host has no IPv6.
pub fn bind_listen(addr: ListenAddr) -> io::Result<TcpListener> {
    bind_listen_with(addr, bind)
}

fn bind_listen_with<L>(
    addr: ListenAddr,
    bind: impl Fn(SocketAddr) -> io::Result<L>,
) -> io::Result<L> {
    let port = match addr {
        ListenAddr::Exact(a) => return bind(a),
        ListenAddr::Any(port) => port,
    };
    match bind((Ipv6Addr::UNSPECIFIED, port).into()) {
        Err(e) if no_ipv6(&e) => {
            tracing::info!(error = %e, port, "no IPv6 on this host: listening on 0.0.0.0 (IPv4 only)");
            bind((Ipv4Addr::UNSPECIFIED, port).into())
        }
        r => r,
    }
}

/// What binding `[::]` fails with where IPv6 is off: no AF_INET6 sockets at all
/// (`ipv6.disable=1`), or no IPv6 address to bind.
fn no_ipv6(e: &io::Error) -> bool {
    use rustix::io::Errno;
    [
        Errno::AFNOSUPPORT,
        Errno::ADDRNOTAVAIL,
        Errno::PROTONOSUPPORT,
    ]
    .iter()
    .any(|n| e.raw_os_error() == Some(n.raw_os_error()))
}

/// A peer as IPv4 clients should be logged, counted and compared: a dual-stack socket
/// reports them as `::ffff:a.b.c.d`, the same client as `a.b.c.d` on an IPv4 socket.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// No Nagle delay, and keepalive: long-lived mesh connections (and ztunnel's pooled HBONE
/// connections, idle between tunnels) cross NATs and load balancers that drop silent flows,
/// and a peer that vanished is found within about 150 s (60 + 9 probes × 10) instead of
/// the idle timeout. Best effort, as a failure changes no behaviour a peer relies on.
pub fn set_options<S: AsFd>(socket: &S) {
    set_options_probing(socket, None, None, None);
}

/// [`set_options`] with a DestinationRule's `tcpKeepalive` for an upstream socket: the
/// time before the first probe, between probes, and the probes before the peer is given
/// up, each where the rule sets it (else 60 s, 10 s and the kernel's count).
pub fn set_options_probing<S: AsFd>(
    socket: &S,
    time: Option<Duration>,
    interval: Option<Duration>,
    probes: Option<u32>,
) {
    let s = SockRef::from(socket);
    let _ = s.set_tcp_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(time.unwrap_or(Duration::from_secs(60)))
        .with_interval(interval.unwrap_or(Duration::from_secs(10)));
    let keepalive = match probes {
        Some(n) => keepalive.with_retries(n),
        None => keepalive,
    };
    let _ = s.set_tcp_keepalive(&keepalive);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpStream;

    /// The client leg's options are set once on the listener: accepted sockets must carry
    /// them (Linux copies them), or the client leg would lose keepalive and no-delay.
    #[tokio::test]
    async fn accepted_sockets_inherit_the_listeners_options() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let _c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (a, _) = l.accept().await.unwrap();
        let s = SockRef::from(&a);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap().as_secs(), 60);
        assert_eq!(s.tcp_keepalive_interval().unwrap().as_secs(), 10);
    }

    /// Tokio's `bind` queues 128 connections; past that Linux drops the SYNs and the
    /// clients' connects hang until a retransmission finds room. With nothing accepting,
    /// every one of a burst of 300 must still complete its handshake (fewer where the
    /// machine's `somaxconn` caps the queue below that).
    #[tokio::test]
    async fn a_burst_past_tokios_backlog_is_queued() {
        let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(128);
        let burst = somaxconn.min(300);
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = (0..burst)
            .map(|_| tokio::time::timeout(Duration::from_millis(1500), TcpStream::connect(addr)));
        let results = futures::future::join_all(connects).await;
        let queued = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(
            queued, burst,
            "only {queued} of {burst} connections were queued"
        );
        drop(listener);
    }

    #[test]
    fn listen_flags_parse_and_print_back() {
        let p = |s: &str| s.parse::<ListenAddr>();
        assert_eq!(p(":15443"), Ok(ListenAddr::Any(15443)));
        assert_eq!(
            p("[::1]:9"),
            Ok(ListenAddr::Exact("[::1]:9".parse().unwrap()))
        );
        assert_eq!(
            p("0.0.0.0:1"),
            Ok(ListenAddr::Exact(([0, 0, 0, 0], 1).into()))
        );
        for s in [":15443", "[::]:15008", "127.0.0.1:0"] {
            assert_eq!(p(s).unwrap().to_string(), s);
        }
        for bad in [":x", ":70000", "15443", "::1:9", ""] {
            assert!(p(bad).is_err(), "{bad:?}");
        }
    }

    /// Only the default (`:PORT`) falls back, and only when the host has no IPv6: a taken
    /// port, or an explicit `[::]`, is the error it is.
    #[test]
    fn every_address_falls_back_to_ipv4_only_without_ipv6() {
        use rustix::io::Errno;
        let os = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        let run = |addr: ListenAddr, v6: Errno| {
            let asked = std::cell::RefCell::new(Vec::new());
            let r = bind_listen_with(addr, |a: SocketAddr| {
                asked.borrow_mut().push(a);
                if a.is_ipv6() { Err(os(v6)) } else { Ok(()) }
            });
            (r.map_err(|e| e.raw_os_error()), asked.into_inner())
        };
        let v6: SocketAddr = "[::]:15443".parse().unwrap();
        let v4: SocketAddr = "0.0.0.0:15443".parse().unwrap();
        for no_v6 in [Errno::AFNOSUPPORT, Errno::ADDRNOTAVAIL] {
            assert_eq!(run(ListenAddr::Any(15443), no_v6), (Ok(()), vec![v6, v4]));
        }
        let in_use = Errno::ADDRINUSE;
        assert_eq!(
            run(ListenAddr::Any(15443), in_use),
            (Err(Some(in_use.raw_os_error())), vec![v6])
        );
        let af = Errno::AFNOSUPPORT;
        assert_eq!(
            run(ListenAddr::Exact(v6), af),
            (Err(Some(af.raw_os_error())), vec![v6]),
            "an address the user gave is never replaced"
        );
    }

    /// An IPv6 socket takes IPv4 clients (`IPV6_V6ONLY` off), which it reports as mapped
    /// addresses; [`canonical`] gives them back their IPv4 form. Bound to the mapped
    /// loopback, so nothing outside the host can reach it.
    #[tokio::test]
    async fn an_ipv6_listener_takes_ipv4_clients_as_mapped_addresses() {
        let l = bind("[::ffff:127.0.0.1]:0".parse().unwrap()).unwrap();
        assert!(!SockRef::from(&l).only_v6().unwrap());
        let port = l.local_addr().unwrap().port();
        let c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (_a, peer) = l.accept().await.unwrap();
        assert_eq!(peer.ip().to_string(), "::ffff:127.0.0.1");
        assert_eq!(canonical(peer), c.local_addr().unwrap());
        let v6: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6, "IPv6 peers stay as they are");
    }

    #[tokio::test]
    async fn binding_a_taken_port_fails_with_the_kernels_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = bind(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
