//! The remote secret's shape, as `istioctl create-remote-secret` prints it (so it drops
//! into existing Istio installs): the kubeconfig istiod uses, the Secret holding it, its
//! printable `stringData` form, the reader's RBAC objects, and the refusal
//! of loopback server addresses. Pure: `reader.rs` talks to the cluster.

use anyhow::{Result, anyhow};
use base64::Engine as _;
use serde_json::{Value, json};

use super::reader_rules;
use crate::istio::{
    CLUSTER_ANNOTATION, MULTICLUSTER_LABEL, SA_NAME_ANNOTATION, SA_TOKEN_TYPE, managed_labels,
    reader_role_name, remote_secret_name,
};

/// True for addresses only the local host can reach.
pub fn is_loopback(server: &str) -> bool {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => false,
    }
}

/// The error for a loopback server, with the fix.
pub fn loopback_error(server: &str, context: &str, flag: &str) -> anyhow::Error {
    anyhow!(
        "the API server address {server} (context {context:?}) is a loopback address: the \
         other clusters' istiod would connect to itself, not to this cluster. Pass the address \
         the other clusters reach, e.g. {flag}https://<control-plane-address>:6443 (kind: \
         docker inspect -f '{{{{.NetworkSettings.Networks.kind.IPAddress}}}}' <cluster>-control-plane), \
         or --allow-loopback-server for a single-host test"
    )
}

/// The reader service account, its ClusterRole and binding: list/watch on exactly what
/// istiod reads in a remote cluster (`reader_rules`); Secrets only with `allow_secrets`.
pub fn reader_rbac(ns: &str, sa: &str, allow_secrets: bool) -> Vec<Value> {
    let role = reader_role_name(ns);
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns, "labels": managed_labels()}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role, "labels": managed_labels()},
        "rules": reader_rules::role_rules(allow_secrets)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role, "labels": managed_labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
    ]
}

/// The long-lived token Secret istioctl creates on Kubernetes ≥ 1.24.
pub fn token_secret(ns: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": SA_TOKEN_TYPE,
        "metadata": {"name": format!("{sa}-istio-remote-secret-token"), "namespace": ns,
            "labels": managed_labels(), "annotations": {SA_NAME_ANNOTATION: sa}}})
}

/// The kubeconfig istiod uses: cluster, context and user all named `name`.
pub fn remote_kubeconfig(
    name: &str,
    server: &str,
    ca_pem: &[u8],
    token: &str,
    tls_server_name: Option<&str>,
) -> String {
    let mut cluster = json!({
        "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
        "server": server,
    });
    if let Some(t) = tls_server_name {
        cluster["tls-server-name"] = json!(t);
    }
    let doc = json!({
        "apiVersion": "v1",
        "clusters": [{"cluster": cluster, "name": name}],
        "contexts": [{"context": {"cluster": name, "user": name}, "name": name}],
        "current-context": name,
        "kind": "Config",
        "preferences": {},
        "users": [{"name": name, "user": {"token": token}}],
    });
    serde_yaml::to_string(&doc).expect("kubeconfig serializes")
}

/// The remote Secret (with `data`, for server-side apply).
pub fn remote_secret(name: &str, ns: &str, kubeconfig: &str) -> Value {
    let mut labels = managed_labels();
    labels.insert(MULTICLUSTER_LABEL.into(), json!("true"));
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": remote_secret_name(name), "namespace": ns, "labels": labels,
            "annotations": {CLUSTER_ANNOTATION: name}},
        "data": {name: base64::engine::general_purpose::STANDARD.encode(kubeconfig)}})
}

/// The Secret as istioctl prints it: `stringData` instead of `data`, `creationTimestamp: null`.
pub fn printable(secret: &Value) -> Value {
    let mut s = secret.clone();
    if let Some(data) = s.as_object_mut().and_then(|o| o.remove("data"))
        && let Some(map) = data.as_object()
    {
        let mut string_data = serde_json::Map::new();
        for (k, v) in map {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v.as_str().unwrap_or_default())
                .unwrap_or_default();
            string_data.insert(k.clone(), json!(String::from_utf8_lossy(&bytes)));
        }
        s["stringData"] = Value::Object(string_data);
    }
    s["metadata"]["creationTimestamp"] = Value::Null;
    s
}

/// istioctl's output: the comment line, the Secret, and a trailing `---`.
pub fn istioctl_yaml(secret: &Value) -> Result<String> {
    Ok(format!(
        "# This file is autogenerated, do not edit.\n{}---\n",
        serde_yaml::to_string(&printable(secret))?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses() {
        for s in [
            "https://127.0.0.1:6443",
            "https://127.0.0.2",
            "https://localhost:443",
            "https://LOCALHOST.:6443/",
            "https://[::1]:6443",
            "https://0.0.0.0:6443",
        ] {
            assert!(is_loopback(s), "{s}");
        }
        for s in [
            "https://172.18.0.2:6443",
            "https://east-control-plane:6443",
            "https://[fd00::1]:6443",
            "https://api.example.com",
        ] {
            assert!(!is_loopback(s), "{s}");
        }
    }
}
