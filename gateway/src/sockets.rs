//! How the gateway's sockets are made: listeners with a real accept queue, and the options
//! every leg gets (client and upstream, on 15443 and 15008).

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
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
    // Accepted sockets inherit these (Linux copies the listening socket): no setsockopt per
    // accepted connection.
    set_options(&socket);
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// No Nagle delay, and keepalive: long-lived mesh connections (and ztunnel's pooled HBONE
/// connections, idle between tunnels) cross NATs and load balancers that drop silent flows,
/// and a peer that vanished is found within about 150 s (60 + 9 probes × 10) instead of
/// the idle timeout. Best effort, as a failure changes no behaviour a peer relies on.
pub fn set_options<S: AsFd>(socket: &S) {
    let s = SockRef::from(socket);
    let _ = s.set_tcp_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
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

    #[tokio::test]
    async fn binding_a_taken_port_fails_with_the_kernels_error() {
        let first = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let err = bind(first.local_addr().unwrap()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
    }
}
