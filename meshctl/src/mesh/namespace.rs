//! istiod's namespace as meshctl shapes it: the network label and the cluster-name annotation
//! (`join` records the cluster ID there for `check`), and how a label value is validated.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::istio::{CLUSTER_NAME_ANNOTATION, NETWORK_LABEL};
use crate::kube::{self as kc, Cluster};

/// Label values: at most 63 characters, alphanumerics plus `-_.` inside.
pub fn validate_label_value(v: &str) -> Result<()> {
    if !crate::kube::names::is_qualified_name_part(v) {
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
