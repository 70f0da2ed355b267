//! `meshctl credentials cronjob`: the manifests that run `credentials refresh` unattended in
//! a management cluster: a ServiceAccount that mounts no API token (the job talks to the
//! mesh clusters through the kubeconfig Secret, not to its own cluster) and a CronJob that
//! mounts that Secret read-only. The Secret itself is never printed: the user creates it
//! from the kubeconfig file (the header comment says how), so no credential passes through
//! meshctl's output.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use serde_json::{Value, json};

use crate::cli::{OutputArg, as_usage, check_unique, parse_mapping, parse_ttl};
use crate::istio::{DEFAULT_NAMESPACE, DEFAULT_READER_SA, managed_labels};
use crate::kube::{self as kc, Output};

/// Where the kubeconfig Secret is mounted in the job's pod.
const MOUNT_DIR: &str = "/etc/meshctl";

#[derive(Debug, Args)]
pub struct CronjobArgs {
    /// A mesh cluster's context in the kubeconfig Secret (repeat for each).
    #[arg(long = "context", required = true)]
    contexts: Vec<String>,
    /// CONTEXT=NAME, passed on to `refresh` (see `credentials refresh --help`).
    #[arg(long = "cluster-name")]
    cluster_names: Vec<String>,
    /// istiod's namespace in the mesh clusters.
    #[arg(long = "istio-namespace", default_value = DEFAULT_NAMESPACE)]
    istio_namespace: String,
    /// The job's namespace in the management cluster.
    #[arg(long = "job-namespace", default_value = "meshctl-system")]
    job_namespace: String,
    /// A container image with the meshctl binary on its PATH.
    #[arg(long)]
    image: String,
    /// Cron schedule as Kubernetes reads it (five fields, @hourly, @every 30m). Refused when
    /// it waits longer between runs than --threshold (else a third of --token-ttl), warned
    /// of past half of it; run at least every sixth of the tokens' lifetime.
    #[arg(long, default_value = "17 * * * *")]
    schedule: String,
    /// The Secret (in the job's namespace) whose key `kubeconfig` holds every context.
    #[arg(long = "kubeconfig-secret", default_value = "meshctl-kubeconfigs")]
    kubeconfig_secret: String,
    /// Passed on to `refresh`.
    #[arg(long, value_parser = humantime::parse_duration)]
    threshold: Option<Duration>,
    /// Passed on to `refresh`.
    #[arg(long, value_parser = parse_ttl)]
    token_ttl: Option<Duration>,
    /// Passed on to `refresh`: the reader account (in --istio-namespace) the job issues
    /// tokens for, as given to `join` (default: join's default reader).
    #[arg(long)]
    service_account: Option<String>,
    #[command(flatten)]
    out: OutputArg,
}

pub fn run(a: CronjobArgs) -> Result<ExitCode> {
    check_flags(&a).map_err(as_usage)?;
    let objects = manifests(&a);
    if a.out.output == Output::Yaml {
        print!("{}", header(&a));
    }
    print!("{}", kc::render(&objects, a.out.output)?);
    Ok(ExitCode::SUCCESS)
}

/// Every flag, before anything is printed (usage errors).
fn check_flags(a: &CronjobArgs) -> Result<()> {
    check_unique(&a.contexts)?;
    crate::cli::check_cluster_names(&parse_mapping(
        "cluster-name",
        &a.cluster_names,
        &a.contexts,
    )?)?;
    for (flag, v) in [
        ("--job-namespace", &a.job_namespace),
        ("--kubeconfig-secret", &a.kubeconfig_secret),
        ("--istio-namespace", &a.istio_namespace),
    ] {
        pki::validate_dns_label(v).map_err(|e| anyhow!("{flag} {e}"))?;
    }
    if let Some(sa) = &a.service_account {
        pki::validate_dns_subdomain(sa)
            .map_err(|e| anyhow!("--service-account {e} (it names a ServiceAccount)"))?;
    }
    let schedule = super::schedule::parse(&a.schedule)
        .map_err(|e| anyhow!("--schedule {:?}: {e}", a.schedule))?;
    check_schedule(a, super::schedule::longest_gap(&schedule))?;
    if a.image.trim().is_empty() {
        return Err(anyhow!(
            "--image: name an image that has meshctl on its PATH"
        ));
    }
    Ok(())
}

/// A schedule that leaves a token time to expire between two runs is refused: `refresh`
/// renews a token only once its remaining lifetime is under the threshold (`--threshold`,
/// else a third of `--token-ttl`), so the longest wait between runs must be shorter. Without
/// either flag the tokens' lifetime is not known here (the job keeps each token's own), and
/// only a schedule that hardly ever runs is refused. A wait over half the threshold is
/// warned of: one failed run would then let a token expire.
fn check_schedule(a: &CronjobArgs, gap: Option<Duration>) -> Result<()> {
    let Some(gap) = gap else {
        return Err(anyhow!(
            "--schedule {:?} runs less than twice in nine years: the tokens would expire; \
             run at least every sixth of their lifetime, e.g. \"17 * * * *\"",
            a.schedule
        ));
    };
    let threshold = match (a.threshold, a.token_ttl) {
        (Some(t), _) => Some((t, "--threshold")),
        (None, Some(ttl)) => Some((
            ttl / 3,
            "a third of --token-ttl, refresh's default threshold",
        )),
        (None, None) => None,
    };
    let Some((threshold, from)) = threshold else {
        return Ok(());
    };
    let (fmt, want) = (
        |d: Duration| humantime::format_duration(d).to_string(),
        threshold / 2,
    );
    if gap >= threshold {
        return Err(anyhow!(
            "--schedule {:?} waits up to {} between runs, but refresh renews a token only in \
             its last {} ({from}): a token could expire before the next run. Run at least every \
             {} (half the threshold, so one failed run is survived), or raise --threshold",
            a.schedule,
            fmt(gap),
            fmt(threshold),
            fmt(want)
        ));
    }
    if gap > want {
        crate::cmd::progress::tell(format_args!(
            "warning: --schedule {:?} waits up to {} between runs and refresh renews a token \
             only in its last {} ({from}): one failed run would let a token expire; run at \
             least every {}",
            a.schedule,
            fmt(gap),
            fmt(threshold),
            fmt(want)
        ));
    }
    Ok(())
}

/// The command the job runs.
fn refresh_args(a: &CronjobArgs) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "meshctl".into(),
        "credentials".into(),
        "refresh".into(),
        "--kubeconfig".into(),
        format!("{MOUNT_DIR}/kubeconfig"),
        "-n".into(),
        a.istio_namespace.clone(),
        "-o".into(),
        "json".into(),
    ];
    for c in &a.contexts {
        args.extend(["--context".into(), c.clone()]);
    }
    for n in &a.cluster_names {
        args.extend(["--cluster-name".into(), n.clone()]);
    }
    if let Some(t) = a.threshold {
        args.extend([
            "--threshold".into(),
            humantime::format_duration(t).to_string(),
        ]);
    }
    if let Some(t) = a.token_ttl {
        args.extend([
            "--token-ttl".into(),
            humantime::format_duration(t).to_string(),
        ]);
    }
    if let Some(sa) = &a.service_account {
        args.extend(["--service-account".into(), sa.clone()]);
    }
    args
}

fn manifests(a: &CronjobArgs) -> Vec<Value> {
    let (ns, name) = (a.job_namespace.as_str(), "meshctl-credentials-refresh");
    let labels = managed_labels();
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "automountServiceAccountToken": false}),
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "schedule": a.schedule,
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 3,
            "failedJobsHistoryLimit": 3,
            "jobTemplate": {"spec": {
                "backoffLimit": 2,
                "activeDeadlineSeconds": 600,
                "template": {"metadata": {"labels": labels}, "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": false,
                    "restartPolicy": "Never",
                    // fsGroup: the mounted kubeconfig is this group's (group-readable), else
                    // root's and unreadable to the job's user.
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532,
                        "runAsGroup": 65532, "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "refresh",
                        "image": a.image,
                        "command": refresh_args(a),
                        "securityContext": {"allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [{"name": "kubeconfig", "mountPath": MOUNT_DIR,
                            "readOnly": true}],
                    }],
                    "volumes": [{"name": "kubeconfig", "secret": {
                        "secretName": a.kubeconfig_secret, "defaultMode": 0o440,
                        "items": [{"key": "kubeconfig", "path": "kubeconfig"}]}}],
                }},
            }},
        }}),
    ]
}

/// What to do besides applying: create the Secret, and what its users may do.
fn header(a: &CronjobArgs) -> String {
    let (ns, secret, ins) = (&a.job_namespace, &a.kubeconfig_secret, &a.istio_namespace);
    let sa = a.service_account.as_deref().unwrap_or(DEFAULT_READER_SA);
    format!(
        "# Runs `meshctl credentials refresh` on schedule {schedule:?} in namespace {ns}.\n\
         # 1. kubectl create namespace {ns}\n\
         # 2. Store the kubeconfig holding the contexts {contexts} (never printed here):\n\
         #    kubectl -n {ns} create secret generic {secret} --from-file=kubeconfig=<file>\n\
         # 3. Apply this output. In every mesh cluster, each context's user needs: get on\n\
         #    namespace {ins}; list and patch on secrets in {ins}; list on deployments in {ins};\n\
         #    create on serviceaccounts/token with resourceNames [{sa}] in {ins} (the\n\
         #    reader: the job issues tokens for no other account, whatever a token claims).\n\
         # 4. Follow a run: kubectl -n {ns} logs job/<job> (JSON; no tokens are printed).\n",
        schedule = a.schedule,
        contexts = a.contexts.join(", "),
    )
}
