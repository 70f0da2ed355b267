#![forbid(unsafe_code)]
//! Demo workloads: a tiny mTLS server and client standing in for a pod with its sidecar,
//! with Istio-style identities (SPIFFE URIs in workload certificates) checked on both ends.
//! The mTLS plumbing itself lives in the test-support crate `testkit`.

pub mod cert_reload;
pub mod stage;
pub mod workload;
