//! `meshctl create-remote-secret`: the Secret another cluster's istiod uses to watch this
//! cluster, in the shape `istioctl create-remote-secret` prints (so it drops into existing
//! Istio installs), with three differences: the reader role grants exactly what istiod reads
//! in a remote cluster and no Secrets (see `reader_rules`), a loopback API server address is
//! refused, and `--token-ttl` gives an expiring TokenRequest token.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::Args;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use crate::kube_client::{self as kc, Cluster, KubeArgs, KubeconfigFile, Output};
use crate::reader_rules;

pub const SA_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
pub const MULTICLUSTER_LABEL: &str = "istio/multiCluster";
pub const CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";
pub const DEFAULT_READER_SA: &str = "istio-reader-service-account";
/// Placeholder for credentials in `--dry-run` output (no token is minted).
pub const DRY_RUN_TOKEN: &str = "<dry-run: token issued on apply>";

#[derive(Debug, Args)]
pub struct CreateRemoteSecretArgs {
    #[command(flatten)]
    kube: KubeArgs,
    /// Cluster ID (a DNS-1123 label): names the Secret, its data key and the kubeconfig entries.
    #[arg(long)]
    name: String,
    /// Namespace of istiod (where the Secret is applied, and of the reader service account).
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    /// API server address as the other clusters reach it (default: the kubeconfig's).
    /// kind: https://<control-plane-container-ip>:6443, never 127.0.0.1.
    #[arg(long)]
    server: Option<String>,
    #[command(flatten)]
    opts: SecretFlags,
    /// Print what would be created in this cluster and the Secret (placeholder token); change nothing.
    #[arg(long)]
    dry_run: bool,
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Output,
}

/// Flags shared by `create-remote-secret` and `join`.
#[derive(Debug, Args, Clone)]
pub struct SecretFlags {
    /// Service account whose token the Secret carries.
    #[arg(long, default_value = DEFAULT_READER_SA)]
    pub service_account: String,
    /// Create the service account and its read-only ClusterRole/Binding if missing.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub create_service_account: bool,
    /// Use this existing `kubernetes.io/service-account-token` Secret for the token.
    #[arg(long)]
    pub secret_name: Option<String>,
    /// Expiring token from the TokenRequest API (e.g. 24h, min 10m) instead of a
    /// never-expiring service-account-token Secret. Re-run before it expires.
    #[arg(long, value_parser = parse_ttl)]
    pub token_ttl: Option<Duration>,
    /// Accept a loopback API server address (127.0.0.1, localhost, ::1) in the Secret.
    #[arg(long)]
    pub allow_loopback_server: bool,
    /// `tls-server-name` for the generated kubeconfig.
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Also let the reader get/list/watch Secrets, so the other clusters' istiod can serve
    /// this cluster's `credentialName` Secrets; the token then reads every Secret here.
    #[arg(long)]
    pub reader_allow_secrets: bool,
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d < Duration::from_secs(600) {
        return Err(format!(
            "{s:?} is shorter than 10m, the minimum the TokenRequest API accepts"
        ));
    }
    Ok(d)
}

/// Everything needed to make one cluster's remote secret.
#[derive(Debug, Clone)]
pub struct SecretOptions {
    pub name: String,
    pub namespace: String,
    /// API server address as the other clusters reach it (default: the kubeconfig's).
    pub server: Option<String>,
    pub flags: SecretFlags,
}

/// What `build` made: objects it applied (or would apply) in the source cluster, and the
/// remote Secret (with `data`, ready to apply in the other clusters).
pub struct Built {
    pub source_objects: Vec<Value>,
    pub secret: Value,
}

pub fn run(a: CreateRemoteSecretArgs) -> Result<ExitCode> {
    let opts = SecretOptions {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        server: a.server.clone(),
        flags: a.opts.clone(),
    };
    validate(&opts)?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let built = kc::block_on(async {
        let c = file.connect(&ctx).await?;
        build(&c, &opts, a.dry_run).await
    })?;
    if a.dry_run {
        print!(
            "{}",
            kc::render_plan(&[(ctx.clone(), built.source_objects)], a.output)?
        );
    }
    match a.output {
        Output::Yaml => print!("{}", istioctl_yaml(&built.secret)?),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&printable(&built.secret))?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Name and namespace must be DNS-1123 labels.
pub fn validate(o: &SecretOptions) -> Result<()> {
    pki::validate_dns_label(&o.name).map_err(|e| anyhow!("--name {e}"))?;
    pki::validate_dns_label(&o.namespace).map_err(|e| anyhow!("namespace {e}"))?;
    Ok(())
}

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

/// The name of the reader ClusterRole (and its binding).
pub fn reader_role_name(ns: &str) -> String {
    format!("meshctl-istio-reader-{ns}")
}

/// The reader service account, its ClusterRole and binding: list/watch on exactly what
/// istiod reads in a remote cluster (`reader_rules`); Secrets only with `allow_secrets`.
pub fn reader_rbac(ns: &str, sa: &str, allow_secrets: bool) -> Vec<Value> {
    let role = reader_role_name(ns);
    vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": sa, "namespace": ns, "labels": kc::managed_labels()}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": role, "labels": kc::managed_labels()},
        "rules": reader_rules::role_rules(allow_secrets)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": role, "labels": kc::managed_labels()},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]}),
    ]
}

/// The long-lived token Secret istioctl creates on Kubernetes ≥ 1.24.
pub fn token_secret(ns: &str, sa: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": SA_TOKEN_TYPE,
        "metadata": {"name": format!("{sa}-istio-remote-secret-token"), "namespace": ns,
            "labels": kc::managed_labels(), "annotations": {SA_NAME_ANNOTATION: sa}}})
}

/// Prepares the reader in `c` and returns the remote Secret for it. With `dry_run` nothing is
/// written and the token is a placeholder.
pub async fn build(c: &Cluster, o: &SecretOptions, dry_run: bool) -> Result<Built> {
    validate(o)?;
    let server = o.server.clone().unwrap_or_else(|| c.server.clone());
    if !o.flags.allow_loopback_server && is_loopback(&server) {
        return Err(loopback_error(&server, &c.context, "--server "));
    }
    let (ns, sa) = (o.namespace.as_str(), o.flags.service_account.as_str());
    let mut source_objects = Vec::new();
    if o.flags.create_service_account {
        source_objects.extend(reader_rbac(ns, sa, o.flags.reader_allow_secrets));
        if !dry_run {
            kc::ensure_namespace(c, ns).await?;
            kc::apply_all(c, &source_objects).await?;
        }
    } else if kc::get(c, "v1", "ServiceAccount", Some(ns), sa)
        .await?
        .is_none()
        && !dry_run
    {
        bail!(
            "service account {ns}/{sa} not found in context {:?}; create it or drop \
             --create-service-account=false",
            c.context
        );
    }
    let (token, ca) = if let Some(ttl) = o.flags.token_ttl {
        let ca = c.ca_pem.clone().ok_or_else(|| {
            anyhow!(
                "context {:?} has no certificate-authority data in the kubeconfig; --token-ttl \
                 takes the API server CA from there",
                c.context
            )
        })?;
        let token = if dry_run {
            DRY_RUN_TOKEN.to_string()
        } else {
            request_token(c, ns, sa, ttl).await?
        };
        (token, ca)
    } else {
        let (token, ca, created) =
            secret_token(c, ns, sa, o.flags.secret_name.as_deref(), dry_run).await?;
        if let Some(obj) = created {
            source_objects.push(obj);
        }
        (token, ca)
    };
    let tls_name = o
        .flags
        .tls_server_name
        .as_deref()
        .or(c.tls_server_name.as_deref());
    let kubeconfig = remote_kubeconfig(&o.name, &server, &ca, &token, tls_name);
    Ok(Built {
        source_objects,
        secret: remote_secret(&o.name, ns, &kubeconfig),
    })
}

async fn request_token(c: &Cluster, ns: &str, sa: &str, ttl: Duration) -> Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(c.client.clone(), ns);
    let tr: TokenRequest = serde_json::from_value(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [], "expirationSeconds": ttl.as_secs()}}))?;
    let out = api
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .map_err(|e| {
            anyhow!(
                "TokenRequest for {ns}/{sa} in context {:?}: {}",
                c.context,
                kc::error_text(&e)
            )
        })?;
    out.status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| anyhow!("TokenRequest for {ns}/{sa} returned no token"))
}

fn secret_field(s: &Value, key: &str) -> Option<Vec<u8>> {
    let b64 = s.get("data")?.get(key)?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// istioctl's order: `--secret-name`; any service-account-token Secret of the SA; else create
/// `<sa>-istio-remote-secret-token` and poll (bounded) until the token controller fills it.
/// Returns (token, CA PEM, the Secret object if meshctl creates it).
async fn secret_token(
    c: &Cluster,
    ns: &str,
    sa: &str,
    secret_name: Option<&str>,
    dry_run: bool,
) -> Result<(String, Vec<u8>, Option<Value>)> {
    let mut name = None;
    if let Some(n) = secret_name {
        let s = kc::get(c, "v1", "Secret", Some(ns), n)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "--secret-name: Secret {ns}/{n} not found in context {:?}",
                    c.context
                )
            })?;
        if s["type"] != SA_TOKEN_TYPE || s["metadata"]["annotations"][SA_NAME_ANNOTATION] != sa {
            bail!(
                "--secret-name: Secret {ns}/{n} is not a {SA_TOKEN_TYPE} Secret of service account {sa}"
            );
        }
        name = Some(n.to_string());
    } else {
        let all = kc::list(c, "v1", "Secret", Some(ns), "").await?;
        if let Some(s) = all.iter().find(|s| {
            s["type"] == SA_TOKEN_TYPE && s["metadata"]["annotations"][SA_NAME_ANNOTATION] == sa
        }) {
            name = s["metadata"]["name"].as_str().map(str::to_string);
        }
    }
    let mut created = None;
    let name = match name {
        Some(n) => n,
        None => {
            let obj = token_secret(ns, sa);
            let n = obj["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if dry_run {
                let ca = c.ca_pem.clone().unwrap_or_default();
                return Ok((DRY_RUN_TOKEN.into(), ca, Some(obj)));
            }
            kc::apply(c, &obj).await?;
            created = Some(obj);
            n
        }
    };
    if dry_run {
        // A dry run never reads the token, not even an existing one: it prints the
        // placeholder. The CA (public) comes from the Secret when it has one.
        let ca = kc::get(c, "v1", "Secret", Some(ns), &name)
            .await?
            .and_then(|s| secret_field(&s, "ca.crt"))
            .or_else(|| c.ca_pem.clone())
            .unwrap_or_default();
        return Ok((DRY_RUN_TOKEN.into(), ca, created));
    }
    // Bounded: 50 polls, 100 ms apart (the token controller is asynchronous).
    for _ in 0..50 {
        if let Some(s) = kc::get(c, "v1", "Secret", Some(ns), &name).await?
            && let (Some(t), Some(ca)) = (secret_field(&s, "token"), secret_field(&s, "ca.crt"))
        {
            let token = String::from_utf8(t).context("token is not UTF-8")?;
            return Ok((token, ca, created));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "Secret {ns}/{name} in context {:?} got no token and ca.crt within 5s; is the token \
         controller running (kube-controller-manager)? Or use --token-ttl",
        c.context
    )
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
    let mut labels = kc::managed_labels();
    labels.insert(MULTICLUSTER_LABEL.into(), json!("true"));
    json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": secret_name(name), "namespace": ns, "labels": labels,
            "annotations": {CLUSTER_ANNOTATION: name}},
        "data": {name: base64::engine::general_purpose::STANDARD.encode(kubeconfig)}})
}

pub fn secret_name(cluster: &str) -> String {
    format!("istio-remote-secret-{cluster}")
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

/// The kubeconfig stored in a remote Secret (`data` or `stringData`), with its cluster key.
pub fn stored_kubeconfig(secret: &Value) -> Option<(String, String)> {
    if let Some(map) = secret.get("data").and_then(Value::as_object)
        && let Some((k, v)) = map.iter().next()
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str()?)
            .ok()?;
        return Some((k.clone(), String::from_utf8(bytes).ok()?));
    }
    let map = secret.get("stringData")?.as_object()?;
    let (k, v) = map.iter().next()?;
    Some((k.clone(), v.as_str()?.to_string()))
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

    #[test]
    fn ttl_minimum() {
        assert!(parse_ttl("5m").is_err());
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
    }
}
