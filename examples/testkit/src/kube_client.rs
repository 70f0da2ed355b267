//! kube-rs clients for tests: a `kube::Client` from a kubeconfig's YAML text (as the
//! Kubernetes API test server or `meshctl create-remote-secret` writes it).

use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// kube with rustls has no automatic crypto provider: installs aws-lc-rs for this process
/// (a second call, or one after another test installed it, changes nothing).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A client for the kubeconfig's current context. Panics (the test fails) when the YAML
/// does not parse or names no usable context.
pub async fn client_from_yaml(yaml: &str) -> Client {
    install_crypto_provider();
    let kc = Kubeconfig::from_yaml(yaml).expect("kubeconfig parses");
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kube config from the kubeconfig's current context");
    Client::try_from(cfg).expect("kube client")
}
