//! A tiny mTLS workload, standing in for a pod with its sidecar: a line-based server that
//! names itself and the caller's identity, and a client that checks the server's identity.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use testkit::mtls::{self, Identity};

/// Server settings: who it is and which callers it admits.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub name: String,
    /// SPIFFE ids allowed to call; empty admits any identity that chains to the root.
    pub allow_peers: Vec<String>,
}

/// Serves until the listener fails. Each connection: one reply line per request line,
/// `<name>: <request> (caller <spiffe id>)`; a caller not on the allow list gets
/// `denied: <spiffe id>` and is closed. Returns the number of TLS handshakes that failed
/// through `failed`, so demos can show that trust was enforced here.
pub async fn serve(
    listener: TcpListener,
    id: &Identity,
    opts: ServeOptions,
    failed: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let config =
        mtls::server_config(id, rustls::DEFAULT_VERSIONS).map_err(std::io::Error::other)?;
    let (_fixed, configs) = watch::channel(config);
    serve_configs(listener, configs, opts, failed).await
}

/// As [`serve`], with each new connection handshaking with the latest configuration in
/// `configs` (see [`crate::cert_reload`]); open connections keep the one they started with.
pub async fn serve_configs(
    listener: TcpListener,
    configs: watch::Receiver<Arc<rustls::ServerConfig>>,
    opts: ServeOptions,
    failed: Arc<AtomicUsize>,
) -> std::io::Result<()> {
    let opts = Arc::new(opts);
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = TlsAcceptor::from(configs.borrow().clone());
        let opts = opts.clone();
        let failed = failed.clone();
        tokio::spawn(async move {
            let tls =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(t)) => t,
                    Ok(Err(e)) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        eprintln!("[{}] refused TLS from {peer}: {e}", opts.name);
                        return;
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                };
            let caller = mtls::peer_spiffe_id(tls.get_ref().1.peer_certificates())
                .unwrap_or_else(|| "<none>".into());
            let mut conn = BufReader::new(tls);
            if !opts.allow_peers.is_empty() && !opts.allow_peers.contains(&caller) {
                let _ = conn
                    .write_all(format!("denied: {caller}\n").as_bytes())
                    .await;
                let _ = conn.shutdown().await;
                return;
            }
            let mut line = String::new();
            for _ in 0..10_000 {
                line.clear();
                match tokio::time::timeout(Duration::from_secs(60), conn.read_line(&mut line)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(_)) => {}
                }
                let reply = format!("{}: {} (caller {caller})\n", opts.name, line.trim_end());
                if conn.write_all(reply.as_bytes()).await.is_err() {
                    break;
                }
            }
            let _ = conn.shutdown().await;
        });
    }
}

/// What one call saw.
#[derive(Debug, Clone)]
pub struct CallResult {
    pub server_id: String,
    pub alpn: Option<String>,
    pub reply: String,
}

/// Connects to `addr` with `sni` (the Istio routing key), checks the server is
/// `expect_peer`, sends one request line and reads one reply line.
pub async fn call(
    id: &Identity,
    addr: SocketAddr,
    sni: &str,
    expect_peer: Option<&str>,
    request: &str,
) -> Result<CallResult, String> {
    let cfg: Arc<rustls::ClientConfig> =
        mtls::client_config(id, expect_peer, rustls::DEFAULT_VERSIONS)
            .map_err(|e| e.to_string())?;
    let name = mtls::sni_server_name(sni).map_err(|e| e.to_string())?;
    let fut = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let tls = TlsConnector::from(cfg)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let server_id =
            mtls::peer_spiffe_id(tls.get_ref().1.peer_certificates()).unwrap_or_default();
        let alpn = tls
            .get_ref()
            .1
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned());
        let mut conn = BufReader::new(tls);
        conn.write_all(format!("{request}\n").as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut reply = String::new();
        let n = conn
            .read_line(&mut reply)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            // TLS 1.3 client certificates are checked after the client's Finished: a server
            // that refuses the certificate shows up here, as an alert or a close.
            return Err("connection closed by the server (client certificate refused?)".into());
        }
        let _ = conn.shutdown().await;
        Ok(CallResult {
            server_id,
            alpn,
            reply: reply.trim_end().to_string(),
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| "timed out".to_string())?
}
