//! Preparing the reader in the source cluster and minting its credential: the service
//! account and its own role and binding (`reader_rules`, named per service account by
//! `istio::reader_role_name`), then a TokenRequest token (`--token-ttl`) or a
//! service-account-token Secret, following istioctl's order. Returns the remote Secret.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use serde_json::Value;

use super::origin::{self, Planned};
use super::remote_secret::{
    check_server_url, is_loopback, loopback_error, reader_rbac, remote_kubeconfig, remote_secret,
    token_secret,
};
use super::terminating::{self, DeletionWait};
use crate::cli::{MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS, SecretFlags, as_usage};
use crate::istio::{
    MAX_OBJECT_NAME, SA_NAME_ANNOTATION, SA_TOKEN_TYPE, reader_role_name, reader_role_name_fits,
    reader_token_secret_name,
};
use crate::kube::names;
use crate::kube::{self as kc, Cluster};

/// Placeholder for credentials in `--dry-run` output (no token is minted).
pub const DRY_RUN_TOKEN: &str = "<dry-run: token issued on apply>";

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

/// Checks every option before anything is read or changed, as usage errors (exit 2): name
/// and namespace are DNS-1123 labels; `--service-account` and `--secret-name` DNS-1123
/// subdomains (Kubernetes object names), short enough for the names derived from them (the
/// reader's ClusterRole and binding, the token Secret); `--tls-server-name` a DNS name or an
/// IP address; `--server` an https URL (`check_server_url`), not a loopback address unless
/// allowed. `build` refuses a loopback address from the kubeconfig before it changes anything.
pub fn validate(o: &SecretOptions) -> Result<()> {
    check_options(o).map_err(as_usage)
}

fn check_options(o: &SecretOptions) -> Result<()> {
    pki::validate_dns_label(&o.name).map_err(|e| anyhow!("--name {e}"))?;
    pki::validate_dns_label(&o.namespace).map_err(|e| anyhow!("namespace {e}"))?;
    let (ns, sa) = (o.namespace.as_str(), o.flags.service_account.as_str());
    pki::validate_dns_subdomain(sa)
        .map_err(|e| anyhow!("--service-account {e} (it names a ServiceAccount)"))?;
    if o.flags.create_service_account && !reader_role_name_fits(ns, sa) {
        bail!(
            "--service-account {sa:?} is too long: its ClusterRole and ClusterRoleBinding {:?} \
             would be {} characters, over Kubernetes' {MAX_OBJECT_NAME}; use a name of at most \
             {} characters, or --create-service-account=false for an account whose access \
             you grant yourself",
            reader_role_name(ns, sa),
            reader_role_name(ns, sa).len(),
            MAX_OBJECT_NAME - (reader_role_name(ns, sa).len() - sa.len())
        );
    }
    if let Some(n) = &o.flags.secret_name {
        pki::validate_dns_subdomain(n)
            .map_err(|e| anyhow!("--secret-name {e} (it names a Secret)"))?;
    } else if o.flags.token_ttl.is_none() && reader_token_secret_name(sa).len() > MAX_OBJECT_NAME {
        bail!(
            "--service-account {sa:?} is too long for its token Secret {:?} ({} characters, \
             over Kubernetes' {MAX_OBJECT_NAME}): use a shorter name, --secret-name, or \
             --token-ttl",
            reader_token_secret_name(sa),
            reader_token_secret_name(sa).len()
        );
    }
    if let Some(t) = &o.flags.tls_server_name {
        validate_tls_server_name(t)?;
    }
    if let Some(server) = &o.server {
        check_server_url(server, "--server")?;
        if !o.flags.allow_loopback_server && is_loopback(server) {
            bail!(
                "--server {server} is a loopback address: the other clusters' istiod would \
                 connect to itself, not to cluster {:?}. Pass the address the other clusters \
                 reach, e.g. https://<control-plane-address>:6443, or --allow-loopback-server \
                 for a single-host test",
                o.name
            );
        }
    }
    Ok(())
}

/// `--tls-server-name`: the name the API server's certificate is checked against, so a DNS
/// name (letters, digits, '-', '_' and '.', labels of 1 to 63 characters) or an IP address.
fn validate_tls_server_name(t: &str) -> Result<()> {
    if t.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if !names::is_dns_name(t) {
        bail!(
            "--tls-server-name {t:?} is not a DNS name or an IP address: pass the name in the \
             API server's certificate, e.g. kubernetes.default.svc"
        );
    }
    Ok(())
}

/// Prepares the reader in `c` and returns the remote Secret for it. With `dry_run` nothing is
/// written and the token is a placeholder. Before the first write, waits for what it writes
/// (the namespace, the reader's objects, the token Secret) to finish deleting where it is
/// being deleted (`--deletion-wait`, `terminating`); a dry run reports such objects.
pub async fn build(c: &Cluster, o: &SecretOptions, dry_run: bool) -> Result<Built> {
    build_with(c, o, dry_run, true).await
}

/// [`build`] after the caller has waited for objects being deleted itself (`join`'s
/// preflight, which covers every cluster before the first write).
pub async fn build_after_preflight(c: &Cluster, o: &SecretOptions, dry_run: bool) -> Result<Built> {
    build_with(c, o, dry_run, false).await
}

/// The objects [`build`] may write in `ns` (for the deletion check): the reader's service
/// account, role and binding, and the token Secret it creates when none exists.
pub fn planned_objects(ns: &str, flags: &SecretFlags) -> Vec<Value> {
    let sa = flags.service_account.as_str();
    let mut out = Vec::new();
    if flags.create_service_account {
        out.extend(reader_rbac(ns, sa, flags.reader_allow_secrets));
    }
    if flags.token_ttl.is_none() && flags.secret_name.is_none() {
        out.push(token_secret(ns, sa));
    }
    out
}

async fn build_with(c: &Cluster, o: &SecretOptions, dry_run: bool, wait: bool) -> Result<Built> {
    validate(o)?;
    let server = o.server.clone().unwrap_or_else(|| c.server.clone());
    if o.server.is_none() {
        check_server_url(
            &server,
            &format!(
                "the API server address of context {:?} in the kubeconfig",
                c.context
            ),
        )
        .map_err(|e| anyhow!("{e} (with --server)"))?;
    }
    if !o.flags.allow_loopback_server && is_loopback(&server) {
        return Err(loopback_error(&server, &c.context, "--server "));
    }
    // Known before the first write: --token-ttl takes the CA from the kubeconfig.
    let ttl_ca = match o.flags.token_ttl {
        Some(ttl) => Some((
            ttl,
            c.ca_pem.clone().ok_or_else(|| {
                anyhow!(
                    "context {:?} has no certificate-authority data in the kubeconfig; \
                     --token-ttl takes the API server CA from there. Nothing was changed in \
                     context {:?}",
                    c.context,
                    c.context
                )
            })?,
        )),
        None => None,
    };
    let (ns, sa) = (o.namespace.as_str(), o.flags.service_account.as_str());
    if wait {
        let found = terminating::find(c, ns, &planned_objects(ns, &o.flags)).await?;
        DeletionWait::new(o.flags.deletion.deletion_wait)
            .wait_gone(c, &found, dry_run)
            .await?;
    }
    let mut source_objects = Vec::new();
    if o.flags.create_service_account {
        let (planned, foreign) = reader_objects(c, ns, sa, o.flags.reader_allow_secrets).await?;
        if let Some(notice) = foreign {
            eprintln!("{notice}");
        }
        source_objects.extend(Planned::objects(&planned));
        if !dry_run {
            kc::ensure_namespace(c, ns).await?;
            origin::write_all(c, &planned).await?;
        }
    } else if kc::get(c, "v1", "ServiceAccount", Some(ns), sa)
        .await?
        .is_none()
    {
        bail!(
            "service account {ns}/{sa} not found in context {:?}; create it or drop \
             --create-service-account=false",
            c.context
        );
    }
    let (token, ca) = if let Some((ttl, ca)) = ttl_ca {
        let token = if dry_run {
            DRY_RUN_TOKEN.to_string()
        } else {
            request_token(c, ns, sa, ttl).await?
        };
        if let Some(notice) = never_expiring_token_left(c, ns, sa).await? {
            eprintln!("{notice}");
        }
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

/// A notice when the never-expiring token Secret an earlier run without `--token-ttl` made
/// for `ns/sa` is still there: it authenticates as the reader until deleted, whatever
/// lifetime the new tokens have. Not deleted here: a remote secret outside this run (another
/// cluster's) may still carry its token.
async fn never_expiring_token_left(c: &Cluster, ns: &str, sa: &str) -> Result<Option<String>> {
    let name = crate::istio::reader_token_secret_name(sa);
    let Some(s) = kc::get(c, "v1", "Secret", Some(ns), &name).await? else {
        return Ok(None);
    };
    let ours =
        s["metadata"]["labels"][crate::istio::MANAGED_BY_KEY] == crate::istio::MANAGED_BY_VALUE;
    if !ours || s["type"] != SA_TOKEN_TYPE {
        return Ok(None);
    }
    Ok(Some(format!(
        "note: context {ctx:?}: the never-expiring token Secret {ns}/{name} that an earlier run \
         without --token-ttl made still authenticates as {ns}/{sa}; once no remote secret \
         carries its token (this run replaces those it writes), revoke it: kubectl --context \
         {word} -n {ns} delete secret {name}",
        ctx = c.context,
        word = crate::cmd::check::shell_word(&c.context)
    )))
}

/// The reader objects `build` applies in `c` (`reader_rbac`, through
/// [`writable`](super::origin::writable)), and the notice when the service account exists and is not
/// meshctl's (made by Helm, say, like Istio's own `istio-reader-service-account`, or
/// istiod's): then it is left out, and only meshctl's role and binding grant it access.
pub async fn reader_objects(
    c: &Cluster,
    ns: &str,
    sa: &str,
    allow_secrets: bool,
) -> Result<(Vec<Planned>, Option<String>)> {
    let (objs, notices) = origin::writable(c, &reader_rbac(ns, sa, allow_secrets)).await?;
    Ok((objs, notices.into_iter().next()))
}

/// A TokenRequest that failed.
#[derive(Debug, thiserror::Error)]
#[error("TokenRequest for {what} in context {context:?}: {detail}")]
pub struct TokenError {
    what: String,
    pub context: String,
    detail: String,
    /// The API server did not take the request up (`kube::unanswered`).
    pub unanswered: bool,
}

/// A TokenRequest token for `ns/sa` in `c`, valid for `ttl` (the API server's audience).
pub async fn request_token(
    c: &Cluster,
    ns: &str,
    sa: &str,
    ttl: Duration,
) -> Result<String, TokenError> {
    let api: Api<ServiceAccount> = Api::namespaced(c.client.clone(), ns);
    let failed = |detail: String, unanswered: bool| TokenError {
        what: format!("{ns}/{sa}"),
        context: c.context.clone(),
        detail,
        unanswered,
    };
    // `--token-ttl` is bounded when parsed; a lifetime from elsewhere is checked here too.
    let secs = ttl.as_secs();
    let expiration_seconds = i64::try_from(secs)
        .ok()
        .filter(|_| (MIN_TOKEN_TTL_SECS..=MAX_TOKEN_TTL_SECS).contains(&secs))
        .ok_or_else(|| {
            failed(
                format!(
                    "a lifetime of {secs}s is outside what the TokenRequest API accepts \
                     ({MIN_TOKEN_TTL_SECS}s to {MAX_TOKEN_TTL_SECS}s); pass --token-ttl within it"
                ),
                false,
            )
        })?;
    let tr = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(Vec::new()),
            expiration_seconds: Some(expiration_seconds),
            ..Default::default()
        }),
        ..Default::default()
    };
    let out = api
        .create_token_request(sa, &PostParams::default(), &tr)
        .await
        .map_err(|e| failed(kc::error_text(&e), kc::unanswered(&e)))?;
    out.status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| failed("the API server returned no token".into(), false))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        f: SecretFlags,
    }

    fn opts(server: Option<&str>, args: &[&str]) -> SecretOptions {
        let f = Flags::try_parse_from([&["x"], args].concat()).unwrap().f;
        SecretOptions {
            name: "west".into(),
            namespace: "istio-system".into(),
            server: server.map(str::to_string),
            flags: f,
        }
    }

    #[test]
    fn options_are_checked_before_anything_runs() {
        validate(&opts(Some("https://172.18.0.2:6443"), &[])).unwrap();
        validate(&opts(
            None,
            &["--tls-server-name", "kubernetes.default.svc"],
        ))
        .unwrap();
        validate(&opts(None, &["--tls-server-name", "10.0.0.1"])).unwrap();
        validate(&opts(None, &["--service-account", "a.b-c"])).unwrap();
        validate(&opts(Some("https://127.1"), &["--allow-loopback-server"])).unwrap_err();
        validate(&opts(
            Some("https://[::ffff:127.0.0.1]"),
            &["--allow-loopback-server"],
        ))
        .unwrap();
        assert!(is_loopback("https://[::ffff:127.0.0.1]"));
        for (o, want) in [
            (opts(Some("http://172.18.0.2:6443"), &[]), "plaintext"),
            (opts(Some("https://a b"), &[]), "not a valid URL"),
            (
                opts(None, &["--service-account", "Bad SA"]),
                "--service-account",
            ),
            (opts(None, &["--service-account", ""]), "--service-account"),
            (opts(None, &["--secret-name", "a/b"]), "--secret-name"),
            (
                opts(None, &["--tls-server-name", "a\nb"]),
                "--tls-server-name",
            ),
            (
                opts(None, &["--tls-server-name", "a b"]),
                "--tls-server-name",
            ),
            (opts(None, &["--tls-server-name", ""]), "--tls-server-name"),
            (
                opts(Some("https://localhost:6443"), &[]),
                "--allow-loopback-server",
            ),
        ] {
            let e = validate(&o).unwrap_err();
            assert!(e.is::<crate::cli::UsageError>(), "{e}");
            assert!(e.to_string().contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn names_derived_from_the_service_account_fit() {
        // 21 + 12 + 1 + sa <= 253 for the role; sa + 26 <= 253 for the token Secret.
        // Dot-separated labels of 49 characters (meshctl checks labels of at most 63).
        let sa = |n: usize| -> String {
            (0..n)
                .map(|i| if i % 50 == 49 { '.' } else { 'a' })
                .collect()
        };
        validate(&opts(None, &["--service-account", &sa(219)])).unwrap();
        let e = validate(&opts(None, &["--service-account", &sa(220)])).unwrap_err();
        assert!(
            e.to_string().contains("ClusterRoleBinding") && e.to_string().contains("at most 219"),
            "{e}"
        );
        // Without the role (--create-service-account=false), the token Secret's name limits.
        let no_role = ["--create-service-account=false", "--service-account"];
        validate(&opts(None, &[&no_role[..], &[&sa(227)]].concat())).unwrap();
        let e = validate(&opts(None, &[&no_role[..], &[&sa(228)]].concat())).unwrap_err();
        assert!(e.to_string().contains("token Secret"), "{e}");
        // ...which --token-ttl or --secret-name do not create.
        let longest = sa(253);
        let ttl = [&no_role[..], &[&longest, "--token-ttl", "1h"]].concat();
        validate(&opts(None, &ttl)).unwrap();
        let named = [&no_role[..], &[&longest, "--secret-name", "t"]].concat();
        validate(&opts(None, &named)).unwrap();
    }
}
