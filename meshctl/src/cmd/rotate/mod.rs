//! `meshctl rotate prepare|activate|finish`: a staged root rotation across clusters.
//!
//! - prepare: a new root (kept in `--dir`, 0700, key 0600); every cluster's root-cert.pem
//!   becomes old + new while the old intermediate keeps signing.
//! - activate: only once every cluster trusts both roots; each gets a new intermediate from
//!   the new root (also kept in `--dir/<context>/`), the bundle still old + new.
//! - finish: only once no workload certificate from the old root can still be valid
//!   (`--workload-lifetime` since the last activation, or `--confirm`); the old root leaves
//!   every bundle.
//!
//! The state is on each cluster's `cacerts` (annotations, `mesh::rotation`), so any machine
//! can resume; every step reads all clusters first, refuses before changing anything, skips
//! clusters already done, and `--dry-run` changes nothing. A `cacerts` it writes (or its
//! namespace) being deleted is waited for (`--deletion-wait`) before anything is written;
//! the step then reads every cluster and decides again. The files in `--dir` are sets
//! (the root's two, each cluster's four): reused whole, written whole, and one found in part
//! is refused, since a key written or kept beside the wrong certificate is a key lost.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::cli::{ClustersArgs, DeletionWaitArg, MutateArgs, NamespaceArg, check_unique};
use crate::cmd::progress::say;
use crate::istio::CACERTS_SECRET;
use crate::kube::{self as kc, Cluster, KubeconfigFile, Secrets};
use crate::mesh::rotation::{BundleTexts, Trust, trust_of};
use crate::mesh::terminating::{self, DeletionWait, Terminating};

mod steps;

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(subcommand)]
    cmd: RotateCmd,
}

#[derive(Debug, Subcommand)]
enum RotateCmd {
    /// Step 1: a new root in --dir; every cluster trusts old + new, the old CA keeps signing.
    Prepare(PrepareArgs),
    /// Step 2 (every cluster prepared): each cluster signs with a new intermediate from the new root.
    Activate(ActivateArgs),
    /// Step 3 (every cluster activated, old workload certificates expired): drop the old root.
    Finish(FinishArgs),
}

/// Flags of every step.
#[derive(Debug, Args)]
struct Common {
    #[command(flatten)]
    clusters: ClustersArgs,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    mutate: MutateArgs,
    /// Print ca-key.pem in the --dry-run output instead of a placeholder.
    #[arg(long)]
    show_secrets: bool,
    #[command(flatten)]
    deletion: DeletionWaitArg,
}

#[derive(Debug, Args)]
struct PrepareArgs {
    #[command(flatten)]
    common: Common,
    /// Where the new root (root-cert.pem, root-key.pem) and the new intermediates are kept
    /// between the steps (created 0700; keys 0600). Reused when it already holds the root
    /// (both files, the key its certificate's); half of one there is refused.
    #[arg(long)]
    dir: PathBuf,
    /// Subject CN of the new root.
    #[arg(long, default_value = pki::DEFAULT_ROOT_CN)]
    common_name: String,
    /// Validity of the new root in days (1 to 36500, i.e. at most 100 years).
    #[arg(long, default_value_t = pki::DEFAULT_ROOT_DAYS, value_parser = crate::cmd::certs::days_parser())]
    root_days: u32,
}

#[derive(Debug, Args)]
struct ActivateArgs {
    #[command(flatten)]
    common: Common,
    /// The directory `rotate prepare` wrote the new root to.
    #[arg(long)]
    dir: PathBuf,
}

#[derive(Debug, Args)]
struct FinishArgs {
    #[command(flatten)]
    common: Common,
    /// The longest validity of a workload certificate (Istio's default is 24h): finish waits
    /// this long after the last cluster was activated. 1m to 87600h (10 years); to finish
    /// without waiting, pass --confirm instead.
    #[arg(long, default_value = "24h", value_parser = parse_workload_lifetime)]
    workload_lifetime: Duration,
    /// Finish now: you confirmed that no workload still holds a certificate from the old root.
    #[arg(long)]
    confirm: bool,
}

/// The longest `--workload-lifetime`: 10 years (`certs workload --hours` allows no more).
const MAX_WORKLOAD_LIFETIME: Duration =
    Duration::from_secs(crate::cmd::certs::MAX_HOURS as u64 * 3600);

/// `--workload-lifetime`: a duration from 1m to 10 years. Zero would skip the wait that
/// `--confirm` guards, so it is refused rather than read as "finish now".
fn parse_workload_lifetime(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < Duration::from_secs(60) {
        return Err(format!(
            "{s:?} is shorter than 1m: give the longest lifetime of a workload certificate (Istio's \
             default is 24h); to finish without waiting, pass --confirm once no workload holds a \
             certificate from the old root"
        ));
    }
    if d > MAX_WORKLOAD_LIFETIME {
        return Err(format!(
            "{s:?} is longer than 87600h (10 years), the longest workload certificate lifetime \
             meshctl accepts"
        ));
    }
    Ok(d)
}

/// One cluster as a step sees it.
pub(super) struct Current {
    pub ctx: String,
    pub client: Cluster,
    pub files: BundleTexts,
    pub trust: Trust,
    /// The `cacerts` read: a step's write is conditional on it (409 if another writer came
    /// between), so a rotation never overwrites what it did not decide from.
    pub resource_version: Option<String>,
    /// The `cacerts` read is being deleted (`mesh::terminating`): waited for before a step
    /// writes it.
    pub deleting: Option<Terminating>,
}

pub fn run(a: RotateArgs) -> Result<ExitCode> {
    let common = match &a.cmd {
        RotateCmd::Prepare(p) => &p.common,
        RotateCmd::Activate(p) => &p.common,
        RotateCmd::Finish(p) => &p.common,
    };
    check_unique(&common.clusters.contexts)?;
    let file = KubeconfigFile::load(common.clusters.kubeconfig.as_deref())?;
    file.require_contexts(&common.clusters.contexts)?;
    let step = match &a.cmd {
        RotateCmd::Prepare(_) => "rotate prepare",
        RotateCmd::Activate(_) => "rotate activate",
        RotateCmd::Finish(_) => "rotate finish",
    };
    kc::block_on(async {
        let mut deletion = DeletionWait::new(common.deletion.deletion_wait);
        // A cacerts the step writes (or its namespace) being deleted is waited for before
        // anything is written; after a wait every cluster is read and the step decided again.
        // Bounded: by the deadline of `--deletion-wait`, and in count.
        let mut last = String::new();
        for _ in 0..terminating::ROUNDS {
            let clusters = read_all(&file, common).await?;
            let plan = match &a.cmd {
                RotateCmd::Prepare(p) => steps::prepare(p, &clusters)?,
                RotateCmd::Activate(p) => steps::activate(p, &clusters)?,
                RotateCmd::Finish(p) => steps::finish(p, &clusters)?,
            };
            match wait_for_deletions(common, &clusters, &plan, &mut deletion).await? {
                None => return apply(common, &clusters, plan).await,
                Some(ctx) => last = ctx,
            }
        }
        bail!("{}", terminating::deleted_again(&last, step))
    })
}

/// Waits for each `cacerts` the plan writes (or its namespace) that is being deleted, one
/// cluster after the other within the one `--deletion-wait`; the context of the last
/// cluster it waited for, if any. Fails, with nothing changed, when one is still there once
/// the wait ends.
async fn wait_for_deletions(
    common: &Common,
    clusters: &[Current],
    plan: &Plan,
    deletion: &mut DeletionWait,
) -> Result<Option<String>> {
    let ns = common.ns.namespace.as_str();
    let mut waited = None;
    for (i, _) in &plan.secrets {
        let c = &clusters[*i];
        // The namespace alone when it is being deleted (best effort: a credential confined
        // to it may not read it), else the cacerts as read.
        let found: Vec<Terminating> =
            match terminating::namespace_being_deleted(&c.client, ns).await {
                Some(t) => vec![t],
                None => c.deleting.iter().cloned().collect(),
            };
        if deletion
            .wait_gone(&c.client, &found, common.mutate.dry_run)
            .await
            .map_err(|e| anyhow!("{e:#} (in the clusters or on disk)"))?
        {
            waited = Some(c.ctx.clone());
        }
    }
    Ok(waited)
}

/// Connects to every cluster and reads its `cacerts`; any failure refuses the step.
async fn read_all(file: &KubeconfigFile, common: &Common) -> Result<Vec<Current>> {
    let ns = common.ns.namespace.as_str();
    let mut out = Vec::new();
    for ctx in &common.clusters.contexts {
        let client = file.connect(ctx).await.map_err(|e| {
            anyhow!(
                "{e:#}\nnothing was changed: every cluster must be reachable for a rotation step"
            )
        })?;
        let secret = kc::get(&client, "v1", "Secret", Some(ns), CACERTS_SECRET)
            .await
            .map_err(|e| anyhow!("{e:#}\nnothing was changed; re-run the same command to retry"))?;
        let Some(secret) = secret else {
            bail!(
                "context {ctx:?} has no Secret {ns}/{CACERTS_SECRET}: a rotation starts from \
                 clusters that share a root (meshctl cacerts apply); nothing was changed"
            );
        };
        let (files, annotations) = secret_files(&secret);
        let trust = trust_of(&files, &annotations);
        let resource_version = secret["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string);
        let stub = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": CACERTS_SECRET, "namespace": ns}});
        let deleting = terminating::of(&stub, &secret);
        out.push(Current {
            ctx: ctx.clone(),
            client,
            files,
            trust,
            resource_version,
            deleting,
        });
    }
    Ok(out)
}

/// The four bundle files and the annotations of a `cacerts` Secret.
fn secret_files(secret: &Value) -> (BundleTexts, BTreeMap<String, String>) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut files = BundleTexts::new();
    for name in [pki::CA_CERT, pki::CA_KEY, pki::ROOT_CERT, pki::CERT_CHAIN] {
        if let Some(text) = secret["data"][name]
            .as_str()
            .and_then(|s| b64.decode(s).ok())
            .and_then(|b| String::from_utf8(b).ok())
        {
            files.insert(name, text);
        }
    }
    let annotations = secret["metadata"]["annotations"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    (files, annotations)
}

/// What a step decided: the Secret per cluster that changes (by index), files to write
/// first, and what to tell the user afterwards.
pub(super) struct Plan {
    pub secrets: Vec<(usize, Value)>,
    pub files: Vec<pki::OutFile>,
    pub done: String,
    pub next: String,
    /// What a step stopped between clusters means for traffic meanwhile.
    pub half_done: String,
}

async fn apply(common: &Common, clusters: &[Current], plan: Plan) -> Result<ExitCode> {
    // Every file planned is new: a step reuses a set of files already in --dir whole (the
    // steps load and check it) and plans none of it, and refuses a partial set, so no file
    // is ever skipped on its own here. One that appeared since is refused below.
    // Refused the same way in a dry run (a symlinked --dir, a file in its place).
    pki::files::check_writable(&plan.files, false)
        .map_err(|e| anyhow!("{e}\nnothing was changed (in the clusters or on disk)"))?;
    if common.mutate.dry_run {
        let objs: Vec<(String, Vec<Value>)> = plan
            .secrets
            .iter()
            .map(|(i, s)| (clusters[*i].ctx.clone(), vec![s.clone()]))
            .collect();
        let rendered = kc::render_plan_with(
            &objs,
            common.mutate.output(),
            Secrets::from_flag(common.show_secrets),
        )?;
        let _ = write!(std::io::stdout().lock(), "{rendered}");
        for f in &plan.files {
            let note = if f.secret { " (private key, 0600)" } else { "" };
            say(format_args!(
                "# dry run: would write {}{note}",
                f.path.display()
            ));
        }
        if plan.secrets.is_empty() {
            say(format_args!(
                "# dry run: every cluster is already at this step"
            ));
        }
        return Ok(ExitCode::SUCCESS);
    }
    pki::write_files(&plan.files, false)?;
    for f in &plan.files {
        let note = if f.secret { " (private key, 0600)" } else { "" };
        say(format_args!("wrote {}{note}", f.path.display()));
    }
    let mut done = Vec::new();
    for (i, secret) in &plan.secrets {
        let c = &clusters[*i];
        let mut secret = secret.clone();
        if let Some(rv) = &c.resource_version {
            secret["metadata"]["resourceVersion"] = Value::String(rv.clone());
        }
        if let Err(e) = kc::apply(&c.client, &secret).await {
            let not_done: Vec<String> = plan.secrets[done.len()..]
                .iter()
                .map(|(i, _)| {
                    let c = &clusters[*i];
                    format!("{} (still {})", c.ctx, c.trust.stage.name())
                })
                .collect();
            bail!(
                "{e:#}\ninterrupted: updated {} of {} cluster(s) that needed it ({}); re-run the \
                 same command to resume (clusters already done are skipped)\nnot updated: {}\n{}",
                done.len(),
                plan.secrets.len(),
                if done.is_empty() {
                    "none".to_string()
                } else {
                    done.join(", ")
                },
                not_done.join(", "),
                if done.is_empty() {
                    "nothing was changed in the clusters"
                } else {
                    plan.half_done.as_str()
                }
            );
        }
        say(format_args!("cacerts updated in context {:?}", c.ctx));
        done.push(c.ctx.clone());
    }
    for c in clusters {
        if !plan.secrets.iter().any(|(i, _)| clusters[*i].ctx == c.ctx) {
            say(format_args!(
                "context {:?} is already {}",
                c.ctx,
                c.trust.stage.name()
            ));
        }
    }
    say(format_args!("{}", plan.done));
    say(format_args!("Next: {}", plan.next));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_lifetime_bounds() {
        for bad in ["0s", "0", "59s", "9999999999h", "87601h", "soon"] {
            assert!(parse_workload_lifetime(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_workload_lifetime("24h").unwrap(),
            Duration::from_secs(86400)
        );
        assert_eq!(
            parse_workload_lifetime("87600h").unwrap(),
            MAX_WORKLOAD_LIFETIME
        );
    }
}
