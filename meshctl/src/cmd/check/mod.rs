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
use k8s_openapi::api::core::v1::Secret;

use crate::cli::{ClustersArgs, NamespaceArg, check_unique, lookup, parse_mapping};
use crate::istio::DEFAULT_READER_SA;
use crate::kube::{self as kc, Cluster, KubeconfigFile};
use facts::Seen;
use hints::Invocation;
pub(crate) use hints::shell_word;
use report::Report;
use rules::mesh::PairPlan;
use rules::{ambient, cluster, expiry, mesh, pair, rotation};

mod facts;
mod gather;
mod hints;
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
    /// Output: the checklist as text, or the same as one YAML or JSON document.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    output: CheckOutput,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum CheckOutput {
    Text,
    Yaml,
    Json,
}

pub fn run(a: CheckArgs) -> Result<ExitCode> {
    let contexts = &a.clusters.contexts;
    check_unique(contexts)?;
    let names = parse_mapping("cluster-name", &a.cluster_names, contexts)?;
    crate::cli::check_cluster_names(&names)?;
    let file = KubeconfigFile::load(a.clusters.kubeconfig.as_deref())?;
    file.require_contexts(contexts)?;
    let r = kc::block_on(check(&a, &names, &file))?;
    match a.output {
        CheckOutput::Json => println!("{}", report::render_json(&r.items)?),
        CheckOutput::Yaml => print!("{}", report::render_yaml(&r.items)?),
        CheckOutput::Text => print!("{}", report::render_text(&r.items)),
    }
    Ok(if r.failed() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn check(a: &CheckArgs, names: &[(String, String)], file: &KubeconfigFile) -> Result<Report> {
    let ns = a.ns.namespace.as_str();
    let inv = invocation(a);
    let mut r = Report::default();
    let mut seen = Vec::new();
    let mut clients: Vec<Option<Cluster>> = Vec::new();
    let mut trusts = Vec::new();
    let mut ambient_facts = Vec::new();
    // Which cluster each context reaches, and the contexts that reach one already seen.
    let (mut ids, mut same) = (Vec::new(), Vec::new());
    for ctx in &a.clusters.contexts {
        let name_flag = lookup(names, ctx);
        match file.connect(ctx).await {
            Ok(c) => {
                let id = kc::Identity::of(&c).await;
                if let Some((old, why)) = ids
                    .iter()
                    .find_map(|o: &kc::Identity| Some((o, o.same_cluster(&id)?)))
                {
                    same.push((old.context.clone(), ctx.clone(), why));
                }
                let facts = match gather::cluster(&c, ns).await {
                    Ok(f) => f,
                    Err(e) => {
                        let why = format!("{e:#}");
                        let s =
                            cluster::objects_unread(&mut r, (&c.server, ctx), name_flag, &why, ns);
                        seen.push(Seen {
                            uid: id.uid.clone(),
                            ..s
                        });
                        ids.push(id);
                        clients.push(None);
                        trusts.push((ctx.as_str(), None));
                        continue;
                    }
                };
                trusts.push((
                    ctx.as_str(),
                    facts.cacerts.as_ref().map(rotation::trust_of_secret),
                ));
                let s = cluster::read_cluster(&mut r, &facts, &c.server, name_flag, &inv);
                let names = (ctx.as_str(), s.name.as_str());
                let scope = format!("cluster {ctx}");
                let (now, warn) = (unix_now(), a.warn_before);
                let cacerts = (facts.cacerts.as_ref(), &inv);
                expiry::cacerts(&mut r, &scope, cacerts, names, now, warn);
                match gather::ambient(&c, ns).await {
                    Ok(f) => ambient_facts.push((seen.len(), f)),
                    Err(e) => r.fail(
                        &scope,
                        "ambient objects readable",
                        format!("{e:#}"),
                        cluster::READ_RIGHTS_HINT,
                    ),
                }
                seen.push(Seen {
                    uid: id.uid.clone(),
                    ..s
                });
                ids.push(id);
                clients.push(Some(c));
            }
            Err(e) => {
                let why = gather::unread(&e);
                seen.push(cluster::unread_cluster(&mut r, ctx, name_flag, &why));
                clients.push(None);
                // Its roots are unknown: trust between the clusters cannot be judged.
                trusts.push((ctx.as_str(), None));
            }
        }
    }
    mesh::one_cluster_per_context(&mut r, &same);
    mesh::mesh_checks(&mut r, &seen, &inv);
    let trusts: Vec<_> = trusts
        .into_iter()
        .map(|(context, trust)| rotation::ClusterTrust { context, trust })
        .collect();
    rotation::rotation_checks(&mut r, &trusts, &inv);
    let readable: Vec<_> = ambient_facts.iter().map(|(i, f)| (&seen[*i], f)).collect();
    ambient::checks(&mut r, &readable, &inv);
    // Each readable cluster's remote secrets, listed once for its pairs and the check of
    // secrets for unknown clusters.
    let mut listed: Vec<Option<Listed>> = Vec::new();
    for c in &clients {
        listed.push(match c {
            Some(c) => Some(
                gather::remote_secrets(c, ns)
                    .await
                    .map_err(|e| format!("{e:#}")),
            ),
            None => None,
        });
    }
    for (source, sc) in seen.iter().zip(&clients) {
        for (target, tc) in seen.iter().zip(&listed) {
            if source.context == target.context {
                continue;
            }
            if let Some((_, _, why)) = same.iter().find(|(a, b, _)| {
                [a, b] == [&source.context, &target.context]
                    || [b, a] == [&source.context, &target.context]
            }) {
                let why = format!(
                    "contexts {} and {} reach the same cluster: {why}",
                    source.context, target.context
                );
                r.skip(
                    &pair::pair_scope(source, target),
                    "remote secret present",
                    why,
                );
                continue;
            }
            let (skip_live, tc) = match (mesh::pair_plan(source, target), tc) {
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
            let live = (skip_live, (sc.as_ref(), tc));
            check_pair(&mut r, a, &inv, (source, target), live).await?;
        }
    }
    // Remote secrets for clusters none of the contexts is. Only when every cluster's ID is
    // known: an unread cluster's would be a guess.
    if seen.iter().all(|s| s.name_known) {
        let known: Vec<&str> = seen.iter().map(|s| s.name.as_str()).collect();
        for (target, tc) in seen.iter().zip(&listed) {
            let Some(tc) = tc else { continue };
            if let Ok(secrets) = tc {
                let stored: Vec<_> = secrets.iter().flat_map(gather::stored_remotes).collect();
                pair::unknown_remotes(&mut r, target, ns, &stored, &known);
            }
        }
    }
    Ok(r)
}

/// A cluster's remote secrets as listed, or why they could not be.
type Listed = Result<Vec<Secret>, String>;

/// The flags `check`'s hints repeat (`-n`, `--kubeconfig`).
fn invocation(a: &CheckArgs) -> Invocation {
    Invocation {
        ns: a.ns.namespace.clone(),
        kubeconfig: a
            .clusters
            .kubeconfig
            .as_ref()
            .map(|k| k.display().to_string()),
    }
}

/// The checks of one stored remote secret. With a reason in `skip_live`, those that need to
/// reach the source cluster are skipped. `sc` is the source cluster's client (when it could be
/// read), for the reader binding of the stored token's account; `tc` the target's remote
/// secrets as listed (or why they could not be).
async fn check_pair(
    r: &mut Report,
    a: &CheckArgs,
    inv: &Invocation,
    (source, target): (&Seen, &Seen),
    (skip_live, (sc, tc)): (Option<String>, (Option<&Cluster>, &Listed)),
) -> Result<()> {
    let ns = a.ns.namespace.as_str();
    let secrets = match tc {
        Ok(s) => s,
        Err(e) => {
            let scope = pair::pair_scope(source, target);
            r.fail(
                &scope,
                "remote secret present",
                format!("listing Secrets in {ns}: {e}"),
                cluster::READ_RIGHTS_HINT,
            );
            return Ok(());
        }
    };
    let stored: Vec<_> = secrets.iter().flat_map(gather::stored_remotes).collect();
    let now = unix_now();
    let pair = (source, target);
    // The stored token's account, and whether it is one of meshctl's readers (a custom
    // --service-account is one when the source cluster has its reader binding).
    let credential = pair::stored_credential(secrets, &source.name);
    let account = credential.as_ref().and_then(pair::account_of);
    let binding = match (&account, sc) {
        (Some((account_ns, sa)), Some(sc)) if account_ns == ns && sa != DEFAULT_READER_SA => {
            gather::reader_binding(sc, ns, sa).await.ok()
        }
        _ => None,
    };
    let reader = account
        .as_ref()
        .and_then(|acc| pair::is_reader(acc, ns, binding));
    let reissue = pair::reissue_of(credential.as_ref(), reader);
    let recreate = pair::recreate_command(pair, inv, &reissue);
    let rejoin = pair::rejoin_hint(&recreate);
    let allow = a.allow_loopback_server;
    let Some(kubeconfig) = pair::stored_secret(r, pair, ns, &stored, allow, &rejoin) else {
        return Ok(());
    };
    let scope = pair::pair_scope(source, target);
    credential_expiry(r, a, inv, (source, target), secrets, now, &rejoin);
    pair::reader_account(r, &scope, ns, credential.as_ref(), binding, &recreate);
    if let Some(why) = skip_live {
        pair::live_skipped(r, &scope, &why);
        return Ok(());
    }
    let hints = (rejoin.as_str(), recreate.as_str());
    match gather::try_kubeconfig(kubeconfig.clone()).await {
        Ok((client, detail)) => {
            let missing = gather::missing_reader_permissions(&client)
                .await
                .map_err(|e| format!("{e:#}"));
            pair::live(r, &scope, Ok(&detail), Some(missing), hints);
            let uid = gather::kube_system_uid(&client).await;
            pair::reaches(r, &scope, (source, target), uid, &recreate);
        }
        Err((failure, detail)) => {
            pair::live(r, &scope, Err((failure, &detail)), None, hints);
            r.skip(
                &scope,
                "reaches the cluster it is for",
                "the stored kubeconfig does not work",
            );
        }
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
    inv: &Invocation,
    (source, target): (&Seen, &Seen),
    secrets: &[k8s_openapi::api::core::v1::Secret],
    now: u64,
    rejoin: &str,
) {
    let scope = pair::pair_scope(source, target);
    let refresh = format!(
        "meshctl credentials refresh{} --context {} --context {}",
        inv.meshctl(),
        hints::shell_word(&source.context),
        hints::shell_word(&target.context)
    );
    let hints = (refresh.as_str(), rejoin);
    let stored = (secrets, source.name.as_str());
    expiry::stored_credential(r, &scope, stored, hints, now, a.warn_before);
}
