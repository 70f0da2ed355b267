//! `meshctl check`: is the mesh really joined? A checklist per cluster, per ordered pair
//! (the secret for cluster A stored in cluster B) and for the mesh as a whole, with a hint
//! per failure and a non-zero exit on any failure.
//!
//! Gather, then decide: `gather` makes the API calls and returns plain `facts`; `rules`
//! judges them with pure functions into a `report`, which is printed at the end. This
//! function only sequences the two (a pair's live checks need the stored kubeconfig that
//! the rules accepted, so gathering and judging alternate per pair).

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Args;

use crate::cli::{ClustersArgs, NamespaceArg, OutputArg, check_unique, lookup, parse_mapping};
use crate::kube::{self as kc, Cluster, KubeconfigFile, Output};
use facts::Seen;
use report::Report;
use rules::mesh::PairPlan;
use rules::{ambient, cluster, expiry, mesh, pair, rotation};

mod facts;
mod gather;
mod report;
mod rules;

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    clusters: ClustersArgs,
    /// CONTEXT=NAME (default: the name `join` recorded on the namespace, else the context).
    #[arg(long = "cluster-name")]
    cluster_names: Vec<String>,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Accept loopback API server addresses in remote secrets (single-host tests only).
    #[arg(long)]
    allow_loopback_server: bool,
    /// Warn about remote credentials, intermediates and roots that expire within this.
    #[arg(long, value_parser = humantime::parse_duration, default_value = expiry::DEFAULT_WARN_BEFORE)]
    warn_before: Duration,
    #[command(flatten)]
    out: OutputArg,
}

pub fn run(a: CheckArgs) -> Result<ExitCode> {
    let contexts = &a.clusters.contexts;
    check_unique(contexts)?;
    let names = parse_mapping("cluster-name", &a.cluster_names, contexts)?;
    crate::cli::check_cluster_names(&names)?;
    let file = KubeconfigFile::load(a.clusters.kubeconfig.as_deref())?;
    file.require_contexts(contexts)?;
    let r = kc::block_on(check(&a, &names, &file))?;
    match a.out.output {
        Output::Json => println!("{}", report::render_json(&r.items)?),
        Output::Yaml => print!("{}", report::render_text(&r.items)),
    }
    Ok(if r.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn check(a: &CheckArgs, names: &[(String, String)], file: &KubeconfigFile) -> Result<Report> {
    let ns = a.ns.namespace.as_str();
    let mut r = Report::default();
    let mut seen = Vec::new();
    let mut clients: Vec<Option<Cluster>> = Vec::new();
    let mut trusts = Vec::new();
    let mut ambient_facts = Vec::new();
    for ctx in &a.clusters.contexts {
        let name_flag = lookup(names, ctx);
        match file.connect(ctx).await {
            Ok(c) => {
                let facts = gather::cluster(&c, ns).await?;
                trusts.push((
                    ctx.as_str(),
                    facts.cacerts.as_ref().map(rotation::trust_of_secret),
                ));
                let s = cluster::read_cluster(&mut r, &facts, &c.server, name_flag);
                let ids = (ctx.as_str(), s.name.as_str());
                let scope = format!("cluster {ctx}");
                let (now, warn) = (unix_now(), a.warn_before);
                expiry::cacerts(&mut r, &scope, facts.cacerts.as_ref(), ids, now, warn);
                ambient_facts.push((seen.len(), gather::ambient(&c, ns).await?));
                seen.push(s);
                clients.push(Some(c));
            }
            Err(e) => {
                let why = gather::unread(&e);
                seen.push(cluster::unread_cluster(&mut r, ctx, name_flag, &why));
                clients.push(None);
            }
        }
    }
    mesh::mesh_checks(&mut r, &seen);
    let trusts: Vec<_> = trusts
        .into_iter()
        .map(|(context, trust)| rotation::ClusterTrust { context, trust })
        .collect();
    rotation::rotation_checks(&mut r, &trusts);
    let readable: Vec<_> = ambient_facts.iter().map(|(i, f)| (&seen[*i], f)).collect();
    ambient::checks(&mut r, &readable);
    for source in &seen {
        for (target, tc) in seen.iter().zip(&clients) {
            if source.context == target.context {
                continue;
            }
            let skip_live = match (mesh::pair_plan(source, target), tc) {
                (PairPlan::All, Some(tc)) => (None, tc),
                (PairPlan::TargetOnly(why), Some(tc)) => (Some(why), tc),
                (PairPlan::Skip(why), _) => {
                    r.skip(
                        &pair::pair_scope(source, target),
                        "remote secret present",
                        why,
                    );
                    continue;
                }
                (_, None) => {
                    let why = format!("cluster {} is unreachable", target.context);
                    r.skip(
                        &pair::pair_scope(source, target),
                        "remote secret present",
                        why,
                    );
                    continue;
                }
            };
            check_pair(&mut r, a, (source, target), skip_live).await?;
        }
    }
    Ok(r)
}

/// The checks of one stored remote secret. With a reason in `skip_live`, those that need to
/// reach the source cluster are skipped.
async fn check_pair(
    r: &mut Report,
    a: &CheckArgs,
    (source, target): (&Seen, &Seen),
    (skip_live, tc): (Option<String>, &Cluster),
) -> Result<()> {
    let ns = a.ns.namespace.as_str();
    let secrets = gather::remote_secrets(tc, ns).await?;
    let stored: Vec<_> = secrets.iter().filter_map(gather::stored_remote).collect();
    let now = unix_now();
    let pair = (source, target);
    let Some(kubeconfig) = pair::stored_secret(r, pair, ns, &stored, a.allow_loopback_server)
    else {
        return Ok(());
    };
    let scope = pair::pair_scope(source, target);
    credential_expiry(r, a, (source, target), &secrets, now);
    if let Some(why) = skip_live {
        pair::live_skipped(r, &scope, &why);
        return Ok(());
    }
    let rejoin = pair::rejoin_hint(source, target);
    match gather::try_kubeconfig(kubeconfig.clone()).await {
        Ok((client, detail)) => {
            let missing = gather::missing_reader_permissions(&client)
                .await
                .map_err(|e| format!("{e:#}"));
            pair::live(r, &scope, Ok(&detail), Some(missing), &rejoin);
        }
        Err((failure, detail)) => pair::live(r, &scope, Err((failure, &detail)), None, &rejoin),
    }
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// "token expiry" against `--warn-before`: the credential stored for `source` in `target`.
fn credential_expiry(
    r: &mut Report,
    a: &CheckArgs,
    (source, target): (&Seen, &Seen),
    secrets: &[k8s_openapi::api::core::v1::Secret],
    now: u64,
) {
    let scope = pair::pair_scope(source, target);
    let refresh = format!(
        "meshctl credentials refresh --context {} --context {}",
        source.context, target.context
    );
    let rejoin = pair::rejoin_hint(source, target);
    let hints = (refresh.as_str(), rejoin.as_str());
    let stored = (secrets, source.name.as_str());
    expiry::stored_credential(r, &scope, stored, hints, now, a.warn_before);
}
