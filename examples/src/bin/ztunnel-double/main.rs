#![forbid(unsafe_code)]
//! `ztunnel-double`: the `testkit::hbone` ztunnel doubles as a process, so the netns
//! end-to-end test can run them inside network namespaces with `ip netns exec`, as it runs
//! the gateway and `mesh-workload`.
//!
//! - `destination`: a pod's ztunnel on `<pod IP>:15008` (the test-support destination double),
//!   forwarding every tunnel to a small app in the same process that answers each line with
//!   `<name>: <line>`, so a caller sees which endpoint it reached.
//! - `call`: one tunnel as a remote ztunnel opens it through an east-west gateway (outer mTLS
//!   and CONNECT to the gateway's 15008, then the inner TLS and CONNECT end to end to the
//!   destination ztunnel: double HBONE), one line each way.
//! - `load`: tunnels started at a steady pace on one pooled outer connection, each held open
//!   for a while, until a bound or the gateway's GOAWAY; one line per tunnel and a summary.

mod load;
mod tunnel;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use testkit::hbone::{ClientZtunnel, DestinationZtunnel};
use testkit::mtls::Identity;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Parser)]
#[command(
    name = "ztunnel-double",
    version,
    about = "The test-support ztunnel doubles (HBONE) as a process: destination, call, load"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A destination ztunnel: mTLS HTTP/2 CONNECT server forwarding to a named line app.
    Destination {
        /// Directory with cert-chain.pem, key.pem, root-cert.pem (from `meshctl certs workload`).
        #[arg(long)]
        certs: PathBuf,
        /// Address to listen on, e.g. the pod's `10.20.0.8:15008`.
        #[arg(long)]
        listen: SocketAddr,
        /// Name the app puts in front of every reply line.
        #[arg(long)]
        name: String,
    },
    /// One double-HBONE tunnel through a gateway: send one line, print the reply.
    Call {
        #[command(flatten)]
        client: ClientArgs,
        #[arg(long, default_value = "hello")]
        request: String,
    },
    /// Tunnels at a steady pace on one outer connection until a bound or GOAWAY.
    Load(load::LoadArgs),
}

/// Who the remote ztunnel is and where it tunnels.
#[derive(Args, Clone)]
pub struct ClientArgs {
    /// The source workload's certificate directory (its ztunnel presents it).
    #[arg(long)]
    certs: PathBuf,
    /// The east-west gateway's HBONE address, e.g. `172.31.0.20:15008`.
    #[arg(long)]
    gateway: SocketAddr,
    /// The SPIFFE id the gateway must present.
    #[arg(long)]
    gateway_id: String,
    /// The CONNECT authority on both legs: `<service FQDN>:<port>`.
    #[arg(long)]
    authority: String,
    /// The SPIFFE id the destination ztunnel must present (inner TLS).
    #[arg(long)]
    peer_id: String,
    /// The source network, sent as `x-forwarded-network` on the inner CONNECT.
    #[arg(long, default_value = "west-network")]
    network: String,
}

impl ClientArgs {
    /// The outer (to the gateway) and inner (to the destination) client configurations.
    fn clients(&self) -> anyhow::Result<(ClientZtunnel, ClientZtunnel)> {
        let id = Identity::load_dir(&self.certs)
            .with_context(|| format!("loading {}", self.certs.display()))?;
        let outer = ClientZtunnel::from_identity(&id, std::slice::from_ref(&self.gateway_id))?;
        let inner = ClientZtunnel::from_identity(&id, std::slice::from_ref(&self.peer_id))?;
        Ok((outer, inner))
    }
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Destination {
                certs,
                listen,
                name,
            } => destination(&certs, listen, name).await,
            Cmd::Call { client, request } => {
                let (outer, inner) = client.clients()?;
                let conn = tokio::time::timeout(tunnel::TIMEOUT, outer.connect(client.gateway))
                    .await
                    .map_err(|_| anyhow::anyhow!("connect to {}: timed out", client.gateway))?
                    .map_err(|e| anyhow::anyhow!("connect to {}: {e}", client.gateway))?;
                println!(
                    "gateway identity: {}",
                    conn.peer_identity().unwrap_or("<none>")
                );
                let r = tunnel::exchange(&conn, &inner, &client, &[request], Duration::ZERO)
                    .await
                    .map_err(|e| anyhow::anyhow!("tunnel to {}: {e}", client.authority))?;
                println!("destination identity: {}", r.destination_id);
                println!("reply: {}", r.replies.join(" | "));
                tunnel::settle().await;
                Ok(())
            }
            Cmd::Load(args) => load::run(args).await,
        }
    })
}

/// Runs a destination double on `listen` with its app on a loopback port, printing each
/// request head it records (peer identity, authority, status) as it arrives. ztunnel gets a
/// new certificate from istiod when trust rotates and keeps its listener; so when the files
/// change (polled), new connections get the new certificate and tunnels already open keep
/// running.
async fn destination(certs: &Path, listen: SocketAddr, name: String) -> anyhow::Result<()> {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let app_addr = app.local_addr()?;
    tokio::spawn(named_app(app, name.clone()));
    let mut files = read_certs(certs)?;
    let dest = DestinationZtunnel::start_with(server_config(certs)?, listen, app_addr)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    eprintln!(
        "[{name}] destination ztunnel listening on {} (app {app_addr})",
        dest.addr()
    );
    let mut printed = 0;
    for tick in 0u64.. {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let seen = dest.seen();
        for s in seen.iter().skip(printed) {
            eprintln!(
                "[{name}] seen: peer={} authority={} status={} x-forwarded-network={}",
                s.peer.as_deref().unwrap_or("<none>"),
                s.authority.as_deref().unwrap_or("<none>"),
                s.status.as_u16(),
                s.headers
                    .get("x-forwarded-network")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-"),
            );
        }
        printed = printed.max(seen.len());
        if tick % 2 == 1 {
            match read_certs(certs) {
                Ok(now) if now != files => {
                    files = now;
                    match server_config(certs) {
                        Ok(config) => {
                            dest.set_config(config);
                            eprintln!("[{name}] certificates reloaded from {}", certs.display());
                        }
                        Err(e) => eprintln!(
                            "[{name}] certificates not reloaded ({e}); still serving the previous ones"
                        ),
                    }
                }
                Ok(_) => {}
                Err(e) => eprintln!("[{name}] certificates not reloaded ({e})"),
            }
        }
    }
    Ok(())
}

fn read_certs(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    ["cert-chain.pem", "key.pem", "root-cert.pem"]
        .iter()
        .map(|f| {
            std::fs::read(dir.join(f)).with_context(|| format!("reading {}", dir.join(f).display()))
        })
        .collect()
}

/// The TLS config of the identity in `certs`.
fn server_config(certs: &Path) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    let id = Identity::load_dir(certs).with_context(|| format!("loading {}", certs.display()))?;
    Ok(testkit::hbone::tls::server_config(&id)?)
}

/// The app behind the destination: one reply line `<name>: <line>` per line, FIN after the
/// client's.
async fn named_app(listener: tokio::net::TcpListener, name: String) {
    while let Ok((tcp, _)) = listener.accept().await {
        let name = name.clone();
        tokio::spawn(async move {
            let mut conn = BufReader::new(tcp);
            let mut line = String::new();
            for _ in 0..10_000 {
                line.clear();
                match tokio::time::timeout(Duration::from_secs(60), conn.read_line(&mut line)).await
                {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => break,
                }
                let reply = format!("{name}: {}\n", line.trim_end());
                if conn.write_all(reply.as_bytes()).await.is_err() {
                    return;
                }
            }
            let _ = conn.shutdown().await;
        });
    }
}
