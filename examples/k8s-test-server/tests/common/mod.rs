//! Shared helpers for the TEST SERVER's integration tests (real kube-rs clients).
#![allow(dead_code)]

use k8s_test_server::TestApiServer;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// kube with rustls has no automatic crypto provider: install one per test process.
pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

pub async fn client_from_yaml(yaml: &str) -> Client {
    let kc = Kubeconfig::from_yaml(yaml).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config");
    Client::try_from(cfg).expect("client")
}

pub async fn admin_client(server: &TestApiServer) -> Client {
    client_from_yaml(&server.kubeconfig(server.cluster_name())).await
}

/// The HTTP status code of a kube API error.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}
