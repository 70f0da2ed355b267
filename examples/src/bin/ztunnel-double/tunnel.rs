//! One double-HBONE tunnel on an open outer connection: CONNECT to the gateway, inner TLS +
//! CONNECT to the destination ztunnel, lines exchanged, both directions closed cleanly.

use std::time::Duration;

use testkit::hbone::{ClientZtunnel, ConnectRequest, HboneError, OuterConn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::ClientArgs;

/// Bound on each step of a tunnel (connect, handshake, one reply).
pub const TIMEOUT: Duration = Duration::from_secs(10);

pub struct Exchange {
    pub destination_id: String,
    pub replies: Vec<String>,
}

pub enum TunnelError {
    /// The outer connection is going away (a graceful GOAWAY): the CONNECT was not taken on
    /// it; ztunnel would open it on another connection.
    NotStarted(String),
    Failed(String),
}

impl std::fmt::Display for TunnelError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TunnelError::NotStarted(e) => write!(f, "not started: {e}"),
            TunnelError::Failed(e) => write!(f, "{e}"),
        }
    }
}

/// Opens a tunnel on `conn`, sends each line (waiting `hold` between them) and checks one
/// reply per line, then half-closes and reads the destination's FIN.
pub async fn exchange(
    conn: &OuterConn,
    inner: &ClientZtunnel,
    args: &ClientArgs,
    lines: &[String],
    hold: Duration,
) -> Result<Exchange, TunnelError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| TunnelError::Failed(format!("{what}: {e}"));
    let outer_tunnel = match conn.open(ConnectRequest::new(&args.authority)).await {
        Ok(t) => t,
        // A graceful GOAWAY (NO_ERROR): the server refused nothing, it closes the connection
        // to new streams; any other error is a failed tunnel.
        Err(HboneError::H2(e)) if e.is_go_away() && e.reason().map(u32::from) == Some(0) => {
            return Err(TunnelError::NotStarted(format!("outer CONNECT: {e}")));
        }
        Err(e) => return Err(fail("outer CONNECT", &e)),
    };
    let inner_conn = tokio::time::timeout(TIMEOUT, inner.connect_over(outer_tunnel))
        .await
        .map_err(|_| fail("inner TLS", &"timed out"))?
        .map_err(|e| fail("inner TLS", &e))?;
    let destination_id = inner_conn.peer_identity().unwrap_or("<none>").to_string();
    let tunnel = inner_conn
        .open(ConnectRequest::new(&args.authority).forwarded_network(&args.network))
        .await
        .map_err(|e| fail("inner CONNECT", &e))?;
    let mut io = BufReader::new(tunnel);
    let mut replies = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(hold).await;
        }
        io.write_all(format!("{line}\n").as_bytes())
            .await
            .map_err(|e| fail("write", &e))?;
        let mut reply = String::new();
        let n = tokio::time::timeout(TIMEOUT, io.read_line(&mut reply))
            .await
            .map_err(|_| fail("read", &"timed out"))?
            .map_err(|e| fail("read", &e))?;
        if n == 0 || !reply.trim_end().ends_with(&format!(": {line}")) {
            return Err(fail(
                "reply",
                &format!("{:?} to {line:?}", reply.trim_end()),
            ));
        }
        replies.push(reply.trim_end().to_string());
    }
    io.get_mut()
        .shutdown()
        .await
        .map_err(|e| fail("shutdown", &e))?;
    let mut rest = Vec::new();
    tokio::time::timeout(TIMEOUT, io.read_to_end(&mut rest))
        .await
        .map_err(|_| fail("waiting for the destination's FIN", &"timed out"))?
        .map_err(|e| fail("waiting for the destination's FIN", &e))?;
    if !rest.is_empty() {
        return Err(fail(
            "after the last reply",
            &format!("{} stray bytes", rest.len()),
        ));
    }
    Ok(Exchange {
        destination_id,
        replies,
    })
}

/// Lets the connection tasks send their last frames (the inner TLS close, the outer
/// END_STREAM) before the process exits, so the gateway sees each tunnel end cleanly.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(300)).await;
}
