//! `meshctl unjoin`: deletes exactly what `join` made for one namespace (`-n`): what carries
//! `app.kubernetes.io/managed-by=meshctl` there, and the cluster-scoped objects made for that
//! namespace (`meshctl.io/namespace=<ns>`, or their names); then removes the namespace's
//! network label and cluster-name annotation. A service account join found (not made by
//! meshctl, so unlabelled) is never deleted.

use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::Args;
use serde_json::{Value, json};

use crate::cli::{ClustersArgs, MutateArgs, NamespaceArg, check_unique, usage};
use crate::cmd::progress::Progress;
use crate::istio::{
    CLUSTER_NAME_ANNOTATION, GATEWAY_API_V1, ISTIO_NETWORKING_V1, MANAGED_SELECTOR, MANAGER,
    NETWORK_LABEL,
};
use crate::kube::{self as kc, Cluster, KubeconfigFile};
use crate::mesh::namespace;

use super::print_summary;

#[derive(Debug, Args)]
pub struct UnjoinArgs {
    #[command(flatten)]
    clusters: ClustersArgs,
    #[command(flatten)]
    ns: NamespaceArg,
    #[command(flatten)]
    mutate: MutateArgs,
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
            let mut stub = json!({"apiVersion": av, "kind": kind, "metadata": {"name": o["metadata"]["name"]}});
            if let Some(n) = o["metadata"]["namespace"].as_str() {
                stub["metadata"]["namespace"] = json!(n);
            }
            if !dry_run {
                kc::delete(c, &stub).await?;
            }
            removed.push(stub);
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

pub fn run_unjoin(a: UnjoinArgs) -> Result<ExitCode> {
    check_unique(&a.clusters.contexts)?;
    pki::validate_dns_label(&a.ns.namespace).map_err(|e| usage(format!("namespace {e}")))?;
    let file = KubeconfigFile::load(a.clusters.kubeconfig.as_deref())?;
    file.require_contexts(&a.clusters.contexts)?;
    let (ns, dry_run) = (&a.ns.namespace, a.mutate.dry_run);
    let to = Progress::for_output(a.mutate.output_asked());
    let plan = kc::block_on(async {
        let mut clusters = Vec::new();
        for ctx in &a.clusters.contexts {
            clusters.push(file.connect(ctx).await?);
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
