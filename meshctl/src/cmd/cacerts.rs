//! `meshctl cacerts DIR [-n NS] --show-secrets`: prints the `cacerts` Secret that istiod reads;
//! `meshctl cacerts apply DIR`: creates or updates it in a cluster (`mesh::cacerts` builds
//! and applies it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::cli::{CacertsFlags, KubeArgs, MutateArgs, NamespaceArg};
use crate::istio::CACERTS_SECRET;
use crate::kube::{self as kc, KubeconfigFile};
use crate::mesh::cacerts::{RESTART_HINT, apply_secret, secret_object, verified_data};

/// `meshctl cacerts DIR` prints; `meshctl cacerts apply DIR` applies.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CacertsArgs {
    #[command(subcommand)]
    cmd: Option<CacertsCmd>,
    /// Cluster bundle directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    #[arg(required = true)]
    dir: Option<PathBuf>,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Required: the printed Secret holds the CA private key (`ca-key.pem`).
    #[arg(long)]
    show_secrets: bool,
}

#[derive(Debug, Subcommand)]
enum CacertsCmd {
    /// Create or update the `cacerts` Secret in a cluster (and its namespace if missing).
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Cluster bundle directory, e.g. certs/west-cluster.
    dir: PathBuf,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    cacerts: CacertsFlags,
    #[command(flatten)]
    mutate: MutateArgs,
}

/// The printed form: typed, so the keys come out in kubectl's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Secret {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    #[serde(rename = "type")]
    type_: &'static str,
    data: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Metadata {
    name: &'static str,
    namespace: String,
}

pub fn run(a: CacertsArgs) -> Result<ExitCode> {
    match a.cmd {
        Some(CacertsCmd::Apply(args)) => apply_cmd(args),
        None => print_cmd(
            a.dir.expect("clap requires DIR"),
            a.ns.namespace,
            a.show_secrets,
        ),
    }
}

fn print_cmd(dir: PathBuf, namespace: String, show_secrets: bool) -> Result<ExitCode> {
    // A redacted Secret piped into `kubectl apply` would break istiod, so refuse instead.
    if !show_secrets {
        bail!(
            "`meshctl cacerts DIR` prints the CA private key (ca-key.pem); pass --show-secrets to print it \
             (for example to pipe into kubectl apply), or apply it without printing: \
             meshctl cacerts apply {} --context CTX",
            dir.display()
        );
    }
    let data = verified_data(&dir, &namespace)?;
    let secret = Secret {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata {
            name: CACERTS_SECRET,
            namespace,
        },
        type_: "Opaque",
        data,
    };
    print!("{}", serde_yaml::to_string(&secret)?);
    Ok(ExitCode::SUCCESS)
}

fn apply_cmd(a: ApplyArgs) -> Result<ExitCode> {
    let ns = &a.ns.namespace;
    let secret = secret_object(&a.dir, ns)?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let changed = kc::block_on(async {
        let c = file.connect(&ctx).await?;
        if a.mutate.dry_run {
            return apply_secret(&c, &secret, a.cacerts.force, true).await;
        }
        // Whether a failure below may have left a new namespace behind.
        let existed = kc::get(&c, "v1", "Namespace", None, ns).await?.is_some();
        apply_secret(&c, &secret, a.cacerts.force, false)
            .await
            .map_err(|e| {
                anyhow!(
                    "{e:#}\n{CACERTS_SECRET} in context {ctx:?} was not updated{}: istiod keeps \
                     its current CA; re-run the same command to resume",
                    if existed {
                        String::new()
                    } else {
                        format!(" (namespace {ns} may have been created)")
                    }
                )
            })
    })
    .map_err(|e| anyhow!("{e:#}"))?;
    if a.mutate.dry_run {
        print!(
            "{}",
            kc::render_plan_with(
                &[(ctx, vec![secret])],
                a.mutate.output(),
                a.cacerts.secrets()
            )?
        );
        return Ok(ExitCode::SUCCESS);
    }
    report_applied(changed, &ctx, ns);
    Ok(ExitCode::SUCCESS)
}

/// What `cacerts apply` (and `certs renew --apply`) did in one cluster, and the restart
/// istiod needs when the Secret changed.
pub(crate) fn report_applied(changed: bool, ctx: &str, ns: &str) {
    if changed {
        println!("cacerts applied in context {ctx:?} (namespace {ns})");
        eprintln!("{RESTART_HINT}");
    } else {
        println!("cacerts in context {ctx:?} is up to date");
    }
}
