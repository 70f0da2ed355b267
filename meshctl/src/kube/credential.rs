//! What a kubeconfig's credential may be before meshctl builds a client from it.
//!
//! Local kubeconfigs are the user's own and used as kubectl uses them (exec plugins run),
//! with three differences made before kube sees them ([`prepare_local`]): a `tokenFile` is
//! read here, bounded and trimmed as client-go reads it; every static token must fit in an
//! HTTP header (kube hands it to tower-http, which panics on one that does not); and a
//! `proxy-url` is refused with the fix (kube is built without proxy support).
//!
//! Kubeconfigs stored in a cluster (remote secrets, which `check` uses on the operator's
//! machine) are written by whoever may write Secrets there. [`stored_problems`] refuses what
//! istiod refuses (istio/istio `pkg/kube/multicluster/secretcontroller.go`,
//! `sanitizeKubeConfig`: exec, `tokenFile`, `client-certificate`, `client-key` and every
//! `auth-provider` but oidc) and more, as nothing of the operator's machine is the writer's
//! to use: a `certificate-authority` file (istiod allows it; here it could be `/dev/zero`),
//! a server that is not `https://` (the token would travel in clear text), a `proxy-url`, and
//! a token that fits in no HTTP header. Messages name fields, never their values.

use std::path::Path;

use anyhow::{Result, bail};
use http::HeaderValue;
use kube::config::{AuthInfo, AuthProviderConfig, Kubeconfig};
use secrecy::{ExposeSecret, SecretString};

use super::errors::ConnectError;

/// Why `token` cannot be sent as `Authorization: Bearer <token>`; `None` when it can.
pub fn token_problem(token: &str) -> Option<&'static str> {
    let fits = |t: &str| HeaderValue::try_from(format!("Bearer {t}")).is_ok();
    if fits(token) {
        None
    } else if fits(token.trim()) {
        Some(
            "it starts or ends with a line break or another control character (a YAML \
             `token: |` block keeps the final line break)",
        )
    } else if token.contains(['\n', '\r']) {
        Some("it contains a line break")
    } else {
        Some("it contains a control character")
    }
}

/// The token kube sends for `auth`, by kube's precedence (auth-provider, then basic auth,
/// then `token`); `what` names where it comes from.
fn static_tokens(auth: &AuthInfo) -> Vec<(String, &str)> {
    if let Some(p) = &auth.auth_provider {
        return provider_tokens(p);
    }
    if auth.username.is_some() && auth.password.is_some() {
        return Vec::new();
    }
    auth.token
        .as_ref()
        .map(|t| vec![("token".to_string(), t.expose_secret())])
        .unwrap_or_default()
}

/// The tokens kube takes from an auth-provider's config as they are (oidc: `id-token`;
/// gcp: `id-token`, or a cached `access-token`).
fn provider_tokens(p: &AuthProviderConfig) -> Vec<(String, &str)> {
    let keys: &[&str] = match p.name.as_str() {
        "oidc" => &["id-token"],
        "gcp" => &["id-token", "access-token"],
        _ => &[],
    };
    keys.iter()
        .filter_map(|k| {
            Some((
                format!("auth-provider {} {k}", p.name),
                p.config.get(*k)?.as_str(),
            ))
        })
        .collect()
}

/// A name from a kubeconfig as messages print it: quoted, control characters escaped, at
/// most 64 characters.
pub fn shown(name: &str) -> String {
    let short: String = name.chars().take(64).collect();
    let more = if name.chars().count() > 64 { "…" } else { "" };
    format!("{short:?}{more}")
}

/// A server URL from a kubeconfig stored in a cluster, as messages print it: user info and
/// a query (where a password or token could hide) replaced by `***`, control characters
/// escaped, at most 200 characters.
pub fn shown_server(url: &str) -> String {
    let mut s = url.to_string();
    if let Some(q) = s.find(['?', '#']) {
        s.truncate(q);
        s.push_str("?***");
    }
    let rest_at = s.find("://").map_or(0, |i| i + 3);
    let authority_end = s[rest_at..].find('/').map_or(s.len(), |i| rest_at + i);
    if let Some(at) = s[rest_at..authority_end].rfind('@') {
        s.replace_range(rest_at..rest_at + at, "***");
    }
    let short: String = s.chars().take(200).flat_map(char::escape_debug).collect();
    if s.chars().count() > 200 {
        format!("{short}…")
    } else {
        short
    }
}

/// Makes the credential of `context` ready for kube, or says what to fix (naming the user and
/// the file defining it, `user_file`, or the cluster and `cluster_file`): its `tokenFile` read now, bounded, whitespace trimmed as client-go's file
/// token source trims it (`staging/src/k8s.io/client-go/transport/token_source.go`), and
/// sent as the token (read once per command, not every minute); every static token checked
/// (an inline `token` is not trimmed: client-go sends it as written, and Go's HTTP client
/// refuses a line break in it); a `proxy-url` refused.
pub(super) fn prepare_local(
    config: &mut Kubeconfig,
    context: &str,
    cluster_file: &Path,
    user_file: &Path,
) -> Result<()> {
    let Some(ctx) = config
        .contexts
        .iter()
        .find(|c| c.name == context)
        .and_then(|c| c.context.clone())
    else {
        return Ok(());
    };
    if let Some(cluster) = config
        .clusters
        .iter()
        .find(|c| c.name == ctx.cluster)
        .and_then(|c| c.cluster.as_ref())
        && cluster.proxy_url.is_some()
    {
        bail!(
            "cluster {} in {} sets proxy-url, and meshctl does not connect through proxies: \
             remove proxy-url from that cluster entry (or use a kubeconfig without it) and \
             make the API server reachable directly (a VPN, or an SSH tunnel to a local port \
             named in server:)",
            shown(&ctx.cluster),
            cluster_file.display()
        );
    }
    let Some(user) = ctx.user else {
        return Ok(());
    };
    let Some(auth) = config
        .auth_infos
        .iter_mut()
        .find(|a| a.name == user)
        .and_then(|a| a.auth_info.as_mut())
    else {
        return Ok(());
    };
    // Named as the credential's failure, not the API server's (`check` tells them apart).
    let unusable = |detail: String| ConnectError::Unusable {
        context: context.to_string(),
        user: user.clone(),
        kubeconfig: user_file.display().to_string(),
        detail,
    };
    let uses_token_file = auth.auth_provider.is_none()
        && !(auth.username.is_some() && auth.password.is_some())
        && auth.token.is_none();
    if uses_token_file && let Some(file) = auth.token_file.take() {
        let token = read_token_file(Path::new(&file))
            .map_err(|e| unusable(format!("its tokenFile {file}: {e}")))?;
        auth.token = Some(SecretString::from(token));
    }
    for (what, token) in static_tokens(auth) {
        if let Some(problem) = token_problem(token) {
            return Err(unusable(format!(
                "its {what} cannot be sent in an HTTP header: {problem}. Remove the line break \
                 or control character (write the token on the `token:` line itself, or use \
                 `token: |-`), then retry"
            ))
            .into());
        }
    }
    Ok(())
}

/// A token file's content as client-go uses it: whitespace around it trimmed, and it must
/// not be empty. Read bounded (a regular file of at most 4 MiB).
fn read_token_file(path: &Path) -> std::result::Result<String, String> {
    let bytes = pki::files::read_input(path).map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())?;
    let token = text.trim();
    if token.is_empty() {
        return Err("it is empty (write the token into it)".into());
    }
    if let Some(problem) = token_problem(token) {
        return Err(format!(
            "its token cannot be sent in an HTTP header: {problem}"
        ));
    }
    Ok(token.to_string())
}

/// What a kubeconfig stored in a cluster holds that meshctl will not use, one entry per
/// field (`user "west": exec ...`); empty when it may be used. See the module comment.
pub fn stored_problems(k: &Kubeconfig) -> Vec<String> {
    let mut out = Vec::new();
    for named in &k.auth_infos {
        let Some(a) = &named.auth_info else { continue };
        let user = format!("user {}", shown(&named.name));
        if a.exec.is_some() {
            out.push(format!(
                "{user}: exec (it would run a command on this machine)"
            ));
        }
        if let Some(p) = &a.auth_provider
            && p.name != "oidc"
        {
            out.push(format!(
                "{user}: auth-provider {} (it may run a command or read files on this \
                 machine; only oidc is used, as istiod allows)",
                shown(&p.name)
            ));
        }
        for (field, set) in [
            ("tokenFile", a.token_file.is_some()),
            ("client-certificate", a.client_certificate.is_some()),
            ("client-key", a.client_key.is_some()),
        ] {
            if set {
                out.push(format!(
                    "{user}: {field} (it names a file on this machine; a stored kubeconfig \
                     carries its credential inline)"
                ));
            }
        }
        for (what, token) in static_tokens(a) {
            if let Some(problem) = token_problem(token) {
                out.push(format!(
                    "{user}: a {what} that fits in no HTTP header ({problem})"
                ));
            }
        }
    }
    for named in &k.clusters {
        let Some(c) = &named.cluster else { continue };
        let cluster = format!("cluster {}", shown(&named.name));
        if let Some(server) = &c.server
            && !server
                .get(..8)
                .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
        {
            out.push(format!(
                "{cluster}: a server that is not https:// (the token would travel unencrypted)"
            ));
        }
        if c.certificate_authority.is_some() {
            out.push(format!(
                "{cluster}: certificate-authority (it names a file on this machine; a stored \
                 kubeconfig carries certificate-authority-data)"
            ));
        }
        if c.proxy_url.is_some() {
            out.push(format!(
                "{cluster}: proxy-url (meshctl does not connect through proxies)"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL: &str = "SENTINEL-tok-31c9";

    fn kubeconfig(user: &str, cluster: &str) -> Kubeconfig {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n- name: c\n  \
             cluster:\n{cluster}contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n\
             users:\n- name: u\n  user:\n{user}"
        );
        crate::kube::parse_kubeconfig(&text).unwrap()
    }

    const HTTPS: &str = "    server: https://10.0.0.1:6443\n";

    #[test]
    fn tokens_that_fit_no_header_are_named() {
        assert_eq!(token_problem("abc.def-_~+/="), None);
        assert_eq!(token_problem("a b\tc"), None);
        assert!(
            token_problem("abc\n")
                .unwrap()
                .contains("ends with a line break")
        );
        assert!(
            token_problem("a\nb")
                .unwrap()
                .contains("contains a line break")
        );
        assert!(
            token_problem("a\u{1}b")
                .unwrap()
                .contains("control character")
        );
    }

    #[test]
    fn a_stored_kubeconfig_that_runs_reads_or_leaks_is_refused_by_field_never_value() {
        for (user, cluster, want) in [
            (
                format!("    exec:\n      command: sh\n      args: [-c, {SENTINEL}]\n"),
                HTTPS.to_string(),
                "exec",
            ),
            (
                format!("    tokenFile: /{SENTINEL}\n"),
                HTTPS.into(),
                "tokenFile",
            ),
            (
                format!("    client-certificate: /{SENTINEL}\n"),
                HTTPS.into(),
                "client-certificate",
            ),
            (
                format!("    client-key: /{SENTINEL}\n"),
                HTTPS.into(),
                "client-key",
            ),
            (
                format!(
                    "    auth-provider:\n      name: gcp\n      config:\n        cmd-path: \
                     {SENTINEL}\n"
                ),
                HTTPS.into(),
                "auth-provider \"gcp\"",
            ),
            (
                format!("    token: \"{SENTINEL}\\n\"\n"),
                HTTPS.into(),
                "fits in no HTTP header",
            ),
            (
                format!("    token: {SENTINEL}\n"),
                format!("    server: http://{SENTINEL}:80\n"),
                "not https://",
            ),
            (
                format!("    token: {SENTINEL}\n"),
                format!("{HTTPS}    certificate-authority: /{SENTINEL}\n"),
                "certificate-authority",
            ),
            (
                format!("    token: {SENTINEL}\n"),
                format!("{HTTPS}    proxy-url: http://u:{SENTINEL}@p:3128\n"),
                "proxy-url",
            ),
        ] {
            let problems = stored_problems(&kubeconfig(&user, &cluster)).join("; ");
            assert!(problems.contains(want), "{want}: {problems}");
            assert!(!problems.contains(SENTINEL), "{problems}");
        }
    }

    #[test]
    fn what_meshctl_writes_and_oidc_are_accepted() {
        let ok = |user: &str| stored_problems(&kubeconfig(user, HTTPS));
        assert!(ok(&format!("    token: {SENTINEL}\n")).is_empty());
        let oidc = "    auth-provider:\n      name: oidc\n      config:\n        id-token: t\n";
        assert!(ok(oidc).is_empty());
        assert!(ok("    username: a\n    password: b\n").is_empty());
        let upper = kubeconfig("    token: t\n", "    server: HTTPS://10.0.0.1\n");
        assert!(stored_problems(&upper).is_empty());
    }

    #[test]
    fn a_local_token_file_is_read_trimmed_and_a_bad_token_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{SENTINEL}\n")).unwrap();
        let user = format!("    tokenFile: {}\n", file.display());
        let mut k = kubeconfig(&user, HTTPS);
        prepare_local(&mut k, "c", Path::new("kc"), Path::new("kc")).unwrap();
        let auth = k.auth_infos[0].auth_info.as_ref().unwrap();
        assert_eq!(auth.token.as_ref().unwrap().expose_secret(), SENTINEL);
        assert!(auth.token_file.is_none());

        std::fs::write(&file, " \n").unwrap();
        let mut k = kubeconfig(&user, HTTPS);
        let e = prepare_local(&mut k, "c", Path::new("kc"), Path::new("kc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is empty") && e.contains("user \"u\""), "{e}");

        let mut k = kubeconfig(&format!("    token: |\n      {SENTINEL}\n"), HTTPS);
        let e = prepare_local(&mut k, "c", Path::new("kc"), Path::new("kc"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("kubeconfig user \"u\" (context \"c\") in kc cannot be used")
                && e.contains("line break"),
            "{e}"
        );
        assert!(!e.contains(SENTINEL), "{e}");

        let proxy = format!("{HTTPS}    proxy-url: http://u:{SENTINEL}@p:3128\n");
        let mut k = kubeconfig("    token: t\n", &proxy);
        let e = prepare_local(&mut k, "c", Path::new("kc"), Path::new("kc"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("remove proxy-url"), "{e}");
        assert!(!e.contains(SENTINEL), "{e}");
    }
}
