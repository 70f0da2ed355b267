//! A readable summary of certificates: the essentials of `openssl x509 -text`.

use std::fmt;

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::public_key::PublicKey;

use crate::error::{PkiError, Result};
use crate::pem::{cert_ders_and_others, parse_x509};

/// The essentials of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    /// Colon-separated hex.
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// `DNS:..`, `URI:..`, `IP:..`, `email:..`.
    pub sans: Vec<String>,
    /// `None` when there is no basicConstraints extension.
    pub is_ca: Option<bool>,
    pub path_len: Option<u32>,
    pub key_usage: Vec<String>,
    pub ext_key_usage: Vec<String>,
    /// E.g. `ECDSA P-256`, `RSA 4096`.
    pub key: String,
    /// Uppercase colon-separated SHA-256 of the DER.
    pub sha256_fingerprint: String,
}

/// Summarises every certificate in a PEM text; other blocks (a key in a combined file) are
/// skipped, never shown ([`crate::check_cert_pem`] says whether the text is a clean
/// certificate file).
pub fn inspect_pem(pem_text: &str) -> Result<Vec<CertSummary>> {
    cert_ders_and_others(pem_text)
        .map_err(PkiError::InvalidCert)?
        .0
        .iter()
        .map(|der| {
            let cert = parse_x509(der).map_err(PkiError::InvalidCert)?;
            Ok(summarize(&cert, der))
        })
        .collect()
}

/// Uppercase colon-separated SHA-256 over `der`.
pub(crate) fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn summarize(cert: &X509Certificate<'_>, der: &[u8]) -> CertSummary {
    let mut sans = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            sans.push(match name {
                GeneralName::DNSName(d) => format!("DNS:{d}"),
                GeneralName::URI(u) => format!("URI:{u}"),
                GeneralName::RFC822Name(e) => format!("email:{e}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!(
                        "IP:{}",
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                    ),
                    16 => format!(
                        "IP:{}",
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                    ),
                    _ => "IP:<invalid>".into(),
                },
                other => format!("{other:?}"),
            });
        }
    }
    let (is_ca, path_len) = match cert.basic_constraints() {
        Ok(Some(bc)) => (Some(bc.value.ca), bc.value.path_len_constraint),
        _ => (None, None),
    };
    let mut key_usage = Vec::new();
    if let Ok(Some(ku)) = cert.key_usage() {
        let ku = ku.value;
        for (set, name) in [
            (ku.digital_signature(), "Digital Signature"),
            (ku.non_repudiation(), "Non Repudiation"),
            (ku.key_encipherment(), "Key Encipherment"),
            (ku.data_encipherment(), "Data Encipherment"),
            (ku.key_agreement(), "Key Agreement"),
            (ku.key_cert_sign(), "Certificate Sign"),
            (ku.crl_sign(), "CRL Sign"),
        ] {
            if set {
                key_usage.push(name.to_string());
            }
        }
    }
    let mut ext_key_usage = Vec::new();
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let eku = eku.value;
        if eku.server_auth {
            ext_key_usage.push("TLS Web Server Authentication".into());
        }
        if eku.client_auth {
            ext_key_usage.push("TLS Web Client Authentication".into());
        }
        for oid in &eku.other {
            ext_key_usage.push(oid.to_id_string());
        }
    }
    CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        sans,
        is_ca,
        path_len,
        key_usage,
        ext_key_usage,
        key: key_description(cert),
        sha256_fingerprint: fingerprint(der),
    }
}

fn key_description(cert: &X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {}", rsa.key_size()),
        Ok(PublicKey::EC(ec)) => format!("ECDSA P-{}", ec.key_size()),
        _ => format!("unknown ({})", spki.algorithm.algorithm.to_id_string()),
    }
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |s: &str| {
            if s.is_empty() {
                "(empty)".to_string()
            } else {
                s.to_string()
            }
        };
        writeln!(f, "Subject:      {}", or_none(&self.subject))?;
        writeln!(f, "Issuer:       {}", or_none(&self.issuer))?;
        writeln!(f, "Serial:       {}", self.serial)?;
        writeln!(f, "Not before:   {}", self.not_before)?;
        writeln!(f, "Not after:    {}", self.not_after)?;
        writeln!(f, "Key:          {}", self.key)?;
        let ca = match (self.is_ca, self.path_len) {
            (None, _) => "(no basicConstraints)".to_string(),
            (Some(true), Some(n)) => format!("CA:TRUE, pathlen:{n}"),
            (Some(true), None) => "CA:TRUE".to_string(),
            (Some(false), _) => "CA:FALSE".to_string(),
        };
        writeln!(f, "Basic:        {ca}")?;
        if !self.key_usage.is_empty() {
            writeln!(f, "Key usage:    {}", self.key_usage.join(", "))?;
        }
        if !self.ext_key_usage.is_empty() {
            writeln!(f, "Ext key use:  {}", self.ext_key_usage.join(", "))?;
        }
        if !self.sans.is_empty() {
            writeln!(f, "SANs:         {}", self.sans.join(", "))?;
        }
        writeln!(f, "SHA-256:      {}", self.sha256_fingerprint)
    }
}
