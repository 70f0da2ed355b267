//! Connecting to the Kubernetes API: kubeconfig and context loading, the start-up
//! reachability check, and errors that name their cause and fix.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};

use super::overload::Overload;
use crate::config::{DefaultCredentials, KubeOptions};

/// Bound on the start-up reachability check and on each probe.
pub(super) const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Kubernetes discovery could not start. Each message carries its whole cause chain
/// (deduplicated), so no variant has a `source`: printed with its causes, nothing repeats.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes discovery: kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error(
        "Kubernetes discovery: kubeconfig {path}: no context {context:?} (contexts: {available})"
    )]
    NoContext {
        path: String,
        context: String,
        available: String,
    },
    #[error("Kubernetes discovery: kubeconfig (KUBECONFIG or ~/.kube/config): {0}")]
    DefaultKubeconfig(String),
    #[error(
        "Kubernetes discovery: no Kubernetes configuration: not in a cluster ({in_cluster}) and no kubeconfig ({kubeconfig}); pass --kubeconfig or --endpoints"
    )]
    NoConfig {
        in_cluster: String,
        kubeconfig: String,
    },
    #[error("Kubernetes discovery: creating the Kubernetes client: {0}")]
    Client(String),
    #[error("Kubernetes discovery: Kubernetes API server {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "Kubernetes discovery: the Kubernetes API server {url} refused the credential (401 Unauthorized) of {credential}: fix: {fix}"
    )]
    CredentialRefused {
        url: String,
        credential: String,
        fix: &'static str,
    },
}

/// Builds the client from `--kubeconfig`/`--context`, else a set `KUBECONFIG`, else
/// in-cluster, else `~/.kube/config`, and checks that the API server answers.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let kco = KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = read_kubeconfig(path).map_err(|reason| KubeError::Kubeconfig {
                path: path.clone(),
                reason,
            })?;
            check_context(&kc, opts.context.as_deref(), &path.display().to_string())?;
            kube::Config::from_custom_kubeconfig(kc, &kco)
                .await
                .map_err(|e| KubeError::Kubeconfig {
                    path: path.clone(),
                    reason: error_chain(&e),
                })?
        }
        // A set KUBECONFIG wins over in-cluster credentials, as for kubectl.
        None if opts.context.is_some()
            || DefaultCredentials::from_env() == DefaultCredentials::KubeconfigEnv =>
        {
            let kc = default_kubeconfig().map_err(KubeError::DefaultKubeconfig)?;
            check_context(&kc, opts.context.as_deref(), "KUBECONFIG")?;
            kube::Config::from_custom_kubeconfig(kc, &kco)
                .await
                .map_err(|e| KubeError::DefaultKubeconfig(error_chain(&e)))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => {
                let no_config = |kubeconfig| KubeError::NoConfig {
                    in_cluster: error_chain(&in_cluster),
                    kubeconfig,
                };
                let kc = default_kubeconfig().map_err(no_config)?;
                kube::Config::from_custom_kubeconfig(kc, &kco)
                    .await
                    .map_err(|e| no_config(error_chain(&e)))?
            }
        },
    };
    let url = config.cluster_url.to_string();
    let mut config = config;
    config.default_retry = false;
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| KubeError::Client(error_chain(&e)))?
        .with_layer(&tower::buffer::BufferLayer::new(1024))
        .with_layer(&tower::retry::RetryLayer::new(Overload::default()))
        .build();
    match tokio::time::timeout(REACH_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(%url, version = %v.git_version, "Kubernetes API server reachable")
        }
        Ok(Err(kube::Error::Api(s))) if s.code == 401 => {
            let (credential, fix) = credential_source(opts);
            return Err(KubeError::CredentialRefused {
                url,
                credential,
                fix,
            });
        }
        Ok(Err(e)) => {
            return Err(KubeError::Unreachable {
                url,
                reason: error_chain(&e),
            });
        }
        Err(_) => {
            return Err(KubeError::Unreachable {
                url,
                reason: format!("no answer within {REACH_TIMEOUT:?}"),
            });
        }
    }
    Ok(client)
}

/// Where the refused credential came from, and how to fix it.
fn credential_source(opts: &KubeOptions) -> (String, &'static str) {
    let context = opts
        .context
        .as_deref()
        .map_or("the current context".to_string(), |c| {
            format!("context {c:?}")
        });
    let in_kubeconfig = "renew that user's token or client certificate in the kubeconfig, or pass --kubeconfig/--context for a user the cluster accepts";
    match &opts.kubeconfig {
        Some(path) => (
            format!("the user of {context} in kubeconfig {}", path.display()),
            in_kubeconfig,
        ),
        None if opts.context.is_some() => (
            format!("the user of {context} in KUBECONFIG (or ~/.kube/config)"),
            in_kubeconfig,
        ),
        None => (
            "the in-cluster ServiceAccount token (or the current context of KUBECONFIG)".into(),
            "check that the pod's ServiceAccount still exists and its token (/var/run/secrets/kubernetes.io/serviceaccount/token) is current, or pass --kubeconfig",
        ),
    }
}

fn check_context(kc: &Kubeconfig, context: Option<&str>, path: &str) -> Result<(), KubeError> {
    let Some(ctx) = context else { return Ok(()) };
    if kc.contexts.iter().any(|c| c.name == ctx) {
        return Ok(());
    }
    Err(KubeError::NoContext {
        path: path.into(),
        context: ctx.into(),
        available: kc
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// The largest kubeconfig read (4 MiB): a device or a huge file is refused, not read.
const MAX_KUBECONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// The kubeconfig of `KUBECONFIG` (its files merged, as kubectl does), else `~/.kube/config`,
/// each read by [`read_kubeconfig`].
fn default_kubeconfig() -> Result<Kubeconfig, String> {
    let paths: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    if paths.is_empty() {
        let home = std::env::home_dir().ok_or("no KUBECONFIG and no home directory")?;
        let path = home.join(".kube").join("config");
        return read_kubeconfig(&path).map_err(|e| format!("{}: {e}", path.display()));
    }
    paths
        .iter()
        .try_fold(Kubeconfig::default(), |merged, path| {
            let next = read_kubeconfig(path).map_err(|e| format!("{}: {e}", path.display()))?;
            merged.merge(next).map_err(|e| e.to_string())
        })
}

/// Reads a kubeconfig as kube's `Kubeconfig::read_from` does (all documents merged, relative
/// file paths made relative to its directory), but bounded (a regular file of at most
/// [`MAX_KUBECONFIG_BYTES`]) and with parse errors that quote none of its text: the YAML
/// parser's own message shows the lines around the fault, tokens included, and would reach
/// the pod logs.
pub(super) fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, String> {
    use crate::bounded_read::{ReadRefused, read_regular};
    let bytes = read_regular(path, MAX_KUBECONFIG_BYTES).map_err(|e| match e {
        ReadRefused::Io(e) => e.to_string(),
        ReadRefused::NotRegular(what) => {
            format!("{what}, not a regular file: pass the kubeconfig file")
        }
        ReadRefused::TooLarge => {
            "larger than 4 MiB, the limit for a kubeconfig: pass the kubeconfig file".into()
        }
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let mut kc = Kubeconfig::from_yaml(text).map_err(|e| kubeconfig_error(&e))?;
    if let Some(dir) = path.parent() {
        let abs = |p: &mut Option<String>| {
            if let Some(s) = p.as_deref()
                && Path::new(s).is_relative()
                && let Some(joined) = dir.join(s).to_str()
            {
                *p = Some(joined.to_string());
            }
        };
        named_files(&mut kc).for_each(abs);
        for a in kc
            .auth_infos
            .iter_mut()
            .filter_map(|a| a.auth_info.as_mut())
        {
            if let Some(exec) = a.exec.as_mut()
                && exec
                    .command
                    .as_deref()
                    .is_some_and(|c| c.contains(std::path::MAIN_SEPARATOR))
            {
                abs(&mut exec.command);
            }
        }
    }
    // kube reads these files without a bound: one that exists must be a regular file of at
    // most the cap, so that a link to `/dev/zero` is refused instead of filling the memory. A
    // missing one is left to kube, which fails only if its context is used.
    for file in named_files(&mut kc).flatten() {
        let Ok(meta) = std::fs::metadata(&*file) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_KUBECONFIG_BYTES {
            return Err(format!(
                "it names {file}, which is not a regular file of at most {} MiB",
                MAX_KUBECONFIG_BYTES >> 20
            ));
        }
    }
    Ok(kc)
}

/// The file paths a kubeconfig names: each cluster's CA, each user's client certificate, key
/// and token file.
fn named_files(kc: &mut Kubeconfig) -> impl Iterator<Item = &mut Option<String>> {
    let clusters = kc
        .clusters
        .iter_mut()
        .filter_map(|c| c.cluster.as_mut())
        .map(|c| &mut c.certificate_authority);
    let users = kc
        .auth_infos
        .iter_mut()
        .filter_map(|a| a.auth_info.as_mut())
        .flat_map(|a| {
            [
                &mut a.client_certificate,
                &mut a.client_key,
                &mut a.token_file,
            ]
        });
    clusters.chain(users)
}

/// A kubeconfig parse error as its location and the parser's short reason: no snippet, and
/// no quoted value (serde's "invalid type: string \"…\"" quotes the scalar).
fn kubeconfig_error(e: &KubeconfigError) -> String {
    let KubeconfigError::Parse(inner) = e else {
        return e.to_string();
    };
    let plain = inner.without_snippet().to_string();
    let first = plain.lines().next().unwrap_or_default().trim();
    let first = first.strip_prefix("error:").unwrap_or(first).trim();
    let mut reason = String::new();
    let mut quote = None;
    for c in first.chars() {
        match quote {
            Some(q) if c == q => {
                reason.push('…');
                reason.push(c);
                quote = None;
            }
            Some(_) => {}
            None if c == '"' || c == '`' => {
                reason.push(c);
                quote = Some(c);
            }
            None => reason.push(c),
        }
    }
    if quote.is_some() {
        reason.push('…');
    }
    match inner.location() {
        Some(l) if !reason.contains("line ") => format!(
            "failed to parse kubeconfig YAML: {reason} at line {}, column {}",
            l.line(),
            l.column()
        ),
        _ => format!("failed to parse kubeconfig YAML: {reason}"),
    }
}

/// An error and its causes on one line, each cause once (kube's errors often repeat their
/// source in their own message).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const SENTINEL: &str = "tok-SENTINEL-0123456789";

    #[test]
    fn a_named_file_that_is_a_device_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kc");
        let text = "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    \
                    tokenFile: /dev/zero\n";
        std::fs::write(&path, text).unwrap();
        let e = read_kubeconfig(&path).unwrap_err();
        assert!(e.contains("/dev/zero, which is not a regular file"), "{e}");
        std::fs::write(&path, text.replace("/dev/zero", "missing-token")).unwrap();
        read_kubeconfig(&path).unwrap();
    }

    #[test]
    fn kubeconfig_parse_errors_quote_no_text() {
        let dir = tempfile::tempdir().unwrap();
        let head = "apiVersion: v1\nkind: Config\nusers:\n- name: u\n";
        for (body, line) in [
            (
                format!("  user:\n    token: {SENTINEL}\n    bogus: [\n"),
                "line 7",
            ),
            (format!("  user:\n    token: [{SENTINEL}]\n"), "line 6"),
            (format!("  user: \"{SENTINEL}\"\n"), "line 5"),
        ] {
            let path = dir.path().join("kc");
            std::fs::write(&path, format!("{head}{body}")).unwrap();
            let e = read_kubeconfig(&path).unwrap_err();
            assert!(!e.contains("SENTINEL"), "{e}");
            assert!(e.contains(line), "{e}");
        }
        #[cfg(unix)]
        assert!(
            read_kubeconfig(Path::new("/dev/zero"))
                .unwrap_err()
                .contains("not a regular file")
        );
    }
}
