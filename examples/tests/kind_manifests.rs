//! The workload manifests of `kind-e2e/manifests/` (applied with kubectl by kind-e2e/run.sh,
//! which cannot run here) are created in a Kubernetes API test server, one per cluster of each
//! mode: `common/` then the cluster's own directory, as run.sh applies them. The test server
//! refuses what a real API server's validation refuses for names, labels, annotations and
//! Service ports (its README, "What it serves"), so a typo there fails here, not on a user's
//! kind cluster. Kinds the test server does not serve are listed and must be only those.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use k8s_test_server::TestApiServer;
use serde_json::Value;

/// Kinds in the manifests that the test server does not serve: not checked here.
const NOT_SERVED: &[&str] = &["Job"];

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kind-e2e/manifests")
}

/// Every YAML document of the `.yaml` files in `dir`, in file-name order (run.sh's
/// `kubectl apply -f dir/` order), with the file it came from.
fn documents(dir: &Path) -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            if !v.is_null() {
                docs.push((f.display().to_string(), v));
            }
        }
    }
    docs
}

#[tokio::test]
async fn every_manifest_is_an_object_a_real_api_server_accepts() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let root = manifests_dir();
    let mut created = 0;
    let mut skipped = BTreeSet::new();
    let modes = ["ambient", "istio", "plain"];
    for mode in modes {
        for cluster in ["east", "west"] {
            let server = TestApiServer::start(cluster).await.unwrap();
            let store = server.store();
            for dir in ["common", cluster] {
                let dir = root.join(mode).join(dir);
                if !dir.is_dir() {
                    continue;
                }
                for (file, obj) in documents(&dir) {
                    let kind = obj["kind"].as_str().unwrap_or_default().to_string();
                    let api_version = obj["apiVersion"].as_str().unwrap_or_default();
                    if store.resolve_kind(api_version, &kind).is_err() {
                        skipped.insert(kind);
                        continue;
                    }
                    let name = obj["metadata"]["name"].clone();
                    if let Err(e) = store.create(obj) {
                        panic!("{file}: {kind} {name} refused: {} {}", e.code, e.message);
                    }
                    created += 1;
                }
            }
        }
    }
    let expected: BTreeSet<String> = NOT_SERVED.iter().map(|k| k.to_string()).collect();
    assert_eq!(skipped, expected, "kinds not checked");
    // 15 files in three modes; the namespace and Service files are created in both clusters.
    assert!(created >= 20, "only {created} objects created");
}

/// The check can fail: the test server refuses a manifest-shaped Service with a bad name.
#[tokio::test]
async fn a_manifest_with_an_invalid_name_is_refused() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let server = TestApiServer::start("west").await.unwrap();
    let (_, svc) = documents(&manifests_dir().join("istio/common"))
        .into_iter()
        .find(|(_, v)| v["kind"] == "Service")
        .expect("a Service in istio/common");
    let ns = svc["metadata"]["namespace"].as_str().unwrap_or("default");
    server
        .store()
        .create(
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .unwrap();
    let mut bad = svc.clone();
    bad["metadata"]["name"] = "Catalog_Svc".into();
    let e = server.store().create(bad).unwrap_err();
    assert_eq!(e.code, 422, "{}", e.message);
    assert!(e.message.contains("metadata.name"), "{}", e.message);
    server.store().create(svc).unwrap();
}
