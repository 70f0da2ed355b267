//! The root CA: generated, or loaded with its key ("bring your own root").

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::chain_pem::{anchor_pem, der_to_pem, normalize_pem};
use super::intermediate::issue_ca;
use super::signer::{check_ca_and_key, key_belongs_to};
use super::subject::ca_dn;
use super::validity::{days, validity};
use super::{IntermediateCa, IntermediateOptions, RootOptions};
use crate::error::{PkiError, Result};
use crate::pem::cert_ders;

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
