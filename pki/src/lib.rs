#![forbid(unsafe_code)]
//! Shared-trust PKI for multi-cluster meshes.
//!
//! One root CA, one intermediate CA per cluster (the files of Istio's `cacerts` Secret),
//! and short-lived workload certificates with SPIFFE ids. Also verification of cluster
//! bundles with a precise reason per problem, and a readable certificate dump.
//!
//! The crate does no I/O except in the small helpers of [`files`] (`*_dir`, `write_files`,
//! `Bundle::load_dir`): verification works on [`Bundle`]s in memory.

mod error;
pub mod files;
mod inspect;
mod issue;
mod keys;
mod pem;
mod renew;
mod verify;

pub use error::{PkiError, Result};
pub use files::{
    CA_CERT, CA_KEY, CERT_CHAIN, OutFile, ROOT_CERT, ROOT_KEY, WORKLOAD_CERT, WORKLOAD_CHAIN,
    WORKLOAD_KEY, WORKLOAD_ROOT, verify_bundles, write_files,
};
pub use inspect::{CertSummary, inspect_pem};
pub use issue::{
    DEFAULT_INTERMEDIATE_DAYS, DEFAULT_ORG, DEFAULT_ROOT_CN, DEFAULT_ROOT_DAYS, IntermediateCa,
    IntermediateOptions, MAX_NOT_AFTER_UNIX, RootCa, RootOptions, WorkloadCert, WorkloadOptions,
};
pub use keys::{KeyType, load_private_key_pem};
pub use renew::same_subject;
pub use verify::{Bundle, Finding, Report, Severity, VerifyOptions, signing_root, verify};

/// Checks that `name` is a DNS-1123 label (lowercase alphanumerics and '-', 1..=63 chars,
/// starting and ending with an alphanumeric). Cluster names become directory names,
/// Secret keys and SNI labels, so they must be labels.
pub fn validate_dns_label(name: &str) -> std::result::Result<(), String> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{name:?} must be 1 to 63 characters long (a DNS-1123 label)"
        ));
    }
    if !name.chars().all(|c| ok_char(c) || c == '-')
        || !name.starts_with(ok_char)
        || !name.ends_with(ok_char)
    {
        return Err(format!(
            "{name:?} is not a DNS-1123 label: use lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["east-cluster", "a", "c1", &"x".repeat(63)] {
            validate_dns_label(ok).unwrap();
        }
        for bad in ["", "East", "-a", "a-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(validate_dns_label(bad).is_err(), "{bad:?}");
        }
    }
}
