//! A cluster joined again under another cluster name or network: what the earlier join left
//! in the other clusters under the old ones. Its remote secret `istio-remote-secret-<old>`
//! would make their istiods read the cluster twice, as two clusters (its endpoints twice, and
//! `credentials refresh` failing on it for ever: no context has that ID); its ambient
//! announcement `meshctl-remote-<old network>` would send ztunnels to a network that no
//! longer exists. A re-run reaches what a fresh run makes, so join removes them once the new
//! ones are in place.
//!
//! The old names are the ones the earlier join recorded on the cluster's own namespace (the
//! cluster-name annotation, the network label), read before this run overwrites them. Only
//! objects meshctl made are removed, never one this run writes (a cluster holds the objects
//! of the others' current names, also when two clusters swap names); the delete carries the
//! uid it judged.

use anyhow::Result;
use serde_json::Value;

use crate::istio::{
    CLUSTER_ANNOTATION, GATEWAY_API_V1, MULTICLUSTER_LABEL, announce_gateway_name,
    remote_secret_name,
};
use crate::kube::{self as kc, Cluster, Deletion};
use crate::mesh::origin::{Origin, origin};

use super::Member;
use super::unjoin::with_type;

/// An object an earlier join made for a name this run no longer uses, found in the cluster
/// `in_cluster` (an index into the run's members), and why it goes.
pub(super) struct Retired {
    pub in_cluster: usize,
    pub obj: Value,
    pub why: String,
}

/// What to remove from the other clusters of the run, given each member's recorded name and
/// network (`recorded[i]` for `members[i]`, read by `namespace::recorded`). Reads only.
pub(super) async fn find(
    members: &[Member],
    clusters: &[Cluster],
    recorded: &[(Option<String>, Option<String>)],
    ns: &str,
) -> Result<Vec<Retired>> {
    let mut out = Vec::new();
    for (i, (m, (old_name, old_net))) in members.iter().zip(recorded).enumerate() {
        for (j, c) in clusters.iter().enumerate() {
            if i == j {
                continue;
            }
            // Cluster j holds the remote secrets and announcements of every other member: a
            // name one of them uses now is theirs (it may be the old name of a cluster that
            // swapped names with another). Its own name or network it never holds.
            let current = |old: &str, of: fn(&Member) -> &str| {
                members
                    .iter()
                    .enumerate()
                    .any(|(k, x)| k != j && of(x) == old)
            };
            let old_name = old_name.as_deref().filter(|o| !current(o, |x| &x.name));
            let old_net = old_net.as_deref().filter(|o| !current(o, |x| &x.network));
            if let Some(old) = old_name {
                let found = kc::get(c, "v1", "Secret", Some(ns), &remote_secret_name(old)).await?;
                if let Some(obj) = found.filter(|s| is_remote_secret_of(s, old)) {
                    let why = format!(
                        "cluster {old:?} (context {}) is now cluster {:?}",
                        m.context, m.name
                    );
                    out.push(Retired {
                        in_cluster: j,
                        obj: with_type(obj, "v1", "Secret"),
                        why,
                    });
                }
            }
            if let Some(old) = old_net {
                let name = announce_gateway_name(old);
                // No Gateway API CRD (a classic mesh): nothing was announced.
                let found = kc::get(c, GATEWAY_API_V1, "Gateway", Some(ns), &name)
                    .await
                    .ok()
                    .flatten();
                if let Some(obj) = found.filter(made_by_meshctl) {
                    let why = format!(
                        "network {old:?} (context {}) is now network {:?}",
                        m.context, m.network
                    );
                    out.push(Retired {
                        in_cluster: j,
                        obj: with_type(obj, GATEWAY_API_V1, "Gateway"),
                        why,
                    });
                }
            }
        }
    }
    Ok(out)
}

fn made_by_meshctl(o: &Value) -> bool {
    matches!(origin(Some(o)), Origin::Created | Origin::Labelled)
}

/// A remote secret meshctl made for cluster `cluster`: labelled for istiod, its cluster ID
/// annotation and data key that name.
fn is_remote_secret_of(s: &Value, cluster: &str) -> bool {
    made_by_meshctl(s)
        && s["metadata"]["labels"][MULTICLUSTER_LABEL] == "true"
        && s["metadata"]["annotations"][CLUSTER_ANNOTATION] == cluster
        && s["data"].get(cluster).is_some()
}

/// Removes `r` (unless it was replaced since it was read: then it is left, and said).
/// Returns the stub of what went, for the run's summary.
pub(super) async fn remove(c: &Cluster, r: &Retired, dry_run: bool) -> Result<Option<Value>> {
    let stub = serde_json::json!({"apiVersion": r.obj["apiVersion"], "kind": r.obj["kind"],
        "metadata": {"name": r.obj["metadata"]["name"], "namespace": r.obj["metadata"]["namespace"]}});
    if dry_run {
        return Ok(Some(stub));
    }
    match kc::delete_read(c, &r.obj).await? {
        Deletion::Deleted | Deletion::AlreadyGone => Ok(Some(stub)),
        Deletion::Replaced(_) => {
            eprintln!(
                "{}: {} left in place: it was made again since join read it ({})",
                c.context,
                kc::describe(&r.obj),
                r.why
            );
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(labels: Value, cluster_annotation: &str, key: &str) -> Value {
        json!({"metadata": {"name": "istio-remote-secret-old", "labels": labels,
            "annotations": {CLUSTER_ANNOTATION: cluster_annotation,
                crate::mesh::origin::CREATED_ANNOTATION: crate::mesh::origin::CREATED_VALUE}},
            "data": {key: "eA=="}})
    }

    #[test]
    fn only_meshctls_remote_secret_of_that_cluster_is_retired() {
        let ours = json!({"app.kubernetes.io/managed-by": "meshctl", MULTICLUSTER_LABEL: "true"});
        assert!(is_remote_secret_of(
            &secret(ours.clone(), "old", "old"),
            "old"
        ));
        // Another cluster's, or one whose data reads another cluster.
        assert!(!is_remote_secret_of(&secret(ours.clone(), "x", "x"), "old"));
        assert!(!is_remote_secret_of(&secret(ours, "old", "x"), "old"));
        // istioctl's (no meshctl label), or not marked for istiod.
        let istioctl = json!({MULTICLUSTER_LABEL: "true"});
        assert!(!is_remote_secret_of(&secret(istioctl, "old", "old"), "old"));
        let unmarked = json!({"app.kubernetes.io/managed-by": "meshctl"});
        assert!(!is_remote_secret_of(&secret(unmarked, "old", "old"), "old"));
    }
}
