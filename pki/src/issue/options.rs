//! The defaults and options of each certificate [`super`] issues: root CA, intermediate CA,
//! workload.

use std::time::Duration;

use time::OffsetDateTime;

use super::validity::DAY;
use crate::KeyType;

/// Default subject O of the root and the intermediates (Istio's `tools/certs` value).
pub const DEFAULT_ORG: &str = "Istio";
/// Default subject CN of the root.
pub const DEFAULT_ROOT_CN: &str = "Root CA";
/// Default validity of the root CA, in days.
pub const DEFAULT_ROOT_DAYS: u32 = 3650;

/// Options for a new root CA.
#[derive(Debug, Clone)]
pub struct RootOptions {
    /// Subject O (default `Istio`).
    pub org: String,
    /// Subject CN (default `Root CA`).
    pub common_name: String,
    /// Validity in days (default 3650).
    pub days: u32,
    pub key_type: KeyType,
    /// Overrides the start of validity (default: now minus 5 minutes).
    pub not_before: Option<OffsetDateTime>,
    /// Overrides the end of validity (default: not_before + days).
    pub not_after: Option<OffsetDateTime>,
}

impl Default for RootOptions {
    fn default() -> Self {
        RootOptions {
            org: DEFAULT_ORG.into(),
            common_name: DEFAULT_ROOT_CN.into(),
            days: DEFAULT_ROOT_DAYS,
            key_type: KeyType::default(),
            not_before: None,
            not_after: None,
        }
    }
}

/// Default validity of an intermediate CA, in days: shorter than the root's 3650.
pub const DEFAULT_INTERMEDIATE_DAYS: u32 = 1825;

/// Options for a per-cluster intermediate CA.
#[derive(Debug, Clone)]
pub struct IntermediateOptions {
    /// Cluster name, a DNS-1123 label; written as the subject L (locality), like tools/certs.
    pub cluster: String,
    /// Subject O (default `Istio`).
    pub org: String,
    /// Subject CN (default `Intermediate CA`).
    pub common_name: String,
    /// Validity in days (default 1825); clamped to the root's notAfter.
    pub days: u32,
    pub key_type: KeyType,
    /// DNS SANs (default `istiod.istio-system.svc`).
    pub san_dns: Vec<String>,
    pub not_before: Option<OffsetDateTime>,
    /// Overrides the end of validity; still clamped to the root's notAfter.
    pub not_after: Option<OffsetDateTime>,
    /// How many CA levels may sit below this one (default 0: it signs workloads only; an
    /// offline intermediate that signs the cluster CAs needs 1).
    pub path_len: u8,
    /// Re-issuing an existing CA's subject ([`IntermediateOptions::renewing`]): O, CN and L
    /// are kept as they are (L may be absent, or not a DNS label), without the cluster-name
    /// check a new CA gets.
    pub renewal: bool,
}

impl IntermediateOptions {
    pub fn new(cluster: impl Into<String>) -> Self {
        IntermediateOptions {
            cluster: cluster.into(),
            org: DEFAULT_ORG.into(),
            common_name: "Intermediate CA".into(),
            days: DEFAULT_INTERMEDIATE_DAYS,
            key_type: KeyType::default(),
            san_dns: vec!["istiod.istio-system.svc".into()],
            not_before: None,
            not_after: None,
            path_len: 0,
            renewal: false,
        }
    }
}

/// Options for a workload (leaf) certificate.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    /// SPIFFE trust domain (default `cluster.local`).
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
    /// Validity (default 24 h); clamped to the CA's notAfter.
    pub validity: Duration,
    pub key_type: KeyType,
    /// Extra DNS SANs (default none; Istio workload certificates carry only the SPIFFE URI).
    pub dns_names: Vec<String>,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
}

impl WorkloadOptions {
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        WorkloadOptions {
            trust_domain: "cluster.local".into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
            validity: DAY,
            key_type: KeyType::default(),
            dns_names: Vec::new(),
            not_before: None,
            not_after: None,
        }
    }

    /// `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
    pub fn spiffe_id(&self) -> String {
        format!(
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}
