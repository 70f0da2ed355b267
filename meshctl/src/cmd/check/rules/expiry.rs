//! Expiry with a horizon (`--warn-before`, default 30 days): a remote secret's credential
//! ("token expiry", per pair) and the `cacerts` intermediate and roots ("intermediate
//! expiry", "root expiry", per cluster). Expired fails; expiring within the horizon warns.
//! Pure: the facts are the gathered Secret and the credential read from a stored kubeconfig.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;

use super::super::hints::{Invocation, shell_word};
use super::super::report::Report;
use crate::mesh::cacerts::pem_ders;
use crate::mesh::credentials::{Credential, Method, human, read_secret, rfc3339};

/// `--warn-before`'s default.
pub const DEFAULT_WARN_BEFORE: &str = "30d";

/// The check name: the expiry of a remote secret's credential, judged here only.
pub const TOKEN_EXPIRY: &str = "token expiry";

/// "token expiry" of the credential stored for `cluster` among a target's remote secrets
/// (the first Secret entry for it, as istiod uses one): judged by [`credential`]; an entry
/// whose credential cannot be read fails with the reason.
pub fn stored_credential(
    r: &mut Report,
    scope: &str,
    (secrets, cluster): (&[Secret], &str),
    hints: (&str, &str),
    now: u64,
    warn_before: Duration,
) {
    let entries: Vec<_> = secrets.iter().flat_map(read_secret).collect();
    if let Some(stored) = entries.iter().flatten().find(|s| s.cluster == cluster) {
        credential(r, scope, &stored.credential, hints, now, warn_before);
        return;
    }
    let key = format!(" key {cluster}: ");
    if let Some(e) = entries
        .iter()
        .filter_map(|e| e.as_ref().err())
        .find(|e| e.contains(&key))
    {
        r.fail(
            scope,
            TOKEN_EXPIRY,
            format!("the stored credential cannot be read: {e}"),
            hints.1.to_string(),
        );
    }
}

/// "token expiry" of a stored kubeconfig's credential at `now` (Unix seconds). `refresh`
/// is the command that renews it (`meshctl credentials refresh ...`), `rejoin` the fallback.
pub fn credential(
    r: &mut Report,
    scope: &str,
    c: &Credential,
    (refresh, rejoin): (&str, &str),
    now: u64,
    warn_before: Duration,
) {
    let what = c.method.describe();
    let Some(exp) = c.expires else {
        match &c.method {
            Method::None => r.fail(
                scope,
                TOKEN_EXPIRY,
                "the kubeconfig has no credential",
                rejoin.to_string(),
            ),
            Method::LegacySecretToken { .. } => r.pass(
                scope,
                TOKEN_EXPIRY,
                format!("{what}: never expires; --token-ttl gives expiring tokens"),
            ),
            Method::InvalidExpiry { .. } => r.fail(
                scope,
                TOKEN_EXPIRY,
                format!("{what}: the token's exp claim is not a valid time"),
                rejoin.to_string(),
            ),
            _ => r.pass(
                scope,
                TOKEN_EXPIRY,
                format!("{what}: expiry unknown to meshctl"),
            ),
        }
        return;
    };
    let renew = match c.method {
        Method::TokenRequest { .. } => format!("{refresh} (or {rejoin})"),
        _ => rejoin.to_string(),
    };
    if exp <= now {
        r.fail(
            scope,
            TOKEN_EXPIRY,
            format!("{what} expired {} ago ({})", human(now - exp), rfc3339(exp)),
            format!("issue a new token: {renew}"),
        );
    } else if exp - now < warn_before.as_secs() {
        r.warn(
            scope,
            TOKEN_EXPIRY,
            format!("{what} expires in {} ({})", human(exp - now), rfc3339(exp)),
            format!(
                "renew it before then: {renew}; to renew unattended see meshctl credentials cronjob"
            ),
        );
    } else {
        r.pass(
            scope,
            TOKEN_EXPIRY,
            format!("{what} expires in {}", human(exp - now)),
        );
    }
}

/// The notAfter (Unix seconds) of each certificate in a PEM text.
fn not_afters(pem: &[u8]) -> Vec<u64> {
    pem_ders(pem)
        .iter()
        .filter_map(|der| {
            let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
            u64::try_from(cert.validity().not_after.timestamp()).ok()
        })
        .collect()
}

/// "intermediate expiry" (`ca-cert.pem`) and "root expiry" (every root in `root-cert.pem`,
/// which holds two during a rotation) of a cluster's `cacerts`. Nothing when there is no
/// `cacerts` or the file is missing: "cacerts present and valid" reports that. `inv`: the
/// flags the renewal hint repeats.
pub fn cacerts(
    r: &mut Report,
    scope: &str,
    (secret, inv): (Option<&Secret>, &Invocation),
    (context, cluster): (&str, &str),
    now: u64,
    warn_before: Duration,
) {
    let Some(data) = secret.and_then(|s| s.data.as_ref()) else {
        return;
    };
    let renew_ca = format!(
        "renew the intermediate from the same root: meshctl certs renew --ca certs/{cluster} \
         --root-cert certs/root-cert.pem --root-key certs/root-key.pem --context {} --apply{}",
        shell_word(context),
        inv.meshctl()
    );
    let rotate_root = "rotate to a new root in every cluster before then (README: Rotating trust)";
    for (file, check, hint) in [
        (pki::CA_CERT, "intermediate expiry", renew_ca.as_str()),
        (pki::ROOT_CERT, "root expiry", rotate_root),
    ] {
        let Some(pem) = data.get(file) else {
            continue;
        };
        let mut ends = not_afters(&pem.0);
        if file == pki::CA_CERT {
            ends.truncate(1);
        }
        let Some(&first) = ends.iter().min() else {
            continue;
        };
        let which = if ends.len() > 1 {
            format!(
                "{file} (the first of its {} certificates to end)",
                ends.len()
            )
        } else {
            file.to_string()
        };
        if first <= now {
            r.fail(
                scope,
                check,
                format!(
                    "{which} expired {} ago ({})",
                    human(now - first),
                    rfc3339(first)
                ),
                hint.to_string(),
            );
        } else if first - now < warn_before.as_secs() {
            r.warn(
                scope,
                check,
                format!(
                    "{which} expires in {} ({})",
                    human(first - now),
                    rfc3339(first)
                ),
                hint.to_string(),
            );
        } else {
            r.pass(
                scope,
                check,
                format!("{which} expires in {}", human(first - now)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;
    use time::OffsetDateTime;

    use super::*;
    use crate::cmd::check::report::{Item, Status};
    use crate::mesh::credentials::credential_of_token;

    const DAY: u64 = 24 * 3600;

    fn horizon() -> Duration {
        humantime::parse_duration(DEFAULT_WARN_BEFORE).unwrap()
    }

    fn find<'a>(items: &'a [Item], check: &str) -> &'a Item {
        items
            .iter()
            .find(|i| i.check == check)
            .unwrap_or_else(|| panic!("no {check:?} in {items:?}"))
    }

    fn token(iat: u64, exp: u64) -> Credential {
        use base64::Engine as _;
        let claims = serde_json::json!({"iat": iat, "exp": exp, "sub": "system:serviceaccount:istio-system:r"});
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        credential_of_token(&format!("e30.{b}.sig"))
    }

    fn judge(c: &Credential, now: u64) -> Item {
        let mut r = Report::default();
        let hints = ("meshctl credentials refresh", "meshctl join");
        credential(&mut r, "s", c, hints, now, horizon());
        r.items.remove(0)
    }

    #[test]
    fn a_credential_fails_expired_warns_within_the_horizon_and_passes_beyond() {
        let c = token(0, 100 * DAY);
        let i = judge(&c, 100 * DAY + 60);
        assert_eq!(i.status, Status::Fail, "{i:?}");
        assert!(i.detail.contains("expired 1m ago"), "{i:?}");
        assert!(
            i.hint
                .as_deref()
                .unwrap()
                .contains("issue a new token: meshctl credentials refresh")
        );
        let i = judge(&c, 71 * DAY);
        assert_eq!(i.status, Status::Warn, "{i:?}");
        assert!(i.detail.contains("expires in 29days"), "{i:?}");
        assert_eq!(judge(&c, 69 * DAY).status, Status::Pass);
        let legacy = credential_of_token("e30.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YTpiIn0.sig");
        let i = judge(&legacy, 0);
        assert_eq!(i.status, Status::Pass);
        assert!(i.detail.contains("never expires"), "{i:?}");
        let none = Credential {
            method: Method::None,
            expires: None,
        };
        assert_eq!(judge(&none, 0).status, Status::Fail);
    }

    /// A cacerts Secret whose intermediate ends `ca_days` from now (root: 3650 days).
    fn cacerts_ending_in(ca_days: i64) -> Secret {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let mut opts = pki::IntermediateOptions::new("west");
        opts.not_after = Some(OffsetDateTime::now_utc() + time::Duration::days(ca_days));
        let ca = root.issue_intermediate(&opts).unwrap();
        let data: BTreeMap<String, ByteString> = ca
            .files(std::path::Path::new("b"))
            .into_iter()
            .map(|f| {
                let name = f.path.file_name().unwrap().to_string_lossy().into_owned();
                (name, ByteString(f.contents.into_bytes()))
            })
            .collect();
        Secret {
            data: Some(data),
            ..Default::default()
        }
    }

    fn judge_cacerts(s: &Secret) -> Vec<Item> {
        let mut r = Report::default();
        let now = crate::mesh::credentials::unix_now();
        cacerts(
            &mut r,
            "cluster west",
            (Some(s), &Invocation::default()),
            ("west", "west"),
            now,
            horizon(),
        );
        r.items
    }

    #[test]
    fn an_intermediate_within_the_horizon_warns_and_the_root_passes() {
        let items = judge_cacerts(&cacerts_ending_in(10));
        let i = find(&items, "intermediate expiry");
        assert_eq!(i.status, Status::Warn, "{i:?}");
        assert!(i.detail.starts_with("ca-cert.pem expires in "), "{i:?}");
        assert!(i.detail.contains("days"), "{i:?}");
        assert!(
            i.hint
                .as_deref()
                .unwrap()
                .contains("meshctl certs renew --ca certs/west --root-cert certs/root-cert.pem --root-key certs/root-key.pem --context west --apply")
        );
        assert_eq!(find(&items, "root expiry").status, Status::Pass);
        let items = judge_cacerts(&cacerts_ending_in(400));
        assert_eq!(find(&items, "intermediate expiry").status, Status::Pass);
        // No cacerts: nothing here (the cluster rules fail it).
        let mut r = Report::default();
        cacerts(
            &mut r,
            "c",
            (None, &Default::default()),
            ("w", "w"),
            0,
            horizon(),
        );
        assert!(r.items.is_empty());
    }

    #[test]
    fn an_expired_intermediate_fails() {
        let s = cacerts_ending_in(10);
        let mut r = Report::default();
        let now = crate::mesh::credentials::unix_now() + 11 * DAY;
        let none = Invocation::default();
        cacerts(&mut r, "c", (Some(&s), &none), ("w", "w"), now, horizon());
        assert_eq!(find(&r.items, "intermediate expiry").status, Status::Fail);
    }
}
