//! Renewing an intermediate CA: a new key and certificate with the subject, SANs, pathlen
//! and validity length of the one it replaces, so istiod and every peer see the same CA name.

use x509_parser::extensions::GeneralName;

use crate::error::{PkiError, Result};
use crate::issue::IntermediateOptions;
use crate::pem::{first_cert_der, parse_x509};

impl IntermediateOptions {
    /// The options that re-issue `ca_cert_pem`'s subject (O, CN, L = cluster), DNS SANs,
    /// pathlen and validity length. Refuses a subject it could not reproduce byte for byte
    /// (other attributes than O, CN and L), since peers compare names as bytes.
    pub fn renewing(ca_cert_pem: &str) -> Result<IntermediateOptions> {
        let der = first_cert_der(ca_cert_pem).map_err(PkiError::InvalidCert)?;
        let cert = parse_x509(&der).map_err(PkiError::InvalidCert)?;
        let subject = cert.subject();
        let one = |it: Vec<&str>| it.first().map(|s| s.to_string()).unwrap_or_default();
        let org = one(subject
            .iter_organization()
            .filter_map(|a| a.as_str().ok())
            .collect());
        let cn = one(subject
            .iter_common_name()
            .filter_map(|a| a.as_str().ok())
            .collect());
        let cluster = one(subject
            .iter_locality()
            .filter_map(|a| a.as_str().ok())
            .collect());
        let mut opts = IntermediateOptions::new(cluster);
        // The subject is kept as it is, whatever its L (none, or not a DNS label).
        opts.renewal = true;
        opts.org = org;
        opts.common_name = cn;
        opts.san_dns = match cert.subject_alternative_name() {
            Ok(Some(san)) => san
                .value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        opts.path_len = match cert.basic_constraints() {
            Ok(Some(bc)) => bc.value.path_len_constraint.unwrap_or(0).min(255) as u8,
            _ => 0,
        };
        let v = cert.validity();
        let days = (v.not_after.to_datetime() - v.not_before.to_datetime()).whole_days();
        opts.days = u32::try_from(days.max(1)).unwrap_or(crate::DEFAULT_INTERMEDIATE_DAYS);
        Ok(opts)
    }
}

/// True when both PEM certificates have the same subject, byte for byte.
pub fn same_subject(a_pem: &str, b_pem: &str) -> Result<bool> {
    let (a, b) = (
        first_cert_der(a_pem).map_err(PkiError::InvalidCert)?,
        first_cert_der(b_pem).map_err(PkiError::InvalidCert)?,
    );
    let (a, b) = (
        parse_x509(&a).map_err(PkiError::InvalidCert)?,
        parse_x509(&b).map_err(PkiError::InvalidCert)?,
    );
    Ok(a.subject().as_raw() == b.subject().as_raw())
}
