//! HBONE test doubles: a *client ztunnel* (mutual TLS + HTTP/2 CONNECT, pooled outer
//! connections, double HBONE) and a *destination ztunnel* (the mTLS CONNECT server on
//! `:15008` that forwards each tunnel to an app), shaped after istio/ztunnel so the gateway's
//! tests meet what a real mesh sends. Facts and their sources: `shared/reference/hbone.md`.
//!
//! - [`tls`]: ztunnel's TLS: 1.3 only, AES-GCM suites, ALPN `h2`, no SNI, SPIFFE checks.
//! - [`client`]: [`ClientZtunnel`], [`OuterConn`] (one TLS/h2 connection, many tunnels) and
//!   [`ConnectRequest`] (the CONNECT head ztunnel sends).
//! - [`tunnel`]: [`Tunnel`], one CONNECT stream as `AsyncRead + AsyncWrite`.
//! - [`destination`]: [`DestinationZtunnel`], which records what it saw.
//! - [`app`]: [`TestApp`], the TCP app behind a destination (echo, or speak first).

pub mod app;
pub mod client;
pub mod destination;
pub mod tls;
pub mod tunnel;

pub use app::{AppConn, AppMode, TestApp};
pub use client::{ClientZtunnel, ConnectRequest, OuterConn};
pub use destination::{DestinationZtunnel, Seen, StreamEnd};
pub use tunnel::{Tunnel, reset_reason};

/// The only ALPN protocol either side of an HBONE hop offers.
pub const ALPN_H2: &[u8] = b"h2";

/// ztunnel's HTTP/2 settings (zt:`src/config.rs` defaults, `src/proxy/h2/{client,server}.rs`).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
pub const MAX_FRAME_SIZE: u32 = 1024 * 1024;
/// Client side: header list limit and streams per pooled outer connection.
pub const CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;
pub const CLIENT_MAX_STREAMS: usize = 100;
/// Server side (the inbound listener): concurrent streams and header list limit.
pub const SERVER_MAX_STREAMS: u32 = 200;
pub const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;

/// What can go wrong on an HBONE hop, as the client double reports it.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("TCP connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("the server negotiated ALPN {0:?}; HBONE needs \"h2\"")]
    Alpn(Option<String>),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("CONNECT answered {status} (only 200 opens a tunnel)")]
    Refused { status: http::StatusCode },
    #[error("cannot build the CONNECT request: {0}")]
    BadRequest(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] crate::mtls::MtlsError),
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
}

impl HboneError {
    /// The status of a refused CONNECT, if that is what this is.
    pub fn refused_status(&self) -> Option<u16> {
        match self {
            HboneError::Refused { status } => Some(status.as_u16()),
            _ => None,
        }
    }
}
