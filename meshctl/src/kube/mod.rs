//! Kubernetes plumbing shared by every cluster command, and nothing about Istio or meshes:
//! kubeconfig reading (`config`), requests to one cluster (`api`), what a failed request
//! means (`errors`), and printing objects (`render`, with private keys hidden by `redact`).
//! The one meshctl name used here is its field manager (`istio::MANAGER`).

mod api;
mod config;
mod errors;
mod redact;
mod render;

pub use api::{
    Cluster, apply, apply_all, block_on, delete, ensure_namespace, get, get_as, list, list_as,
};
pub use config::{KubeconfigFile, init_crypto};
pub use errors::{ConnectError, Failure, classify, error_text};
pub use redact::Secrets;
pub use render::{Output, render, render_plan, render_plan_with};
