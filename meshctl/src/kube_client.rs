//! Kubernetes access for the cluster commands: kubeconfig and context selection with
//! clear errors, a client per context, server-side apply of rendered objects, and the
//! printing of objects for `--dry-run` and `-o yaml|json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use clap::{Args, ValueEnum};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde_json::{Value, json};

use crate::redact::{Secrets, redact};
mod errors;
pub use errors::{ConnectError, Failure, classify, error_text};

/// Field manager of every server-side apply.
pub const MANAGER: &str = "meshctl";
/// Label on everything meshctl creates; `unjoin` deletes exactly what carries it.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "meshctl";
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=meshctl";

/// kube 5 with rustls compiles in no crypto provider: install aws-lc-rs once per process.
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Runs an async command on a fresh runtime (the CLI is otherwise synchronous).
pub fn block_on<T>(f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    init_crypto();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f)
}

/// Output format of rendered objects and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Yaml,
    Json,
}

/// `--kubeconfig` and one `--context` (commands that act on one cluster).
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// A loaded kubeconfig and where it came from (for error messages).
pub struct KubeconfigFile {
    pub path: PathBuf,
    pub config: Kubeconfig,
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
                    let config = Kubeconfig::from_env()
                        .map_err(|e| anyhow!("{e}"))
                        .context("reading the kubeconfig files in KUBECONFIG")?
                        .unwrap_or_default();
                    return Ok(KubeconfigFile {
                        path: PathBuf::from(v),
                        config,
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
        let config = Kubeconfig::read_from(&path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        Ok(KubeconfigFile { path, config })
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

    /// A client for `context`, after checking that its API server answers.
    pub async fn connect(&self, context: &str) -> Result<Cluster> {
        self.require_contexts(&[context.to_string()])?;
        let opts = KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let mut cfg = Config::from_custom_kubeconfig(self.config.clone(), &opts)
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("context {context:?} in {}", self.path.display()))?;
        cfg.connect_timeout = Some(Duration::from_secs(5));
        cfg.read_timeout = Some(Duration::from_secs(30));
        let server = cfg
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let ca_pem = self.ca_pem(context)?;
        let tls_server_name = cfg.tls_server_name.clone();
        let client = Client::try_from(cfg)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("building a client for context {context:?}"))?;
        if let Err(e) = client.apiserver_version().await {
            let user = self.user_of(context).unwrap_or_default();
            return Err(ConnectError::new(&e, context, &server, &user, &self.path).into());
        }
        Ok(Cluster {
            context: context.to_string(),
            client,
            server,
            ca_pem,
            tls_server_name,
        })
    }

    /// The kubeconfig user (credential entry) of a context.
    fn user_of(&self, context: &str) -> Option<String> {
        self.config
            .contexts
            .iter()
            .find(|c| c.name == context)
            .and_then(|c| c.context.as_ref())
            .and_then(|c| c.user.clone())
    }

    /// The PEM CA of the context's cluster, from `certificate-authority-data` or the file.
    fn ca_pem(&self, context: &str) -> Result<Option<Vec<u8>>> {
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
            let bytes = std::fs::read(file).with_context(|| format!("reading CA file {file}"))?;
            return Ok(Some(bytes));
        }
        Ok(None)
    }
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

pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// One cluster, reached through one kubeconfig context.
#[derive(Clone)]
pub struct Cluster {
    pub context: String,
    pub client: Client,
    /// API server URL as the kubeconfig states it.
    pub server: String,
    /// The API server CA (PEM) from the kubeconfig, if it names one.
    pub ca_pem: Option<Vec<u8>>,
    pub tls_server_name: Option<String>,
}

/// Plural and scope of the kinds meshctl writes.
fn resource_of(api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "Secret" => ("secrets", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "Service" => ("services", true),
        "Pod" => ("pods", true),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Deployment" => ("deployments", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "HorizontalPodAutoscaler" => ("horizontalpodautoscalers", true),
        "Gateway" => ("gateways", true),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        other => bail!("meshctl does not manage objects of kind {other}"),
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Ok((ApiResource::from_gvk_with_plural(&gvk, plural), namespaced))
}

fn api_for(
    c: &Cluster,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
) -> Result<Api<DynamicObject>> {
    let (ar, namespaced) = resource_of(api_version, kind)?;
    Ok(match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(c.client.clone(), ns, &ar),
        (true, None) => Api::all_with(c.client.clone(), &ar),
        (false, _) => Api::all_with(c.client.clone(), &ar),
    })
}

fn meta<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

/// `Kind ns/name` for messages.
pub fn describe(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("?");
    match meta(obj, "namespace") {
        Some(ns) => format!("{kind} {ns}/{}", meta(obj, "name").unwrap_or("?")),
        None => format!("{kind} {}", meta(obj, "name").unwrap_or("?")),
    }
}

/// Server-side apply of a rendered object (field manager `meshctl`, forced).
pub async fn apply(c: &Cluster, obj: &Value) -> Result<Value> {
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = meta(obj, "name").ok_or_else(|| anyhow!("object without a name"))?;
    let api = api_for(c, av, kind, meta(obj, "namespace"))?;
    let pp = PatchParams::apply(MANAGER).force();
    let out = api
        .patch(name, &pp, &Patch::Apply(obj))
        .await
        .map_err(|e| {
            anyhow!(
                "applying {} in context {:?}: {}",
                describe(obj),
                c.context,
                error_text(&e)
            )
        })?;
    Ok(serde_json::to_value(out)?)
}

/// Applies objects in order.
pub async fn apply_all(c: &Cluster, objs: &[Value]) -> Result<()> {
    for o in objs {
        apply(c, o).await?;
    }
    Ok(())
}

/// One object as JSON, or `None` when it does not exist.
pub async fn get(
    c: &Cluster,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>> {
    let api = api_for(c, api_version, kind, ns)?;
    match api.get_opt(name).await {
        Ok(o) => Ok(o.map(|o| serde_json::to_value(o).unwrap_or(Value::Null))),
        Err(e) => Err(anyhow!(
            "reading {kind} {name} in context {:?}: {}",
            c.context,
            error_text(&e)
        )),
    }
}

/// Objects of a kind matching a label selector (all namespaces when `ns` is `None`).
pub async fn list(
    c: &Cluster,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    selector: &str,
) -> Result<Vec<Value>> {
    let api = api_for(c, api_version, kind, ns)?;
    let lp = ListParams::default().labels(selector);
    match api.list(&lp).await {
        Ok(l) => Ok(l
            .items
            .into_iter()
            .map(|o| serde_json::to_value(o).unwrap_or(Value::Null))
            .collect()),
        Err(e) if status_code(&e) == Some(404) => Ok(Vec::new()),
        Err(e) => Err(anyhow!(
            "listing {kind} in context {:?}: {}",
            c.context,
            error_text(&e)
        )),
    }
}

/// Deletes an object; `false` when it was already gone.
pub async fn delete(c: &Cluster, obj: &Value) -> Result<bool> {
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = meta(obj, "name").unwrap_or_default();
    let api = api_for(c, av, kind, meta(obj, "namespace"))?;
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(e) if status_code(&e) == Some(404) => Ok(false),
        Err(e) => Err(anyhow!(
            "deleting {} in context {:?}: {}",
            describe(obj),
            c.context,
            error_text(&e)
        )),
    }
}

/// Creates namespace `ns` if it is missing (plain create, not labelled: the namespace is
/// shared with Istio, so `unjoin` never deletes it). Returns true when it was created.
pub async fn ensure_namespace(c: &Cluster, ns: &str) -> Result<bool> {
    if get(c, "v1", "Namespace", None, ns).await?.is_some() {
        return Ok(false);
    }
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
    let obj: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({"metadata": {"name": ns}}))?;
    match api.create(&Default::default(), &obj).await {
        Ok(_) => Ok(true),
        Err(e) if status_code(&e) == Some(409) => Ok(false),
        Err(e) => Err(anyhow!(
            "creating namespace {ns} in context {:?}: {}",
            c.context,
            error_text(&e)
        )),
    }
}

/// The `metadata.labels` map every managed object carries.
pub fn managed_labels() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(MANAGED_BY_KEY.into(), json!(MANAGED_BY_VALUE));
    m
}

/// Renders objects as a YAML stream (`---` separated) or a JSON `List`, private keys
/// redacted.
pub fn render(objs: &[Value], out: Output) -> Result<String> {
    render_objects(&redact(objs, Secrets::Redact), out)
}

fn render_objects(objs: &[Value], out: Output) -> Result<String> {
    match out {
        Output::Yaml => {
            let mut s = String::new();
            for o in objs {
                s.push_str("---\n");
                s.push_str(&serde_yaml::to_string(o)?);
            }
            Ok(s)
        }
        Output::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": objs});
            Ok(format!("{}\n", serde_json::to_string_pretty(&list)?))
        }
    }
}

/// What `--dry-run` prints: each cluster's objects under a header comment (YAML), or one
/// JSON document `{"clusters": [{"context", "objects"}]}`. Private keys are redacted.
pub fn render_plan(plan: &[(String, Vec<Value>)], out: Output) -> Result<String> {
    render_plan_with(plan, out, Secrets::Redact)
}

/// [`render_plan`], printing private keys only with [`Secrets::Show`] (`--show-secrets`).
pub fn render_plan_with(
    plan: &[(String, Vec<Value>)],
    out: Output,
    secrets: Secrets,
) -> Result<String> {
    match out {
        Output::Yaml => {
            let mut s = String::new();
            for (context, objs) in plan {
                s.push_str(&format!(
                    "# context {context}: {} object(s) (dry run: nothing applied)\n",
                    objs.len()
                ));
                s.push_str(&render_objects(&redact(objs, secrets), Output::Yaml)?);
            }
            Ok(s)
        }
        Output::Json => {
            let clusters: Vec<Value> = plan
                .iter()
                .map(|(c, objs)| json!({"context": c, "objects": redact(objs, secrets)}))
                .collect();
            Ok(format!(
                "{}\n",
                serde_json::to_string_pretty(&json!({"clusters": clusters}))?
            ))
        }
    }
}

/// Parses `ctx=value` flags into pairs, rejecting unknown contexts and duplicates.
pub fn parse_mapping(
    flag: &str,
    items: &[String],
    contexts: &[String],
) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        let (ctx, val) = item
            .split_once('=')
            .ok_or_else(|| anyhow!("--{flag} {item:?}: expected CONTEXT=VALUE"))?;
        if !contexts.iter().any(|c| c == ctx) {
            bail!(
                "--{flag} {item:?}: context {ctx:?} is not one of the --context values ({})",
                contexts.join(", ")
            );
        }
        if out.iter().any(|(c, _)| c == ctx) {
            bail!("--{flag}: context {ctx:?} given twice");
        }
        out.push((ctx.to_string(), val.to_string()));
    }
    Ok(out)
}

pub fn lookup<'a>(map: &'a [(String, String)], ctx: &str) -> Option<&'a str> {
    map.iter().find(|(c, _)| c == ctx).map(|(_, v)| v.as_str())
}
