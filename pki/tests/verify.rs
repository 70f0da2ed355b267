//! Library-level bundle verification with a fixed clock (the CLI tests cover each failure
//! through the binary).

use std::path::Path;
use std::time::Duration;

use pki::{IntermediateOptions, RootCa, RootOptions, Severity, VerifyOptions, verify_bundles};
use time::OffsetDateTime;

fn bundle(root: &RootCa, dir: &Path, cluster: &str) {
    root.issue_intermediate(&IntermediateOptions::new(cluster))
        .unwrap()
        .write_dir(&dir.join(cluster), false)
        .unwrap();
}

#[test]
fn fresh_bundles_pass_and_expiry_is_judged_against_the_given_clock() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    bundle(&root, tmp.path(), "west-cluster");
    bundle(&root, tmp.path(), "east-cluster");
    let west = tmp.path().join("west-cluster");
    let east = tmp.path().join("east-cluster");

    let report = verify_bundles(&[&west, &east], &VerifyOptions::default());
    assert!(report.is_ok() && report.findings.is_empty(), "{report}");

    // 20 days before the intermediate's default 1825-day expiry: a warning only.
    let now = OffsetDateTime::now_utc() + time::Duration::days(1825 - 20);
    let opts = VerifyOptions {
        now: Some(now),
        ..Default::default()
    };
    let report = verify_bundles(&[&west], &opts);
    assert!(report.is_ok(), "{report}");
    let w: Vec<_> = report.warnings().collect();
    assert_eq!(w.len(), 1, "{report}");
    assert_eq!(w[0].file, west.join("ca-cert.pem"));
    assert!(w[0].message.contains("expires on"), "{}", w[0]);

    // A shorter window: no warning.
    let opts = VerifyOptions {
        now: Some(now),
        warn_within: Duration::from_secs(86400),
    };
    assert!(verify_bundles(&[&west], &opts).findings.is_empty());

    // Past the end: an error; before the start: an error.
    let opts = VerifyOptions {
        now: Some(now + time::Duration::days(30)),
        ..Default::default()
    };
    let report = verify_bundles(&[&west], &opts);
    assert!(
        report.errors().any(|f| f.message.starts_with("expired on")),
        "{report}"
    );
    let opts = VerifyOptions {
        now: Some(OffsetDateTime::now_utc() - time::Duration::days(1)),
        ..Default::default()
    };
    let report = verify_bundles(&[&west], &opts);
    assert!(
        report.errors().any(|f| f.message.contains("not valid yet")),
        "{report}"
    );
}

#[test]
fn every_finding_names_its_file_and_display_summarises() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    bundle(&root, tmp.path(), "c1");
    let dir = tmp.path().join("c1");
    let ca = std::fs::read_to_string(dir.join("ca-cert.pem")).unwrap();
    let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), format!("{chain}{ca}")).unwrap();
    std::fs::remove_file(dir.join("ca-key.pem")).unwrap();

    let report = verify_bundles(&[&dir], &VerifyOptions::default());
    let errors: Vec<_> = report.errors().collect();
    assert_eq!(errors.len(), 3, "{report}");
    assert!(errors.iter().all(|f| f.severity == Severity::Error));
    let text = report.to_string();
    assert!(text.contains("c1/ca-key.pem: missing"), "{text}");
    assert!(
        text.contains("c1/cert-chain.pem: holds 3 certificate(s)"),
        "{text}"
    );
    assert!(
        text.contains("c1/cert-chain.pem: its last certificate is not root-cert.pem"),
        "{text}"
    );
    assert!(text.contains("c1: FAILED (3 error(s))"), "{text}");
}

#[test]
fn bundles_verify_from_memory_with_the_same_findings_as_from_a_directory() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let other = RootCa::generate(&RootOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    bundle(&root, tmp.path(), "west");
    bundle(&other, tmp.path(), "east");
    let west = pki::Bundle::load_dir(&tmp.path().join("west")).unwrap();
    let mut east = pki::Bundle::load_dir(&tmp.path().join("east")).unwrap();
    assert!(pki::verify(std::slice::from_ref(&west), &VerifyOptions::default()).is_ok());
    // From memory: a key of another bundle, and a different root across bundles.
    east.ca_key = west.ca_key.clone();
    east.source = "cacerts of east".into();
    let report = pki::verify(&[west.clone(), east], &VerifyOptions::default());
    let text = report.to_string();
    assert!(
        text.contains("cacerts of east/ca-key.pem: does not match the public key"),
        "{text}"
    );
    assert!(
        text.contains("cacerts of east/root-cert.pem: differs from"),
        "{text}"
    );
    // The debug form never shows the key.
    assert!(!format!("{west:?}").contains("PRIVATE KEY"));
}

#[test]
fn a_missing_directory_is_one_finding() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nope");
    let findings = pki::Bundle::load_dir(&dir).unwrap_err();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(findings[0].message.contains("directory does not exist"));
    let report = verify_bundles(&[&dir], &VerifyOptions::default());
    assert_eq!(report.findings.len(), 1, "{report}");
    assert!(
        report.to_string().contains("nope: FAILED (1 error(s))"),
        "{report}"
    );
}
