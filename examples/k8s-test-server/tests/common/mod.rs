//! Shared helpers for the TEST SERVER's integration tests (real kube-rs clients).
#![allow(dead_code)]

use k8s_test_server::TestApiServer;
use kube::Client;
#[allow(unused_imports)] // not every test file calls it
pub use testkit::kube_client::client_from_yaml;

/// kube with rustls has no automatic crypto provider: install one per test process.
pub fn init() {
    testkit::kube_client::install_crypto_provider();
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
