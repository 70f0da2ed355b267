//! Validity arithmetic never panics: a validity past 9999-12-31 (the latest date X.509 can
//! hold) is an error naming the limit, and an expired signer is named as such.

use std::time::Duration;

use pki::{IntermediateOptions, RootCa, RootOptions, WorkloadOptions};
use time::OffsetDateTime;

fn root() -> RootCa {
    RootCa::generate(&RootOptions::default()).unwrap()
}

#[test]
fn days_past_year_9999_are_an_error_not_a_panic() {
    for days in [99_999_999, 3_000_000, u32::MAX] {
        let err = RootCa::generate(&RootOptions {
            days,
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("9999-12-31"), "{days}: {err}");
    }
    let r = root();
    for days in [4_000_000, u32::MAX] {
        let err = r
            .issue_intermediate(&IntermediateOptions {
                days,
                ..IntermediateOptions::new("west")
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("9999-12-31"), "{days}: {err}");
    }
    let ca = r
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    for validity in [
        Duration::from_secs(4_000_000_000 * 3600),
        Duration::from_secs(u64::MAX),
        Duration::MAX,
    ] {
        let err = ca
            .issue_workload(&WorkloadOptions {
                validity,
                ..WorkloadOptions::new("a", "b")
            })
            .unwrap_err()
            .to_string();
        assert!(err.contains("9999-12-31"), "{validity:?}: {err}");
    }
}

#[test]
fn the_last_second_of_9999_is_a_valid_not_after() {
    let max = OffsetDateTime::from_unix_timestamp(253_402_300_799).unwrap();
    let r = RootCa::generate(&RootOptions {
        not_after: Some(max),
        ..Default::default()
    })
    .unwrap();
    let s = pki::inspect_pem(r.cert_pem()).unwrap();
    assert!(s[0].not_after.contains("9999"), "{}", s[0].not_after);
}

#[test]
fn an_expired_signer_is_named_as_expired() {
    let now = OffsetDateTime::now_utc();
    let old = RootCa::generate(&RootOptions {
        not_before: Some(now - time::Duration::days(20)),
        not_after: Some(now - time::Duration::days(1)),
        ..Default::default()
    })
    .unwrap();
    let err = old
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("root CA") && err.contains("expired on"),
        "{err}"
    );
    assert!(!err.contains("is not after notBefore"), "{err}");
}
