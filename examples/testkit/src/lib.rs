#![forbid(unsafe_code)]
//! Test support only: the helpers that the demo, the netns end-to-end test and the crates'
//! integration tests share, so that each is written once.
//!
//! - [`mtls`]: Istio-style mutual TLS (workload certificates, SPIFFE identities checked on
//!   both ends).
//! - [`mesh`]: the demo mesh's names (namespace, hosts, SPIFFE ids, SNI routing keys), built
//!   by functions rather than re-typed.
//! - [`proc`]: [`proc::ChildGuard`], a child process killed and reaped on drop.
//! - [`prom`]: Prometheus text parsing (one series' value, a sum over a family).
//! - [`wait`]: `eventually` / `wait_until`, polling a condition, bounded in time.
//! - [`k8s`]: Kubernetes object builders (Service, EndpointSlice, Pod, DestinationRule).
//! - [`net`]: free loopback ports.
//! - [`ca`]: a certificate-service test server standing in for istiod's CA.
//! - [`hbone`]: HBONE doubles: a client ztunnel, a destination ztunnel and its app.
//! - `kube_client` (feature `kube`): a kube-rs `Client` from a kubeconfig's YAML, a
//!   ServiceAccount's token from the TokenRequest API and its claims, and a
//!   SelfSubjectAccessReview's answer.
//!
//! Nothing here is used by a product binary.

pub mod ca;
pub mod hbone;
pub mod k8s;
#[cfg(feature = "kube")]
pub mod kube_client;
pub mod mesh;
pub mod mtls;
pub mod net;
pub mod proc;
pub mod prom;
pub mod wait;
