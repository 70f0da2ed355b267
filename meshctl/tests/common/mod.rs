//! Shared helpers: two TEST API servers (west, east), one kubeconfig file with both
//! contexts, a certificate tree from `meshctl certs init`, and the real meshctl binary
//! (its command lines in [`args`], bounded runs in [`runs`]).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use k8s_test_server::{Options, StoreConfig, TestApiServer};
use serde_json::{Value, json};
#[allow(unused_imports)] // not every test file calls it
pub use testkit::kube_client::client_from_yaml;

pub const MESHCTL: &str = env!("CARGO_BIN_EXE_meshctl");

mod args;
pub mod cloud;
pub mod runs;

pub use args::*;

pub fn init() {
    testkit::kube_client::install_crypto_provider();
}

pub struct Mesh {
    pub west: TestApiServer,
    pub east: TestApiServer,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub certs: PathBuf,
}

/// One kubeconfig with a context per server (context, cluster and user share the name).
pub fn kubeconfig_yaml(servers: &[(&str, &TestApiServer)]) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "preferences": {},
        "current-context": servers[0].0,
        "clusters": servers.iter().map(|(n, s)| json!({"name": n, "cluster": {"server": s.url(), "certificate-authority-data": b64(s.ca_pem())}})).collect::<Vec<_>>(),
        "contexts": servers.iter().map(|(n, _)| json!({"name": n, "context": {"cluster": n, "user": n}})).collect::<Vec<_>>(),
        "users": servers.iter().map(|(n, s)| json!({"name": n, "user": {"token": s.admin_token()}})).collect::<Vec<_>>(),
    });
    serde_yaml::to_string(&doc).unwrap()
}

pub async fn mesh() -> Mesh {
    init();
    let west = TestApiServer::start("west").await.unwrap();
    let east = TestApiServer::start("east").await.unwrap();
    mesh_of(west, east).await
}

/// west and east, each started with `store` (a store option such as the cloud controller's
/// finalizer or both IP families), for [`mesh_of`].
pub async fn servers_with(store: StoreConfig) -> (TestApiServer, TestApiServer) {
    init();
    let start = |name: &str| {
        let mut o = Options::new(name);
        o.store = store.clone();
        TestApiServer::start_with(o)
    };
    (start("west").await.unwrap(), start("east").await.unwrap())
}

/// [`mesh`] over servers the caller started (with its own options).
pub async fn mesh_of(west: TestApiServer, east: TestApiServer) -> Mesh {
    init();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_yaml(&[("west", &west), ("east", &east)]),
    )
    .unwrap();
    let certs = dir.path().join("certs");
    let mesh = Mesh {
        west,
        east,
        dir,
        kubeconfig,
        certs,
    };
    mesh.ok(&[
        "certs",
        "init",
        "--clusters",
        "west,east",
        "--out",
        p(&mesh.certs),
    ])
    .await;
    mesh
}

/// The Gateway API `Gateway` CRD (v1 served, status subresource), as its release installs it:
/// what `join --ambient` needs.
pub fn install_gateway_api(s: &TestApiServer) {
    s.install_gateway_api_crds();
}

/// A mesh that `meshctl join` has joined (token Secrets and cacerts exist in both clusters).
pub async fn joined_mesh() -> Mesh {
    let m = mesh().await;
    m.join(&[]).await;
    m
}

/// A mesh whose clusters each have their `cacerts` (applied by meshctl), as a rotation
/// starts from.
pub async fn mesh_with_cacerts() -> Mesh {
    let m = mesh().await;
    for ctx in ["west", "east"] {
        runs::succeeds(&cacerts_apply_args(m.kc(), p(&m.certs.join(ctx)), ctx, &[])).await;
    }
    m
}

/// A joined mesh whose gateways have LB addresses and ready pods (what `check` passes on).
pub async fn joined_ready_mesh() -> Mesh {
    let m = joined_mesh().await;
    m.make_gateways_ready();
    m
}

/// Runs `meshctl check -o json` of west and east (loopback test servers allowed unless
/// `strict`) plus `extra` flags: its exit code and checklist, the report's `ok` agreeing with
/// the exit status.
pub async fn check_json(kubeconfig: &str, extra: &[&str], strict: bool) -> (i32, Vec<Value>) {
    let mut args = check_args(kubeconfig, &["-o", "json"]);
    if strict {
        args.retain(|a| *a != "--allow-loopback-server");
    }
    args.extend_from_slice(extra);
    let out = meshctl(&args).await;
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(v["ok"], out.status.success());
    (
        out.status.code().unwrap(),
        v["checks"].as_array().unwrap().clone(),
    )
}

pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub async fn meshctl(args: &[&str]) -> Output {
    tokio::process::Command::new(MESHCTL)
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .await
        .expect("run meshctl")
}

/// Runs meshctl; expects exit code 2 (a usage error); returns stdout+stderr.
pub async fn usage_error(args: &[&str]) -> String {
    let out = meshctl(args).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "meshctl {args:?}:\n{t}");
    t
}

impl Mesh {
    pub fn kc(&self) -> &str {
        p(&self.kubeconfig)
    }

    /// Runs meshctl; expects success; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> String {
        let out = meshctl(args).await;
        assert!(
            out.status.success(),
            "meshctl {args:?} failed:\n{}",
            text(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs meshctl; expects exit code 1; returns stdout+stderr.
    pub async fn fails(&self, args: &[&str]) -> String {
        let out = meshctl(args).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "meshctl {args:?}:\n{}",
            text(&out)
        );
        text(&out)
    }

    /// `meshctl join` of west and east with the mesh's certificates, plus `extra` flags only.
    pub fn join_certs_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = both_contexts("join", self.kc());
        args.extend(["--certs", p(&self.certs)]);
        args.extend_from_slice(extra);
        args
    }

    /// The arguments of `meshctl join` of west and east (loopback test servers allowed)
    /// plus `extra` flags.
    pub fn join_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = self.join_certs_args(&[]);
        args.extend([
            "--network",
            "west=west-network",
            "--network",
            "east=east-network",
            "--allow-loopback-server",
        ]);
        args.extend_from_slice(extra);
        args
    }

    /// The arguments of `meshctl unjoin` of west and east plus `extra` flags.
    pub fn unjoin_args<'a>(&'a self, extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = both_contexts("unjoin", self.kc());
        args.extend_from_slice(extra);
        args
    }

    /// Runs `meshctl join` of west and east plus `extra` flags ([`Mesh::join_args`]).
    pub async fn join(&self, extra: &[&str]) -> String {
        self.ok(&self.join_args(extra)).await
    }

    /// [`settled_snapshot`] of west and of east.
    pub async fn settled_snapshots(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        (
            settled_snapshot(&self.west).await,
            settled_snapshot(&self.east).await,
        )
    }

    /// What a cloud controller and the kubelet would do: LB addresses and ready gateway pods.
    pub fn make_gateways_ready(&self) {
        for (s, ip) in [(&self.west, "172.18.0.10"), (&self.east, "172.18.0.20")] {
            set_lb(s, Some(ip));
            gateway_pod(s, "gw-1", true);
        }
    }
}

/// The east-west gateway's Service, as stored.
pub fn gateway_service(s: &TestApiServer) -> Value {
    s.store()
        .get(
            "v1",
            "Service",
            Some("istio-system"),
            "istio-eastwestgateway",
        )
        .expect("gateway Service")
}

/// The east-west gateway's Deployment, as stored.
pub fn gateway_deployment(s: &TestApiServer) -> Value {
    s.store()
        .get(
            "apps/v1",
            "Deployment",
            Some("istio-system"),
            "istio-eastwestgateway",
        )
        .expect("gateway Deployment")
}

pub fn set_lb(s: &TestApiServer, ip: Option<&str>) {
    let mut svc = gateway_service(s);
    svc["status"] = match ip {
        Some(ip) => json!({"loadBalancer": {"ingress": [{"ip": ip}]}}),
        None => json!({"loadBalancer": {}}),
    };
    s.store().apply(svc).unwrap();
}

pub fn gateway_pod(s: &TestApiServer, name: &str, ready: bool) {
    let status = if ready { "True" } else { "False" };
    s.store().apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "istio-system", "labels": {"app": "istio-eastwestgateway", "istio": "eastwestgateway"}},
        "spec": {"containers": [{"name": "gateway", "image": "meshfed/gateway:dev"}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": status}]}})).unwrap();
}

/// Every stored object, `kind ns/name` → resourceVersion.
pub fn snapshot(s: &TestApiServer) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for rt in s.store().resource_types() {
        let av = rt.api_version(rt.preferred_version());
        for o in s.store().list(&av, &rt.kind, None) {
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("");
            let name = o["metadata"]["name"].as_str().unwrap_or("");
            let rv = o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or("")
                .to_string();
            out.insert(format!("{} {ns}/{name}", rt.kind), rv);
        }
    }
    out
}

/// Keys present in `after` but not in `before`.
pub fn added(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Vec<String> {
    after
        .keys()
        .filter(|k| !before.contains_key(*k))
        .cloned()
        .collect()
}

/// The `istio-system` Namespace as stored.
pub fn istio_namespace(s: &TestApiServer) -> Value {
    s.store()
        .get("v1", "Namespace", None, "istio-system")
        .expect("istio-system Namespace")
}

/// The reader ClusterRole that join grants (for `istio-system`), as stored.
pub fn reader_role(s: &TestApiServer) -> Value {
    s.store()
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "meshctl-istio-reader-istio-system",
        )
        .expect("reader ClusterRole")
}

pub fn secret(s: &TestApiServer, name: &str) -> Option<Value> {
    s.store().get("v1", "Secret", Some("istio-system"), name)
}

/// The kubeconfig stored in a remote secret (`data.<key>`).
pub fn stored_kubeconfig(secret: &Value, key: &str) -> String {
    use base64::Engine as _;
    let b = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][key].as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

/// The Secret that `create-remote-secret` prints, in istioctl's shape: a header comment, one
/// Secret, a trailing `---`.
pub fn printed_secret(out: &str) -> Value {
    let body = out
        .strip_prefix("# This file is autogenerated, do not edit.\n")
        .and_then(|b| b.strip_suffix("---\n"))
        .filter(|b| b.ends_with('\n'))
        .unwrap_or_else(|| panic!("not istioctl's shape:\n{out}"));
    serde_yaml::from_str(body).unwrap()
}

/// The kubeconfig under `stringData.<key>` of the Secret `create-remote-secret` printed.
pub fn printed_kubeconfig(out: &str, key: &str) -> String {
    printed_secret(out)["stringData"][key]
        .as_str()
        .unwrap_or_else(|| panic!("no stringData.{key} in:\n{out}"))
        .to_string()
}

/// The token of a kubeconfig's first user.
pub fn token_of(kubeconfig: &str) -> String {
    let v: Value = serde_yaml::from_str(kubeconfig).unwrap();
    v["users"][0]["user"]["token"].as_str().unwrap().to_string()
}

/// The one item of a `check -o json` checklist with this scope and check name.
pub fn item<'a>(items: &'a [Value], scope: &str, check: &str) -> &'a Value {
    items
        .iter()
        .find(|i| i["scope"] == scope && i["check"] == check)
        .unwrap_or_else(|| {
            panic!(
                "no {scope:?}/{check:?} in {}",
                serde_json::to_string_pretty(items).unwrap()
            )
        })
}

/// [`item`] of a whole `check -o json` report (`{"ok": .., "checks": [..]}`), cloned.
pub fn check_item(report: &Value, scope: &str, check: &str) -> Value {
    let items = report["checks"]
        .as_array()
        .unwrap_or_else(|| panic!("not a check report: {report:#}"));
    item(items, scope, check).clone()
}

/// [`snapshot`] once the test server's controllers have caught up: every Namespace has its
/// `default` ServiceAccount and `kube-root-ca.crt` ConfigMap (they are created in the
/// background, as controller-manager does, and would otherwise appear between a "before" and
/// an "after" snapshot). Bounded: 5 s.
pub async fn settled_snapshot(s: &TestApiServer) -> BTreeMap<String, String> {
    for _ in 0..100 {
        let snap = snapshot(s);
        let settled = snap
            .keys()
            .filter_map(|k| k.strip_prefix("Namespace /"))
            .all(|ns| {
                snap.contains_key(&format!("ConfigMap {ns}/kube-root-ca.crt"))
                    && snap.contains_key(&format!("ServiceAccount {ns}/default"))
            });
        if settled {
            return snap;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the test server's controllers did not settle within 5 s");
}
