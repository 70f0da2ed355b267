//! Talking to one cluster: `connect` (checks that the API server answers and names the
//! failure), and get/list/server-side apply/delete of objects as JSON, with messages that
//! name the object and the context.

use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions,
};
use kube::config::KubeConfigOptions;
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, Config};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::client::{BuildError, client, plugin_of};
use super::config::{KubeconfigFile, init_crypto};
use super::credential::{prepare_local, shown};
use super::errors::{ConnectError, error_text};
use super::render::{describe, meta};
use super::unreached::CONNECT_TIMEOUT_S;
use crate::istio::MANAGER;

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

impl KubeconfigFile {
    /// A client for `context`, after checking that its API server answers. The credential is
    /// made ready and checked first (`credential::prepare_local`), and a credential that
    /// cannot be used is named as such ([`ConnectError::Unusable`]), never as unreachable.
    pub async fn connect(&self, context: &str) -> Result<Cluster> {
        self.require_contexts(&[context.to_string()])?;
        let cluster_name = self.cluster_of(context).unwrap_or_default();
        let user = self.user_of(context).unwrap_or_default();
        let (cluster_file, user_file) = (
            self.file_of_cluster(&cluster_name),
            self.file_of_user(&user),
        );
        let mut config = self.config.clone();
        prepare_local(&mut config, context, cluster_file, user_file)?;
        let opts = KubeConfigOptions {
            context: Some(context.to_string()),
            ..Default::default()
        };
        let mut cfg = Config::from_custom_kubeconfig(config, &opts)
            .await
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("context {context:?} in {}", self.path.display()))?;
        cfg.cluster_url = server_url(&cfg).map_err(|e| {
            anyhow!(
                "context {context:?}: the server of cluster {} in {} {e}",
                shown(&cluster_name),
                cluster_file.display()
            )
        })?;
        cfg.connect_timeout = Some(Duration::from_secs(CONNECT_TIMEOUT_S));
        cfg.read_timeout = Some(Duration::from_secs(30));
        let server = cfg
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let ca_pem = self.ca_pem(context)?;
        let tls_server_name = cfg.tls_server_name.clone();
        let plugin = plugin_of(&cfg.auth_info);
        let client = match client(cfg, &format!("context {context:?}")) {
            Ok(c) => c,
            Err(BuildError {
                credential: true,
                detail,
            }) => {
                return Err(ConnectError::Unusable {
                    context: context.to_string(),
                    user,
                    kubeconfig: user_file.display().to_string(),
                    detail,
                }
                .into());
            }
            Err(e) => bail!("building a client for context {context:?}: {}", e.detail),
        };
        if let Err(e) = client.apiserver_version().await {
            let at = (context, server.as_str());
            let whose = (user.as_str(), user_file);
            return Err(ConnectError::new(&e, at, whose, plugin.as_deref()).into());
        }
        Ok(Cluster {
            context: context.to_string(),
            client,
            server,
            ca_pem,
            tls_server_name,
        })
    }
}

/// The API server URL of `cfg` as client-go reads a kubeconfig's `server:`
/// (`staging/src/k8s.io/client-go/rest/url_utils.go`, `DefaultServerURL` and
/// `DefaultServerUrlFor`): a URL is used as it is; a host or host:port without a scheme gets
/// `https://` when the cluster or user configures TLS (a CA, a client certificate, or
/// `insecure-skip-tls-verify`) and `http://` otherwise, and must then have no path. kube uses
/// a URL without a scheme as it is and panics on the first request; the error here completes
/// "the server of cluster X in FILE ...".
fn server_url(cfg: &Config) -> std::result::Result<http::Uri, String> {
    let url = &cfg.cluster_url;
    if url.scheme().is_some() && url.authority().is_some() {
        return Ok(url.clone());
    }
    let auth = &cfg.auth_info;
    let tls = cfg.root_cert.is_some()
        || cfg.accept_invalid_certs
        || auth.client_certificate.is_some()
        || auth.client_certificate_data.is_some();
    let scheme = if tls { "https" } else { "http" };
    let fix = "write it as https://HOST:PORT (or HOST:PORT, with the cluster's \
               certificate-authority-data)";
    let with = format!("{scheme}://{url}")
        .parse::<http::Uri>()
        .map_err(|_| format!("is not a URL or a host:port pair: {fix}"))?;
    match (with.authority(), with.path()) {
        (Some(a), "" | "/") if !a.host().is_empty() => Ok(with),
        _ => Err(format!("is not a URL or a host:port pair: {fix}")),
    }
}

fn status_code(e: &kube::Error) -> Option<u16> {
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

/// The plural and whether it is namespaced, of each kind meshctl writes or reads.
pub fn plural_of(kind: &str) -> Option<(&'static str, bool)> {
    Some(match kind {
        "Namespace" => ("namespaces", false),
        "Secret" => ("secrets", true),
        "ServiceAccount" => ("serviceaccounts", true),
        "Service" => ("services", true),
        "Pod" => ("pods", true),
        "Node" => ("nodes", false),
        "ClusterRole" => ("clusterroles", false),
        "ClusterRoleBinding" => ("clusterrolebindings", false),
        "Deployment" => ("deployments", true),
        "PodDisruptionBudget" => ("poddisruptionbudgets", true),
        "HorizontalPodAutoscaler" => ("horizontalpodautoscalers", true),
        "Gateway" => ("gateways", true),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        _ => return None,
    })
}

/// Plural and scope of the kinds meshctl writes.
fn resource_of(api_version: &str, kind: &str) -> Result<(ApiResource, bool)> {
    let Some((plural, namespaced)) = plural_of(kind) else {
        bail!("meshctl does not manage objects of kind {kind}")
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

/// Server-side apply of a rendered object (field manager `meshctl`, forced).
pub async fn apply(c: &Cluster, obj: &Value) -> Result<Value> {
    let pp = PatchParams::apply(MANAGER).force();
    let answer = patch(c, obj, &pp, &Patch::Apply(obj), "applying").await?;
    release_update_ownership(c, obj, &answer).await;
    Ok(answer)
}

/// Drops meshctl's `Update` entry from the managedFields of `answer` (the object as an apply
/// left it), keeping the others. A create (and a merge patch) records meshctl as an Update
/// owner, and an Update owner keeps its fields for ever: a later run that no longer applies a
/// field (the HBONE port, a Service annotation) would leave it in place, so a re-run would
/// not reach what a fresh run makes. The apply's own entry owns what meshctl applies, so
/// the Update entry is only in the way. Conditional on the answer's resourceVersion; a
/// failure (another writer in between) is left for the next run, which tries again.
async fn release_update_ownership(c: &Cluster, obj: &Value, answer: &Value) {
    let Some(entries) = answer
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
    else {
        return;
    };
    let mine = |e: &Value| e["manager"] == MANAGER && e["operation"] == "Update";
    if !entries.iter().any(mine) {
        return;
    }
    let kept: Vec<&Value> = entries.iter().filter(|e| !mine(e)).collect();
    let rv = answer.pointer("/metadata/resourceVersion").cloned();
    let merge = json!({"metadata": {"managedFields": kept, "resourceVersion": rv}});
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    // Best effort: the apply is done; what this leaves the next run repeats.
    let _ = patch_raw(c, obj, &pp, &Patch::Merge(&merge)).await;
}

/// A JSON merge patch of an existing object (field manager `meshctl`): `null` removes a
/// field whoever owns it, which an apply cannot do.
pub async fn merge_patch(c: &Cluster, obj: &Value, merge: &Value) -> Result<Value> {
    let pp = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    patch(c, obj, &pp, &Patch::Merge(merge), "patching").await
}

/// One PATCH of the object `obj` names; errors say what was being `doing` to which object.
async fn patch(
    c: &Cluster,
    obj: &Value,
    pp: &PatchParams,
    body: &Patch<&Value>,
    doing: &str,
) -> Result<Value> {
    let out = patch_raw(c, obj, pp, body).await?.map_err(|e| {
        anyhow!(
            "{doing} {} in context {:?}: {}",
            describe(obj),
            c.context,
            error_text(&e)
        )
    })?;
    Ok(serde_json::to_value(out)?)
}

/// One PATCH of the object `obj` names, its answer as the API server gave it.
async fn patch_raw(
    c: &Cluster,
    obj: &Value,
    pp: &PatchParams,
    body: &Patch<&Value>,
) -> Result<kube::Result<DynamicObject>> {
    let (api, name) = api_of(c, obj)?;
    Ok(api.patch(name, pp, body).await)
}

/// The `Api` of the object `obj` names, and its name.
fn api_of<'o>(c: &Cluster, obj: &'o Value) -> Result<(Api<DynamicObject>, &'o str)> {
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let name = meta(obj, "name").ok_or_else(|| anyhow!("object without a name"))?;
    Ok((api_for(c, av, kind, meta(obj, "namespace"))?, name))
}

/// How a conditional write went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conditional {
    Written,
    /// The object is no longer as it was read: nothing was written.
    Raced,
}

/// Whether a conditional write failed because the object is no longer as it was read:
/// 409 (changed since, or its name taken by a create), or the 500 an apply carrying a
/// resourceVersion meets when the object was deleted since, as the apply would then create
/// it (k8s.io/apiserver `storage/etcd3/store.go` `Create`, `ErrResourceVersionSetOnCreate`,
/// which is no API status and reaches clients as this text). A 404 is not: a write meets it
/// for a missing namespace or type, which reading again would not change.
pub fn raced(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => {
            s.code == 409
                || (s.code == 500
                    && s.message == "resourceVersion should not be set on objects to be created")
        }
        _ => false,
    }
}

/// Server-side apply of `obj` (as [`apply`]) only while the object is at `resource_version`:
/// the API server stores an apply through a conditional update and answers 409 Conflict when
/// the object changed since (k8s.io/apiserver `registry/generic/registry/store.go` `Update`).
pub async fn apply_at(c: &Cluster, obj: &Value, resource_version: &str) -> Result<Conditional> {
    let mut body = obj.clone();
    body["metadata"]["resourceVersion"] = json!(resource_version);
    let pp = PatchParams::apply(MANAGER).force();
    let answer = patch_raw(c, obj, &pp, &Patch::Apply(&body)).await?;
    if let Ok(written) = &answer {
        let written = serde_json::to_value(written).unwrap_or(Value::Null);
        release_update_ownership(c, obj, &written).await;
    }
    conditional(answer.map(drop), c, obj, "applying")
}

/// Creates `obj` only while nothing holds its name (a POST, field manager `meshctl`);
/// returns the created resourceVersion, or `None` when the name was taken (409
/// AlreadyExists).
pub async fn create(c: &Cluster, obj: &Value) -> Result<Option<String>> {
    let (api, _) = api_of(c, obj)?;
    let body: DynamicObject = serde_json::from_value(obj.clone())
        .with_context(|| format!("{} is not an object", describe(obj)))?;
    let pp = PostParams {
        field_manager: Some(MANAGER.into()),
        ..PostParams::default()
    };
    let answer = api.create(&pp, &body).await;
    let created = answer
        .as_ref()
        .ok()
        .map(|o| o.metadata.resource_version.clone().unwrap_or_default());
    match conditional(answer.map(drop), c, obj, "creating")? {
        Conditional::Written => Ok(created),
        Conditional::Raced => Ok(None),
    }
}

/// [`create`], then [`apply_at`] the created version. A create records meshctl as an
/// `Update` owner; without the apply the next run's apply would add an `Apply` owner, which
/// the API server writes as a change, so a second run would not be a no-op. A change by
/// another writer in between leaves the object theirs to have changed: the next run judges
/// it.
pub async fn create_then_apply(c: &Cluster, obj: &Value) -> Result<Conditional> {
    let Some(rv) = create(c, obj).await? else {
        return Ok(Conditional::Raced);
    };
    apply_at(c, obj, &rv).await?;
    Ok(Conditional::Written)
}

/// A conditional write's answer: [`Conditional::Raced`] when [`raced`] says so, else the
/// error naming what was being `doing` to which object.
fn conditional(
    answer: kube::Result<()>,
    c: &Cluster,
    obj: &Value,
    doing: &str,
) -> Result<Conditional> {
    match answer {
        Ok(_) => Ok(Conditional::Written),
        Err(e) if raced(&e) => Ok(Conditional::Raced),
        Err(e) => Err(anyhow!(
            "{doing} {} in context {:?}: {}",
            describe(obj),
            c.context,
            error_text(&e)
        )),
    }
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

/// [`get`], decoded as a typed object (for reading fields a check depends on).
pub async fn get_as<K: DeserializeOwned>(
    c: &Cluster,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<K>> {
    get(c, api_version, kind, ns, name)
        .await?
        .map(|v| decode(c, kind, v))
        .transpose()
}

/// [`list`], decoded as typed objects.
pub async fn list_as<K: DeserializeOwned>(
    c: &Cluster,
    api_version: &str,
    kind: &str,
    ns: Option<&str>,
    selector: &str,
) -> Result<Vec<K>> {
    list(c, api_version, kind, ns, selector)
        .await?
        .into_iter()
        .map(|v| decode(c, kind, v))
        .collect()
}

fn decode<K: DeserializeOwned>(c: &Cluster, kind: &str, v: Value) -> Result<K> {
    let what = describe(&v);
    serde_json::from_value(v)
        .with_context(|| format!("decoding {what} from context {:?} as a {kind}", c.context))
}

/// How deleting an object as it was read went.
#[derive(Debug)]
pub enum Deletion {
    /// Deleted, or marked for deletion while finalizers hold it.
    Deleted,
    /// Nothing holds the name any more.
    AlreadyGone,
    /// Another object holds the name now (deleted and made again since it was read): it is
    /// left as it is, returned as it now is, to be judged afresh.
    Replaced(Value),
}

/// Deletes `obj` (as read: its `uid`) only if it is still the object under its name, which
/// the API server checks (a uid precondition: 409 when it no longer holds). Without it a
/// delete by name takes whatever holds the name when it arrives, also an object another
/// installer made after `obj` was read and judged.
pub async fn delete_read(c: &Cluster, obj: &Value) -> Result<Deletion> {
    let av = obj["apiVersion"].as_str().unwrap_or_default();
    let kind = obj["kind"].as_str().unwrap_or_default();
    let (name, ns) = (
        meta(obj, "name").unwrap_or_default(),
        meta(obj, "namespace"),
    );
    let api = api_for(c, av, kind, ns)?;
    let params = DeleteParams {
        preconditions: meta(obj, "uid").map(|uid| Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(Deletion::Deleted),
        Err(e) if status_code(&e) == Some(404) => Ok(Deletion::AlreadyGone),
        Err(e) if status_code(&e) == Some(409) => match get(c, av, kind, ns, name).await? {
            None => Ok(Deletion::AlreadyGone),
            Some(now) => Ok(Deletion::Replaced(now)),
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn url(server: &str, tls: bool) -> std::result::Result<String, String> {
        let mut cfg = Config::new(server.parse().unwrap());
        cfg.accept_invalid_certs = tls;
        server_url(&cfg).map(|u| u.to_string())
    }

    #[test]
    fn a_server_without_a_scheme_gets_the_one_client_go_gives_it() {
        assert_eq!(
            url("10.0.0.1:6443", true).unwrap(),
            "https://10.0.0.1:6443/"
        );
        assert_eq!(
            url("localhost:6443", true).unwrap(),
            "https://localhost:6443/"
        );
        assert_eq!(url("api.example", true).unwrap(), "https://api.example/");
        assert_eq!(
            url("10.0.0.1:8080", false).unwrap(),
            "http://10.0.0.1:8080/"
        );
        assert_eq!(url("https://h:1/p", false).unwrap(), "https://h:1/p");
        assert_eq!(url("http://h:1", true).unwrap(), "http://h:1/");
        let e = url("/api", true).unwrap_err();
        assert!(e.contains("not a URL or a host:port pair"), "{e}");
    }
}
