#![forbid(unsafe_code)]
//! Demo workloads and the mutual-TLS plumbing they share with tests: Istio-style identities
//! (SPIFFE URIs in workload certificates) checked on both ends of a connection.

pub mod mtls;
pub mod workload;
