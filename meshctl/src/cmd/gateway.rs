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
use crate::mesh::gateway_changes::changes;
use crate::mesh::namespace;
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
    /// The cluster ID istiod knows this cluster by (Istio's `clusterName`): every endpoint's
    /// `topology.istio.io/cluster` for subsets, and sent to istiod with the gateway's
    /// certificate request. Default: install takes the name `join` recorded on the
    /// namespace; otherwise Istio's default, Kubernetes.
    #[arg(long)]
    cluster_id: Option<String>,
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
                m.spec.cluster_id.as_deref().unwrap_or(DEFAULT_CLUSTER_ID),
                &m.spec.gw,
                p,
            )
            .map_err(as_usage)?;
            print!("{}", kc::render(&objs, m.out.output)?);
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::Install(i) => {
            let ns = &i.spec.ns.namespace;
            let build = |cluster_id: &str| {
                let p = i.spec.gw.protocols(false);
                objects(ns, &i.spec.network, cluster_id, &i.spec.gw, p)
            };
            // The flags alone, before anything is read (usage errors).
            let given = i.spec.cluster_id.as_deref();
            build(given.unwrap_or(DEFAULT_CLUSTER_ID)).map_err(as_usage)?;
            let file = KubeconfigFile::load(i.kube.kubeconfig.as_deref())?;
            let ctx = file.context_name(i.kube.context.as_deref())?;
            file.require_contexts(std::slice::from_ref(&ctx))?;
            let dry_run = i.mutate.dry_run;
            // What install applies: a service account someone else made is left out.
            let objs = kc::block_on(async {
                let c = file.connect(&ctx).await?;
                let cluster_id = match given {
                    Some(id) => id.to_string(),
                    // The name join recorded, so that an install over a joined cluster's
                    // gateway keeps its cluster ID (with Istio's default, istiod would review
                    // the gateway's certificate requests against a cluster it does not know).
                    None => namespace::recorded(&c, ns)
                        .await?
                        .0
                        .unwrap_or_else(|| DEFAULT_CLUSTER_ID.to_string()),
                };
                let objs = build(&cluster_id)?;
                // Objects being deleted (a LoadBalancer Service whose load balancer is being
                // torn down): waited for, else an apply to them would be lost.
                let found = terminating::find(&c, ns, &objs).await?;
                DeletionWait::new(i.deletion.deletion_wait)
                    .wait_gone(&c, &found, dry_run)
                    .await?;
                check_ip_family_policy(&c, ns, &objs)
                    .await
                    .map_err(|e| anyhow!("{e:#}. Nothing was changed"))?;
                let in_place = in_place(&c, ns).await?;
                // Another installer's gateway is refused before any change.
                let applied = install(&c, ns, &objs, dry_run).await.map_err(|e| {
                    if e.is::<ForeignGateway>() {
                        anyhow!("{e:#}. Nothing was changed")
                    } else {
                        e
                    }
                })?;
                say_changes(&ctx, &in_place, &applied, dry_run);
                Ok(applied)
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

/// The gateway's Deployment, Service and autoscaler as they are now.
async fn in_place(c: &kc::Cluster, ns: &str) -> Result<Vec<serde_json::Value>> {
    let mut out = Vec::new();
    for (av, kind) in [
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ] {
        if let Some(mut o) = kc::get(c, av, kind, Some(ns), GATEWAY_NAME).await? {
            o["kind"] = kind.into();
            out.push(o);
        }
    }
    Ok(out)
}

/// Says on stderr what the install changes in the gateway in place (a flag left out takes
/// its default, also over what a join set), so that no setting is reset silently.
fn say_changes(
    ctx: &str,
    in_place: &[serde_json::Value],
    applied: &[serde_json::Value],
    dry_run: bool,
) {
    let lines = changes(in_place, applied);
    if lines.is_empty() {
        return;
    }
    let verb = if dry_run { "would change" } else { "changed" };
    eprintln!(
        "gateway {GATEWAY_NAME} in context {ctx:?}: this install {verb} what was in place \
         (flags left out take their defaults; pass the ones the gateway was made with to keep \
         them):"
    );
    for l in lines {
        eprintln!("  {l}");
    }
}
