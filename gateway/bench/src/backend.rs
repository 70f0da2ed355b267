//! The backend behind every proxy: one process, multi-threaded, TLS (and, for the splice
//! experiment, plain TCP).
//!
//! Protocol: the client sends a 9-byte header, an op byte and a big-endian u64 `n`.
//! - `E`: echo every byte until EOF (connrate, latency, idle).
//! - `D`: send `n` bytes, then close (download).
//! - `U`: read `n` bytes, then answer 8 bytes (upload).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::check_loopback;

pub const OP_ECHO: u8 = b'E';
pub const OP_DOWN: u8 = b'D';
pub const OP_UP: u8 = b'U';
const BUF: usize = 64 * 1024;

#[derive(Args, Debug)]
pub struct BackendArgs {
    /// TLS listener (loopback only).
    #[arg(long)]
    pub listen: SocketAddr,
    /// Optional plain TCP listener with the same protocol (splice experiment).
    #[arg(long)]
    pub plain_listen: Option<SocketAddr>,
    #[arg(long)]
    pub certs: PathBuf,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub async fn run(a: BackendArgs) -> Result<()> {
    check_loopback(&a.listen)?;
    let acceptor = TlsAcceptor::from(crate::tls::server_config(&a.certs)?);
    let tls = listener(a.listen)?;
    if let Some(p) = a.plain_listen {
        check_loopback(&p)?;
        let plain = listener(p)?;
        tokio::spawn(async move {
            loop {
                if let Ok((s, _)) = plain.accept().await {
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let _ = serve(s).await;
                    });
                }
            }
        });
    }
    eprintln!("backend: listening on {}", a.listen);
    loop {
        let (s, _) = match tls.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                eprintln!("backend: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            if let Ok(t) = acceptor.accept(s).await {
                let _ = serve(t).await;
            }
        });
    }
}

fn listener(addr: SocketAddr) -> Result<TcpListener> {
    let s = tokio::net::TcpSocket::new_v4()?;
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    Ok(s.listen(4096)?)
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut hdr = [0u8; 9];
    s.read_exact(&mut hdr).await?;
    let n = u64::from_be_bytes(hdr[1..9].try_into().unwrap_or_default());
    match hdr[0] {
        OP_ECHO => {
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let r = s.read(&mut buf).await?;
                if r == 0 {
                    break;
                }
                s.write_all(&buf[..r]).await?;
                s.flush().await?;
            }
        }
        OP_DOWN => {
            let buf = vec![0x5au8; BUF];
            let mut left = n;
            while left > 0 {
                let k = left.min(BUF as u64) as usize;
                s.write_all(&buf[..k]).await?;
                left -= k as u64;
            }
            s.flush().await?;
        }
        OP_UP => {
            let mut buf = vec![0u8; BUF];
            let mut left = n;
            while left > 0 {
                let r = s.read(&mut buf).await?;
                if r == 0 {
                    break;
                }
                left = left.saturating_sub(r as u64);
            }
            s.write_all(&n.to_be_bytes()).await?;
            s.flush().await?;
        }
        _ => return Ok(()),
    }
    s.shutdown().await?;
    Ok(())
}
