#![forbid(unsafe_code)]
//! East-west gateway library: SNI auto-passthrough on 15443.
//!
//! Data path: [`proxy`] accepts, [`sni`] reads the ClientHello, [`name`] decodes the Istio
//! SNI name, [`routes`] maps it to endpoints, [`balance`] picks one, [`forward`] splices the
//! bytes. [`discovery`] feeds the route table; [`admin`] serves health and metrics;
//! [`drain`] handles SIGTERM; [`app::build`] wires it all. [`undecided`] bounds the
//! connections still sending their hello; [`local_error`] and [`accept_errors`] keep the
//! gateway's own resource exhaustion apart from endpoint health.

pub mod accept_errors;
pub mod admin;
pub mod app;
pub mod client_hello;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod drain;
pub mod endpoint;
pub mod forward;
pub mod local_error;
pub mod metrics;
pub mod outlier;
pub mod proxy;
pub mod proxy_protocol;
pub mod reject;
pub mod routes;
pub mod sni_name;
pub mod undecided;
pub mod upstream;

/// The old name of [`sni_name`], kept only until the Kubernetes discovery split (which still
/// imports `crate::name`) is merged and moved over.
#[doc(hidden)]
pub use sni_name as name;
