//! The client ztunnel double: opens an outer mTLS + HTTP/2 connection with ztunnel's
//! settings (zt:`src/proxy/h2/client.rs` `spawn_connection`) and sends one CONNECT stream per
//! tunnel on it (zt:`src/proxy/outbound.rs` `create_hbone_request`). Generic over the
//! transport, so the inner leg of double HBONE runs over a [`Tunnel`] the same way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderName, HeaderValue, Method, Request};
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use super::tls::dummy_server_name;
use super::{
    ALPN_H2, CLIENT_MAX_HEADER_LIST, CLIENT_MAX_STREAMS, CONNECTION_WINDOW, HboneError,
    MAX_FRAME_SIZE, STREAM_WINDOW, Tunnel,
};
use crate::mtls::{Identity, peer_spiffe_id};

/// A remote ztunnel: a workload identity and the TLS config built from it.
#[derive(Clone)]
pub struct ClientZtunnel {
    config: Arc<ClientConfig>,
}

impl ClientZtunnel {
    /// With a config from [`super::tls::client_config`] (or any other, to test refusals).
    pub fn new(config: Arc<ClientConfig>) -> Self {
        ClientZtunnel { config }
    }

    /// Presents `id`'s certificate; accepts servers whose SPIFFE id is one of `server_ids`
    /// (any, if empty).
    pub fn from_identity(id: &Identity, server_ids: &[String]) -> Result<Self, HboneError> {
        Ok(ClientZtunnel::new(super::tls::client_config(
            id, server_ids,
        )?))
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// A new outer connection to `addr` (a gateway's 15008 or a destination ztunnel).
    pub async fn connect(&self, addr: SocketAddr) -> Result<OuterConn, HboneError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        self.connect_over(tcp).await
    }

    /// TLS + HTTP/2 over any transport: the inner leg of double HBONE runs over a [`Tunnel`].
    pub async fn connect_over<T>(&self, io: T) -> Result<OuterConn, HboneError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(dummy_server_name(), io)
            .await
            .map_err(HboneError::Tls)?;
        let (_, session) = tls.get_ref();
        if session.alpn_protocol() != Some(ALPN_H2) {
            let got = session
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned());
            return Err(HboneError::Alpn(got));
        }
        let peer = peer_spiffe_id(session.peer_certificates());
        let (send, mut conn) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .initial_max_send_streams(CLIENT_MAX_STREAMS)
            .max_header_list_size(CLIENT_MAX_HEADER_LIST)
            .max_send_buffer_size(STREAM_WINDOW as usize)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await?;
        let ping = conn.ping_pong();
        // The connection ends (GOAWAY) once every handle and stream on it is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(OuterConn {
            send,
            ping: Arc::new(Mutex::new(ping)),
            peer,
        })
    }
}

/// One outer HBONE connection; clones share it (ztunnel's pool), each tunnel is a stream.
#[derive(Clone)]
pub struct OuterConn {
    send: SendRequest<Bytes>,
    ping: Arc<Mutex<Option<h2::PingPong>>>,
    peer: Option<String>,
}

impl OuterConn {
    /// The server's SPIFFE id from its certificate.
    pub fn peer_identity(&self) -> Option<&str> {
        self.peer.as_deref()
    }

    /// A tunnel to `authority` (`<service FQDN>:<port>`) with the headers ztunnel sends.
    pub async fn connect_tunnel(&self, authority: &str) -> Result<Tunnel, HboneError> {
        self.open(ConnectRequest::new(authority)).await
    }

    /// A tunnel with a request built by the caller.
    pub async fn open(&self, req: ConnectRequest) -> Result<Tunnel, HboneError> {
        self.send_request(req.build()?).await
    }

    /// Sends any request head (a GET, a malformed authority) and waits for the answer; only
    /// 200 gives a tunnel, anything else is [`HboneError::Refused`] and the stream is reset,
    /// as ztunnel does (zt:`internal_send`).
    pub async fn send_request(&self, req: Request<()>) -> Result<Tunnel, HboneError> {
        let mut send = self.send.clone().ready().await?;
        let (response, stream) = send.send_request(req, false)?;
        let response = response.await?;
        if response.status() != http::StatusCode::OK {
            return Err(HboneError::Refused {
                status: response.status(),
            });
        }
        let (parts, body) = response.into_parts();
        Ok(Tunnel::new(stream, body, parts.headers))
    }

    /// A PING round trip, bounded by `timeout`.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, HboneError> {
        let mut guard = self.ping.lock().await;
        let pp = guard.as_mut().ok_or_else(|| {
            HboneError::BadRequest("this connection's PING handle is gone".into())
        })?;
        let start = std::time::Instant::now();
        tokio::time::timeout(timeout, pp.ping(h2::Ping::opaque()))
            .await
            .map_err(|_| HboneError::Timeout(timeout))??;
        Ok(start.elapsed())
    }
}

/// The head of a CONNECT as ztunnel builds it: `:method CONNECT`, `:authority` only (no
/// `:scheme`, no `:path`), `traceparent`, and `forwarded`/`baggage`/`x-forwarded-network`
/// when set (zt:`src/proxy/outbound.rs`, `src/baggage.rs`).
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    authority: String,
    headers: Vec<(String, String)>,
}

impl ConnectRequest {
    /// CONNECT to `authority` with a fresh `traceparent`.
    pub fn new(authority: &str) -> Self {
        ConnectRequest {
            authority: authority.to_owned(),
            headers: vec![("traceparent".into(), fresh_traceparent())],
        }
    }

    /// The same trace on both legs of double HBONE, as ztunnel sends it.
    pub fn traceparent(self, value: &str) -> Self {
        self.set("traceparent", value)
    }

    /// `forwarded: for="<app ip:port>";host=<authority's host>`.
    pub fn forwarded_for(self, app: SocketAddr) -> Self {
        let host = self
            .authority
            .rsplit_once(':')
            .map_or(self.authority.as_str(), |(h, _)| h)
            .to_owned();
        self.set("forwarded", &format!("for=\"{app}\";host={host}"))
    }

    /// `baggage: k8s.cluster.name=…,k8s.namespace.name=…,…` (only the known fields).
    pub fn baggage(self, value: &str) -> Self {
        self.set("baggage", value)
    }

    /// `x-forwarded-network: <source network>`: the inner leg of double HBONE only.
    pub fn forwarded_network(self, network: &str) -> Self {
        self.set("x-forwarded-network", network)
    }

    /// Any other header (e.g. `x-istio-source: waypoint`, as Envoy waypoints send).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    fn set(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.header(name, value)
    }

    pub fn build(&self) -> Result<Request<()>, HboneError> {
        let bad = |e: &dyn std::fmt::Display| HboneError::BadRequest(e.to_string());
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(self.authority.as_str())
            .body(())
            .map_err(|e| bad(&e))?;
        for (n, v) in &self.headers {
            let n = HeaderName::try_from(n.as_str()).map_err(|e| bad(&e))?;
            let v = HeaderValue::try_from(v.as_str()).map_err(|e| bad(&e))?;
            req.headers_mut().append(n, v);
        }
        Ok(req)
    }
}

/// `00-<32 hex trace id>-<16 hex span id>-00`, distinct per call (not cryptographic).
fn fresh_traceparent() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!(
        "00-{t:016x}{n:016x}-{:016x}-00",
        (t ^ n.rotate_left(32)) | 1
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_head_has_no_scheme_or_path() {
        let req = ConnectRequest::new("catalog.istioinaction.svc.cluster.local:80")
            .forwarded_for("10.0.0.7:4321".parse().unwrap())
            .forwarded_network("west-network")
            .build()
            .unwrap();
        assert_eq!(req.method(), Method::CONNECT);
        assert_eq!(req.uri().scheme(), None);
        assert_eq!(
            req.uri().authority().unwrap().as_str(),
            "catalog.istioinaction.svc.cluster.local:80"
        );
        assert_eq!(
            req.headers()["forwarded"],
            "for=\"10.0.0.7:4321\";host=catalog.istioinaction.svc.cluster.local"
        );
        assert_eq!(req.headers()["x-forwarded-network"], "west-network");
        let tp = req.headers()["traceparent"].to_str().unwrap();
        let parts: Vec<_> = tp.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [2, 32, 16, 2]
        );
    }
}
