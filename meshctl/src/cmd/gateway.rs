//! `meshctl gateway manifest|install`: print the east-west gateway's objects, or apply them
//! to a cluster (the objects themselves are built in `mesh::gateway`). `install` reports on
//! stderr; with `-o yaml|json` its stdout is the applied objects (a YAML stream or one JSON
//! `List`).

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};

use crate::cli::{
    DeletionWaitArg, GatewayFlags, KubeArgs, MutateArgs, NamespaceArg, OutputArg, as_usage,
};
use crate::istio::GATEWAY_NAME;
use crate::kube::{self as kc, KubeconfigFile};
use crate::mesh::gateway::{DEFAULT_CLUSTER_ID, check_ip_family_policy, install, objects};
use crate::mesh::origin::ForeignGateway;
use crate::mesh::terminating::{self, DeletionWait};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(subcommand)]
    cmd: GatewayCmd,
}

#[derive(Debug, Subcommand)]
enum GatewayCmd {
    /// Print the gateway's objects.
    Manifest(ManifestArgs),
    /// Apply the gateway's objects to a cluster (server-side apply).
    Install(InstallArgs),
}

/// What the objects depend on (both subcommands).
#[derive(Debug, Args)]
struct GatewaySpec {
    /// This cluster's network (label value), e.g. west-network.
    #[arg(long)]
    network: String,
    /// The cluster ID istiod knows this cluster by (Istio's `clusterName`; its default is
    /// Kubernetes): every endpoint's `topology.istio.io/cluster` for subsets, and sent to
    /// istiod with the gateway's certificate request.
    #[arg(long, default_value = DEFAULT_CLUSTER_ID)]
    cluster_id: String,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    gw: GatewayFlags,
}

#[derive(Debug, Args)]
struct ManifestArgs {
    #[command(flatten)]
    spec: GatewaySpec,
    #[command(flatten)]
    out: OutputArg,
}

#[derive(Debug, Args)]
struct InstallArgs {
    #[command(flatten)]
    spec: GatewaySpec,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    mutate: MutateArgs,
    #[command(flatten)]
    deletion: DeletionWaitArg,
}

pub fn run(a: GatewayArgs) -> Result<ExitCode> {
    match a.cmd {
        GatewayCmd::Manifest(m) => {
            let p = m.spec.gw.protocols(false);
            let objs = objects(
                &m.spec.ns.namespace,
                &m.spec.network,
                &m.spec.cluster_id,
                &m.spec.gw,
                p,
            )
            .map_err(as_usage)?;
            print!("{}", kc::render(&objs, m.out.output)?);
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::Install(i) => {
            let ns = &i.spec.ns.namespace;
            let objs = objects(
                ns,
                &i.spec.network,
                &i.spec.cluster_id,
                &i.spec.gw,
                i.spec.gw.protocols(false),
            )
            .map_err(as_usage)?;
            let file = KubeconfigFile::load(i.kube.kubeconfig.as_deref())?;
            let ctx = file.context_name(i.kube.context.as_deref())?;
            file.require_contexts(std::slice::from_ref(&ctx))?;
            let dry_run = i.mutate.dry_run;
            // What install applies: a service account someone else made is left out.
            let objs = kc::block_on(async {
                let c = file.connect(&ctx).await?;
                // Objects being deleted (a LoadBalancer Service whose load balancer is being
                // torn down): waited for, else an apply to them would be lost.
                let found = terminating::find(&c, ns, &objs).await?;
                DeletionWait::new(i.deletion.deletion_wait)
                    .wait_gone(&c, &found, dry_run)
                    .await?;
                check_ip_family_policy(&c, ns, &objs)
                    .await
                    .map_err(|e| anyhow!("{e:#}. Nothing was changed"))?;
                // Another installer's gateway is refused before any change.
                install(&c, ns, &objs, dry_run).await.map_err(|e| {
                    if e.is::<ForeignGateway>() {
                        anyhow!("{e:#}. Nothing was changed")
                    } else {
                        e
                    }
                })
            })?;
            if dry_run {
                print!("{}", kc::render_plan(&[(ctx, objs)], i.mutate.output())?);
                return Ok(ExitCode::SUCCESS);
            }
            // Progress on stderr; stdout has the applied objects when -o asks for them.
            eprintln!(
                "gateway {GATEWAY_NAME} applied in context {ctx:?} ({} objects)",
                objs.len()
            );
            if let Some(output) = i.mutate.output_asked() {
                print!("{}", kc::render(&objs, output)?);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
