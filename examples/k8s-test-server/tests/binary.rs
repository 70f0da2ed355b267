//! The `k8s-test-server` binary: starts TEST SERVERS for several clusters and writes their
//! kubeconfigs, which a kube-rs client uses.

mod common;

use common::{client_from_yaml, init};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use testkit::proc::ChildGuard;

#[tokio::test]
async fn binary_serves_one_test_server_per_cluster() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_k8s-test-server"))
            .args([
                "--cluster",
                "west",
                "--cluster",
                "east",
                "--istio-crds",
                "--load-balancer-cleanup-finalizer",
                "--exit-after-secs",
                "60",
                "--kubeconfig-dir",
            ])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut out = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if line == "ready" || start.elapsed() > Duration::from_secs(30) {
                break;
            }
            out.push(line);
        }
        out
    });
    let lines = tokio::time::timeout(Duration::from_secs(30), lines)
        .await
        .expect("ready within 30s")
        .unwrap();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("TEST SERVER") && l.contains("url=https://127.0.0.1:")),
        "{lines:?}"
    );

    for name in ["west", "east"] {
        let yaml = std::fs::read_to_string(dir.path().join(format!("{name}.kubeconfig"))).unwrap();
        let client = client_from_yaml(&yaml).await;
        let ns = Api::<Namespace>::all(client.clone())
            .list(&ListParams::default())
            .await
            .unwrap();
        assert!(
            ns.items
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some("kube-system"))
        );
        let d = kube::Discovery::new(client).run().await.unwrap();
        assert!(d.has_group("networking.istio.io"));
    }
    child.kill();
}
