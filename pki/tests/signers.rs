//! What may sign: a CA whose keyUsage lacks keyCertSign is refused everywhere, a bundle is
//! verified before it signs, a root file with several roots signs with the key's root and
//! chains to it alone, a signer not valid yet is refused, a clamped notAfter is said, and
//! what a CA's subject and a trust domain may be.

use std::path::Path;
use std::time::Duration;

use pki::{
    Bundle, IntermediateCa, IntermediateOptions, PkiError, RootCa, RootOptions, VerifyOptions,
    WorkloadOptions,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use time::OffsetDateTime;

fn ders(pem: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

/// A CA made by hand (as openssl would make it): subject `CN=<cn>`, the given keyUsage.
fn ca_params(cn: &str, usages: &[KeyUsagePurpose], path_len: Option<u8>) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = usages.to_vec();
    p
}

/// A self-signed root whose keyUsage is digitalSignature only: (cert PEM, key PEM).
fn root_without_key_cert_sign() -> (String, String, CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let params = ca_params("No KCS Root", &[KeyUsagePurpose::DigitalSignature], None);
    let cert = params.clone().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), params, key)
}

#[test]
fn a_ca_without_key_cert_sign_is_refused_everywhere() {
    // As a root to sign with.
    let (cert, key, params, kp) = root_without_key_cert_sign();
    let e = RootCa::from_pem(&cert, &key).unwrap_err();
    assert!(matches!(e, PkiError::NoKeyCertSign("root")), "{e}");
    assert!(e.to_string().contains("keyCertSign"), "{e}");

    // As the root of a bundle (the intermediate made by hand, as pki now refuses to).
    let issuer = Issuer::from_params(&params, &kp);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params(
        "Intermediate",
        &[KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
        Some(0),
    )
    .signed_by(&ca_key, &issuer)
    .unwrap();
    let bundle = Bundle {
        source: "b".into(),
        ca_cert: ca.pem(),
        ca_key: ca_key.serialize_pem(),
        root_cert: cert.clone(),
        cert_chain: format!("{}{cert}", ca.pem()),
    };
    let report = pki::verify(&[bundle], &VerifyOptions::default());
    assert!(!report.is_ok(), "{report}");
    assert!(
        report
            .errors()
            .any(|f| f.file.ends_with("root-cert.pem") && f.message.contains("keyCertSign")),
        "{report}"
    );

    // As an intermediate to sign workloads with.
    let good = RootCa::generate(&RootOptions::default()).unwrap();
    let good_issuer = Issuer::from_ca_cert_der(
        &rustls_pki_types::CertificateDer::from(good.cert_der()),
        KeyPair::from_pem(good.key_pem()).unwrap(),
    )
    .unwrap();
    let bad_ca_key = KeyPair::generate().unwrap();
    let bad_ca = ca_params("Bad CA", &[KeyUsagePurpose::DigitalSignature], Some(0))
        .signed_by(&bad_ca_key, &good_issuer)
        .unwrap();
    let e = IntermediateCa::from_pems(&bad_ca.pem(), &bad_ca_key.serialize_pem(), good.cert_pem())
        .unwrap_err();
    assert!(matches!(e, PkiError::NoKeyCertSign("intermediate")), "{e}");
}

/// A bundle directory written by pki, then one file swapped.
fn bundle_dir(root: &RootCa, dir: &Path) -> IntermediateCa {
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    ca.write_dir(dir, false).unwrap();
    ca
}

#[test]
fn a_bundle_that_does_not_verify_does_not_sign() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let other = RootCa::generate(&RootOptions::default()).unwrap();
    let dir = tmp.path().join("west");
    bundle_dir(&root, &dir);
    IntermediateCa::load_dir(&dir).unwrap();
    // root-cert.pem replaced by another root: the chain no longer reaches it.
    std::fs::write(dir.join("root-cert.pem"), other.cert_pem()).unwrap();
    let e = IntermediateCa::load_dir(&dir).unwrap_err();
    let PkiError::InvalidBundle { problems, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        problems.iter().any(|p| p.contains("root-cert.pem")),
        "{problems:?}"
    );
    assert!(e.to_string().contains("nothing was signed"), "{e}");
}

#[test]
fn a_root_file_with_two_roots_signs_with_the_keys_root_and_chains_to_it_alone() {
    let old = RootCa::generate(&RootOptions::default()).unwrap();
    let new = RootCa::generate(&RootOptions::default()).unwrap();
    // The new root second, as during a rotation (old first).
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    let signer = RootCa::from_pem(&both, new.key_pem()).unwrap();
    assert_eq!(signer.cert_der(), new.cert_der());
    assert_eq!(signer.cert_pem(), both);
    let ca = signer
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    let chain = ders(&ca.cert_chain_pem());
    assert_eq!(chain.len(), 2, "cert-chain.pem: the CA and one root");
    assert_eq!(chain[1], new.cert_der());
    assert_eq!(ders(ca.root_pem()).len(), 2, "root-cert.pem keeps both");
    let bundle = Bundle {
        source: "b".into(),
        ca_cert: ca.cert_pem().into(),
        ca_key: ca.key_pem().into(),
        root_cert: ca.root_pem().into(),
        cert_chain: ca.cert_chain_pem(),
    };
    let report = pki::verify(&[bundle], &VerifyOptions::default());
    assert!(report.is_ok(), "{report}");

    // A bundle holding both roots signs a CA below it (pathlen 1) with one root in its chain.
    let tmp = tempfile::tempdir().unwrap();
    let offline = signer
        .issue_intermediate(&IntermediateOptions {
            path_len: 1,
            ..IntermediateOptions::new("offline")
        })
        .unwrap();
    offline.write_dir(tmp.path(), false).unwrap();
    let loaded = IntermediateCa::load_dir(tmp.path()).unwrap();
    let below = loaded
        .issue_intermediate(&IntermediateOptions::new("east"))
        .unwrap();
    let chain = ders(&below.cert_chain_pem());
    assert_eq!(chain.len(), 3, "the CA, the offline CA, one root");
    assert_eq!(chain[2], new.cert_der());

    // No certificate of the file is the key's.
    let third = RootCa::generate(&RootOptions::default()).unwrap();
    let e = RootCa::from_pem(&both, third.key_pem()).unwrap_err();
    assert!(e.to_string().contains("none of the 2 certificates"), "{e}");
}

#[test]
fn a_signer_not_valid_yet_is_refused_and_a_clamp_is_said() {
    let now = OffsetDateTime::now_utc();
    let future = RootCa::generate(&RootOptions {
        not_before: Some(now + time::Duration::days(2)),
        not_after: Some(now + time::Duration::days(20)),
        ..Default::default()
    })
    .unwrap();
    let e = future
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap_err();
    assert!(e.to_string().contains("is not valid yet"), "{e}");

    let short = RootCa::generate(&RootOptions {
        days: 10,
        ..Default::default()
    })
    .unwrap();
    let ca = short
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    let clamp = ca.clamped().expect("1825 days cut to the root's 10");
    assert!(clamp.requested > clamp.not_after, "{clamp:?}");
    let said = clamp.to_string();
    assert!(
        said.contains("root CA") && said.contains("Z, when"),
        "{said}"
    );
    let fits = short
        .issue_intermediate(&IntermediateOptions {
            days: 5,
            ..IntermediateOptions::new("west")
        })
        .unwrap();
    assert!(fits.clamped().is_none());
    let (_, clamp) = ca
        .issue_workload_noting(&WorkloadOptions {
            validity: Duration::from_secs(30 * 24 * 3600),
            ..WorkloadOptions::new("ns", "sa")
        })
        .unwrap();
    assert!(clamp.is_some());
    let (_, clamp) = ca
        .issue_workload_noting(&WorkloadOptions::new("ns", "sa"))
        .unwrap();
    assert!(clamp.is_none());
}

#[test]
fn trust_domains_follow_the_spiffe_spec() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    for ok in ["cluster.local", "a_b-c.d", "td1"] {
        ca.issue_workload(&WorkloadOptions {
            trust_domain: ok.into(),
            ..WorkloadOptions::new("ns", "sa")
        })
        .unwrap();
    }
    let long = "a".repeat(256);
    for bad in [
        "Cluster.Local",
        "a:8080",
        "u@h",
        "a%20b",
        "..",
        "a\\b",
        "",
        "a/b",
        "é",
        &long,
    ] {
        let e = ca
            .issue_workload(&WorkloadOptions {
                trust_domain: bad.into(),
                ..WorkloadOptions::new("ns", "sa")
            })
            .unwrap_err();
        assert!(
            e.to_string().contains("SPIFFE trust domain"),
            "{bad:?}: {e}"
        );
    }
}

#[test]
fn renewing_keeps_a_subject_without_a_cluster_label() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let issuer = Issuer::from_ca_cert_der(
        &rustls_pki_types::CertificateDer::from(root.cert_der()),
        KeyPair::from_pem(root.key_pem()).unwrap(),
    )
    .unwrap();
    for (l, cn) in [(None, "Plain CA"), (Some("Not A Label"), "Labelled CA")] {
        let key = KeyPair::generate().unwrap();
        let mut p = ca_params(
            cn,
            &[KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            Some(0),
        );
        if let Some(l) = l {
            p.distinguished_name.push(DnType::LocalityName, l);
        }
        let old = p.signed_by(&key, &issuer).unwrap().pem();
        let opts = IntermediateOptions::renewing(&old).unwrap();
        let renewed = root.issue_intermediate(&opts).unwrap();
        assert!(pki::same_subject(renewed.cert_pem(), &old).unwrap(), "{cn}");
    }
    // A new CA still needs a cluster label.
    let e = root
        .issue_intermediate(&IntermediateOptions::new(""))
        .unwrap_err();
    assert!(e.to_string().contains("cluster name"), "{e}");
}

#[test]
fn a_ca_subject_may_not_be_empty() {
    let e = RootCa::generate(&RootOptions {
        org: String::new(),
        common_name: String::new(),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("non-empty subject"), "{e}");
    RootCa::generate(&RootOptions {
        org: String::new(),
        ..Default::default()
    })
    .unwrap();
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    // L=cluster alone is a subject.
    root.issue_intermediate(&IntermediateOptions {
        org: String::new(),
        common_name: String::new(),
        ..IntermediateOptions::new("west")
    })
    .unwrap();
}
