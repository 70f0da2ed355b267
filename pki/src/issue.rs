//! Issuing certificates: root CA, per-cluster intermediate CA, workload certificates.
//!
//! Every child certificate is signed through an [`rcgen::Issuer`] loaded from the parent's
//! own DER, never from retyped name fields, and the issuer name of each child is checked to
//! equal the parent's subject byte for byte (Go's crypto/x509, hence istiod, compares raw bytes).

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::error::{PkiError, Result};
use crate::pem::{first_cert_der, parse_x509};
use crate::{KeyType, validate_dns_label};

/// Certificates start this long before "now" to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Default subject O of the root and the intermediates (Istio's `tools/certs` value).
pub const DEFAULT_ORG: &str = "Istio";
/// Default subject CN of the root.
pub const DEFAULT_ROOT_CN: &str = "Root CA";
/// Default validity of the root CA, in days.
pub const DEFAULT_ROOT_DAYS: u32 = 3650;
/// Unix time of 9999-12-31T23:59:59Z, the latest notAfter X.509 can express
/// (GeneralizedTime has four year digits, RFC 5280 §4.1.2.5).
pub const MAX_NOT_AFTER_UNIX: i64 = 253_402_300_799;

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

/// A root CA: certificate and private key.
#[derive(Debug)]
pub struct RootCa {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl RootCa {
    /// Generates a new self-signed root CA.
    pub fn generate(opts: &RootOptions) -> Result<RootCa> {
        let (not_before, not_after) =
            validity(opts.not_before, opts.not_after, days(opts.days)?, None)?;
        let key = opts.key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&[
            (DnType::OrganizationName, &opts.org),
            (DnType::CommonName, &opts.common_name),
        ]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(|source| PkiError::Sign {
            what: "root",
            source,
        })?;
        Ok(RootCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    /// Loads an existing root ("bring your own root"). The key may be PKCS#8, PKCS#1 or SEC1.
    /// Checks that the certificate is a CA and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa> {
        let cert_der = first_cert_der(cert_pem).map_err(PkiError::InvalidCert)?;
        let key = crate::keys::load_private_key_pem(key_pem)?;
        check_ca_and_key(&cert_der, &key, "root")?;
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues an intermediate CA for one cluster (or, with `path_len` 1, an offline
    /// intermediate that signs the cluster CAs).
    pub fn issue_intermediate(&self, opts: &IntermediateOptions) -> Result<IntermediateCa> {
        let (cert_der, key) = issue_ca(opts, &self.cert_der, &self.key)?;
        Ok(IntermediateCa {
            cert_pem: der_to_pem(&cert_der),
            key_pem: key.serialize_pem(),
            parents_pem: String::new(),
            root_pem: normalize_pem(&self.cert_pem),
            cert_der,
            key,
        })
    }
}

/// Signs a CA certificate for `opts` with the parent's key: subject O, CN, L=cluster.
fn issue_ca(
    opts: &IntermediateOptions,
    parent_der: &[u8],
    parent_key: &KeyPair,
) -> Result<(Vec<u8>, KeyPair)> {
    validate_dns_label(&opts.cluster).map_err(|reason| PkiError::InvalidOption {
        field: "cluster name",
        reason,
    })?;
    let parent = parse_x509(parent_der).map_err(PkiError::InvalidCert)?;
    if let Ok(Some(bc)) = parent.basic_constraints()
        && let Some(n) = bc.value.path_len_constraint
        && n <= u32::from(opts.path_len)
    {
        return Err(PkiError::InvalidOption {
            field: "parent",
            reason: format!(
                "\"{}\" has pathlen {n}, so it cannot sign a CA with pathlen {} \
                 (issue the parent with a larger pathlen)",
                parent.subject(),
                opts.path_len
            ),
        });
    }
    let (not_before, not_after) = validity(
        opts.not_before,
        opts.not_after,
        days(opts.days)?,
        Some(parent_of(parent_der)?),
    )?;
    let key = opts.key_type.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(&[
        (DnType::OrganizationName, &opts.org),
        (DnType::CommonName, &opts.common_name),
        (DnType::LocalityName, &opts.cluster),
    ]);
    params.subject_alt_names = opts
        .san_dns
        .iter()
        .map(|d| dns_san(d))
        .collect::<Result<_>>()?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(opts.path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert_der = sign_child(params, &key, parent_der, parent_key, "intermediate")?;
    Ok((cert_der, key))
}

/// A per-cluster intermediate CA with its root: the contents of Istio's `cacerts` Secret.
#[derive(Debug)]
pub struct IntermediateCa {
    cert_pem: String,
    key_pem: String,
    /// The intermediate CAs between this one and the root (PEM, lowest first), e.g. an
    /// offline intermediate; empty when the root signed this CA.
    parents_pem: String,
    root_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl IntermediateCa {
    /// Builds an intermediate from its certificate, key and root (all PEM). Checks that the
    /// certificate is a CA, that the key belongs to it, and that the root PEM holds a certificate.
    pub fn from_pems(ca_cert: &str, ca_key: &str, root_cert: &str) -> Result<IntermediateCa> {
        let cert_der = first_cert_der(ca_cert)
            .map_err(|e| PkiError::InvalidCert(format!("the CA certificate: {e}")))?;
        first_cert_der(root_cert)
            .map_err(|e| PkiError::InvalidCert(format!("the root certificate: {e}")))?;
        let key = crate::keys::load_private_key_pem(ca_key)?;
        check_ca_and_key(&cert_der, &key, "intermediate")?;
        Ok(IntermediateCa {
            cert_pem: normalize_pem(ca_cert),
            key_pem: ca_key.to_string(),
            parents_pem: String::new(),
            root_pem: normalize_pem(root_cert),
            cert_der,
            key,
        })
    }

    /// Like [`IntermediateCa::from_pems`], with the CAs between this one and the root
    /// (`cert-chain.pem` minus its first and last certificate).
    pub fn with_parents(mut self, parents: &[Vec<u8>]) -> IntermediateCa {
        self.parents_pem = parents.iter().map(|d| der_to_pem(d)).collect();
        self
    }

    /// Issues a CA below this one (this one needs pathlen ≥ 1): its `cert-chain.pem` is the
    /// new CA, this CA and its parents, then the root.
    pub fn issue_intermediate(&self, opts: &IntermediateOptions) -> Result<IntermediateCa> {
        let (cert_der, key) = issue_ca(opts, &self.cert_der, &self.key)?;
        Ok(IntermediateCa {
            cert_pem: der_to_pem(&cert_der),
            key_pem: key.serialize_pem(),
            parents_pem: format!("{}{}", self.cert_pem, self.parents_pem),
            root_pem: self.root_pem.clone(),
            cert_der,
            key,
        })
    }

    /// `ca-cert.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `ca-key.pem`.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `root-cert.pem`.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// `cert-chain.pem`: the intermediate, any CAs above it, then the root
    /// (`cat ca-cert.pem root-cert.pem` for one level).
    pub fn cert_chain_pem(&self) -> String {
        format!("{}{}{}", self.cert_pem, self.parents_pem, self.root_pem)
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a workload certificate with a SPIFFE URI SAN.
    pub fn issue_workload(&self, opts: &WorkloadOptions) -> Result<WorkloadCert> {
        let td = &opts.trust_domain;
        if td.is_empty() || td.contains(['/', ' ', '?', '#']) || !td.is_ascii() {
            return Err(PkiError::InvalidOption {
                field: "trust domain",
                reason: format!(
                    "{td:?} cannot appear in a SPIFFE id (use a DNS-like name of ASCII letters, \
                     digits, '-' and '.', e.g. cluster.local)"
                ),
            });
        }
        // The names of a Kubernetes Namespace and ServiceAccount (see validate_dns_subdomain).
        let invalid = |field, reason| PkiError::InvalidOption { field, reason };
        validate_dns_label(&opts.namespace).map_err(|r| invalid("namespace", r))?;
        crate::validate_dns_subdomain(&opts.service_account)
            .map_err(|r| invalid("service account", r))?;
        let (not_before, not_after) = validity(
            opts.not_before,
            opts.not_after,
            opts.validity,
            Some(parent_of(&self.cert_der)?),
        )?;
        let spiffe_id = opts.spiffe_id();
        let key = opts.key_type.generate()?;
        let mut params = CertificateParams::default();
        // Istio workload certificates have an empty subject; rcgen then marks the SAN critical.
        params.distinguished_name = DistinguishedName::new();
        let uri = spiffe_id
            .clone()
            .try_into()
            .map_err(|e| PkiError::InvalidOption {
                field: "SPIFFE id",
                reason: format!("{spiffe_id:?}: {e}"),
            })?;
        params.subject_alt_names = std::iter::once(Ok(SanType::URI(uri)))
            .chain(opts.dns_names.iter().map(|d| dns_san(d)))
            .collect::<Result<_>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = if opts.key_type.is_rsa() {
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ]
        } else {
            vec![KeyUsagePurpose::DigitalSignature]
        };
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let der = sign_child(params, &key, &self.cert_der, &self.key, "workload")?;
        let cert_pem = der_to_pem(&der);
        Ok(WorkloadCert {
            chain_pem: format!("{cert_pem}{}{}", self.cert_pem, self.parents_pem),
            cert_pem,
            key_pem: key.serialize_pem(),
            root_pem: self.root_pem.clone(),
            spiffe_id,
        })
    }
}

/// A workload certificate, its key, and what a TLS peer needs around it.
#[derive(Debug, Clone)]
pub struct WorkloadCert {
    /// The leaf certificate alone.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
    /// Leaf then intermediate(s): what a TLS peer sends.
    pub chain_pem: String,
    /// The trust anchor.
    pub root_pem: String,
    /// `spiffe://<td>/ns/<ns>/sa/<sa>`.
    pub spiffe_id: String,
}

fn days(days: u32) -> Result<Duration> {
    if days == 0 {
        return Err(PkiError::InvalidOption {
            field: "days",
            reason: "must be at least 1".into(),
        });
    }
    Ok(DAY * days)
}

/// The signer as [`validity`] needs it: its notAfter, and how to name it when it expired.
struct Parent {
    not_after: OffsetDateTime,
    /// `the root CA "O=Istio, CN=Root CA"` or `the CA "..."`.
    name: String,
}

fn parent_of(der: &[u8]) -> Result<Parent> {
    let cert = parse_x509(der).map_err(PkiError::InvalidCert)?;
    let root = cert.subject().as_raw() == cert.issuer().as_raw();
    Ok(Parent {
        not_after: cert.validity().not_after.to_datetime(),
        name: format!(
            "the {} \"{}\"",
            if root { "root CA" } else { "CA" },
            cert.subject()
        ),
    })
}

/// The latest notAfter X.509 can express: 9999-12-31T23:59:59Z.
fn max_not_after() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(MAX_NOT_AFTER_UNIX).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Computes (notBefore, notAfter): overrides win, notAfter is clamped to the parent's.
/// Refuses (never panics on) a validity that ends after 9999-12-31, and a parent that has
/// already expired (it cannot sign anything valid).
fn validity(
    not_before: Option<OffsetDateTime>,
    not_after: Option<OffsetDateTime>,
    length: Duration,
    parent: Option<Parent>,
) -> Result<(OffsetDateTime, OffsetDateTime)> {
    let now = OffsetDateTime::now_utc();
    let max = max_not_after();
    let nb = not_before.unwrap_or(now - BACKDATE);
    let mut na = match not_after {
        Some(na) => na,
        None => time::Duration::try_from(length)
            .ok()
            .and_then(|l| now.checked_add(l))
            .filter(|na| *na <= max)
            .ok_or_else(|| PkiError::InvalidOption {
                field: "validity",
                reason: format!(
                    "{} from now ends after 9999-12-31T23:59:59Z, the latest date a certificate \
                     can hold; choose a shorter validity",
                    describe_length(length)
                ),
            })?,
    };
    if na > max {
        return Err(PkiError::InvalidOption {
            field: "validity",
            reason: format!(
                "notAfter {na} is after 9999-12-31T23:59:59Z, the latest date a certificate can hold"
            ),
        });
    }
    if let Some(parent) = parent {
        if parent.not_after <= now {
            return Err(PkiError::InvalidOption {
                field: "signing CA",
                reason: format!(
                    "{} expired on {}, so it cannot sign a certificate that is valid now: \
                     renew or replace it first",
                    parent.name, parent.not_after
                ),
            });
        }
        na = na.min(parent.not_after);
    }
    if na <= nb {
        return Err(PkiError::InvalidOption {
            field: "validity",
            reason: format!("notAfter {na} is not after notBefore {nb}"),
        });
    }
    Ok((nb, na))
}

/// "3650 days" / "36 hours" / "90 seconds", for messages.
fn describe_length(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(DAY.as_secs()) {
        format!("{} days", s / DAY.as_secs())
    } else if s.is_multiple_of(3600) {
        format!("{} hours", s / 3600)
    } else {
        format!("{s} seconds")
    }
}

fn dn(parts: &[(DnType, &String)]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for (ty, value) in parts {
        if !value.is_empty() {
            dn.push(ty.clone(), value.as_str());
        }
    }
    dn
}

fn dns_san(name: &str) -> Result<SanType> {
    let ia5 = name
        .to_string()
        .try_into()
        .map_err(|e| PkiError::InvalidOption {
            field: "DNS name",
            reason: format!("{name:?}: {e}"),
        })?;
    Ok(SanType::DnsName(ia5))
}

/// Checks that `der` is a CA certificate and that `key` is its private key.
fn check_ca_and_key(der: &[u8], key: &KeyPair, what: &'static str) -> Result<()> {
    let cert = parse_x509(der).map_err(PkiError::InvalidCert)?;
    if !cert.is_ca() {
        return Err(PkiError::NotCa(what));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch(what));
    }
    Ok(())
}

/// Signs `params` with the CA loaded from its own DER, then checks issuer == CA subject bytes.
fn sign_child(
    params: CertificateParams,
    subject_key: &KeyPair,
    ca_der: &[u8],
    ca_key: &KeyPair,
    what: &'static str,
) -> Result<Vec<u8>> {
    let ca_cert_der = CertificateDer::from(ca_der);
    let issuer = Issuer::from_ca_cert_der(&ca_cert_der, ca_key)
        .map_err(|source| PkiError::Sign { what, source })?;
    let cert = params
        .signed_by(subject_key, &issuer)
        .map_err(|source| PkiError::Sign { what, source })?;
    let child = parse_x509(cert.der()).map_err(PkiError::InvalidCert)?;
    let parent = parse_x509(ca_der).map_err(PkiError::InvalidCert)?;
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(PkiError::IssuerMismatch(what));
    }
    Ok(cert.der().to_vec())
}

/// PEM of one DER certificate, LF line endings.
pub fn der_to_pem(der: &[u8]) -> String {
    crate::pem::encode("CERTIFICATE", der.to_vec())
}

/// Ensures the PEM text ends with exactly one newline, so that concatenations stay valid PEM.
fn normalize_pem(text: &str) -> String {
    format!("{}\n", text.trim_end())
}
