//! Kubeconfigs the TEST SERVER hands out.

use crate::util;

/// A kubeconfig whose cluster, context and user are all named `context`, with the server's
/// CA data and a bearer token.
pub fn kubeconfig(context: &str, server: &str, ca_pem: &str, token: &str) -> String {
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": context, "cluster": {"certificate-authority-data": util::b64(ca_pem.as_bytes()), "server": server}}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
        "current-context": context,
        "users": [{"name": context, "user": {"token": token}}],
    });
    serde_yaml::to_string(&doc).expect("kubeconfig serializes")
}
