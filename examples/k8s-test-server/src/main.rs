#![forbid(unsafe_code)]
//! `k8s-test-server`: runs one or more in-memory Kubernetes API TEST SERVERS on loopback and
//! prints their URLs and kubeconfig paths. For process tests and manual use; not a cluster.

use clap::Parser;
use k8s_test_server::{Options, TestApiServer};
use std::path::PathBuf;
use std::time::Duration;

/// TEST SERVER: in-memory Kubernetes API servers on 127.0.0.1 for tests (one per cluster name).
#[derive(Parser, Debug)]
#[command(name = "k8s-test-server", version, about)]
struct Args {
    /// Simulated cluster names; one TEST SERVER each.
    #[arg(long = "cluster", default_values = ["test"])]
    clusters: Vec<String>,
    /// Directory to write `<cluster>.kubeconfig` files into (printed otherwise).
    #[arg(long, env = "K8S_TEST_SERVER_KUBECONFIG_DIR")]
    kubeconfig_dir: Option<PathBuf>,
    /// Serve Istio's DestinationRule, PeerAuthentication and Gateway CRDs from the start.
    #[arg(long)]
    istio_crds: bool,
    /// `gitVersion` reported by /version.
    #[arg(long, default_value = "v1.31.0")]
    k8s_version: String,
    /// Accept loopback addresses in EndpointSlices and Endpoints (a real API server refuses
    /// them): for tests whose backends listen on 127.0.0.x.
    #[arg(long)]
    allow_loopback_endpoint_addresses: bool,
    /// Put `service.kubernetes.io/load-balancer-cleanup` on LoadBalancer Services, as a
    /// cloud controller does: deleting one then waits until a client removes the finalizer.
    #[arg(long)]
    load_balancer_cleanup_finalizer: bool,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    exit_after_secs: Option<u64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber_init();
    let args = Args::parse();
    let mut servers = Vec::new();
    for name in &args.clusters {
        let mut opts = Options::new(name);
        opts.git_version = args.k8s_version.clone();
        opts.destination_rule_crd = args.istio_crds;
        opts.store.allow_loopback_endpoint_addresses = args.allow_loopback_endpoint_addresses;
        opts.store.load_balancer_cleanup_finalizer = args.load_balancer_cleanup_finalizer;
        let s = TestApiServer::start_with(opts).await?;
        if args.istio_crds {
            s.install_istio_gateway_crd();
            s.install_peer_authentication_crd();
        }
        let kubeconfig = s.kubeconfig(name);
        match &args.kubeconfig_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                let path = dir.join(format!("{name}.kubeconfig"));
                std::fs::write(&path, kubeconfig)?;
                println!(
                    "k8s-test-server (TEST SERVER) cluster={name} url={} kubeconfig={}",
                    s.url(),
                    path.display()
                );
            }
            None => {
                println!(
                    "k8s-test-server (TEST SERVER) cluster={name} url={}",
                    s.url()
                );
                println!("---\n# kubeconfig for {name}\n{kubeconfig}");
            }
        }
        servers.push(s);
    }
    println!("ready");
    match args.exit_after_secs {
        Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
        None => tokio::signal::ctrl_c().await?,
    }
    for s in servers {
        s.stop().await;
    }
    Ok(())
}

/// Logs go to stderr, filtered by RUST_LOG (default: info); stdout stays machine-readable.
fn tracing_subscriber_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
