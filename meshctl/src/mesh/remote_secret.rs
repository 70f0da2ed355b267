//! The remote secret's shape, as `istioctl create-remote-secret` prints it (so it drops
//! into existing Istio installs): the kubeconfig istiod uses, the Secret holding it, its
//! printable `stringData` form, the reader's RBAC objects, and the refusal
//! of loopback server addresses. Pure: `reader.rs` talks to the cluster.

use anyhow::{Result, anyhow};
use base64::Engine as _;
use serde_json::{Value, json};

use super::namespace::NAMESPACE_LABEL;
use super::reader_rules;
use crate::istio::{
    CLUSTER_ANNOTATION, MULTICLUSTER_LABEL, SA_NAME_ANNOTATION, SA_TOKEN_TYPE, managed_labels,
    reader_role_name, reader_token_secret_name, remote_secret_name,
};

/// The host of a server URL (without brackets for IPv6), lowercased, without a trailing dot.
fn url_host(server: &str) -> String {
    let rest = server.split_once("://").map_or(server, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// The IP address a host names, read the way URL parsers and `inet_aton` (hence Go's and
/// glibc's resolvers) read it: IPv6; IPv4 as 1 to 4 parts, each decimal, octal (leading 0) or
/// hex (0x), the last part filling the remaining bytes (`127.1`, `2130706433`, `0x7f000001`
/// are all 127.0.0.1).
pub fn host_ip(host: &str) -> Option<std::net::IpAddr> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Some(ip);
    }
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let nums: Vec<u64> = parts
        .iter()
        .map(|p| {
            let (digits, radix) = if let Some(h) = p.strip_prefix("0x").or(p.strip_prefix("0X")) {
                (h, 16)
            } else if p.len() > 1 && p.starts_with('0') {
                (&p[1..], 8)
            } else {
                (*p, 10)
            };
            if digits.is_empty() && radix == 16 {
                return Some(0);
            }
            if digits.is_empty() || digits.len() > 12 {
                return None;
            }
            u64::from_str_radix(digits, radix).ok()
        })
        .collect::<Option<_>>()?;
    let (last, head) = nums.split_last()?;
    if head.iter().any(|n| *n > 255) || *last >= 1u64 << (8 * (4 - head.len())) {
        return None;
    }
    let mut addr = *last;
    for (i, n) in head.iter().enumerate() {
        addr |= n << (8 * (3 - i));
    }
    Some(std::net::IpAddr::V4(std::net::Ipv4Addr::from(addr as u32)))
}

/// True for addresses only the local host can reach: `localhost` names, and loopback or
/// unspecified IPs in any spelling (see [`host_ip`]), IPv4-mapped IPv6 included.
pub fn is_loopback(server: &str) -> bool {
    let host = url_host(server);
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    let local = |ip: std::net::IpAddr| ip.is_loopback() || ip.is_unspecified();
    match host_ip(&host) {
        Some(std::net::IpAddr::V6(v6)) => {
            local(v6.into())
                || v6.to_ipv4_mapped().is_some_and(|v4| local(v4.into()))
                // IPv4-compatible (::a.b.c.d, deprecated); ::1 and :: are handled above.
                || v6.to_ipv4().is_some_and(|v4| v4.octets()[0] == 127)
        }
        Some(ip) => local(ip),
        None => false,
    }
}

/// Checks an API server address for a remote secret, naming `what` (the flag or the
/// kubeconfig) in the error: an `https://` URL (the bearer token must not travel in
/// plaintext) with no user info, a valid host (a DNS name, a dotted-quad IPv4 address or a
/// bracketed IPv6 address), an optional port, and no whitespace or characters invalid in URLs.
pub fn check_server_url(server: &str, what: &str) -> Result<()> {
    let bad = |why: &str| {
        anyhow!(
            "{what} {server:?} {why}; pass the API server URL the other clusters reach, e.g. \
             https://<control-plane-address>:6443"
        )
    };
    let (scheme, rest) = server
        .split_once("://")
        .ok_or_else(|| bad("is not a URL (it needs https://)"))?;
    match scheme.to_ascii_lowercase().as_str() {
        "https" => {}
        "http" => {
            return Err(bad(
                "is a plain http:// URL: istiod would send the reader's bearer token in \
                 plaintext. Use https://",
            ));
        }
        _ => return Err(bad("is not an https:// URL")),
    }
    if let Some(c) = server
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || "<>\"{}|\\^`".contains(*c))
    {
        return Err(bad(&format!("is not a valid URL: it contains {c:?}")));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(bad("carries user info (user@host); pass the address only"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("is not a valid URL: unclosed '['"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(
                "is not a valid URL: the bracketed host is not an IPv6 address",
            ));
        }
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("is not a valid URL: text after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p > 0)
    {
        return Err(bad(
            "is not a valid URL: the port must be a number from 1 to 65535",
        ));
    }
    if authority.starts_with('[') {
        return Ok(());
    }
    let name = host.strip_suffix('.').unwrap_or(host);
    if !crate::kube::names::is_dns_name(host) {
        return Err(bad(
            "is not a valid URL: the host is not a DNS name or an IP address",
        ));
    }
    // A host ending in a number is an IPv4 address to URL parsers: only the dotted quad
    // is accepted, so every reader of the Secret sees the same address.
    let last = name.rsplit('.').next().unwrap_or(name);
    let numeric = last.chars().all(|c| c.is_ascii_digit())
        || last
            .strip_prefix("0x")
            .or(last.strip_prefix("0X"))
            .is_some_and(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
    if numeric && name.parse::<std::net::Ipv4Addr>().is_err() {
        let reads_as = host_ip(name)
            .map(|ip| format!(" (it reads as {ip})"))
            .unwrap_or_default();
        return Err(bad(&format!(
            "has a numeric host that is not a dotted-quad IPv4 address{reads_as}; write the \
             address as a.b.c.d"
        )));
    }
    Ok(())
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

/// The reader service account, its own ClusterRole and binding (`reader_role_name`: one
/// pair per service account, so readers never change each other's permissions): list/watch
/// on exactly what istiod reads in a remote cluster (`reader_rules`); Secrets only with
/// `allow_secrets`. The role and binding carry `meshctl.io/namespace: <ns>`. A service
/// account that exists and is not meshctl's (`origin::origin`) is not applied
/// (`origin::writable`).
pub fn reader_rbac(ns: &str, sa: &str, allow_secrets: bool) -> Vec<Value> {
    let role = reader_role_name(ns, sa);
    // Cluster-scoped: labelled with their namespace too, which `unjoin -n` goes by.
    let mut cluster_labels = managed_labels();
    cluster_labels.insert(NAMESPACE_LABEL.into(), json!(ns));
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns, "labels": managed_labels()}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role, "labels": cluster_labels},
        "rules": reader_rules::role_rules(allow_secrets)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role, "labels": cluster_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
    ]
}

/// The long-lived token Secret istioctl creates on Kubernetes ≥ 1.24.
pub fn token_secret(ns: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": SA_TOKEN_TYPE,
        "metadata": {"name": reader_token_secret_name(sa), "namespace": ns,
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
    fn every_reader_gets_its_own_role_and_binding() {
        let names = |sa: &str| -> Vec<(String, Value)> {
            reader_rbac("istio-system", sa, false)
                .iter()
                .map(|o| {
                    (
                        format!("{} {}", o["kind"].as_str().unwrap(), o["metadata"]["name"]),
                        o["subjects"].clone(),
                    )
                })
                .collect()
        };
        let default = names("istio-reader-service-account");
        let other = names("other-sa");
        assert_eq!(
            other[2],
            (
                "ClusterRoleBinding \"meshctl-istio-reader-istio-system.other-sa\"".to_string(),
                json!([{"kind": "ServiceAccount", "name": "other-sa", "namespace": "istio-system"}])
            )
        );
        assert_eq!(
            default[2].0,
            "ClusterRoleBinding \"meshctl-istio-reader-istio-system\""
        );
        for (d, o) in default.iter().zip(&other) {
            assert_ne!(d.0, o.0, "no object is shared between two readers");
        }
        let rbac = reader_rbac("istio-system", "other-sa", true);
        assert_eq!(rbac[1]["metadata"]["name"], rbac[2]["roleRef"]["name"]);
    }

    #[test]
    fn loopback_addresses() {
        for s in [
            "https://127.0.0.1:6443",
            "https://127.0.0.2",
            "https://localhost:443",
            "https://LOCALHOST.:6443/",
            "https://[::1]:6443",
            "https://0.0.0.0:6443",
            "https://[::ffff:127.0.0.1]:6443",
            "https://[::ffff:7f00:1]",
            "https://[::]:6443",
            "https://127.1",
            "https://127.0.1:6443",
            "https://2130706433",
            "https://0x7f000001:443",
            "https://0177.0.0.1",
            "https://0x7f.1",
            "https://0",
        ] {
            assert!(is_loopback(s), "{s}");
        }
        for s in [
            "https://172.18.0.2:6443",
            "https://east-control-plane:6443",
            "https://[fd00::1]:6443",
            "https://api.example.com",
            "https://[::ffff:10.0.0.1]",
            "https://1.2.3.4.5",
            "https://128.1",
        ] {
            assert!(!is_loopback(s), "{s}");
        }
    }

    #[test]
    fn server_urls() {
        for ok in [
            "https://172.18.0.2:6443",
            "https://east-control-plane:6443",
            "https://[fd00::1]:6443",
            "https://api.example.com/k8s/clusters/c-1",
            "HTTPS://API.example.com.",
        ] {
            check_server_url(ok, "--server").unwrap();
        }
        for (bad, why) in [
            ("http://172.18.0.2:6443", "plaintext"),
            ("HTTP://a", "plaintext"),
            ("ftp://a", "not an https"),
            ("172.18.0.2:6443", "not a URL"),
            ("https://a b", "contains ' '"),
            ("https://a\nb", "contains"),
            ("https://", "not a DNS name"),
            ("https://:6443", "not a DNS name"),
            ("https://a:0", "port"),
            ("https://a:99999", "port"),
            ("https://a:x", "port"),
            ("https://u:p@a", "user info"),
            ("https://[::1", "unclosed"),
            ("https://[zz]", "IPv6"),
            ("https://a..b", "not a DNS name"),
            ("https://-a", "not a DNS name"),
            ("https://127.1", "reads as 127.0.0.1"),
            ("https://2130706433", "reads as 127.0.0.1"),
            ("https://0x7f000001", "dotted-quad"),
            ("https://010.0.0.1", "dotted-quad"),
            ("https://999.1.1.1", "dotted-quad"),
        ] {
            let e = check_server_url(bad, "--server").unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("--server"), "{e}");
        }
    }
}
