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
    Clamp, DEFAULT_INTERMEDIATE_DAYS, DEFAULT_ORG, DEFAULT_ROOT_CN, DEFAULT_ROOT_DAYS,
    IntermediateCa, IntermediateOptions, MAX_NOT_AFTER_UNIX, RootCa, RootOptions, WorkloadCert,
    WorkloadOptions, der_to_pem,
};
pub use keys::{KeyType, load_private_key_pem};
pub use pem::CanonicalPem;
pub use renew::same_subject;
pub use verify::{Bundle, Finding, Report, Severity, VerifyOptions, signing_root, verify};

/// Checks a certificate file's text (`root-cert.pem`, `cert-chain.pem`, `ca-cert.pem`): only
/// `CERTIFICATE` blocks, each a valid X.509 certificate, at least one; text between blocks is
/// allowed. Returns how many certificates it holds. The error names a stray block's type and
/// line (a private key appended by mistake would be published), never its contents; the
/// caller names the file.
pub fn check_cert_pem(text: &str) -> std::result::Result<usize, String> {
    pem::cert_ders(text).map(|ders| ders.len())
}

/// What is published from a certificate file (`cacerts`' `root-cert.pem`, `cert-chain.pem`,
/// `ca-cert.pem`): each `CERTIFICATE` block re-encoded (64-column base64, LF), nothing
/// between; `dropped` says whether the file held text besides them. Refuses what
/// [`check_cert_pem`] refuses.
pub fn canonical_cert_pem(text: &str) -> std::result::Result<CanonicalPem, String> {
    pem::canonical_certs(text)
}

/// What is published from a private key file (`cacerts`' `ca-key.pem`): its key block only,
/// re-encoded; `dropped` says whether the file held anything else. Errors never quote it.
pub fn canonical_key_pem(text: &str) -> std::result::Result<CanonicalPem, String> {
    pem::canonical_key(text)
}

/// Checks that `name` is a DNS-1123 label (lowercase alphanumerics and '-', 1..=63 chars,
/// starting and ending with an alphanumeric). Cluster names become directory names,
/// Secret keys and SNI labels, so they must be labels.
pub fn validate_dns_label(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!(
            "{name:?} must be 1 to 63 characters long (a DNS-1123 label)"
        ));
    }
    if !dns_part(name) {
        return Err(format!(
            "{name:?} is not a DNS-1123 label: use lowercase letters, digits and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks that `td` is a SPIFFE trust domain: 1 to 255 characters, each a lowercase letter,
/// digit, '.', '-' or '_' (SPIFFE-ID specification §2.1, "Trust Domain"). Upper case, a
/// port, userinfo, percent-encoding and other characters are refused, since peers compare
/// SPIFFE ids as strings. `..` alone is refused too: it is no name.
pub fn validate_trust_domain(td: &str) -> std::result::Result<(), String> {
    let ok_chars = td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if td.is_empty() || td.len() > 255 || !ok_chars || td.bytes().all(|b| b == b'.') {
        return Err(format!(
            "{td:?} is not a SPIFFE trust domain: use 1 to 255 lowercase letters, digits, '.', \
             '-' and '_' (SPIFFE-ID §2.1), e.g. cluster.local"
        ));
    }
    Ok(())
}

/// Lowercase letters, digits and '-', a letter or digit at both ends (so not empty): a
/// DNS-1123 label without its length limit.
fn dns_part(p: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    p.chars().all(|c| ok_char(c) || c == '-') && p.starts_with(ok_char) && p.ends_with(ok_char)
}

/// Checks that `name` is a DNS-1123 subdomain: dot-separated parts of lowercase letters,
/// digits and '-' (a letter or digit at both ends; no length of their own, unlike a label's
/// 63: the rule is a regular expression), 1..=253 characters in all. Kubernetes names most objects this way, ServiceAccounts included
/// (kubernetes `staging/src/k8s.io/apimachinery/pkg/api/validation/generic.go`:
/// `ValidateServiceAccountName = NameIsDNSSubdomain`, and `ValidateNamespaceName =
/// NameIsDNSLabel`, i.e. [`validate_dns_label`]; the rules are `IsDNS1123Subdomain` and
/// `IsDNS1123Label` in `.../apimachinery/pkg/util/validation/validation.go`).
pub fn validate_dns_subdomain(name: &str) -> std::result::Result<(), String> {
    if name.is_empty() || name.len() > 253 {
        return Err(format!(
            "{name:?} must be 1 to 253 characters long (a DNS-1123 subdomain)"
        ));
    }
    if !name.split('.').all(dns_part) {
        return Err(format!(
            "{name:?} is not a DNS-1123 subdomain: use lowercase letters, digits, '-' and '.', \
             each dot-separated part starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_subdomains() {
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61),
        ]
        .join(".");
        assert_eq!(long.len(), 253);
        // A part may be longer than a label's 63 (IsDNS1123Subdomain is a regexp and a length).
        let long_part = "a".repeat(100);
        for ok in ["a", "a.b-c", "istio-eastwestgateway", &long, &long_part] {
            validate_dns_subdomain(ok).unwrap();
        }
        for bad in [
            "",
            "a..b",
            ".a",
            "a.",
            "A",
            "ünï",
            "a_b",
            "a b",
            &format!("{long}e"),
        ] {
            assert!(validate_dns_subdomain(bad).is_err(), "{bad:?}");
        }
    }

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
