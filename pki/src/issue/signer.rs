//! The signer: checks that a CA certificate may sign and that a key is its own, and signs a
//! child through an issuer loaded from the CA's DER.

use rcgen::{CertificateParams, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;

use crate::error::{PkiError, Result};
use crate::pem::parse_x509;

/// Whether `key` is the private key of the certificate `der`.
pub(super) fn key_belongs_to(der: &[u8], key: &KeyPair) -> bool {
    parse_x509(der)
        .is_ok_and(|c| c.public_key().subject_public_key.data.as_ref() == key.public_key_raw())
}

/// Checks that `der` is a CA certificate and that `key` is its private key.
pub(super) fn check_ca_and_key(der: &[u8], key: &KeyPair, what: &'static str) -> Result<()> {
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
pub(super) fn sign_child(
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
