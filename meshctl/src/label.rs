//! `meshctl label-network NETWORK`: labels istiod's namespace
//! `topology.istio.io/network=<network>` (istiod's fallback network for workloads),
//! creating the namespace if it is missing.

use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde_json::{Value, json};

use crate::kube_client::{self as kc, Cluster, KubeArgs, KubeconfigFile, Output};

pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// The cluster name `join` used for this cluster (read back by `check`).
pub const CLUSTER_NAME_ANNOTATION: &str = "meshctl.io/cluster-name";

#[derive(Debug, Args)]
pub struct LabelNetworkArgs {
    /// Network name, e.g. west-network (a label value).
    network: String,
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    #[command(flatten)]
    kube: KubeArgs,
    /// Print the change and apply nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Output,
}

/// Label values: at most 63 characters, alphanumerics plus `-_.` inside.
pub fn validate_label_value(v: &str) -> Result<()> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    if v.is_empty()
        || v.len() > 63
        || !v.chars().all(|c| alnum(c) || "-_.".contains(c))
        || !v.starts_with(alnum)
        || !v.ends_with(alnum)
    {
        bail!(
            "network {v:?} is not a valid label value (1-63 characters: letters, digits, \
             '-', '_', '.', starting and ending with a letter or digit)"
        );
    }
    Ok(())
}

/// The namespace as meshctl applies it: the network label and (from `join`) the cluster
/// name annotation. Applying it without them (see `unjoin`) removes both.
pub fn namespace_object(ns: &str, network: Option<&str>, cluster_name: Option<&str>) -> Value {
    let mut meta = json!({"name": ns});
    if let Some(n) = network {
        meta["labels"] = json!({NETWORK_LABEL: n});
    }
    if let Some(c) = cluster_name {
        meta["annotations"] = json!({CLUSTER_NAME_ANNOTATION: c});
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta})
}

/// Applies the label (and keeps a cluster-name annotation meshctl set earlier).
pub async fn label(
    c: &Cluster,
    ns: &str,
    network: &str,
    cluster_name: Option<&str>,
    dry_run: bool,
) -> Result<Value> {
    validate_label_value(network)?;
    let existing = kc::get(c, "v1", "Namespace", None, ns).await?;
    let kept = existing
        .as_ref()
        .and_then(|n| n["metadata"]["annotations"][CLUSTER_NAME_ANNOTATION].as_str())
        .map(str::to_string);
    let obj = namespace_object(ns, Some(network), cluster_name.or(kept.as_deref()));
    if !dry_run {
        kc::ensure_namespace(c, ns).await?;
        kc::apply(c, &obj).await?;
    }
    Ok(obj)
}

pub fn run(a: LabelNetworkArgs) -> Result<ExitCode> {
    validate_label_value(&a.network)?;
    pki::validate_dns_label(&a.namespace).map_err(|e| anyhow!("namespace {e}"))?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let obj = kc::block_on(async {
        let c = file.connect(&ctx).await?;
        label(&c, &a.namespace, &a.network, None, a.dry_run).await
    })?;
    if a.dry_run {
        print!("{}", kc::render_plan(&[(ctx, vec![obj])], a.output)?);
    } else {
        println!(
            "namespace {} in context {ctx:?} labelled {NETWORK_LABEL}={}",
            a.namespace, a.network
        );
    }
    Ok(ExitCode::SUCCESS)
}
