//! Validity windows: backdating for clock skew, the X.509 upper bound, and clamping a
//! child's notAfter to its signer's ([`Clamp`]).

use std::time::Duration;

use time::OffsetDateTime;

use crate::error::{PkiError, Result};
use crate::pem::parse_x509;

/// Certificates start this long before "now" to tolerate clock skew between machines.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
pub(super) const DAY: Duration = Duration::from_secs(24 * 60 * 60);
/// Unix time of 9999-12-31T23:59:59Z, the latest notAfter X.509 can express
/// (GeneralizedTime has four year digits, RFC 5280 §4.1.2.5).
pub const MAX_NOT_AFTER_UNIX: i64 = 253_402_300_799;

pub(super) fn days(days: u32) -> Result<Duration> {
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
pub(super) struct Parent {
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// `the root CA "O=Istio, CN=Root CA"` or `the CA "..."`.
    name: String,
}

pub(super) fn parent_of(der: &[u8]) -> Result<Parent> {
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
pub(super) fn validity(
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
        // X.509 holds whole seconds; a clamp of under a minute (a child asking for its
        // signer's own length moments after the signer was made) is made but not reported.
        let na_s = na.replace_nanosecond(0).unwrap_or(na);
        na = na_s;
        if na_s > parent.not_after {
            if na_s - parent.not_after > time::Duration::MINUTE {
                clamp = Some(Clamp {
                    requested: na_s,
                    not_after: parent.not_after,
                    signer: parent.name,
                });
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A child asking for its signer's own length moments after the signer was made ends
    /// with it, without a warning that shows two equal times (found by an audit session);
    /// an hour's clamp is reported.
    #[test]
    fn a_clamp_of_moments_is_not_reported() {
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let parent = |not_after| Parent {
            not_before: now - time::Duration::DAY,
            not_after,
            name: "the CA \"x\"".into(),
        };
        let end = now + time::Duration::DAY;
        let (_, na, clamp) = validity(None, None, DAY, Some(parent(end))).unwrap();
        assert!(clamp.is_none(), "{clamp:?}");
        assert!(na <= end, "never past the signer");
        let early = end - time::Duration::HOUR;
        let (_, na, clamp) = validity(None, None, DAY, Some(parent(early))).unwrap();
        assert_eq!(na, early);
        assert!(
            clamp
                .unwrap()
                .to_string()
                .contains("cannot outlive its signer")
        );
    }
}
