//! `meshctl join` (and, in [`unjoin`], its undoing).
//!
//! join, for every cluster: `cacerts`, the network label, the east-west gateway; then the
//! remote secrets in every direction (N clusters give N×(N−1)). Every input is validated and
//! every cluster is reached before the first change; all writes are server-side applies, so
//! a second run changes nothing. A service account join finds that meshctl did not make
//! (the reader's, the gateway's; the rule is `origin::origin`) is used as it is; another
//! installer's gateway workload under the gateway's names is refused (`origin::writable`).
//!
//! A real run says what it did per cluster on stdout; with `-o yaml|json` it says so on
//! stderr and stdout is one document summing it up (`print_summary`): per context, what was
//! applied (or removed), by kind and name only, so no key or token is ever in it.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::cli::{
    CacertsFlags, ClustersArgs, GatewayFlags, MutateArgs, NamespaceArg, SecretFlags, as_usage,
    check_unique, lookup, parse_mapping,
};
use crate::cmd::progress::{Progress, tell};
use crate::istio::{
    CACERTS_SECRET, GATEWAY_API_V1, GATEWAY_NAME, HBONE_PORT, NETWORK_LABEL, announce_gateway_name,
    remote_secret_name,
};
use crate::kube::{self as kc, Cluster, KubeconfigFile};
use crate::mesh::reader::{self, SecretOptions};
use crate::mesh::remote_secret::{
    is_loopback, loopback_error, printable, remote_secret, token_secret,
};
use crate::mesh::terminating::{self, DeletionWait, Terminating};
use crate::mesh::{ambient, cacerts, gateway as gw, namespace, origin};

mod preflight;
mod renamed;
mod unjoin;
use preflight::{
    dry_run_writes, missing_permissions, preflight_secret, refuse_same_cluster, writes,
};
pub use unjoin::{UnjoinArgs, run_unjoin};

#[derive(Debug, Args)]
pub struct JoinArgs {
    #[command(flatten)]
    clusters: ClustersArgs,
    /// Certificates directory: DIR/<cluster-name>/ holds each cluster's bundle.
    #[arg(long)]
    certs: PathBuf,
    /// CONTEXT=NETWORK (default: <cluster-name>-network). Networks must differ.
    #[arg(long = "network")]
    networks: Vec<String>,
    /// CONTEXT=NAME, the mesh's cluster ID (default: the context name).
    #[arg(long = "cluster-name")]
    cluster_names: Vec<String>,
    /// CONTEXT=URL: the API server as the OTHER clusters reach it (kind: the control-plane
    /// container's address, https://<ip>:6443). Default: the kubeconfig's server.
    #[arg(long = "server")]
    servers: Vec<String>,
    /// Ambient multi-network: the gateway also serves HBONE (15008), and each cluster gets
    /// an `istio-remote` Gateway per peer network announcing the peer's gateway to ztunnels.
    #[arg(long)]
    ambient: bool,
    /// CONTEXT=ADDRESS: the gateway address the OTHER clusters' ztunnels dial (IP or DNS
    /// name; --ambient). Default: the gateway Service's load-balancer address.
    #[arg(long = "gateway-address")]
    gateway_addresses: Vec<String>,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    gateway: GatewayFlags,
    #[command(flatten)]
    secret: SecretFlags,
    #[command(flatten)]
    cacerts: CacertsFlags,
    #[command(flatten)]
    mutate: MutateArgs,
}

/// One cluster's validated settings.
struct Member {
    context: String,
    name: String,
    network: String,
    server: Option<String>,
    /// `--gateway-address`, validated.
    gateway_address: Option<String>,
    cacerts: Value,
    /// The gateway's objects, built (so validated) before anything is written.
    gateway: Vec<Value>,
    /// What `reader::build` gets for this cluster's remote secret (validated too).
    secret: SecretOptions,
}

/// Every cluster's settings from the flags alone, or a usage error (exit 2) before any file
/// or cluster is read; `cacerts` is filled in by [`read_bundles`].
fn members(a: &JoinArgs) -> Result<Vec<Member>> {
    check_unique(&a.clusters.contexts)?;
    if a.clusters.contexts.len() < 2 {
        bail!("join needs at least two --context values");
    }
    let names = parse_mapping("cluster-name", &a.cluster_names, &a.clusters.contexts)?;
    let nets = parse_mapping("network", &a.networks, &a.clusters.contexts)?;
    let servers = parse_mapping("server", &a.servers, &a.clusters.contexts)?;
    let addrs = parse_mapping(
        "gateway-address",
        &a.gateway_addresses,
        &a.clusters.contexts,
    )?;
    if !addrs.is_empty() && !a.ambient {
        bail!("--gateway-address is for ambient: add --ambient, or drop --gateway-address");
    }
    let mut out: Vec<Member> = Vec::new();
    for ctx in &a.clusters.contexts {
        let name = lookup(&names, ctx).unwrap_or(ctx).to_string();
        pki::validate_dns_label(&name).map_err(|e| {
            anyhow!("cluster name for context {ctx:?}: {e} (set --cluster-name {ctx}=NAME)")
        })?;
        let network = lookup(&nets, ctx)
            .map(str::to_string)
            .unwrap_or_else(|| format!("{name}-network"));
        namespace::validate_label_value(&network)?;
        if let Some(other) = out.iter().find(|m| m.name == name) {
            bail!(
                "contexts {:?} and {ctx:?} have the same cluster name {name:?}; cluster names must be unique",
                other.context
            );
        }
        if let Some(other) = out.iter().find(|m| m.network == network) {
            bail!(
                "contexts {:?} and {ctx:?} are both on network {network:?}; each cluster of a multi-network mesh needs its own network",
                other.context
            );
        }
        let server = lookup(&servers, ctx).map(str::to_string);
        if let Some(s) = &server
            && !s.starts_with("https://")
        {
            bail!("--server {ctx}={s}: expected an https:// URL");
        }
        let gateway_address = lookup(&addrs, ctx).map(str::to_string);
        if let Some(addr) = &gateway_address {
            ambient::address_type(addr).map_err(|e| anyhow!("--gateway-address {ctx}=…: {e}"))?;
        }
        // Built from the flags alone, so its errors (annotations, trust domain) are theirs.
        let gateway = gw::objects(
            &a.ns.namespace,
            &network,
            &name,
            &a.gateway,
            a.gateway.protocols(a.ambient),
        )?;
        let secret = SecretOptions {
            name: name.clone(),
            namespace: a.ns.namespace.clone(),
            server: server.clone(),
            flags: a.secret.clone(),
        };
        reader::validate(&secret)?;
        out.push(Member {
            context: ctx.clone(),
            name,
            network,
            server,
            gateway_address,
            cacerts: Value::Null,
            gateway,
            secret,
        });
    }
    Ok(out)
}

/// Reads every cluster's certificate bundle into its `cacerts` and checks that they share
/// one valid root.
fn read_bundles(a: &JoinArgs, members: &mut [Member]) -> Result<()> {
    for m in members.iter_mut() {
        let dir = a.certs.join(&m.name);
        if !dir.is_dir() {
            bail!(
                "no certificate bundle for cluster {:?}: {} is not a directory (create it with meshctl certs init --clusters ... --out {})",
                m.name,
                dir.display(),
                a.certs.display()
            );
        }
        m.cacerts = cacerts::secret_object(&dir, &a.ns.namespace)?;
    }
    let dirs: Vec<PathBuf> = members.iter().map(|m| a.certs.join(&m.name)).collect();
    let refs: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
    let report = pki::verify_bundles(&refs, &pki::VerifyOptions::default());
    if !report.is_ok() {
        eprint!("{report}");
        bail!(
            "the certificate bundles under {} do not share one valid root",
            a.certs.display()
        );
    }
    Ok(())
}

pub fn run_join(a: JoinArgs) -> Result<ExitCode> {
    let mut members = members(&a).map_err(as_usage)?;
    let file = KubeconfigFile::load(a.clusters.kubeconfig.as_deref())?;
    file.require_contexts(&a.clusters.contexts)?;
    read_bundles(&a, &mut members)?;
    let (plan, restart, removed) = kc::block_on(join(&a, &members, &file))?;
    if a.mutate.dry_run {
        print!(
            "{}",
            kc::render_plan_with(&plan, a.mutate.output(), a.cacerts.secrets())?
        );
    } else if let Some(output) = a.mutate.output_asked() {
        let clusters = members
            .iter()
            .zip(plan.iter().zip(&removed))
            .map(|(m, ((ctx, objs), gone))| {
                let changed = restart.contains(ctx);
                // An unchanged cacerts is said so, not listed as applied too.
                let applied: Vec<String> = objs
                    .iter()
                    .filter(|o| {
                        changed
                            || !(o["kind"] == "Secret" && o["metadata"]["name"] == CACERTS_SECRET)
                    })
                    .map(kc::describe)
                    .collect();
                let mut doc = json!({
                    "context": ctx,
                    "cluster": m.name,
                    "network": m.network,
                    "cacerts": if changed { "applied" } else { "unchanged" },
                    "applied": applied,
                });
                if !gone.is_empty() {
                    doc["removed"] = gone.iter().map(kc::describe).collect();
                }
                doc
            })
            .collect();
        print_summary(clusters, output)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// What a real `join` or `unjoin` run with `-o` prints on stdout: one document
/// `{"clusters": [{"context", ...}]}`, each object named `Kind ns/name` (never its contents).
fn print_summary(clusters: Vec<Value>, output: kc::Output) -> Result<()> {
    let doc = json!({ "clusters": clusters });
    let text = match output {
        kc::Output::Yaml => serde_yaml::to_string(&doc)?,
        kc::Output::Json => serde_json::to_string_pretty(&doc)?,
    };
    crate::cmd::progress::say(format_args!("{}", text.trim_end_matches('\n')));
    Ok(())
}

/// What join did: each context's objects (applied, or planned in a dry run), the contexts
/// whose `cacerts` changed, and per context what it removed (`renamed`).
type Joined = (Vec<(String, Vec<Value>)>, Vec<String>, Vec<Vec<Value>>);

async fn join(a: &JoinArgs, members: &[Member], file: &KubeconfigFile) -> Result<Joined> {
    let dry_run = a.mutate.dry_run;
    let (clusters, retired) = preflight_all(a, members, file).await.map_err(|e| {
        let text = format!("{e:#}");
        if dry_run
            || e.chain().any(|c| c.is::<crate::cli::UsageError>())
            || text.to_lowercase().contains("nothing was changed")
        {
            e
        } else {
            anyhow!("{text}\nnothing was changed; re-run the same command once this is fixed")
        }
    })?;
    let mut done: Vec<String> = Vec::new();
    let e = match write_all(a, members, (&clusters, &retired), &mut done).await {
        Ok(plan) => return Ok(plan),
        Err(e) if dry_run => return Err(e),
        Err(e) => e,
    };
    // A refusal of the object itself comes again on every re-run: say so, not "resume".
    let refused = gw::refusal_code(&e).filter(|code| gw::refuses_object(*code));
    let next = match refused {
        Some(code) => format!(
            "the API server refused that change ({code}): re-running the same command is \
             refused the same way. Fix what it names (a flag's value, or the admission policy \
             that refused it) and run join again (what is in place stays as it is), or remove \
             what join made with meshctl unjoin"
        ),
        None => "re-run the same command to resume".to_string(),
    };
    if done.is_empty() {
        return Err(anyhow!(
            "{e:#}\ninterrupted before the first change was complete; {next}"
        ));
    }
    let resume = if refused.is_some() {
        String::new()
    } else {
        " (every change is a server-side apply: what is already in place stays as it is)"
            .to_string()
    };
    Err(anyhow!(
        "{e:#}\ninterrupted after these changes: {}; {next}{resume}. Until it completes, \
         cross-cluster traffic may fail where a gateway, remote secret or network announcement \
         is still missing (meshctl check shows which)",
        done.join("; ")
    ))
}

/// Phase 1: reach every cluster and check everything that could fail, before any change;
/// wait for what join will write that is still being deleted (`--deletion-wait`).
async fn preflight_all(
    a: &JoinArgs,
    members: &[Member],
    file: &KubeconfigFile,
) -> Result<(Vec<Cluster>, Vec<renamed::Retired>)> {
    let dry_run = a.mutate.dry_run;
    // Every cluster reached, and no two contexts of one cluster, before any other check.
    let mut connected: Vec<Cluster> = Vec::new();
    let mut seen = Vec::new();
    for m in members {
        let c = file.connect(&m.context).await?;
        let id = kc::Identity::of(&c).await;
        refuse_same_cluster(&seen, &id)?;
        seen.push(id);
        connected.push(c);
    }
    let mut clusters: Vec<Cluster> = Vec::new();
    let mut recorded = Vec::new();
    let mut deletion = DeletionWait::new(a.secret.deletion.deletion_wait);
    for (m, c) in members.iter().zip(connected) {
        // Before this run records the new ones: what a re-run under new names retires.
        recorded.push(namespace::recorded(&c, &a.ns.namespace).await?);
        // After a wait for objects being deleted, every check runs again on what is left.
        // Bounded: by the deadline of `--deletion-wait`, and in count.
        let mut settled = false;
        for _ in 0..terminating::ROUNDS {
            let found = preflight_cluster(a, members, m, &c).await?;
            if !deletion.wait_gone(&c, &found, dry_run).await? {
                settled = true;
                break;
            }
        }
        if !settled {
            bail!("{}", terminating::deleted_again(&m.context, "join"));
        }
        clusters.push(c);
    }
    let retired = renamed::find(members, &clusters, &recorded, &a.ns.namespace).await?;
    Ok((clusters, retired))
}

/// Phase 1 in one cluster: every check before any change, and the objects join will write
/// there that are being deleted (the namespace alone when it is), read as cheaply as the
/// checks allow: from the server-side dry run's answers, or (a dry run of join, which makes
/// none) one read each.
async fn preflight_cluster(
    a: &JoinArgs,
    members: &[Member],
    m: &Member,
    c: &Cluster,
) -> Result<Vec<Terminating>> {
    let ns = a.ns.namespace.as_str();
    let dry_run = a.mutate.dry_run;
    let server = m.server.clone().unwrap_or_else(|| c.server.clone());
    if !a.secret.allow_loopback_server && is_loopback(&server) {
        return Err(
            loopback_error(&server, &m.context, &format!("--server {}=", m.context))
                .context(format!("the remote secret for cluster {:?}", m.name)),
        );
    }
    cacerts::apply_secret(c, &m.cacerts, a.cacerts.force, true).await?;
    if a.gateway.expose_services && !gw::gateway_crd_served(c).await? {
        bail!(
            "--expose-services: context {:?} does not serve networking.istio.io/v1 Gateways \
             (CRD gateways.networking.istio.io missing): install Istio first, then run join \
             again with --expose-services. Nothing was changed",
            m.context
        );
    }
    if a.ambient && !ambient::gateway_api_served(c).await? {
        bail!(
            "--ambient: context {:?} does not serve gateway.networking.k8s.io/v1 Gateways \
             (CRD gateways.gateway.networking.k8s.io missing): install the Gateway API CRDs \
             (Istio's ambient profile needs them too), then run join again. Nothing was changed",
            m.context
        );
    }
    preflight_secret(a, c, ns).await?;
    // A dry run makes the same read-only checks: it says what the real run would refuse.
    let denied = missing_permissions(c, &writes(a, m, ns)).await;
    if !denied.is_empty() {
        bail!(
            "context {:?} may not make the changes join makes (SelfSubjectAccessReview): \
             {}; use a context with those rights (e.g. cluster-admin). Nothing was changed",
            m.context,
            denied.join(", ")
        );
    }
    gw::check_ip_family_policy(c, ns, &m.gateway).await?;
    let planned = planned_writes(a, members, m, c).await?;
    let mut found = if dry_run {
        terminating::find(c, ns, &planned).await?
    } else {
        dry_run_writes(c, ns, &planned).await?
    };
    // The ambient announcements (not dry-run: their addresses are known later), by name.
    if a.ambient && !found.iter().any(|t| t.kind == "Namespace") {
        for peer in members.iter().filter(|o| o.context != m.context) {
            let stub = json!({"apiVersion": GATEWAY_API_V1, "kind": "Gateway", "metadata":
                {"name": announce_gateway_name(&peer.network), "namespace": ns}});
            // Best effort, as the dry run of the other objects: the write meets a failure.
            let Ok(t) = terminating::read_one(c, &stub).await else {
                break;
            };
            found.extend(t);
        }
    }
    Ok(found)
}

/// The objects join applies in `m`'s cluster `c`, for the server-side dry run before the
/// first change: the namespace label, cacerts, the gateway and the reader (each service
/// account only when join will write it, not one it finds made by someone else), the token
/// Secret join may create, and the other clusters' remote secrets (with a stand-in
/// kubeconfig: the token is minted later). The ambient announcements are left out (they
/// need the peers' gateway addresses, known later).
async fn planned_writes(
    a: &JoinArgs,
    members: &[Member],
    m: &Member,
    c: &Cluster,
) -> Result<Vec<Value>> {
    let ns = a.ns.namespace.as_str();
    let sa = a.secret.service_account.as_str();
    let mut objs = vec![
        namespace::namespace_object(ns, Some(&m.network), Some(&m.name)),
        m.cacerts.clone(),
    ];
    objs.extend(origin::Planned::objects(
        &origin::writable(c, &m.gateway).await?.0,
    ));
    if a.secret.create_service_account {
        let reader = reader::reader_objects(c, ns, sa, a.secret.reader_allow_secrets).await?;
        objs.extend(origin::Planned::objects(&reader.0));
    }
    if a.secret.token_ttl.is_none() && a.secret.secret_name.is_none() {
        objs.push(token_secret(ns, sa));
    }
    for other in members.iter().filter(|o| o.context != m.context) {
        objs.push(remote_secret(&other.name, ns, "stand-in for the dry run"));
    }
    Ok(objs)
}

/// Phases 2 to 4, after every check passed; `done` says what was changed so far.
async fn write_all(
    a: &JoinArgs,
    members: &[Member],
    (clusters, retired): (&[Cluster], &[renamed::Retired]),
    done: &mut Vec<String>,
) -> Result<Joined> {
    let ns = a.ns.namespace.as_str();
    let dry_run = a.mutate.dry_run;
    let to = Progress::for_output(a.mutate.output_asked());
    let mut plan: Vec<(String, Vec<Value>)> = members
        .iter()
        .map(|m| (m.context.clone(), Vec::new()))
        .collect();
    let mut restart = Vec::new();
    // Phase 2: per cluster: cacerts, network label, gateway.
    for (i, (m, c)) in members.iter().zip(clusters).enumerate() {
        let changed = cacerts::apply_secret(c, &m.cacerts, a.cacerts.force, dry_run).await?;
        done.push(format!(
            "{}: cacerts {}",
            m.context,
            if changed {
                "applied (restart istiod there once join is complete)"
            } else {
                "unchanged"
            }
        ));
        let nsobj = namespace::label(c, ns, &m.network, Some(&m.name), dry_run).await?;
        done.push(format!("{}: namespace {ns} labelled", m.context));
        // Without a gateway service account meshctl did not make (used as it is).
        let objs = gw::install(c, ns, &m.gateway, dry_run).await?;
        done.push(format!("{}: gateway", m.context));
        if !dry_run {
            let what = if changed { "applied" } else { "unchanged" };
            to.say(format_args!(
                "{}: cacerts {what}; namespace {ns} labelled {NETWORK_LABEL}={}; gateway applied ({} objects)",
                m.context,
                m.network,
                objs.len()
            ));
            if changed {
                restart.push(m.context.clone());
            }
        }
        plan[i].1.push(m.cacerts.clone());
        plan[i].1.push(nsobj);
        plan[i].1.extend(objs);
    }
    // Phase 3: each cluster's remote secret, applied in every other cluster.
    for (i, (m, c)) in members.iter().zip(clusters).enumerate() {
        let built = reader::build_after_preflight(c, &m.secret, dry_run).await?;
        done.push(format!("{}: reader of cluster {}", m.context, m.name));
        plan[i].1.extend(built.source_objects);
        for (j, other) in clusters.iter().enumerate() {
            if i == j {
                continue;
            }
            if !dry_run {
                kc::apply(other, &built.secret).await?;
                done.push(format!("{}: remote secret of {}", other.context, m.name));
                to.say(format_args!(
                    "{}: remote secret {} (cluster {}) applied",
                    other.context,
                    remote_secret_name(&m.name),
                    m.name
                ));
            }
            plan[j].1.push(printable(&built.secret));
        }
    }
    if a.ambient {
        announce(members, clusters, ns, (dry_run, to), &mut plan, done).await?;
    }
    // Phase 5: what an earlier join made under names this run replaced, now that the new
    // objects are in place.
    let mut removed: Vec<Vec<Value>> = vec![Vec::new(); members.len()];
    for r in retired {
        let c = &clusters[r.in_cluster];
        if let Some(stub) = renamed::remove(c, r, dry_run).await? {
            let what = kc::describe(&stub);
            if dry_run {
                tell(format_args!(
                    "{}: {what} would be removed: {}",
                    c.context, r.why
                ));
            } else {
                to.say(format_args!("{}: {what} removed: {}", c.context, r.why));
                done.push(format!("{}: {what} removed", c.context));
            }
            removed[r.in_cluster].push(stub);
        }
    }
    if !restart.is_empty() {
        tell(format_args!(
            "cacerts changed in {}. {}",
            restart.join(", "),
            cacerts::restart_hint(ns)
        ));
    }
    Ok((plan, restart, removed))
}

/// Phase 4 (`--ambient`): in each cluster, an `istio-remote` Gateway per peer network with
/// the peer gateway's address (`--gateway-address`, else its Service's load balancer).
async fn announce(
    members: &[Member],
    clusters: &[Cluster],
    ns: &str,
    (dry_run, to): (bool, Progress),
    plan: &mut [(String, Vec<Value>)],
    done: &mut Vec<String>,
) -> Result<()> {
    let mut addresses = Vec::new();
    for (m, c) in members.iter().zip(clusters) {
        let addr = match &m.gateway_address {
            Some(a) => Some(a.clone()),
            None => kc::get(c, "v1", "Service", Some(ns), GATEWAY_NAME)
                .await?
                .as_ref()
                .and_then(ambient::service_address),
        };
        addresses.push(addr);
    }
    for (i, c) in clusters.iter().enumerate() {
        for (j, peer) in members.iter().enumerate() {
            if i == j {
                continue;
            }
            let Some(addr) = &addresses[j] else {
                tell(format_args!(
                    "{}: network {} not announced: gateway {GATEWAY_NAME} in context {:?} has no \
                     load-balancer address yet; run join again once it has one, or pass \
                     --gateway-address {}=ADDRESS",
                    c.context, peer.network, peer.context, peer.context
                ));
                continue;
            };
            let obj = ambient::announce_object(ns, &peer.network, addr)?;
            if !dry_run {
                ambient::apply_announce(c, &obj).await?;
                done.push(format!("{}: network {} announced", c.context, peer.network));
                to.say(format_args!(
                    "{}: network {} announced to ztunnels at {addr}:{HBONE_PORT}",
                    c.context, peer.network
                ));
            }
            plan[i].1.push(obj);
        }
    }
    Ok(())
}
