//! Issuance: extensions, names, validity, key types, bring-your-own root; checked with
//! x509-parser and with the real `openssl` CLI.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pki::{
    IntermediateCa, IntermediateOptions, KeyType, RootCa, RootOptions, WorkloadCert,
    WorkloadOptions,
};
use x509_parser::prelude::*;

fn der(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `openssl verify` accepts the workload in `dir/wl` against `dir`'s root and intermediate
/// (as `write_dir` lays them out).
fn openssl_verifies_workload(dir: &Path) {
    let args = [
        "verify",
        "-CAfile",
        "root-cert.pem",
        "-untrusted",
        "ca-cert.pem",
        "wl/cert.pem",
    ];
    openssl(&args, dir);
}

/// The walkthrough's chain: a default root, `east-cluster`'s intermediate and the
/// `istioinaction/catalog` workload.
fn east_chain() -> (RootCa, IntermediateCa, WorkloadCert) {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("east-cluster"))
        .unwrap();
    let wl = ca
        .issue_workload(&WorkloadOptions::new("istioinaction", "catalog"))
        .unwrap();
    (root, ca, wl)
}

#[test]
fn root_intermediate_workload_extensions_and_names() {
    let (root, ca, wl) = east_chain();

    let root_der = der(root.cert_pem());
    let ca_der = der(ca.cert_pem());
    let wl_der = der(&wl.cert_pem);
    let (_, r) = parse_x509_certificate(&root_der).unwrap();
    let (_, c) = parse_x509_certificate(&ca_der).unwrap();
    let (_, w) = parse_x509_certificate(&wl_der).unwrap();

    // Issuer DN bytes equal the parent's subject DN bytes (Go compares raw bytes).
    assert_eq!(r.issuer().as_raw(), r.subject().as_raw());
    assert_eq!(c.issuer().as_raw(), r.subject().as_raw());
    assert_eq!(w.issuer().as_raw(), c.subject().as_raw());
    c.verify_signature(Some(r.public_key())).unwrap();
    w.verify_signature(Some(c.public_key())).unwrap();

    // Root.
    assert_eq!(r.subject().to_string(), "O=Istio, CN=Root CA");
    let bc = r.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca && bc.value.path_len_constraint.is_none());
    let ku = r.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    assert!(
        r.get_extension_unique(&oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .unwrap()
            .is_some()
    );
    let root_days =
        (r.validity().not_after.to_datetime() - r.validity().not_before.to_datetime()).whole_days();
    assert_eq!(root_days, 3650);

    // Intermediate.
    assert_eq!(
        c.subject().to_string(),
        "O=Istio, CN=Intermediate CA, L=east-cluster"
    );
    let bc = c.basic_constraints().unwrap().unwrap();
    assert!(bc.critical && bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = c.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::DNSName("istiod.istio-system.svc")]
    );
    let aki = c
        .get_extension_unique(&oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER)
        .unwrap();
    assert!(aki.is_some());
    assert!(c.validity().not_after.to_datetime() < r.validity().not_after.to_datetime());

    // Workload.
    let bc = w.basic_constraints().unwrap().expect("explicit CA:FALSE");
    assert!(!bc.value.ca);
    let eku = w.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let ku = w.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_encipherment() && !ku.key_cert_sign());
    let san = w.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical, "empty subject requires a critical SAN");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(
            "spiffe://cluster.local/ns/istioinaction/sa/catalog"
        )]
    );
    assert_eq!(
        wl.spiffe_id,
        "spiffe://cluster.local/ns/istioinaction/sa/catalog"
    );
    let hours = (w.validity().not_after.to_datetime() - w.validity().not_before.to_datetime())
        .whole_minutes();
    assert_eq!(hours, 24 * 60 + 5, "24 h plus the 5 minute backdate");

    // Chains.
    assert_eq!(
        ca.cert_chain_pem(),
        format!("{}{}", ca.cert_pem(), ca.root_pem())
    );
    assert_eq!(wl.chain_pem, format!("{}{}", wl.cert_pem, ca.cert_pem()));
    assert_eq!(wl.root_pem, ca.root_pem());
}

#[test]
fn intermediate_validity_is_clamped_to_the_root() {
    let root = RootCa::generate(&RootOptions {
        days: 30,
        ..Default::default()
    })
    .unwrap();
    let mut opts = IntermediateOptions::new("west-cluster");
    opts.days = 365;
    let ca = root.issue_intermediate(&opts).unwrap();
    let mut w = WorkloadOptions::new("ns", "sa");
    w.validity = Duration::from_secs(3600 * 24 * 400);
    let wl = ca.issue_workload(&w).unwrap();
    let root_der = der(root.cert_pem());
    let ca_der = der(ca.cert_pem());
    let wl_der = der(&wl.cert_pem);
    let (_, r) = parse_x509_certificate(&root_der).unwrap();
    let (_, c) = parse_x509_certificate(&ca_der).unwrap();
    let (_, l) = parse_x509_certificate(&wl_der).unwrap();
    assert_eq!(c.validity().not_after, r.validity().not_after);
    assert_eq!(l.validity().not_after, r.validity().not_after);
}

#[test]
fn invalid_options_are_rejected() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    for bad in ["East", "a.b", "", "-x"] {
        let err = root
            .issue_intermediate(&IntermediateOptions::new(bad))
            .unwrap_err();
        assert!(err.to_string().contains("DNS-1123"), "{bad:?}: {err}");
    }
    let err = RootCa::generate(&RootOptions {
        days: 0,
        ..Default::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("days"), "{err}");
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("c1"))
        .unwrap();
    let err = ca
        .issue_workload(&WorkloadOptions::new("ns/x", "sa"))
        .unwrap_err();
    assert!(err.to_string().contains("namespace"), "{err}");
}

#[test]
fn p384_and_rsa_keys() {
    let root = RootCa::generate(&RootOptions {
        key_type: KeyType::EcdsaP384,
        ..Default::default()
    })
    .unwrap();
    let mut io = IntermediateOptions::new("rsa-cluster");
    io.key_type = KeyType::Rsa2048;
    let ca = root.issue_intermediate(&io).unwrap();
    let mut wo = WorkloadOptions::new("ns", "sa");
    wo.key_type = KeyType::Rsa2048;
    let wl = ca.issue_workload(&wo).unwrap();

    let s = pki::inspect_pem(root.cert_pem()).unwrap();
    assert_eq!(s[0].key, "ECDSA P-384");
    let s = pki::inspect_pem(ca.cert_pem()).unwrap();
    assert_eq!(s[0].key, "RSA 2048");
    let s = pki::inspect_pem(&wl.cert_pem).unwrap();
    assert_eq!(s[0].key_usage, ["Digital Signature", "Key Encipherment"]);

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root.pem"), root.cert_pem()).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca.cert_pem()).unwrap();
    std::fs::write(dir.path().join("leaf.pem"), &wl.cert_pem).unwrap();
    openssl(
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "ca.pem",
            "leaf.pem",
        ],
        dir.path(),
    );
}

/// A 4096-bit RSA root, like Istio's Makefile (slow; the only RSA-4096 test).
#[test]
fn rsa4096_root() {
    let root = RootCa::generate(&RootOptions {
        key_type: KeyType::Rsa4096,
        ..Default::default()
    })
    .unwrap();
    assert_eq!(
        pki::inspect_pem(root.cert_pem()).unwrap()[0].key,
        "RSA 4096"
    );
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("c"))
        .unwrap();
    ca.issue_workload(&WorkloadOptions::new("ns", "sa"))
        .unwrap();
}

#[test]
fn openssl_verifies_chain_and_shows_extensions() {
    let (_, ca, wl) = east_chain();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ca.write_dir(d, false).unwrap();
    wl.write_dir(&d.join("wl"), false).unwrap();

    openssl_verifies_workload(d);
    // The workload chain file is what a peer sends: leaf then intermediate.
    openssl(
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "wl/cert-chain.pem",
            "wl/cert.pem",
        ],
        d,
    );

    let text = openssl(&["x509", "-text", "-noout", "-in", "root-cert.pem"], d);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");

    let text = openssl(&["x509", "-text", "-noout", "-in", "ca-cert.pem"], d);
    assert!(
        text.contains("X509v3 Basic Constraints: critical"),
        "{text}"
    );
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(text.contains("X509v3 Key Usage: critical"), "{text}");
    assert!(text.contains("Certificate Sign, CRL Sign"), "{text}");
    assert!(text.contains("DNS:istiod.istio-system.svc"), "{text}");
    assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
    assert!(
        text.contains("L=east-cluster") || text.contains("L = east-cluster"),
        "{text}"
    );

    let text = openssl(&["x509", "-text", "-noout", "-in", "wl/cert.pem"], d);
    assert!(text.contains("CA:FALSE"), "{text}");
    assert!(
        text.contains("TLS Web Server Authentication, TLS Web Client Authentication"),
        "{text}"
    );
    assert!(
        text.contains("URI:spiffe://cluster.local/ns/istioinaction/sa/catalog"),
        "{text}"
    );

    let from_key = openssl(&["pkey", "-in", "ca-key.pem", "-pubout"], d);
    let from_cert = openssl(&["x509", "-in", "ca-cert.pem", "-noout", "-pubkey"], d);
    assert_eq!(from_key, from_cert);
    let from_key = openssl(&["pkey", "-in", "wl/key.pem", "-pubout"], d);
    let from_cert = openssl(&["x509", "-in", "wl/cert.pem", "-noout", "-pubkey"], d);
    assert_eq!(from_key, from_cert);
}

/// Bring your own root: keys in PKCS#8, PKCS#1 and SEC1 made by openssl, certificates
/// self-signed by openssl (so the subject encoding is openssl's, not ours).
#[test]
fn byo_root_with_pkcs8_pkcs1_and_sec1_keys() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: [(&str, &[&str], &str); 3] = [
        (
            "pkcs8",
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "pkcs8.key",
            ],
            "PRIVATE KEY",
        ),
        (
            "pkcs1",
            &["genrsa", "-traditional", "-out", "pkcs1.key", "2048"],
            "RSA PRIVATE KEY",
        ),
        (
            "sec1",
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-out",
                "sec1.key",
            ],
            "EC PRIVATE KEY",
        ),
    ];
    for (name, gen_args, tag) in cases {
        openssl(gen_args, d);
        let key_file = format!("{name}.key");
        let cert_file = format!("{name}.crt");
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &key_file,
                "-out",
                &cert_file,
                "-days",
                "365",
                "-subj",
                "/O=Example Corp/OU=Platform/CN=Corp Root",
                "-addext",
                "basicConstraints=critical,CA:true",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            d,
        );
        let key_pem = std::fs::read_to_string(d.join(&key_file)).unwrap();
        assert!(
            key_pem.contains(&format!("BEGIN {tag}")),
            "{name}: {key_pem}"
        );
        let cert_pem = std::fs::read_to_string(d.join(&cert_file)).unwrap();
        let root = RootCa::from_pem(&cert_pem, &key_pem).unwrap_or_else(|e| panic!("{name}: {e}"));
        let ca = root
            .issue_intermediate(&IntermediateOptions::new("byo"))
            .unwrap();
        let wl = ca
            .issue_workload(&WorkloadOptions::new("ns", "sa"))
            .unwrap();

        let root_der = der(&cert_pem);
        let ca_der = der(ca.cert_pem());
        let (_, r) = parse_x509_certificate(&root_der).unwrap();
        let (_, c) = parse_x509_certificate(&ca_der).unwrap();
        assert_eq!(c.issuer().as_raw(), r.subject().as_raw(), "{name}");

        let sub = d.join(name);
        ca.write_dir(&sub, false).unwrap();
        wl.write_dir(&sub.join("wl"), false).unwrap();
        openssl_verifies_workload(&sub);
        let report = pki::verify_bundles(&[&sub], &Default::default());
        assert!(report.is_ok(), "{name}: {report}");
    }
}

#[test]
fn byo_root_rejects_mismatched_key_and_non_ca() {
    let a = RootCa::generate(&RootOptions::default()).unwrap();
    let b = RootCa::generate(&RootOptions::default()).unwrap();
    let err = RootCa::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    let ca = a
        .issue_intermediate(&IntermediateOptions::new("c"))
        .unwrap();
    let wl = ca
        .issue_workload(&WorkloadOptions::new("ns", "sa"))
        .unwrap();
    let err = RootCa::from_pem(&wl.cert_pem, &wl.key_pem).unwrap_err();
    assert!(err.to_string().contains("not a CA"), "{err}");
    let err = RootCa::from_pem("garbage", a.key_pem()).unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}

#[test]
fn bundle_round_trips_through_a_directory_with_0600_key() {
    use std::os::unix::fs::PermissionsExt;
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("west-cluster"))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    ca.write_dir(dir.path(), false).unwrap();
    let mode = |f: &str| {
        std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca-key.pem"), 0o600);
    assert_eq!(mode("ca-cert.pem"), 0o644);
    let loaded = pki::IntermediateCa::load_dir(dir.path()).unwrap();
    assert_eq!(loaded.cert_pem(), ca.cert_pem());
    assert_eq!(loaded.cert_chain_pem(), ca.cert_chain_pem());

    // Refusal without force changes nothing; force overwrites and keeps the key private.
    std::fs::remove_file(dir.path().join("root-cert.pem")).unwrap();
    std::fs::set_permissions(
        dir.path().join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let err = ca.write_dir(dir.path(), false).unwrap_err();
    assert!(
        matches!(err, pki::PkiError::Exists(ref v) if v.len() == 3),
        "{err}"
    );
    assert!(!dir.path().join("root-cert.pem").exists());
    ca.write_dir(dir.path(), true).unwrap();
    assert!(dir.path().join("root-cert.pem").exists());
    assert_eq!(mode("ca-key.pem"), 0o600);
}

#[test]
fn inspect_shows_every_certificate() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("east-cluster"))
        .unwrap();
    let all = pki::inspect_pem(&ca.cert_chain_pem()).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        all[0].subject,
        "O=Istio, CN=Intermediate CA, L=east-cluster"
    );
    assert_eq!(all[0].issuer, "O=Istio, CN=Root CA");
    assert_eq!(all[0].is_ca, Some(true));
    assert_eq!(all[0].path_len, Some(0));
    assert_eq!(all[0].sans, ["DNS:istiod.istio-system.svc"]);
    assert_eq!(all[0].key, "ECDSA P-256");
    assert_eq!(all[0].sha256_fingerprint.len(), 32 * 3 - 1);
    let text = all[0].to_string();
    assert!(
        text.contains("CA:TRUE, pathlen:0") && text.contains("SHA-256:"),
        "{text}"
    );
    let err = pki::inspect_pem("not a pem").unwrap_err();
    assert!(err.to_string().contains("no PEM certificate"), "{err}");
}
