//! Subject names and SANs of the certificates [`super`] issues.

use rcgen::{DistinguishedName, DnType, SanType};

use crate::error::{PkiError, Result};

/// A CA's subject from its non-empty parts. Refuses an empty one: a CA's subject must not be
/// empty (RFC 5280 §4.1.2.6), as its children's issuer names it.
pub(super) fn ca_dn(parts: &[(DnType, &String)]) -> Result<DistinguishedName> {
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

pub(super) fn dns_san(name: &str) -> Result<SanType> {
    let ia5 = name
        .to_string()
        .try_into()
        .map_err(|e| PkiError::InvalidOption {
            field: "DNS name",
            reason: format!("{name:?}: {e}"),
        })?;
    Ok(SanType::DnsName(ia5))
}
