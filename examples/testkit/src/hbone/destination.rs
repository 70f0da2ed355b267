//! The destination ztunnel double: the mTLS HTTP/2 CONNECT server on a pod's `:15008`
//! (zt:`src/proxy/inbound.rs`, `src/proxy/h2/server.rs`). It accepts only CONNECT with a
//! `host:port` authority (else 400), dials its app and answers 200 only once that dial is
//! up (503 if it fails), then splices bytes with half-close both ways. It records each
//! peer's SPIFFE id, every request head and how each tunnel ended. It serves the outer hop
//! as well as the inner one: a test can route a gateway (or a client ztunnel) at it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};

use super::{
    CONNECTION_WINDOW, HboneError, MAX_FRAME_SIZE, SERVER_MAX_HEADER_LIST, SERVER_MAX_STREAMS,
    STREAM_WINDOW, Tunnel, reset_reason,
};
use crate::mtls::{Identity, peer_spiffe_id};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

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
    refused_handshakes: Mutex<Vec<String>>,
    connections: Mutex<Vec<Option<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct DestinationZtunnel {
    addr: SocketAddr,
    record: Arc<Record>,
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
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, rec) = (acceptor.clone(), rec.clone());
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    serve_connection(acceptor, tcp, rec, app).await;
                });
            }
        });
        Ok(DestinationZtunnel { addr, record, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request head so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.record.seen).clone()
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
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return lock(&rec.refused_handshakes).push(e.to_string()),
        Err(_) => return lock(&rec.refused_handshakes).push("handshake timed out".into()),
    };
    let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates());
    lock(&rec.connections).push(peer.clone());
    let conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_header_list_size(SERVER_MAX_HEADER_LIST)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .handshake::<_, Bytes>(tls)
        .await;
    let Ok(mut conn) = conn else { return };
    // Accepting drives the connection (and answers PINGs); each stream runs in its own task.
    while let Some(Ok((req, respond))) = conn.accept().await {
        let (rec, peer) = (rec.clone(), peer.clone());
        tokio::spawn(serve_stream(req, respond, rec, peer, app));
    }
}

async fn serve_stream(
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    rec: Arc<Record>,
    peer: Option<String>,
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
    let valid = parts.method == Method::CONNECT && authority.as_deref().is_some_and(host_port);
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
        lock(&rec.seen).push(seen.clone());
        let _ = respond.send_response(status(seen.status), true);
        return;
    };
    seen.status = StatusCode::OK;
    let idx = {
        let mut s = lock(&rec.seen);
        s.push(seen);
        s.len() - 1
    };
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
    lock(&rec.seen)[idx].end = Some(end);
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

#[cfg(test)]
mod tests {
    use super::host_port;

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
}
