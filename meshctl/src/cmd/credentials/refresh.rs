//! `meshctl credentials refresh`: for every remote secret stored in the given clusters,
//! re-issue its TokenRequest token through the TokenRequest API of the cluster it reads
//! (same lifetime unless `--token-ttl`, at most a year: `cred::MAX_DERIVED_TTL_SECS`) and
//! rewrite that one key of the Secret, when the remaining lifetime is under the threshold.
//! Everything else is left alone, with the reason. Idempotent: a fresh token is above the
//! threshold on the next run. Then it says, per cluster, whether its istiod picks the new
//! token up by itself.
//!
//! Before any token is minted, a remote secret due for a refresh that is being deleted (or
//! whose namespace is) is waited for, up to `--deletion-wait` in all (`mesh::terminating`):
//! a write to it would be lost when it goes. One still there when the wait ends fails its
//! line with nothing requested or written; the other secrets are refreshed (unattended runs
//! keep the rest of the mesh's tokens alive).
//!
//! The new token is always for the reader the operator names: `--service-account` (join's
//! default reader unless given) in istiod's namespace `-n`, never for the account the stored
//! token claims. Its claims are unverified (anyone who may write Secrets in that namespace
//! sets them) and only say when it is due; a stored token claiming another account is
//! refused, and that key is left unchanged (`cred::check_account`).

use std::collections::HashMap;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use base64::Engine as _;
use clap::Args;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use super::istiod::{IstiodNote, istiod_note};
use super::{Format, Peer, Targets, connect_all, stored_in, table};
use crate::cli::{DeletionWaitArg, parse_ttl, usage};
use crate::istio::DEFAULT_READER_SA;
use crate::kube::{self as kc, Cluster, KubeconfigFile};
use crate::mesh::credentials::{self as cred, Decision, Stored};
use crate::mesh::reader::request_token;
use crate::mesh::terminating::{self, DeletionWait, Terminating};

#[derive(Debug, Args)]
pub struct RefreshArgs {
    #[command(flatten)]
    targets: Targets,
    /// Refresh a token whose remaining lifetime is under this (e.g. 24h). Default: a third
    /// of the token's lifetime, so a job that runs every sixth of it refreshes in time.
    #[arg(long, value_parser = humantime::parse_duration)]
    threshold: Option<Duration>,
    /// Lifetime of the new tokens (10m to 2^32 s). Default: the old token's lifetime, at
    /// most 8760h (365 days): the old token's claims are unverified.
    #[arg(long, value_parser = parse_ttl)]
    token_ttl: Option<Duration>,
    /// Say what would be refreshed and change nothing (no token is minted or printed).
    #[arg(long)]
    dry_run: bool,
    /// The reader service account (in istiod's namespace, -n) that new tokens are issued
    /// for: the one `join`/`create-remote-secret` made (their --service-account). A stored
    /// token claiming any other account is refused, never re-issued.
    #[arg(long, default_value = DEFAULT_READER_SA)]
    service_account: String,
    #[command(flatten)]
    deletion: DeletionWaitArg,
}

/// The flags alone (usage errors): the targets, and `--service-account` an object name.
fn check_flags(a: &RefreshArgs) -> Result<()> {
    a.targets.check()?;
    pki::validate_dns_subdomain(&a.service_account)
        .map_err(|e| usage(format!("--service-account {e} (it names a ServiceAccount)")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Refreshed,
    WouldRefresh,
    LeftAlone,
    Failed,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Refreshed => "refreshed",
            Action::WouldRefresh => "would refresh",
            Action::LeftAlone => "left alone",
            Action::Failed => "FAILED",
        })
    }
}

/// What happened to one stored kubeconfig (never its token).
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub stored_in: String,
    pub secret: String,
    pub cluster: String,
    pub action: Action,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_expiry: Option<String>,
    /// Said on stderr too: the lifetime taken from the old token was capped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

pub fn run(a: RefreshArgs) -> Result<ExitCode> {
    let t = &a.targets;
    check_flags(&a)?;
    let file = KubeconfigFile::load(t.clusters.kubeconfig.as_deref())?;
    file.require_contexts(&t.clusters.contexts)?;
    let (outcomes, notes, errors) = kc::block_on(async {
        let (peers, errors) = connect_all(t, &file).await?;
        let unreached: Vec<&str> = t
            .clusters
            .contexts
            .iter()
            .filter(|c| !peers.iter().any(|p| &p.cluster.context == *c))
            .map(String::as_str)
            .collect();
        let (outcomes, notes) = refresh_all(&a, &peers, &unreached).await?;
        Ok((outcomes, notes, errors))
    })?;
    match t.output {
        Format::Table => {
            print!("{}", table::refresh(&outcomes));
            for n in &notes {
                println!("{}", n.advice);
            }
        }
        Format::Yaml | Format::Json => {
            let doc = json!({"dryRun": a.dry_run, "secrets": outcomes, "istiod": notes, "errors": errors});
            if t.output == Format::Json {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", serde_yaml::to_string(&doc)?);
            }
        }
    }
    for w in outcomes.iter().filter_map(|o| o.warning.as_ref()) {
        eprintln!("warning: {w}");
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    let failed = outcomes.iter().any(|o| o.action == Action::Failed);
    if failed && !a.dry_run {
        let n = outcomes
            .iter()
            .filter(|o| o.action == Action::Failed)
            .count();
        let done = outcomes
            .iter()
            .filter(|o| o.action == Action::Refreshed)
            .count();
        eprintln!(
            "error: {n} remote secret(s) FAILED (see why above), {done} refreshed and stored. A \
             failed secret keeps its old token: once that expires, the istiod of the cluster \
             storing it stops discovering the cluster it reads. Re-run the same command once \
             the cause is fixed: secrets refreshed now are then above the threshold and left \
             alone"
        );
    }
    Ok(if failed || !errors.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `unreached`: the `--context`s that could not be read (their cluster IDs are unknown).
async fn refresh_all(
    a: &RefreshArgs,
    peers: &[Peer],
    unreached: &[&str],
) -> Result<(Vec<Outcome>, Vec<IstiodNote>)> {
    let ns = a.targets.ns.namespace.as_str();
    let now = cred::unix_now();
    let (mut outcomes, mut notes) = (Vec::new(), Vec::new());
    // Every storing cluster is listed, and what is due there and being deleted waited for,
    // before any token is minted anywhere (one deadline for all: `--deletion-wait`).
    let mut deletion = DeletionWait::new(a.deletion.deletion_wait);
    let mut listed = Vec::new();
    for p in peers {
        listed.push(settle(a, p, now, &mut deletion).await);
    }
    // Contexts that did not take a request up in this run: each further request to one would
    // wait out the same retries (up to 20 s each), so their secrets are not tried again.
    let mut down: Vec<String> = Vec::new();
    for (p, listed) in peers.iter().zip(listed) {
        let ctx = &p.cluster.context;
        let mut touched = false;
        // The Secret's latest resourceVersion, so a second key of the same Secret patches
        // on top of the first (each patch is conditional on it).
        let mut versions: HashMap<String, Option<String>> = HashMap::new();
        for s in listed.stored {
            let s = match s {
                Ok(s) => s,
                Err(e) => {
                    outcomes.push(Outcome {
                        stored_in: ctx.clone(),
                        secret: String::new(),
                        cluster: String::new(),
                        action: Action::Failed,
                        reason: e,
                        new_expiry: None,
                        warning: None,
                    });
                    continue;
                }
            };
            let rv = versions
                .entry(s.secret.clone())
                .or_insert_with(|| s.resource_version.clone());
            let mut warning = None;
            let (action, reason, new_expiry) = match cred::decide(&s.credential, now, a.threshold) {
                Decision::Keep(why) => (Action::LeftAlone, why, None),
                Decision::Refresh(why) => {
                    let source = peers
                        .iter()
                        .find(|q| q.id == s.cluster)
                        .map(|q| &q.cluster.context);
                    let skip = [Some(ctx), source]
                        .into_iter()
                        .flatten()
                        .find(|c| down.contains(c));
                    // Checked before anything is asked of any cluster: a token is only ever
                    // issued for the operator's reader, whatever the stored one claims.
                    let account = cred::check_account(&s.credential, ns, &a.service_account);
                    let held = listed.held.iter().find(|(t, _)| {
                        t.kind == "Namespace" || (t.kind == "Secret" && t.name == s.secret)
                    });
                    if let Err(e) = account {
                        (Action::Failed, format!("{why}; {e}"), None)
                    } else if let Some((_, e)) = held {
                        (Action::Failed, format!("{why}; {e}"), None)
                    } else if let Some(c) = skip {
                        let why = format!(
                            "{why}; not tried: context {c:?} did not take a request up earlier \
                             in this run (overloaded or unreachable); re-run once it answers"
                        );
                        (Action::Failed, why, None)
                    } else {
                        let (ttl, capped) = new_ttl(a, &s, ctx);
                        warning = capped;
                        match refresh_one(a, p, peers, unreached, &s, rv, ttl).await {
                            Ok((action, how, exp)) => {
                                touched = true;
                                (action, format!("{why}; {how}"), exp)
                            }
                            Err(f) => {
                                down.extend(f.down);
                                (Action::Failed, format!("{why}; {:#}", f.err), None)
                            }
                        }
                    }
                }
            };
            outcomes.push(Outcome {
                stored_in: ctx.clone(),
                secret: format!("{}/{}", s.namespace, s.secret),
                cluster: s.cluster.clone(),
                action,
                reason,
                new_expiry,
                warning,
            });
        }
        if touched {
            notes.push(match istiod_note(&p.cluster, ns, a.dry_run).await {
                Ok(n) => n,
                Err(e) => IstiodNote {
                    context: ctx.clone(),
                    versions: Vec::new(),
                    restart_needed: None,
                    advice: format!(
                        "{ctx}: cannot read istiod's Deployments ({e:#}); istiod before {} \
                         may keep using the old token until restarted (istio/istio#60612)",
                        cred::rotation_fixed_in()
                    ),
                },
            });
        }
    }
    Ok((outcomes, notes))
}

/// Mints the new token in the cluster the secret reads and rewrites the secret's key.
async fn refresh_one(
    a: &RefreshArgs,
    peer: &Peer,
    peers: &[Peer],
    unreached: &[&str],
    s: &Stored,
    rv: &mut Option<String>,
    ttl: Result<Duration, String>,
) -> Result<(Action, String, Option<String>), Failure> {
    // The operator's reader, never the account the stored (unverified) token claims.
    let (namespace, service_account) = (a.targets.ns.namespace.as_str(), &a.service_account);
    cred::check_account(&s.credential, namespace, service_account).map_err(|e| anyhow!(e))?;
    let source = peers.iter().find(|p| p.id == s.cluster).ok_or_else(|| {
        // "Add its --context" would be wrong advice when it was given but is down.
        if !unreached.is_empty() {
            return anyhow!(
                "cluster {} is none of the clusters meshctl could read, and its token can only \
                 be issued there; context(s) {} could not be reached (see below): if it is one \
                 of them, re-run the same command once it answers; otherwise add its --context \
                 (and --cluster-name CONTEXT={} if the ID differs)",
                s.cluster,
                unreached.join(", "),
                s.cluster
            );
        }
        anyhow!(
            "cluster {} is not one of the --context clusters, and its token can only be \
             issued there: add its --context (and --cluster-name CONTEXT={} if the ID differs)",
            s.cluster,
            s.cluster
        )
    })?;
    let ttl = ttl.map_err(|e| anyhow!(e))?;
    let sa = format!("{namespace}/{service_account}");
    let from = &source.cluster.context;
    if a.dry_run {
        let how = format!(
            "would request a {} token for {sa} from context {from} and rewrite key {} in context {}",
            lifetime(ttl),
            s.cluster,
            peer.cluster.context
        );
        return Ok((Action::WouldRefresh, how, None));
    }
    let token = request_token(&source.cluster, namespace, service_account, ttl)
        .await
        .map_err(|e| Failure {
            down: e.unanswered.then(|| e.context.clone()),
            err: e.into(),
        })?;
    let mut kubeconfig = cred::with_token(&s.kubeconfig, &token)?;
    let mut attempt = 0;
    loop {
        match write_key(&peer.cluster, s, &kubeconfig, rv.as_deref()).await {
            Ok(new_rv) => {
                *rv = new_rv;
                break;
            }
            // The Secret changed since it was read (another refresh, a re-join): read it
            // again and decide again, at most a few times.
            Err(WriteError::Conflict(_)) if attempt < MAX_CONFLICT_RETRIES => {
                attempt += 1;
                let Some(fresh) = reread(&peer.cluster, s).await? else {
                    return Err(anyhow!(
                        "Secret {}/{} in context {:?} no longer holds key {} (changed while \
                         refreshing); the new token expires unused",
                        s.namespace,
                        s.secret,
                        peer.cluster.context,
                        s.cluster
                    )
                    .into());
                };
                // Marked for deletion since it was read: a write would go with it.
                if let Some(t) = &fresh.deleting {
                    return Err(anyhow!(
                        "{} is being deleted since it was read ({}): not written, as the new \
                         token would go with it (it expires unused); re-run once it is gone",
                        t.describe(),
                        if t.finalizers.is_empty() {
                            "no finalizers listed".to_string()
                        } else {
                            format!("finalizers: {}", t.finalizers.join(", "))
                        }
                    )
                    .into());
                }
                if let Decision::Keep(why) =
                    cred::decide(&fresh.credential, cred::unix_now(), a.threshold)
                {
                    let how = format!(
                        "the Secret was changed meanwhile and its token now {why}: left as it \
                         is (the token issued here expires unused)"
                    );
                    return Ok((Action::LeftAlone, how, None));
                }
                // Rewritten meanwhile to claim another account: refused as on the first read
                // (the token issued here is the operator's reader's; it expires unused).
                cred::check_account(&fresh.credential, namespace, service_account).map_err(
                    |e| {
                        anyhow!(
                            "the Secret was changed meanwhile: {e} (the token issued here \
                             expires unused)"
                        )
                    },
                )?;
                *rv = fresh.resource_version.clone();
                kubeconfig = cred::with_token(&fresh.kubeconfig, &token)?;
            }
            Err(WriteError::Unanswered(e)) => {
                return Err(Failure {
                    err: e,
                    down: Some(peer.cluster.context.clone()),
                });
            }
            Err(WriteError::Conflict(e) | WriteError::Other(e)) => return Err(e.into()),
        }
    }
    let expiry = cred::credential_of_token(&token).expires.map(cred::rfc3339);
    let how = format!("new {} token for {sa} from context {from}", lifetime(ttl));
    Ok((Action::Refreshed, how, expiry))
}

/// The new token's lifetime: `--token-ttl` (the operator's choice, bounded when parsed), else
/// the stored token's claimed lifetime within 10m and a year (`cred::derived_ttl`); with a
/// warning naming the cap and `--token-ttl` when the claim was longer.
fn new_ttl(a: &RefreshArgs, s: &Stored, ctx: &str) -> (Result<Duration, String>, Option<String>) {
    if let Some(t) = a.token_ttl {
        return (Ok(t), None);
    }
    let Some(claimed) = s.credential.ttl() else {
        return (
            Err("the token's lifetime is unknown; pass --token-ttl".into()),
            None,
        );
    };
    let (ttl, capped) = cred::derived_ttl(claimed);
    let warning = capped.then(|| {
        format!(
            "context {ctx:?}, Secret {}/{} key {}: the stored token claims a lifetime of {} \
             (exp - iat; unverified, set by whoever last wrote the Secret), longer than the \
             {}h (365 days) refresh takes from an old token: the new token is for {}h. Pass \
             --token-ttl to choose the lifetime",
            s.namespace,
            s.secret,
            s.cluster,
            cred::human(claimed),
            cred::MAX_DERIVED_TTL_SECS / 3600,
            ttl.as_secs() / 3600
        )
    });
    (Ok(ttl), warning)
}

/// A token lifetime as said on a line: the cap in hours (humantime would say "11months
/// 30days 3h 50m 24s" for 365 days), anything else as humantime says it.
fn lifetime(ttl: Duration) -> String {
    if ttl.as_secs() == cred::MAX_DERIVED_TTL_SECS {
        format!("{}h", cred::MAX_DERIVED_TTL_SECS / 3600)
    } else {
        cred::human(ttl.as_secs())
    }
}

/// One storing cluster as listed before any token is minted: its remote secrets, and the
/// objects a refresh would write there that are still being deleted when the wait ended,
/// each with why its lines fail.
struct Listed {
    stored: Vec<Result<Stored, String>>,
    held: Vec<(Terminating, String)>,
}

/// Lists `p`'s remote secrets and waits for those due for a refresh that are being deleted
/// (or their namespace), within `deletion`; after a wait in which one went, lists again.
/// Bounded: by the one deadline, and in count (`terminating::ROUNDS`).
async fn settle(a: &RefreshArgs, p: &Peer, now: u64, deletion: &mut DeletionWait) -> Listed {
    let (c, ns) = (&p.cluster, a.targets.ns.namespace.as_str());
    let limit = humantime::format_duration(deletion.limit());
    let mut held = Vec::new();
    for round in 0..terminating::ROUNDS {
        // One cluster that cannot be listed does not stop the others (unattended runs).
        let stored = match stored_in(c, ns).await {
            Ok(s) => s,
            Err(e) => {
                let e = format!("listing the remote secrets in {ns}: {e:#}");
                return Listed {
                    stored: vec![Err(e)],
                    held,
                };
            }
        };
        let found = being_deleted(a, c, &stored, now).await;
        if found.is_empty() {
            return Listed { stored, held };
        }
        let unchanged = format!(
            "no token was requested and this key is unchanged: a write now would be lost when \
             it goes. Re-run the same command once it is gone, or give it more time with \
             --deletion-wait (now {limit})"
        );
        if round + 1 == terminating::ROUNDS {
            let why = format!(
                "deleted again each of the {} times refresh waited for it; stop whatever \
                 deletes it (an unjoin, a GitOps controller); {unchanged}",
                terminating::ROUNDS
            );
            held = found.into_iter().map(|t| (t, why.clone())).collect();
            return Listed { stored, held };
        }
        let left = match deletion.wait_left(c, &found, a.dry_run).await {
            Ok(left) => left,
            Err(e) => {
                held = found
                    .into_iter()
                    .map(|t| {
                        let why = format!(
                            "{} is being deleted, and reading it again while waiting failed: \
                             {e:#}; {unchanged}",
                            t.describe()
                        );
                        (t, why)
                    })
                    .collect();
                return Listed { stored, held };
            }
        };
        // A dry run (nothing waited for), or nothing went: what is left is final.
        if a.dry_run || left.len() == found.len() {
            held = left
                .into_iter()
                .map(|t| {
                    let why = format!(
                        "{}; {unchanged}",
                        terminating::still_deleting_one(&c.context, &t, deletion.limit())
                    );
                    (t, why)
                })
                .collect();
            return Listed { stored, held };
        }
    }
    unreachable!("the last round returns")
}

/// What a refresh would write in `c` that is being deleted: namespace `ns` alone when it is
/// (its Secrets go with it), else each Secret holding a key due for a refresh (for the
/// operator's reader) that is. Nothing when no key is due; a namespace that cannot be read
/// is taken as not being deleted (the writes meet what stopped the read).
async fn being_deleted(
    a: &RefreshArgs,
    c: &Cluster,
    stored: &[Result<Stored, String>],
    now: u64,
) -> Vec<Terminating> {
    let ns = a.targets.ns.namespace.as_str();
    let due: Vec<&Stored> = stored
        .iter()
        .flatten()
        .filter(|s| {
            matches!(
                cred::decide(&s.credential, now, a.threshold),
                Decision::Refresh(_)
            )
        })
        .filter(|s| cred::check_account(&s.credential, ns, &a.service_account).is_ok())
        .collect();
    if due.is_empty() {
        return Vec::new();
    }
    if let Some(t) = terminating::namespace_being_deleted(c, ns).await {
        return vec![t];
    }
    let mut out: Vec<Terminating> = Vec::new();
    for t in due.iter().filter_map(|s| s.deleting.as_ref()) {
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

/// Re-reads attempts after a 409 on one key (each re-reads the Secret first).
const MAX_CONFLICT_RETRIES: u32 = 3;

enum WriteError {
    /// 409: the Secret changed since its resourceVersion was read.
    Conflict(anyhow::Error),
    /// The API server did not take the write up (`kube::unanswered`).
    Unanswered(anyhow::Error),
    Other(anyhow::Error),
}

/// Why one secret was not refreshed; `down` names a context that did not take a request up,
/// so the rest of the run does not wait on it again.
struct Failure {
    err: anyhow::Error,
    down: Option<String>,
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure { err, down: None }
    }
}

/// The stored kubeconfig under the same key of the same Secret, as it is now.
async fn reread(c: &Cluster, s: &Stored) -> Result<Option<Stored>> {
    let Some(secret) =
        kc::get_as::<Secret>(c, "v1", "Secret", Some(&s.namespace), &s.secret).await?
    else {
        return Ok(None);
    };
    Ok(cred::read_secret(&secret)
        .into_iter()
        .flatten()
        .find(|n| n.cluster == s.cluster))
}

/// Rewrites one key of the remote secret (a merge patch of that key only, conditional on
/// the resourceVersion read); returns the new resourceVersion.
async fn write_key(
    c: &Cluster,
    s: &Stored,
    kubeconfig: &str,
    rv: Option<&str>,
) -> Result<Option<String>, WriteError> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(kubeconfig);
    let mut patch = json!({"data": {s.cluster.as_str(): b64}});
    if let Some(rv) = rv {
        patch["metadata"] = json!({"resourceVersion": rv});
    }
    let api: Api<Secret> = Api::namespaced(c.client.clone(), &s.namespace);
    // Recorded under meshctl's name, as its applies are, not under the User-Agent's.
    let manager = PatchParams {
        field_manager: Some(crate::istio::MANAGER.into()),
        ..PatchParams::default()
    };
    let out = api
        .patch(&s.secret, &manager, &Patch::Merge(&patch))
        .await
        .map_err(|e| {
            let text = anyhow!(
                "updating Secret {}/{} in context {:?}: {} (a new token was issued but not \
                 stored; it expires unused)",
                s.namespace,
                s.secret,
                c.context,
                kc::error_text(&e)
            );
            match e {
                kube::Error::Api(status) if status.code == 409 => WriteError::Conflict(text),
                e if kc::unanswered(&e) => WriteError::Unanswered(text),
                _ => WriteError::Other(text),
            }
        })?;
    Ok(out.metadata.resource_version)
}
