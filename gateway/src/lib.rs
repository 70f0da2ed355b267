#![forbid(unsafe_code)]
// The module docs link private items on purpose: they are the map of the code. Read them
// with `cargo doc --document-private-items`, where every link resolves.
#![allow(rustdoc::private_intra_doc_links)]
//! East-west gateway library: SNI auto-passthrough on 15443 and HBONE on 15008 ([`hbone`]).
//!
//! One connection, top to bottom:
//! - [`proxy`] accepts, budgets undecided connections ([`undecided`]), decides, forwards;
//! - [`proxy_protocol`] and [`client_hello`] parse the preamble (sans-IO);
//! - [`sni_name`] decodes the Istio SNI name and holds Istio's contract (layout, ALPN values);
//! - [`routes`] is the published table: (host, port) to endpoints, subsets resolved at publish
//!   (with [`dr_tls`], the DestinationRule TLS modes that decide which take 15443, and
//!   [`dr_conn`], its connection pool, outlier detection and balancer per port and subset);
//! - [`upstream`] connects, retrying other endpoints, the gateway's zone first, under the
//!   rule's connection limit ([`breaker`]); [`balance`] picks within a set by the rule's
//!   balancer, new endpoints slowed by its [`warmup`];
//! - [`endpoint`] (live connection count) and [`outlier`] (failure streak, ejection) keep each
//!   endpoint's state across publishes;
//! - [`forward`] copies, then splices through [`pipes`] (capped), both directions;
//! - [`reject`] names why a connection was refused; [`metrics`] counts it all.
//!
//! Beside it, [`hbone`] serves ambient's HBONE (mTLS + HTTP/2 CONNECT) on 15008 from the same
//! table, endpoint state, metrics and drain.
//!
//! Around it: [`discovery`] feeds the table (from a file, [`discovery::file`], or the
//! Kubernetes API, [`discovery::k8s`]); [`admin`] serves health, metrics and
//! `/debug/routes`; [`drain`] handles SIGTERM; [`config`] holds the settings and their
//! defaults; [`app::build`] wires it all. [`local_error`] and [`accept`] keep the
//! gateway's own resource exhaustion apart from endpoint health, and [`fd_limit`] makes room
//! for it at start; [`clock`] is the
//! millisecond clock behind ejection and idle deadlines, and [`idle`] the idle timeout's rule;
//! [`runtime`] sizes the workers; [`sockets`] binds the listeners and sets every leg's
//! options.

pub mod accept;
pub mod admin;
pub mod app;
pub mod balance;
pub mod bounded_read;
pub mod breaker;
pub mod client_hello;
pub mod clock;
pub mod config;
pub mod discovery;
pub mod dr_conn;
pub mod dr_tls;
pub mod drain;
pub mod endpoint;
pub mod fd_limit;
pub mod forward;
pub mod hbone;
pub mod idle;
pub mod local_error;
pub mod loop_guard;
pub mod metrics;
pub mod outlier;
pub mod pipes;
pub mod proxy;
pub mod proxy_protocol;
pub mod reject;
pub mod routes;
pub mod runtime;
pub mod sni_name;
pub mod sockets;
pub mod undecided;
pub mod upstream;
pub mod warmup;
