//! Reading kubeconfig files: which file (`--kubeconfig`, `KUBECONFIG`, `~/.kube/config`),
//! which context, and the context's user and CA, each with an error that says the fix.
//! Files are read bounded and parse errors carry no kubeconfig text (`parse.rs`).
//! No network here: `api.rs` connects.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use kube::config::Kubeconfig;

use super::parse::read_kubeconfig;

/// kube 5 with rustls compiles in no crypto provider: install aws-lc-rs once per process.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A loaded kubeconfig and where it came from (for error messages).
pub struct KubeconfigFile {
    /// The file, or for a `KUBECONFIG` list the list as given.
    pub path: PathBuf,
    pub config: Kubeconfig,
    /// For a `KUBECONFIG` list: the file that defined each user and each cluster (the first
    /// to name it, as it is the one used), so that a message says which file to edit.
    origins: Origins,
}

/// Which file of a `KUBECONFIG` list defined each user and cluster, by name.
#[derive(Default)]
struct Origins {
    users: HashMap<String, PathBuf>,
    clusters: HashMap<String, PathBuf>,
}

impl KubeconfigFile {
    pub fn load(path: Option<&Path>) -> Result<KubeconfigFile> {
        let path = match path {
            Some(p) => p.to_path_buf(),
            None => {
                // KUBECONFIG=a:b merges the files, as kubectl does.
                if let Some(v) = std::env::var_os("KUBECONFIG")
                    && std::env::split_paths(&v)
                        .filter(|p| !p.as_os_str().is_empty())
                        .count()
                        > 1
                {
                    let (config, origins) = merged(&v)?;
                    return Ok(KubeconfigFile {
                        config,
                        origins,
                        path: PathBuf::from(v),
                    });
                }
                default_path()?
            }
        };
        if !path.exists() {
            bail!(
                "kubeconfig {} not found; pass --kubeconfig FILE or set KUBECONFIG",
                path.display()
            );
        }
        let config = read_kubeconfig(&path)?;
        Ok(KubeconfigFile {
            path,
            config,
            origins: Origins::default(),
        })
    }

    /// The file that defines kubeconfig user `user`: in a `KUBECONFIG` list, the first file
    /// naming it (the entry kubectl and meshctl use); otherwise the one file.
    pub(super) fn file_of_user(&self, user: &str) -> &Path {
        self.origins.users.get(user).unwrap_or(&self.path)
    }

    /// [`Self::file_of_user`] for the cluster entry named `cluster`.
    pub(super) fn file_of_cluster(&self, cluster: &str) -> &Path {
        self.origins.clusters.get(cluster).unwrap_or(&self.path)
    }

    /// The cluster entry name of a context.
    pub(super) fn cluster_of(&self, context: &str) -> Option<String> {
        self.config
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
    }

    /// The context to use: `wanted`, else the current context.
    pub fn context_name(&self, wanted: Option<&str>) -> Result<String> {
        match wanted {
            Some(c) => Ok(c.to_string()),
            None => self.config.current_context.clone().ok_or_else(|| {
                anyhow!(
                    "{} has no current-context; pass --context (available: {})",
                    self.path.display(),
                    self.available()
                )
            }),
        }
    }

    fn available(&self) -> String {
        let names: Vec<&str> = self
            .config
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    /// Checks that every context exists before anything is changed.
    pub fn require_contexts(&self, contexts: &[String]) -> Result<()> {
        for c in contexts {
            if !self.config.contexts.iter().any(|n| &n.name == c) {
                bail!(
                    "context {c:?} not found in {}; available: {}",
                    self.path.display(),
                    self.available()
                );
            }
        }
        Ok(())
    }

    /// The kubeconfig user (credential entry) of a context.
    pub(super) fn user_of(&self, context: &str) -> Option<String> {
        self.config
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.as_ref())
            .and_then(|c| c.user.clone())
    }

    /// The PEM CA of the context's cluster, from `certificate-authority-data` or the file.
    pub(super) fn ca_pem(&self, context: &str) -> Result<Option<Vec<u8>>> {
        let Some(cluster_name) = self
            .config
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.as_ref())
            .map(|c| c.cluster.clone())
        else {
            return Ok(None);
        };
        let Some(cluster) = self
            .config
            .clusters
            .iter()
            .find(|c| c.name == cluster_name)
            .and_then(|c| c.cluster.as_ref())
        else {
            return Ok(None);
        };
        if let Some(data) = &cluster.certificate_authority_data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .context("certificate-authority-data is not base64")?;
            return Ok(Some(bytes));
        }
        if let Some(file) = &cluster.certificate_authority {
            let bytes = pki::files::read_input(Path::new(file))
                .map_err(|e| anyhow!("reading CA file {file}: {e}"))?;
            return Ok(Some(bytes));
        }
        Ok(None)
    }
}

/// The files of a `KUBECONFIG` list merged as client-go's loader merges them
/// (`staging/src/k8s.io/client-go/tools/clientcmd/loader.go`, `Load`): empty entries and files
/// that do not exist are skipped, each file is read once, the first file to name a context,
/// cluster or user wins. Only when none of the files exists is it an error (kubectl then has
/// no configuration either). Also returns which file defined each user and cluster.
fn merged(list: &std::ffi::OsStr) -> Result<(Kubeconfig, Origins)> {
    let mut seen: Vec<PathBuf> = Vec::new();
    let mut missing = Vec::new();
    let mut config = Kubeconfig::default();
    let mut origins = Origins::default();
    for p in std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()) {
        if seen.contains(&p) {
            continue;
        }
        seen.push(p.clone());
        // A dangling symlink is missing too (Go's os.IsNotExist on reading it).
        if std::fs::metadata(&p).is_err_and(|e| e.kind() == ErrorKind::NotFound) {
            missing.push(p.display().to_string());
            continue;
        }
        let next = read_kubeconfig(&p).context("reading the kubeconfig files in KUBECONFIG")?;
        for u in &next.auth_infos {
            origins
                .users
                .entry(u.name.clone())
                .or_insert_with(|| p.clone());
        }
        for c in &next.clusters {
            origins
                .clusters
                .entry(c.name.clone())
                .or_insert_with(|| p.clone());
        }
        config = config
            .merge(next)
            .map_err(|e| anyhow!("{e}"))
            .context("merging the kubeconfig files in KUBECONFIG")?;
    }
    if missing.len() == seen.len() {
        bail!(
            "none of the kubeconfig files in KUBECONFIG exists ({}); pass --kubeconfig FILE or \
             fix KUBECONFIG",
            missing.join(", ")
        );
    }
    Ok((config, origins))
}

fn default_path() -> Result<PathBuf> {
    if let Some(v) = std::env::var_os("KUBECONFIG")
        && let Some(first) = std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty())
    {
        return Ok(first);
    }
    let home = std::env::var_os("HOME")
        .ok_or_else(|| anyhow!("no kubeconfig: pass --kubeconfig FILE (HOME is not set)"))?;
    Ok(PathBuf::from(home).join(".kube").join("config"))
}
