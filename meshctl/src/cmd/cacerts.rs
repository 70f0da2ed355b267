//! `meshctl cacerts DIR [-n NS] --show-secrets`: prints the `cacerts` Secret that istiod reads;
//! `meshctl cacerts apply DIR`: creates or updates it in a cluster (`mesh::cacerts` builds
//! and applies it). A real `apply` says what it did on stdout; with `-o yaml|json` it says so
//! on stderr and stdout is the applied Secret, its key redacted unless `--show-secrets`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use serde_json::Value;

use crate::cli::{CacertsFlags, DeletionWaitArg, KubeArgs, MutateArgs, NamespaceArg};
use crate::cmd::progress::{Progress, say};
use crate::istio::CACERTS_SECRET;
use crate::kube::{self as kc, KubeconfigFile, Output, Secrets};
use crate::mesh::cacerts::{apply_secret, restart_hint, secret_object, verified_data};
use crate::mesh::terminating::{self, DeletionWait};

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
    #[command(flatten)]
    deletion: DeletionWaitArg,
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
    say(format_args!(
        "{}",
        serde_yaml::to_string(&secret)?.trim_end_matches('\n')
    ));
    Ok(ExitCode::SUCCESS)
}

fn apply_cmd(a: ApplyArgs) -> Result<ExitCode> {
    let ns = &a.ns.namespace;
    let secret = secret_object(&a.dir, ns)?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let changed =
        kc::block_on(async {
            let c = file.connect(&ctx).await?;
            // The namespace or cacerts being deleted: waited for before the first write (an
            // apply to it would be lost with it; its root is compared after).
            let found = terminating::find(&c, ns, std::slice::from_ref(&secret)).await?;
            DeletionWait::new(a.deletion.deletion_wait)
                .wait_gone(&c, &found, a.mutate.dry_run)
                .await?;
            if a.mutate.dry_run {
                return apply_secret(&c, &secret, a.cacerts.force, true).await;
            }
            // Whether a failure below may have left a new namespace behind.
            let existed = kc::get(&c, "v1", "Namespace", None, ns).await?.is_some();
            apply_secret(&c, &secret, a.cacerts.force, false)
            .await
            .map_err(|e| {
                // A refusal (another root) is said as it is: re-running would meet it again.
                if e.downcast_ref::<crate::mesh::cacerts::RootRefused>().is_some() {
                    return e;
                }
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
    let asked = a.mutate.output_asked();
    report_applied(changed, &ctx, ns, Progress::for_output(asked));
    if let Some(output) = asked {
        print_applied(&secret, output, a.cacerts.secrets())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What `cacerts apply` (and `certs renew --apply`) did in one cluster (on `to`), and the
/// restart istiod needs when the Secret changed (stderr). A closed stdout is ignored: the
/// work is done by then.
pub(crate) fn report_applied(changed: bool, ctx: &str, ns: &str, to: Progress) {
    if changed {
        to.say(format_args!(
            "cacerts applied in context {ctx:?} (namespace {ns})"
        ));
        crate::cmd::progress::tell(format_args!("{}", restart_hint(ns)));
    } else {
        to.say(format_args!("cacerts in context {ctx:?} is up to date"));
    }
}

/// The applied `cacerts` Secret as the one document `-o` asks for, on stdout: its private
/// key redacted as a dry run redacts it, unless `secrets` is [`Secrets::Show`]
/// (`--show-secrets`).
pub(crate) fn print_applied(secret: &Value, output: Output, secrets: Secrets) -> Result<()> {
    let text = match (secrets, output) {
        (Secrets::Redact, _) => kc::render_one(secret, output)?,
        (Secrets::Show, Output::Yaml) => serde_yaml::to_string(secret)?,
        (Secrets::Show, Output::Json) => format!("{}\n", serde_json::to_string_pretty(secret)?),
    };
    say(format_args!("{}", text.trim_end_matches('\n')));
    Ok(())
}
