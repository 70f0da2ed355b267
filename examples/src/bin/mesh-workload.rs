#![forbid(unsafe_code)]
//! `mesh-workload`: a demo mTLS workload (server or client) with Istio-style identities.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use examples::cert_reload;
use examples::workload::{self, ServeOptions};
use testkit::mtls::Identity;

#[derive(Parser)]
#[command(
    name = "mesh-workload",
    version,
    about = "Demo mTLS workload: serve or call with SPIFFE identities"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve mTLS, requiring client certificates chained to root-cert.pem.
    Serve {
        /// Directory with cert-chain.pem, key.pem, root-cert.pem (from `meshctl certs workload`).
        #[arg(long)]
        certs: PathBuf,
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Name used in replies.
        #[arg(long)]
        name: String,
        /// Admit only these caller SPIFFE ids (repeatable); default any chained to the root.
        #[arg(long = "allow-peer")]
        allow_peers: Vec<String>,
        /// How often (milliseconds) the certificate files are checked for a change; a changed
        /// set that loads serves new connections (a root rotation); 0 never checks.
        #[arg(long, default_value_t = 1000)]
        cert_poll_ms: u64,
    },
    /// Call a workload (directly or through an east-west gateway) and check its identity.
    Call {
        #[arg(long)]
        certs: PathBuf,
        /// Address to connect to: the workload, or the remote gateway's 15443.
        #[arg(long)]
        connect: String,
        /// SNI routing key, e.g. outbound_.80_._.catalog.istioinaction.svc.cluster.local
        #[arg(long)]
        sni: String,
        /// Required server SPIFFE id.
        #[arg(long)]
        expect_peer: Option<String>,
        #[arg(long, default_value = "GET /items")]
        request: String,
    },
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Serve {
                certs,
                listen,
                name,
                allow_peers,
                cert_poll_ms,
            } => {
                let loaded = cert_reload::load(&certs)
                    .map_err(|e| anyhow::anyhow!("loading the certificates: {e}"))?;
                let (tx, configs) = tokio::sync::watch::channel(loaded.config.clone());
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                eprintln!("[{name}] serving mTLS on {}", listener.local_addr()?);
                if cert_poll_ms > 0 {
                    let tag = name.clone();
                    tokio::spawn(cert_reload::watch(
                        certs,
                        loaded,
                        Duration::from_millis(cert_poll_ms),
                        tx,
                        move |msg| eprintln!("[{tag}] {msg}"),
                    ));
                }
                workload::serve_configs(
                    listener,
                    configs,
                    ServeOptions { name, allow_peers },
                    Arc::new(AtomicUsize::new(0)),
                )
                .await?;
                Ok(())
            }
            Cmd::Call {
                certs,
                connect,
                sni,
                expect_peer,
                request,
            } => {
                let id = Identity::load_dir(&certs)
                    .with_context(|| format!("loading {}", certs.display()))?;
                let addr = tokio::net::lookup_host(&connect)
                    .await
                    .with_context(|| format!("resolving {connect}"))?
                    .next()
                    .with_context(|| format!("{connect} resolved to no address"))?;
                let r = workload::call(&id, addr, &sni, expect_peer.as_deref(), &request)
                    .await
                    .map_err(|e| anyhow::anyhow!("call to {connect} (SNI {sni}) failed: {e}"))?;
                println!("server identity: {}", r.server_id);
                println!("alpn: {}", r.alpn.as_deref().unwrap_or("-"));
                println!("reply: {}", r.reply);
                if r.reply.starts_with("denied:") {
                    anyhow::bail!("the server denied this caller");
                }
                Ok(())
            }
        }
    })
}
