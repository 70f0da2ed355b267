//! Workload (leaf) certificates with a SPIFFE URI SAN, issued by an [`IntermediateCa`].

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType,
};

use super::chain_pem::der_to_pem;
use super::signer::sign_child;
use super::subject::dns_san;
use super::validity::{parent_of, validity};
use super::{Clamp, IntermediateCa, WorkloadOptions};
use crate::error::{PkiError, Result};
use crate::validate_dns_label;

impl IntermediateCa {
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
