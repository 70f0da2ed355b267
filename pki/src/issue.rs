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
use crate::pem::{cert_ders, first_cert_der, parse_x509};
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
        let (not_before, not_after, _) =
            validity(opts.not_before, opts.not_after, days(opts.days)?, None)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = ca_dn(&[
            (DnType::OrganizationName, &opts.org),
            (DnType::CommonName, &opts.common_name),
        ])?;
        let key = opts.key_type.generate()?;
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
    ///
    /// The file may hold several roots (`root-cert.pem` during a root rotation): the one the
    /// key belongs to signs, and is the only root written into a child's `cert-chain.pem`;
    /// the whole file is the child's `root-cert.pem`. A file without the key's certificate is
    /// refused.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<RootCa> {
        let ders = cert_ders(cert_pem).map_err(PkiError::InvalidCert)?;
        let key = crate::keys::load_private_key_pem(key_pem)?;
        let cert_der = match ders.iter().find(|d| key_belongs_to(d, &key)) {
            Some(d) => d.clone(),
            None if ders.len() == 1 => return Err(PkiError::KeyMismatch("root")),
            None => {
                return Err(PkiError::InvalidKey(format!(
                    "the key belongs to none of the {} certificates of the root file",
                    ders.len()
                )));
            }
        };
        check_ca_and_key(&cert_der, &key, "root")?;
        Ok(RootCa {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            cert_der,
            key,
        })
    }

    /// The root file as loaded (every root it holds): a child's `root-cert.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The root that signs (the one the key belongs to).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues an intermediate CA for one cluster (or, with `path_len` 1, an offline
    /// intermediate that signs the cluster CAs).
    pub fn issue_intermediate(&self, opts: &IntermediateOptions) -> Result<IntermediateCa> {
        let (cert_der, key, clamped) = issue_ca(opts, &self.cert_der, &self.key)?;
        Ok(IntermediateCa {
            cert_pem: der_to_pem(&cert_der),
            key_pem: key.serialize_pem(),
            parents_pem: String::new(),
            root_pem: normalize_pem(&self.cert_pem),
            anchor_pem: anchor_pem(&self.cert_pem, &self.cert_der),
            cert_der,
            key,
            clamped,
        })
    }
}

/// The root to end a `cert-chain.pem` with: the root file itself when it holds that root
/// alone (byte for byte as before), else that root alone.
fn anchor_pem(root_file: &str, root_der: &[u8]) -> String {
    match cert_ders(root_file) {
        Ok(ders) if ders.len() == 1 && ders[0] == root_der => normalize_pem(root_file),
        _ => der_to_pem(root_der),
    }
}

/// Whether `key` is the private key of the certificate `der`.
fn key_belongs_to(der: &[u8], key: &KeyPair) -> bool {
    parse_x509(der)
        .is_ok_and(|c| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Signs a CA certificate for `opts` with the parent's key: subject O, CN, L=cluster.
fn issue_ca(
    opts: &IntermediateOptions,
    parent_der: &[u8],
    parent_key: &KeyPair,
) -> Result<(Vec<u8>, KeyPair, Option<Clamp>)> {
    if !opts.renewal {
        validate_dns_label(&opts.cluster).map_err(|reason| PkiError::InvalidOption {
            field: "cluster name",
            reason,
        })?;
    }
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
    let (not_before, not_after, clamped) = validity(
        opts.not_before,
        opts.not_after,
        days(opts.days)?,
        Some(parent_of(parent_der)?),
    )?;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_dn(&[
        (DnType::OrganizationName, &opts.org),
        (DnType::CommonName, &opts.common_name),
        (DnType::LocalityName, &opts.cluster),
    ])?;
    let key = opts.key_type.generate()?;
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
    Ok((cert_der, key, clamped))
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
    /// The one root that ends `cert-chain.pem` (the one this CA chains to), PEM.
    anchor_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
    /// Whether the requested notAfter was cut to the signer's.
    clamped: Option<Clamp>,
}

impl IntermediateCa {
    /// Builds an intermediate from its certificate, key and root (all PEM). Checks that the
    /// certificate is a CA, that the key belongs to it, and that the root PEM holds a certificate.
    ///
    /// `root_cert` may hold several roots (during a root rotation): `cert-chain.pem` ends
    /// with the one that signed this CA (or the top of its parents, see
    /// [`IntermediateCa::with_parents`]).
    pub fn from_pems(ca_cert: &str, ca_key: &str, root_cert: &str) -> Result<IntermediateCa> {
        let cert_der = first_cert_der(ca_cert)
            .map_err(|e| PkiError::InvalidCert(format!("the CA certificate: {e}")))?;
        first_cert_der(root_cert)
            .map_err(|e| PkiError::InvalidCert(format!("the root certificate: {e}")))?;
        let key = crate::keys::load_private_key_pem(ca_key)?;
        check_ca_and_key(&cert_der, &key, "intermediate")?;
        let mut ca = IntermediateCa {
            cert_pem: normalize_pem(ca_cert),
            key_pem: ca_key.to_string(),
            parents_pem: String::new(),
            root_pem: normalize_pem(root_cert),
            anchor_pem: String::new(),
            cert_der,
            key,
            clamped: None,
        };
        ca.anchor_pem = ca.find_anchor(&ca.cert_der.clone());
        Ok(ca)
    }

    /// The root of `root_pem` that signs `top`, as PEM; the whole root file when none does
    /// (a bundle that does not verify: `certs verify` says why).
    fn find_anchor(&self, top: &[u8]) -> String {
        let roots = cert_ders(&self.root_pem).unwrap_or_default();
        match crate::verify::anchor_of(top, &roots) {
            Some(i) => anchor_pem(&self.root_pem, &roots[i]),
            None => self.root_pem.clone(),
        }
    }

    /// Like [`IntermediateCa::from_pems`], with the CAs between this one and the root
    /// (`cert-chain.pem` minus its first and last certificate).
    pub fn with_parents(mut self, parents: &[Vec<u8>]) -> IntermediateCa {
        self.parents_pem = parents.iter().map(|d| der_to_pem(d)).collect();
        let top = parents
            .last()
            .cloned()
            .unwrap_or_else(|| self.cert_der.clone());
        self.anchor_pem = self.find_anchor(&top);
        self
    }

    /// When this CA was issued with a requested notAfter later than its signer's: the
    /// signer's notAfter was used instead (see [`Clamp`]).
    pub fn clamped(&self) -> Option<&Clamp> {
        self.clamped.as_ref()
    }

    /// Issues a CA below this one (this one needs pathlen ≥ 1): its `cert-chain.pem` is the
    /// new CA, this CA and its parents, then the root.
    pub fn issue_intermediate(&self, opts: &IntermediateOptions) -> Result<IntermediateCa> {
        let (cert_der, key, clamped) = issue_ca(opts, &self.cert_der, &self.key)?;
        Ok(IntermediateCa {
            cert_pem: der_to_pem(&cert_der),
            key_pem: key.serialize_pem(),
            parents_pem: format!("{}{}", self.cert_pem, self.parents_pem),
            root_pem: self.root_pem.clone(),
            anchor_pem: self.anchor_pem.clone(),
            cert_der,
            key,
            clamped,
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

    /// `cert-chain.pem`: the intermediate, any CAs above it, then the root they chain to
    /// (`cat ca-cert.pem root-cert.pem` for one level and one root).
    pub fn cert_chain_pem(&self) -> String {
        format!("{}{}{}", self.cert_pem, self.parents_pem, self.anchor_pem)
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Issues a workload certificate with a SPIFFE URI SAN.
    pub fn issue_workload(&self, opts: &WorkloadOptions) -> Result<WorkloadCert> {
        self.issue_workload_noting(opts).map(|(cert, _)| cert)
    }

    /// [`IntermediateCa::issue_workload`], also saying whether the requested notAfter was
    /// cut to this CA's ([`Clamp`]), for the caller to warn.
    pub fn issue_workload_noting(
        &self,
        opts: &WorkloadOptions,
    ) -> Result<(WorkloadCert, Option<Clamp>)> {
        crate::validate_trust_domain(&opts.trust_domain).map_err(|reason| {
            PkiError::InvalidOption {
                field: "trust domain",
                reason,
            }
        })?;
        // The names of a Kubernetes Namespace and ServiceAccount (see validate_dns_subdomain).
        let invalid = |field, reason| PkiError::InvalidOption { field, reason };
        validate_dns_label(&opts.namespace).map_err(|r| invalid("namespace", r))?;
        crate::validate_dns_subdomain(&opts.service_account)
            .map_err(|r| invalid("service account", r))?;
        let (not_before, not_after, clamped) = validity(
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
        let cert = WorkloadCert {
            chain_pem: format!("{cert_pem}{}{}", self.cert_pem, self.parents_pem),
            cert_pem,
            key_pem: key.serialize_pem(),
            root_pem: self.root_pem.clone(),
            spiffe_id,
        };
        Ok((cert, clamped))
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

/// The requested end of validity was later than the signer's notAfter, so the certificate
/// ends when its signer does (a certificate cannot outlive the CA that signed it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clamp {
    /// The notAfter asked for (from the validity length or the explicit override).
    pub requested: OffsetDateTime,
    /// The notAfter written: the signer's.
    pub not_after: OffsetDateTime,
    /// The signer, e.g. `the root CA "O=Istio, CN=Root CA"`.
    pub signer: String,
}

impl std::fmt::Display for Clamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the certificate ends on {}, when {} does, not on {} as requested (a certificate \
             cannot outlive its signer)",
            utc(self.not_after),
            self.signer,
            utc(self.requested)
        )
    }
}

/// `2026-12-05T12:00:00Z`.
fn utc(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The signer as [`validity`] needs it: its validity, and how to name it in errors.
struct Parent {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// `the root CA "O=Istio, CN=Root CA"` or `the CA "..."`.
    name: String,
}

fn parent_of(der: &[u8]) -> Result<Parent> {
    let cert = parse_x509(der).map_err(PkiError::InvalidCert)?;
    let root = cert.subject().as_raw() == cert.issuer().as_raw();
    Ok(Parent {
        not_before: cert.validity().not_before.to_datetime(),
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

/// Computes (notBefore, notAfter, clamp): overrides win, notAfter is clamped to the
/// parent's (the clamp says so). Refuses (never panics on) a validity that ends after
/// 9999-12-31, and a parent that has already expired or is not valid yet (it cannot sign
/// anything valid now).
fn validity(
    not_before: Option<OffsetDateTime>,
    not_after: Option<OffsetDateTime>,
    length: Duration,
    parent: Option<Parent>,
) -> Result<(OffsetDateTime, OffsetDateTime, Option<Clamp>)> {
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
    let mut clamp = None;
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
        if parent.not_before > now {
            return Err(PkiError::InvalidOption {
                field: "signing CA",
                reason: format!(
                    "{} is not valid yet (notBefore {}), so it cannot sign a certificate that is \
                     valid now: check this machine's clock, or wait until then",
                    parent.name,
                    utc(parent.not_before)
                ),
            });
        }
        if na > parent.not_after {
            clamp = Some(Clamp {
                requested: na,
                not_after: parent.not_after,
                signer: parent.name,
            });
            na = parent.not_after;
        }
    }
    if na <= nb {
        return Err(PkiError::InvalidOption {
            field: "validity",
            reason: format!("notAfter {na} is not after notBefore {nb}"),
        });
    }
    Ok((nb, na, clamp))
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

/// A CA's subject from its non-empty parts. Refuses an empty one: a CA's subject must not be
/// empty (RFC 5280 §4.1.2.6), as its children's issuer names it.
fn ca_dn(parts: &[(DnType, &String)]) -> Result<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    for (ty, value) in parts {
        if !value.is_empty() {
            dn.push(ty.clone(), value.as_str());
        }
    }
    if dn.iter().next().is_none() {
        return Err(PkiError::InvalidOption {
            field: "subject",
            reason: "a CA certificate needs a non-empty subject (RFC 5280 §4.1.2.6): \
                     give it an organization or a common name"
                .into(),
        });
    }
    Ok(dn)
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
    if !may_sign_certs(&cert) {
        return Err(PkiError::NoKeyCertSign(what));
    }
    if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch(what));
    }
    Ok(())
}

/// A CA's keyUsage, when it has one, must allow signing certificates (keyCertSign, RFC 5280
/// §4.2.1.3); openssl and Go refuse what it signs otherwise.
pub(crate) fn may_sign_certs(cert: &x509_parser::certificate::X509Certificate<'_>) -> bool {
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    }
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
