//! How one cluster is told apart from another: the UID of its `kube-system` Namespace (the
//! cluster ID `istioctl create-remote-secret` uses when `--name` is not given), and its API
//! server URL and CA, compared when the UID cannot be read. `join` refuses two contexts of
//! one cluster with it, and `check` says so and that a remote secret reaches the cluster it
//! is for.

use super::api::{Cluster, get};

/// One context's cluster identity.
#[derive(Debug, Clone)]
pub struct Identity {
    pub context: String,
    pub uid: Option<String>,
    /// The API server URL (lowercase, no trailing slash) and the CA, for want of the UID.
    endpoint: String,
}

impl Identity {
    /// Of `c`; says on stderr when the UID cannot be read (no right to get namespaces, say)
    /// and the URL and CA stand in for it.
    pub async fn of(c: &Cluster) -> Identity {
        let uid = match get(c, "v1", "Namespace", None, "kube-system").await {
            Ok(n) => n.as_ref().and_then(uid_of),
            Err(e) => {
                eprintln!(
                    "{}: cannot read the UID of namespace kube-system ({e:#}); telling this \
                     cluster from the others by its API server URL and CA instead",
                    c.context
                );
                None
            }
        };
        let ca = c
            .ca_pem
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).trim().to_string())
            .unwrap_or_default();
        Identity {
            context: c.context.clone(),
            uid,
            endpoint: format!("{}\n{ca}", c.server.trim_end_matches('/').to_lowercase()),
        }
    }

    /// Why `self` and `other` are one cluster, if they are.
    pub fn same_cluster(&self, other: &Identity) -> Option<String> {
        match (&self.uid, &other.uid) {
            (Some(a), Some(b)) if a == b => Some(format!(
                "namespace kube-system has UID {a} in both, the cluster ID istioctl uses"
            )),
            (Some(_), Some(_)) => None,
            _ if self.endpoint == other.endpoint => Some(
                "both have the same API server URL and CA (the UID of namespace kube-system, \
                 which tells clusters apart, could not be read)"
                    .to_string(),
            ),
            _ => None,
        }
    }
}

/// The UID of a Namespace object as read.
pub fn uid_of(n: &serde_json::Value) -> Option<String> {
    n["metadata"]["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
}
