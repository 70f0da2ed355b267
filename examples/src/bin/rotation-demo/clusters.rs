//! The three "clusters": Kubernetes API TEST SERVERS in this process (loopback, in memory),
//! their kubeconfig files, and what the demo reads back from them in istiod's place.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use k8s_test_server::TestApiServer;
use serde_json::{Value, json};

use crate::harness::{private_dir, write_new};

pub const NAMES: [&str; 3] = ["west", "east", "north"];
/// istiod's namespace, where `cacerts` lives.
pub const ISTIO_NS: &str = "istio-system";
/// The four files of `cacerts`, as istiod mounts them at /etc/cacerts.
const CACERTS_FILES: [(&str, bool); 4] = [
    (pki::CA_CERT, false),
    (pki::CA_KEY, true),
    (pki::CERT_CHAIN, false),
    (pki::ROOT_CERT, false),
];

pub struct Clusters {
    pub servers: Vec<(&'static str, TestApiServer)>,
}

impl Clusters {
    /// One TEST SERVER per name; each one's kubeconfig (context = cluster name) in `kube_dir`.
    pub async fn start(kube_dir: &std::path::Path) -> Result<Clusters> {
        private_dir(kube_dir)?;
        let mut servers = Vec::new();
        for name in NAMES {
            let s = TestApiServer::start(name)
                .await
                .with_context(|| format!("starting the {name} test server"))?;
            println!(
                "  {name:<6} Kubernetes API TEST SERVER (in memory) at {}",
                s.url()
            );
            write_new(
                &kube_dir.join(format!("{name}.kubeconfig")),
                &s.kubeconfig(name),
                true,
            )?;
            servers.push((name, s));
        }
        Ok(Clusters { servers })
    }

    fn server(&self, name: &str) -> &TestApiServer {
        &self
            .servers
            .iter()
            .find(|(n, _)| *n == name)
            .expect("a demo cluster")
            .1
    }

    /// A kubeconfig for `name` whose user may read Secrets in istiod's namespace but not
    /// change them: a ServiceAccount token, bound to a Role, as a cluster admin would set it
    /// up (here written straight into the test server's store).
    pub fn read_only_kubeconfig(&self, name: &str) -> Result<String> {
        let store = self.server(name).store();
        let sa = "rotation-viewer";
        let objs = [
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": sa, "namespace": ISTIO_NS}}),
            json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
                   "metadata": {"name": format!("{sa}-token"), "namespace": ISTIO_NS,
                                "annotations": {"kubernetes.io/service-account.name": sa}}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": sa, "namespace": ISTIO_NS},
                   "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list", "watch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": sa, "namespace": ISTIO_NS},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
                   "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ISTIO_NS}]}),
        ];
        for o in objs {
            store
                .create(o)
                .map_err(|e| anyhow::anyhow!("{e:?}"))
                .context("setting up the read-only credential")?;
        }
        // The token controller fills the token in shortly after, as kube-controller-manager does.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let s = store.get("v1", "Secret", Some(ISTIO_NS), &format!("{sa}-token"));
            if let Some(t) = s.as_ref().and_then(|s| s["data"]["token"].as_str()) {
                let token =
                    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(t)?)?;
                return Ok(self.server(name).kubeconfig_with_token(name, &token));
            }
            if Instant::now() > deadline {
                bail!("the {name} test server's token controller filled no token within 5 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `cacerts` Secret of a cluster as stored.
    fn cacerts(&self, name: &str) -> Result<Value> {
        self.server(name)
            .store()
            .get("v1", "Secret", Some(ISTIO_NS), "cacerts")
            .with_context(|| format!("{name} has no {ISTIO_NS}/cacerts"))
    }

    /// One file of a cluster's `cacerts`.
    pub fn cacerts_file(&self, name: &str, file: &str) -> Result<String> {
        let s = self.cacerts(name)?;
        let b64 = s["data"][file]
            .as_str()
            .with_context(|| format!("{name}'s cacerts has no {file}"))?;
        Ok(String::from_utf8(
            base64::engine::general_purpose::STANDARD.decode(b64)?,
        )?)
    }

    /// Every cluster's `cacerts`, to compare before and after a step that must change nothing.
    pub fn all_cacerts(&self) -> Result<Vec<Value>> {
        NAMES.iter().map(|n| self.cacerts(n)).collect()
    }

    /// The number of roots in a cluster's `root-cert.pem` (what istiod publishes to proxies).
    pub fn roots(&self, name: &str) -> Result<usize> {
        Ok(self
            .cacerts_file(name, pki::ROOT_CERT)?
            .matches("-----BEGIN CERTIFICATE-----")
            .count())
    }

    /// Copies a cluster's `cacerts` into `dir` (0700; ca-key.pem 0600), as istiod sees it
    /// mounted at /etc/cacerts: `meshctl certs workload --ca dir` then issues what istiod
    /// would, with `root-cert.pem` (every root of the bundle) as the workload's trust bundle.
    pub fn istiod_view(&self, name: &str, dir: &std::path::Path) -> Result<()> {
        private_dir(dir)?;
        for (file, secret) in CACERTS_FILES {
            write_new(&dir.join(file), &self.cacerts_file(name, file)?, secret)?;
        }
        Ok(())
    }
}
