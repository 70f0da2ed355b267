//! Kubernetes plumbing shared by every cluster command, and nothing about Istio or meshes:
//! kubeconfig reading (`config`), what a credential may be before it is used (`credential`),
//! building a client (`client`), requests to one cluster (`api`), what a failed request means
//! (`errors`, `unreached`), which cluster a context reaches (`identity`), and printing objects (`render`, with private keys hidden by `redact`).
//! The one meshctl name used here is its field manager (`istio::MANAGER`).

mod api;
mod client;
mod config;
mod credential;
mod errors;
mod identity;
pub mod names;
mod parse;
mod redact;
mod render;
mod retry;
mod unreached;

pub use api::{
    Cluster, Conditional, Deletion, apply, apply_at, block_on, create, create_then_apply,
    delete_read, ensure_namespace, get, get_as, list, list_as, merge_patch, plural_of,
};
pub use client::client;
pub use config::{KubeconfigFile, init_crypto};
pub use credential::{shown, shown_server, stored_problems};
pub use errors::{
    ConnectError, Failure, UNREACHED_FIX, cannot_reach, classify, error_text, unanswered,
};
pub use identity::Identity;
pub use parse::parse_kubeconfig;
pub use unreached::CONNECT_TIMEOUT_S;
// for `mesh::credentials` (stored kubeconfigs), see `parse_secret_yaml`
pub use parse::parse_secret_yaml;
pub use redact::Secrets;
pub use render::{Output, describe, plan_json, render, render_one, render_plan, render_plan_with};
