//! The destination ztunnel double: the mTLS HTTP/2 CONNECT server on a pod's `:15008`
//! (zt:`src/proxy/inbound.rs`, `src/proxy/h2/server.rs`). It accepts only CONNECT with a
//! `host:port` authority whose host, if an IP, is its own address (else 400), dials its app and answers 200 only once that dial is
//! up (503 if it fails), then splices bytes with half-close both ways. It records each
//! peer's SPIFFE id, every request head and how each tunnel ended. It serves the outer hop
//! as well as the inner one: a test can route a gateway (or a client ztunnel) at it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};

use super::{
    CONNECTION_WINDOW, HboneError, MAX_FRAME_SIZE, SERVER_MAX_HEADER_LIST, SERVER_MAX_SEND_BUFFER,
    SERVER_MAX_STREAMS, STREAM_WINDOW, Tunnel, reset_reason,
};
use crate::mtls::{Identity, peer_spiffe_id};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Request heads, connections and refusals kept for inspection; later requests are only
/// counted, so a benchmark can run millions of tunnels through it.
pub const MAX_RECORDED: usize = 10_000;

/// One CONNECT (or other request) the destination saw.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The client's SPIFFE id from its certificate.
    pub peer: Option<String>,
    pub method: Method,
    pub authority: Option<String>,
    pub headers: http::HeaderMap,
    /// The status answered.
    pub status: StatusCode,
    /// How the tunnel ended; `None` while open or when refused.
    pub end: Option<StreamEnd>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// Both directions closed cleanly (END_STREAM and FIN), with the bytes each way.
    Closed {
        to_app: u64,
        from_app: u64,
    },
    /// The client reset the stream.
    Reset(h2::Reason),
    Error(String),
}

#[derive(Default)]
struct Record {
    seen: Mutex<Vec<Seen>>,
    requests: std::sync::atomic::AtomicU64,
    refused_handshakes: Mutex<Vec<String>>,
    connections: Mutex<Vec<Option<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct DestinationZtunnel {
    addr: SocketAddr,
    record: Arc<Record>,
    drain: tokio::sync::watch::Sender<bool>,
    /// The TLS config new connections get ([`DestinationZtunnel::set_config`]).
    config: tokio::sync::watch::Sender<Arc<ServerConfig>>,
    task: tokio::task::JoinHandle<()>,
}

impl DestinationZtunnel {
    /// On `127.0.0.1:0`, presenting `id`, accepting clients of `id`'s trust domain, forwarding
    /// every tunnel to `app`.
    pub async fn start(id: &Identity, app: SocketAddr) -> Result<Self, HboneError> {
        let config = super::tls::server_config(id)?;
        Self::start_with(config, "127.0.0.1:0".parse().expect("literal"), app).await
    }

    /// With any server config (another trust domain, other ALPN) and bind address.
    pub async fn start_with(
        config: Arc<ServerConfig>,
        bind: SocketAddr,
        app: SocketAddr,
    ) -> Result<Self, HboneError> {
        let listener = TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let record: Arc<Record> = Arc::default();
        let rec = record.clone();
        let (config, configured) = tokio::sync::watch::channel(config);
        let (drain, draining) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = tokio_rustls::TlsAcceptor::from(configured.borrow().clone());
                let (rec, draining) = (rec.clone(), draining.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    serve_connection(acceptor, tcp, rec, app, draining).await;
                });
            }
        });
        Ok(DestinationZtunnel {
            addr,
            record,
            drain,
            config,
            task,
        })
    }

    /// New connections get `config` from now on; open ones keep theirs. As ztunnel does when
    /// istiod issues it a new certificate: the listener stays, so no connect is refused.
    pub fn set_config(&self, config: Arc<ServerConfig>) {
        self.config.send_replace(config);
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drains as ztunnel does: a graceful GOAWAY on every connection; open tunnels may
    /// finish, new streams are refused, each connection closes after its last stream.
    pub fn drain(&self) {
        let _ = self.drain.send(true);
    }

    /// Every request head so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.record.seen).clone()
    }

    /// How many requests arrived, recorded or not.
    pub fn requests(&self) -> u64 {
        self.record
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The authorities of every request so far.
    pub fn authorities(&self) -> Vec<String> {
        self.seen()
            .into_iter()
            .filter_map(|s| s.authority)
            .collect()
    }

    /// Why each refused TLS handshake failed.
    pub fn refused_handshakes(&self) -> Vec<String> {
        lock(&self.record.refused_handshakes).clone()
    }

    /// The client SPIFFE id of each accepted TLS connection.
    pub fn connections(&self) -> Vec<Option<String>> {
        lock(&self.record.connections).clone()
    }
}

impl Drop for DestinationZtunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    rec: Arc<Record>,
    app: SocketAddr,
    mut draining: tokio::sync::watch::Receiver<bool>,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return bounded_push(&rec.refused_handshakes, e.to_string()),
        Err(_) => return bounded_push(&rec.refused_handshakes, "handshake timed out".into()),
    };
    let (tcp, session) = tls.get_ref();
    let peer = peer_spiffe_id(session.peer_certificates());
    let Ok(local) = tcp.local_addr() else { return };
    bounded_push(&rec.connections, peer.clone());
    let conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(SERVER_MAX_HEADER_LIST)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .max_send_buffer_size(SERVER_MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(tls)
        .await;
    let Ok(mut conn) = conn else { return };
    // Accepting drives the connection (and answers PINGs); each stream runs in its own task.
    let mut goaway_sent = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = draining.wait_for(|d| *d), if !goaway_sent => {
                conn.graceful_shutdown();
                goaway_sent = true;
                continue;
            }
        };
        let Some(Ok((req, respond))) = next else {
            break;
        };
        let (rec, peer) = (rec.clone(), peer.clone());
        tokio::spawn(serve_stream(req, respond, rec, peer, local.ip(), app));
    }
}

async fn serve_stream(
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    rec: Arc<Record>,
    peer: Option<String>,
    local_ip: IpAddr,
    app: SocketAddr,
) {
    let (parts, body) = req.into_parts();
    let authority = parts.uri.authority().map(|a| a.as_str().to_owned());
    let mut seen = Seen {
        peer,
        method: parts.method.clone(),
        authority: authority.clone(),
        headers: parts.headers.clone(),
        status: StatusCode::BAD_REQUEST,
        end: None,
    };
    // ztunnel answers 400 to another method, a bad authority, or an `ip:port` whose IP is not
    // the address the connection arrived on (zt:`build_inbound_request`, `validate_destination`).
    let valid = parts.method == Method::CONNECT
        && authority
            .as_deref()
            .is_some_and(|a| host_port(a) && ip_is_local(a, local_ip));
    let upstream = if valid {
        match tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(app)).await {
            Ok(Ok(tcp)) => Some(tcp),
            _ => {
                seen.status = StatusCode::SERVICE_UNAVAILABLE;
                None
            }
        }
    } else {
        None
    };
    let Some(mut upstream) = upstream else {
        let answer = seen.status;
        rec.push(seen);
        let _ = respond.send_response(status(answer), true);
        return;
    };
    seen.status = StatusCode::OK;
    let idx = rec.push(seen);
    let end = match respond.send_response(status(StatusCode::OK), false) {
        Ok(send) => {
            let mut tunnel = Tunnel::new(send, body, parts.headers);
            let _ = upstream.set_nodelay(true);
            match tokio::io::copy_bidirectional_with_sizes(
                &mut tunnel,
                &mut upstream,
                64 * 1024,
                64 * 1024,
            )
            .await
            {
                Ok((to_app, from_app)) => StreamEnd::Closed { to_app, from_app },
                Err(e) => match reset_reason(&e) {
                    Some(r) => StreamEnd::Reset(r),
                    None => StreamEnd::Error(e.to_string()),
                },
            }
        }
        Err(e) => StreamEnd::Error(e.to_string()),
    };
    if let Some(i) = idx {
        lock(&rec.seen)[i].end = Some(end);
    }
}

impl Record {
    /// Keeps `seen` if there is room; its index then.
    fn push(&self, seen: Seen) -> Option<usize> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut s = lock(&self.seen);
        (s.len() < MAX_RECORDED).then(|| {
            s.push(seen);
            s.len() - 1
        })
    }
}

fn bounded_push<T>(v: &Mutex<Vec<T>>, item: T) {
    let mut v = lock(v);
    if v.len() < MAX_RECORDED {
        v.push(item);
    }
}

fn status(s: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = s;
    r
}

/// `host:port` with a non-empty host and a port that is a non-zero u16.
fn host_port(authority: &str) -> bool {
    match authority.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0),
        None => false,
    }
}

/// A host that is an IP literal must be `local`; a hostname is fine (a service name).
fn ip_is_local(authority: &str, local: IpAddr) -> bool {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    match host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        Ok(ip) => ip == local,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::{host_port, ip_is_local};

    #[test]
    fn authority_must_be_host_and_port() {
        assert!(host_port("catalog.istioinaction.svc.cluster.local:80"));
        assert!(host_port("10.0.0.1:15008"));
        assert!(!host_port("catalog"));
        assert!(!host_port(":80"));
        assert!(!host_port("catalog:0"));
        assert!(!host_port("catalog:http"));
        assert!(!host_port("catalog:70000"));
    }

    #[test]
    fn an_ip_authority_must_be_the_local_address() {
        let local = "127.0.0.1".parse().unwrap();
        assert!(ip_is_local("127.0.0.1:80", local));
        assert!(ip_is_local(
            "catalog.istioinaction.svc.cluster.local:80",
            local
        ));
        assert!(!ip_is_local("10.0.0.9:80", local));
        assert!(!ip_is_local("[::1]:80", local));
    }
}
