//! The HBONE certificate from istiod: `IstioCertificateService/CreateCertificate` over gRPC
//! and TLS, as ztunnel's and istio-agent's CA clients call it (reference: hbone.md §4).
//!
//! - [`proto`]: the request and response messages (prost derive, no protoc);
//! - [`csr`]: the in-memory P-256 key and its CSR;
//! - [`client`]: the call, its auth metadata and its errors (each names the flag to fix);
//! - [`renew`]: the first request, renewal at half the lifetime, back-off on failure.
//!
//! The chain is checked against `--ca-root` and swapped into [`super::identity::Identity`],
//! the same swap path as file certificates.

pub mod client;
pub mod csr;
pub mod proto;
pub mod renew;

pub use client::{CaClient, CaError};
pub use renew::Renewer;
