//! `meshctl unjoin`: deletes exactly what `join` made for one namespace (`-n`): what carries
//! `app.kubernetes.io/managed-by=meshctl` there, and the cluster-scoped objects made for that
//! namespace (`meshctl.io/namespace=<ns>`, or their names); then removes the namespace's
//! network label and cluster-name annotation. An object meshctl did not make is never
//! deleted, also when an older meshctl relabelled it (`origin::origin`: Istio's own
//! `istio-reader-service-account`, a Helm-made gateway service account), nor one put under
//! the name of meshctl's after the listing (each delete carries the uid it judged). Then it
//! waits, up to `--deletion-wait`, for what it deleted that is held by finalizers (a
//! LoadBalancer Service while the cloud controller tears its load balancer down) to go, and
//! exits 1 naming what is still there.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::Args;
use serde_json::{Value, json};

use crate::cli::{ClustersArgs, MutateArgs, NamespaceArg, check_unique};
use crate::cmd::progress::Progress;
use crate::istio::{
    CLUSTER_NAME_ANNOTATION, GATEWAY_API_V1, ISTIO_NETWORKING_V1, MANAGED_BY_KEY, MANAGED_BY_VALUE,
    MANAGED_SELECTOR, MANAGER, NETWORK_LABEL,
};
use crate::kube::{self as kc, Cluster, Deletion, KubeconfigFile};
use crate::mesh::namespace;
use crate::mesh::origin::{Origin, origin};
use crate::mesh::terminating::{self, DeletionWait, Terminating};

use super::preflight::deletes;
use super::print_summary;

#[derive(Debug, Args)]
pub struct UnjoinArgs {
    #[command(flatten)]
    clusters: ClustersArgs,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    mutate: MutateArgs,
    /// How long to wait, once everything is deleted, for objects still being deleted (held
    /// by finalizers: a LoadBalancer Service while its cloud load balancer is torn down) to
    /// go; 0: do not wait. If one is still there then, unjoin exits 1 naming it and its
    /// finalizers (the rest is removed).
    #[arg(long = "deletion-wait", value_name = "DURATION", default_value = "2m",
        value_parser = humantime::parse_duration)]
    deletion_wait: Duration,
}

/// Kinds `unjoin` deletes (in this order), when labelled managed-by=meshctl: in the
/// namespace `-n` names, and of the cluster-scoped kinds those made for that namespace.
const MANAGED_KINDS: &[(&str, &str)] = &[
    (ISTIO_NETWORKING_V1, "Gateway"),
    (GATEWAY_API_V1, "Gateway"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("v1", "Service"),
    ("apps/v1", "Deployment"),
    ("v1", "Secret"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("v1", "ServiceAccount"),
];

/// What `unjoin` removes from one cluster: the managed objects of namespace `ns` (as stubs:
/// the labelled ones in `ns`, and the cluster-scoped ones made for `ns`) and, if meshctl
/// set them, the namespace's network label and cluster-name annotation; `removed` holds what
/// is gone so far, also when it fails part-way.
pub async fn unjoin_cluster(
    c: &Cluster,
    ns: &str,
    dry_run: bool,
    removed: &mut Vec<Value>,
) -> Result<()> {
    for (av, kind) in MANAGED_KINDS {
        // Namespaced kinds: only in `ns`. Cluster-scoped ones (the roles and bindings): only
        // those made for `ns` (`namespace::owns_cluster_object`), never another namespace's.
        let namespaced = kc::plural_of(kind).is_none_or(|(_, namespaced)| namespaced);
        let found = if namespaced {
            kc::list(c, av, kind, Some(ns), MANAGED_SELECTOR).await?
        } else {
            kc::list(c, av, kind, None, MANAGED_SELECTOR)
                .await?
                .into_iter()
                .filter(|o| namespace::owns_cluster_object(o, ns))
                .collect()
        };
        for o in found {
            let o = with_type(o, av, kind);
            if let Some(stub) = remove_judged(c, (ns, namespaced), (av, kind), o, dry_run).await? {
                removed.push(stub);
            }
        }
    }
    if let Some(n) = kc::get(c, "v1", "Namespace", None, ns).await? {
        let meshctl_owned = n["metadata"]["managedFields"]
            .as_array()
            .is_some_and(|m| m.iter().any(|f| f["manager"] == MANAGER));
        let has = n["metadata"]["labels"].get(NETWORK_LABEL).is_some()
            || n["metadata"]["annotations"]
                .get(CLUSTER_NAME_ANNOTATION)
                .is_some();
        if meshctl_owned && has {
            // A merge patch with nulls removes both whoever set them last: an apply leaves a
            // field another writer has changed since (`kubectl label --overwrite` makes it
            // theirs), and unjoin undoes join all the same. Other labels stay.
            let drop = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
                "labels": {NETWORK_LABEL: null}, "annotations": {CLUSTER_NAME_ANNOTATION: null}}});
            if !dry_run {
                kc::merge_patch(c, &drop, &drop).await?;
            }
            removed.push(drop);
        }
    }
    Ok(())
}

/// `o` as listed, with the type a list's items may not carry.
pub(super) fn with_type(mut o: Value, api_version: &str, kind: &str) -> Value {
    o["apiVersion"] = json!(api_version);
    o["kind"] = json!(kind);
    o
}

/// Why unjoin leaves `o` (listed as labelled managed-by=meshctl, or read again after it was
/// replaced) in place, if it does: not labelled so (any more), a cluster-scoped object made
/// for another namespace, or labelled by an older meshctl over another installer's object.
fn left_because(o: &Value, ns: &str, namespaced: bool) -> Option<String> {
    if o["metadata"]["labels"][MANAGED_BY_KEY] != MANAGED_BY_VALUE {
        return Some(format!("it is not labelled {MANAGED_SELECTOR}"));
    }
    if !namespaced && !namespace::owns_cluster_object(o, ns) {
        return Some(format!("it was not made for namespace {ns}"));
    }
    match origin(Some(o)) {
        Origin::Foreign(why) => Some(format!("not made by meshctl: {why}")),
        _ => None,
    }
}

/// Deletes `o` (as listed) unless it is left in place ([`left_because`]; said on stderr),
/// returning what was removed as a stub. The delete carries `o`'s uid, so an object another
/// installer put under the name after the listing is not taken with it: that one is judged
/// afresh, up to three times (a name replaced again each time is left, and said).
async fn remove_judged(
    c: &Cluster,
    (ns, namespaced): (&str, bool),
    (av, kind): (&str, &str),
    mut o: Value,
    dry_run: bool,
) -> Result<Option<Value>> {
    let mut replaced = false;
    for _ in 0..3 {
        if let Some(why) = left_because(&o, ns, namespaced) {
            let when = if replaced {
                " (replaced since unjoin listed it)"
            } else {
                ""
            };
            eprintln!(
                "{}: {} left in place{when}, {why}",
                c.context,
                kc::describe(&o)
            );
            return Ok(None);
        }
        let mut stub = json!({"apiVersion": av, "kind": kind,
            "metadata": {"name": o["metadata"]["name"]}});
        if let Some(n) = o["metadata"]["namespace"].as_str() {
            stub["metadata"]["namespace"] = json!(n);
        }
        if dry_run {
            return Ok(Some(stub));
        }
        match kc::delete_read(c, &o).await? {
            Deletion::Deleted | Deletion::AlreadyGone => return Ok(Some(stub)),
            Deletion::Replaced(now) => (o, replaced) = (with_type(now, av, kind), true),
        }
    }
    eprintln!(
        "{}: {} left in place, it was replaced each time unjoin tried to delete it; re-run \
         unjoin once whatever is re-creating it has stopped",
        c.context,
        kc::describe(&o)
    );
    Ok(None)
}

/// Why an interrupted unjoin leaves the mesh broken, and how to resume: per cluster what
/// is gone, half gone or untouched.
fn unjoin_interrupted(
    e: &anyhow::Error,
    plan: &[(String, Vec<Value>)],
    failed: &str,
    partial: &[Value],
    rest: &[String],
) -> anyhow::Error {
    let mut state: Vec<String> = plan
        .iter()
        .map(|(ctx, removed)| format!("{ctx}: done ({} object(s) removed)", removed.len()))
        .collect();
    state.push(format!(
        "{failed}: part-way: {} removed{}; the rest (other managed objects, the namespace's \
         network label) is still there",
        partial.len(),
        if partial.is_empty() {
            String::new()
        } else {
            format!(
                " ({})",
                partial
                    .iter()
                    .map(kc::describe)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        }
    ));
    state.extend(rest.iter().map(|ctx| format!("{ctx}: not started")));
    anyhow!(
        "{e:#}\ninterrupted: {}.\nThe mesh is half removed: cross-cluster traffic through a \
         cluster whose gateway or remote secrets are gone fails, while the others may still \
         route to it. Re-run the same command to resume (objects already gone are skipped), \
         or meshctl join to restore the mesh",
        state.join("; ")
    )
}

/// After the deletions in every cluster (`removed`, per context): waits, up to
/// `--deletion-wait` in all, for the deleted objects still being deleted (a
/// `deletionTimestamp`, held by finalizers) to go, saying on stderr what it waits for.
/// Fails naming each one still there, its finalizers, who takes them off and how to watch
/// it go. Uses `terminating`'s wait; the message is unjoin's own (`still_deleting` says
/// "nothing was changed", which an unjoin that has deleted is not).
async fn wait_deleted(
    clusters: &[Cluster],
    removed: &[(String, Vec<Value>)],
    limit: Duration,
) -> Result<()> {
    let mut wait = DeletionWait::new(limit);
    let mut left: Vec<(String, Vec<Terminating>)> = Vec::new();
    for (c, (_, objs)) in clusters.iter().zip(removed) {
        let mut found = Vec::new();
        for o in objs.iter().filter(|o| o["kind"] != "Namespace") {
            let t = terminating::read_one(c, o).await.map_err(|e| {
                anyhow!(
                    "{e:#}\nunjoin removed what meshctl made, but could not check that \
                     {} finished deleting: re-run the same command to check again",
                    kc::describe(o)
                )
            })?;
            found.extend(t);
        }
        let still = wait.wait_left(c, &found, false).await?;
        if !still.is_empty() {
            left.push((c.context.clone(), still));
        }
    }
    if left.is_empty() {
        return Ok(());
    }
    Err(anyhow!("{}", still_deleting_after_unjoin(&left, limit)))
}

/// Why unjoin exits 1 when what it deleted is still being deleted, and what to do.
fn still_deleting_after_unjoin(left: &[(String, Vec<Terminating>)], limit: Duration) -> String {
    let each: Vec<String> = left
        .iter()
        .flat_map(|(ctx, ts)| {
            ts.iter().map(move |t| {
                format!(
                    "context {ctx:?}: {}",
                    terminating::still_deleting_one(ctx, t, limit)
                )
            })
        })
        .collect();
    format!(
        "unjoin deleted everything meshctl made, but {}. Each goes once the controller holding \
         its finalizer lets go (a cloud load balancer teardown, say); until then a join waits \
         for it (--deletion-wait). Re-run unjoin to wait again, or give it more time with \
         --deletion-wait (now {})",
        each.join("; "),
        humantime::format_duration(limit)
    )
}

pub fn run_unjoin(a: UnjoinArgs) -> Result<ExitCode> {
    check_unique(&a.clusters.contexts)?;
    let file = KubeconfigFile::load(a.clusters.kubeconfig.as_deref())?;
    file.require_contexts(&a.clusters.contexts)?;
    let (ns, dry_run) = (&a.ns.namespace, a.mutate.dry_run);
    let to = Progress::for_output(a.mutate.output_asked());
    let plan = kc::block_on(async {
        let mut clusters = Vec::new();
        for ctx in &a.clusters.contexts {
            clusters.push(file.connect(ctx).await?);
        }
        // Every cluster's rights are checked before the first delete, as join checks
        // before its first write: a context that may not delete would leave the mesh half
        // removed.
        for c in &clusters {
            let mut planned = Vec::new();
            unjoin_cluster(c, ns, true, &mut planned).await?;
            let denied = super::preflight::missing_permissions(c, &deletes(&planned, ns)).await;
            if !denied.is_empty() {
                return Err(anyhow!(
                    "context {:?} may not make the changes unjoin makes \
                     (SelfSubjectAccessReview): {}; use a context with those rights (e.g. \
                     cluster-admin). Nothing was removed",
                    c.context,
                    denied.join(", ")
                ));
            }
        }
        let mut plan: Vec<(String, Vec<Value>)> = Vec::new();
        for (i, c) in clusters.iter().enumerate() {
            let mut removed = Vec::new();
            if let Err(e) = unjoin_cluster(c, ns, dry_run, &mut removed).await {
                if dry_run {
                    return Err(e);
                }
                if plan.is_empty() && removed.is_empty() {
                    return Err(anyhow!(
                        "{e:#}\nnothing was removed; re-run the same command to retry"
                    ));
                }
                let rest: Vec<String> = clusters[i + 1..]
                    .iter()
                    .map(|c| c.context.clone())
                    .collect();
                return Err(unjoin_interrupted(&e, &plan, &c.context, &removed, &rest));
            }
            if !dry_run {
                to.say(format_args!(
                    "{}: removed {} object(s) managed by meshctl",
                    c.context,
                    removed.len()
                ));
            }
            plan.push((c.context.clone(), removed));
        }
        if !dry_run {
            wait_deleted(&clusters, &plan, a.deletion_wait).await?;
        }
        Ok(plan)
    })?;
    if dry_run {
        // A notice, not the plan: on stderr, so stdout is one document (`-o json` parses).
        eprintln!("# dry run: unjoin would delete (or, for the Namespace, unlabel) these objects");
        print!("{}", kc::render_plan(&plan, a.mutate.output())?);
    } else if let Some(output) = a.mutate.output_asked() {
        let clusters = plan
            .iter()
            .map(|(ctx, removed)| {
                // The Namespace stays: only its network label and cluster annotation go.
                let names: Vec<String> = removed
                    .iter()
                    .map(|o| match o["kind"].as_str() {
                        Some("Namespace") => format!("{} (label and annotation)", kc::describe(o)),
                        _ => kc::describe(o),
                    })
                    .collect();
                json!({"context": ctx, "removed": names})
            })
            .collect();
        print_summary(clusters, output)?;
    }
    Ok(ExitCode::SUCCESS)
}
