//! `meshctl credentials status|refresh|cronjob`: the remote secrets' credentials. `status`
//! lists every stored kubeconfig in every given cluster (which cluster and server it reads,
//! how it authenticates, when that expires; never the token). `refresh` re-issues the
//! TokenRequest tokens that are due (`refresh.rs`); `cronjob` prints the manifests that run
//! `refresh` unattended (`cronjob.rs`). Reading a credential is `mesh::credentials`.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;

use crate::cli::{ClustersArgs, NamespaceArg, check_unique, lookup, parse_mapping};
use crate::istio::MULTICLUSTER_LABEL;
use crate::kube::{self as kc, Cluster, KubeconfigFile};
use crate::mesh::credentials::{self as cred, Method, Stored};

mod cronjob;
mod istiod;
mod refresh;
mod schedule;
mod table;

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    command: CredentialsCommand,
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Every remote secret in every given cluster: the cluster it reads, how, and its expiry.
    Status(StatusArgs),
    /// Re-issue the TokenRequest tokens whose remaining lifetime is under the threshold.
    Refresh(refresh::RefreshArgs),
    /// Print a CronJob (and its ServiceAccount) that runs `refresh` unattended.
    Cronjob(cronjob::CronjobArgs),
}

/// The clusters to read, how their IDs are known, istiod's namespace and `-o`.
#[derive(Debug, Args)]
pub struct Targets {
    #[command(flatten)]
    clusters: ClustersArgs,
    /// CONTEXT=NAME: the cluster ID of a context (default: the name `join` recorded on
    /// istiod's namespace, else the context). Remote secrets are matched to contexts by it.
    #[arg(long = "cluster-name")]
    cluster_names: Vec<String>,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Output: a table, or yaml/json for machines.
    #[arg(long, short = 'o', value_enum, default_value = "table")]
    output: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    targets: Targets,
}

pub fn run(a: CredentialsArgs) -> Result<ExitCode> {
    match a.command {
        CredentialsCommand::Status(s) => status(s),
        CredentialsCommand::Refresh(r) => refresh::run(r),
        CredentialsCommand::Cronjob(c) => cronjob::run(c),
    }
}

impl Targets {
    /// The flags alone, before anything is read: contexts once each, `--cluster-name`
    /// mappings of given contexts (any ID: istioctl's need not be DNS labels) (usage
    /// errors; `-n` is checked when parsed).
    pub fn check(&self) -> Result<()> {
        check_unique(&self.clusters.contexts)?;
        parse_mapping("cluster-name", &self.cluster_names, &self.clusters.contexts)?;
        Ok(())
    }
}

/// One connected cluster and its cluster ID.
pub struct Peer {
    pub cluster: Cluster,
    pub id: String,
}

/// Connects to every context; a cluster that cannot be read is reported, not fatal.
async fn connect_all(t: &Targets, file: &KubeconfigFile) -> Result<(Vec<Peer>, Vec<String>)> {
    let contexts = &t.clusters.contexts;
    let names = parse_mapping("cluster-name", &t.cluster_names, contexts)?;
    let (mut peers, mut errors) = (Vec::new(), Vec::new());
    for ctx in contexts {
        match file.connect(ctx).await {
            Ok(c) => {
                let id = match lookup(&names, ctx) {
                    Some(n) => n.to_string(),
                    None => crate::mesh::namespace::recorded(&c, &t.ns.namespace)
                        .await?
                        .0
                        .unwrap_or_else(|| ctx.clone()),
                };
                peers.push(Peer { cluster: c, id });
            }
            Err(e) => errors.push(format!("context {ctx}: {e:#}")),
        }
    }
    Ok((peers, errors))
}

/// The kubeconfigs stored in `c`'s remote secrets, and the keys that could not be read.
async fn stored_in(c: &Cluster, ns: &str) -> Result<Vec<Result<Stored, String>>> {
    let selector = format!("{MULTICLUSTER_LABEL}=true");
    let secrets: Vec<Secret> = kc::list_as(c, "v1", "Secret", Some(ns), &selector).await?;
    Ok(secrets.iter().flat_map(cred::read_secret).collect())
}

/// One row of `status`: never the token.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The context whose istiod uses this secret.
    pub stored_in: String,
    pub secret: String,
    /// The cluster ID (the data key) and the context with that ID, if one was given.
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads_context: Option<String>,
    pub server: String,
    pub credential: Method,
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    pub remaining: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn row(peer: &str, s: &Stored, peers: &[Peer], now: u64) -> Row {
    Row {
        stored_in: peer.to_string(),
        secret: format!("{}/{}", s.namespace, s.secret),
        cluster: s.cluster.clone(),
        reads_context: peers
            .iter()
            .find(|p| p.id == s.cluster)
            .map(|p| p.cluster.context.clone()),
        server: s.server.clone(),
        credential: s.credential.method.clone(),
        method: s.credential.method.describe(),
        expires: s.credential.expires.map(cred::rfc3339),
        remaining: cred::remaining(&s.credential, now),
        error: match &s.credential.method {
            Method::InvalidExpiry { exp, .. } => Some(format!(
                "the token's exp claim {exp} is not a Unix time up to 9999-12-31, so its expiry \
                 cannot be read; replace the credential (meshctl join --token-ttl ...)"
            )),
            _ => None,
        },
    }
}

fn status(a: StatusArgs) -> Result<ExitCode> {
    let t = &a.targets;
    t.check()?;
    let file = KubeconfigFile::load(t.clusters.kubeconfig.as_deref())?;
    file.require_contexts(&t.clusters.contexts)?;
    let ns = t.ns.namespace.clone();
    let (rows, errors) = kc::block_on(async {
        let (peers, mut errors) = connect_all(t, &file).await?;
        let now = cred::unix_now();
        let mut rows = Vec::new();
        for p in &peers {
            for s in stored_in(&p.cluster, &ns).await? {
                match s {
                    Ok(s) => rows.push(row(&p.cluster.context, &s, &peers, now)),
                    Err(e) => errors.push(format!("context {}: {e}", p.cluster.context)),
                }
            }
        }
        Ok((rows, errors))
    })?;
    match t.output {
        // "None found" would be wrong when some were found but not read.
        Format::Table if rows.is_empty() && !errors.is_empty() => println!(
            "no readable remote secrets: {} could not be read (below)",
            errors.len()
        ),
        Format::Table => print!("{}", table::status(&rows)),
        Format::Yaml => print!(
            "{}",
            serde_yaml::to_string(&serde_json::json!({"credentials": rows, "errors": errors}))?
        ),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"credentials": rows, "errors": errors})
            )?
        ),
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Ok(if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
