//! Connecting to the Kubernetes API: kubeconfig and context loading, the start-up
//! reachability check, and errors that name their cause and fix.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

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
            let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                path: path.clone(),
                reason: error_chain(&e),
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
            if let Ok(kc) = Kubeconfig::read() {
                check_context(&kc, opts.context.as_deref(), "KUBECONFIG")?;
            }
            kube::Config::from_kubeconfig(&kco)
                .await
                .map_err(|e| KubeError::DefaultKubeconfig(error_chain(&e)))?
        }
        None => match kube::Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => {
                kube::Config::from_kubeconfig(&kco)
                    .await
                    .map_err(|e| KubeError::NoConfig {
                        in_cluster: error_chain(&in_cluster),
                        kubeconfig: error_chain(&e),
                    })?
            }
        },
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| KubeError::Client(error_chain(&e)))?;
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
