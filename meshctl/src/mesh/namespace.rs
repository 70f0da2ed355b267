//! istiod's namespace as meshctl shapes it: the network label and the cluster-name annotation
//! (`join` records the cluster ID there for `check`), and how a label value is validated.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use crate::istio::{
    CLUSTER_NAME_ANNOTATION, DEFAULT_READER_SA, NETWORK_LABEL, READER_ROLE_PREFIX,
    gateway_role_name, reader_role_name,
};
use crate::kube::{self as kc, Cluster};

/// What `join` recorded on istiod's namespace `ns` of `c`: the cluster name (the annotation)
/// and the network (the label); each `None` when absent or empty, and both when the namespace
/// does not exist.
pub async fn recorded(c: &Cluster, ns: &str) -> Result<(Option<String>, Option<String>)> {
    let Some(n) = kc::get(c, "v1", "Namespace", None, ns).await? else {
        return Ok((None, None));
    };
    let text = |v: &Value| v.as_str().filter(|s| !s.is_empty()).map(str::to_string);
    Ok((
        text(&n["metadata"]["annotations"][CLUSTER_NAME_ANNOTATION]),
        text(&n["metadata"]["labels"][NETWORK_LABEL]),
    ))
}

/// Label on meshctl's cluster-scoped objects (ClusterRoles and ClusterRoleBindings): the
/// namespace they were made for, so `unjoin -n NS` removes only NS's. Objects made before
/// the label existed are told by their names ([`owns_cluster_object`]).
pub const NAMESPACE_LABEL: &str = "meshctl.io/namespace";

/// Whether a cluster-scoped object meshctl labelled as managed belongs to namespace `ns`:
/// its [`NAMESPACE_LABEL`], or without one (older meshctl) its name, derived from `ns`:
/// the gateway's role `meshctl-eastwestgateway-<ns>`, a reader's `meshctl-istio-reader-<ns>`
/// or `meshctl-istio-reader-<ns>.<sa>` (a namespace has no dot, so no other namespace's
/// names match).
pub fn owns_cluster_object(obj: &Value, ns: &str) -> bool {
    if let Some(owner) = obj["metadata"]["labels"][NAMESPACE_LABEL].as_str() {
        return owner == ns;
    }
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    name == gateway_role_name(ns)
        || name == reader_role_name(ns, DEFAULT_READER_SA)
        || name
            .strip_prefix(&format!("{READER_ROLE_PREFIX}{ns}."))
            .is_some_and(|sa| !sa.is_empty())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_objects_belong_to_their_namespace_by_label_or_name() {
        let obj = |name: &str, label: Option<&str>| {
            let mut o = json!({"metadata": {"name": name, "labels": {}}});
            if let Some(l) = label {
                o["metadata"]["labels"][NAMESPACE_LABEL] = json!(l);
            }
            o
        };
        for name in [
            "meshctl-eastwestgateway-prod",
            "meshctl-istio-reader-prod",
            "meshctl-istio-reader-prod.istiod",
        ] {
            assert!(owns_cluster_object(&obj(name, None), "prod"), "{name}");
            assert!(
                !owns_cluster_object(&obj(name, None), "prod-istio"),
                "{name}"
            );
            assert!(
                !owns_cluster_object(&obj(name, Some("other")), "prod"),
                "{name}"
            );
        }
        for name in [
            "meshctl-eastwestgateway-prod-istio",
            "meshctl-istio-reader-prod-istio",
            "meshctl-istio-reader-prod-istio.sa",
            "meshctl-istio-reader-prod.",
        ] {
            assert!(!owns_cluster_object(&obj(name, None), "prod"), "{name}");
        }
        assert!(owns_cluster_object(&obj("any", Some("prod")), "prod"));
    }
}
