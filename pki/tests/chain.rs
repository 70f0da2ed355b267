//! Chains with more than one intermediate level (root → offline intermediate → cluster CA)
//! and trust bundles with several roots (a root rotation): verification walks each link and
//! names the wrong one; workloads under such a CA complete a real mTLS handshake.

use std::path::Path;

use pki::{
    IntermediateCa, IntermediateOptions, RootCa, RootOptions, VerifyOptions, WorkloadOptions,
    verify_bundles,
};

fn offline(root: &RootCa) -> IntermediateCa {
    root.issue_intermediate(&IntermediateOptions {
        path_len: 1,
        common_name: "Offline Intermediate CA".into(),
        ..IntermediateOptions::new("offline")
    })
    .unwrap()
}

fn write(ca: &IntermediateCa, dir: &Path) {
    ca.write_dir(dir, true).unwrap();
}

fn errors(dir: &Path) -> Vec<String> {
    verify_bundles(&[dir], &VerifyOptions::default())
        .errors()
        .map(|f| f.to_string())
        .collect()
}

#[test]
fn a_two_level_chain_verifies_and_its_workloads_carry_both_cas() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let off = offline(&root);
    let west = off
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    assert_eq!(pki::inspect_pem(&west.cert_chain_pem()).unwrap().len(), 3);
    let tmp = tempfile::tempdir().unwrap();
    write(&west, &tmp.path().join("west"));
    let report = verify_bundles(&[&tmp.path().join("west")], &VerifyOptions::default());
    assert!(report.is_ok() && report.findings.is_empty(), "{report}");

    // Loaded back from disk, the CA still issues workloads whose chain holds both CAs.
    let loaded = IntermediateCa::load_dir(&tmp.path().join("west")).unwrap();
    let w = loaded
        .issue_workload(&WorkloadOptions::new("ns", "sa"))
        .unwrap();
    let chain = pki::inspect_pem(&w.chain_pem).unwrap();
    assert_eq!(chain.len(), 3, "leaf, cluster CA, offline CA");
    assert!(chain[2].subject.contains("Offline"), "{:?}", chain[2]);
}

#[test]
fn each_wrong_link_is_named() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let off = offline(&root);
    let west = off
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("west");
    write(&west, &dir);

    // The offline CA in cert-chain.pem replaced by another with the same name (other key).
    let impostor = offline(&root);
    let chain = format!(
        "{}{}{}",
        west.cert_pem(),
        impostor.cert_pem(),
        root.cert_pem()
    );
    std::fs::write(dir.join("cert-chain.pem"), &chain).unwrap();
    let e = errors(&dir);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("cert-chain.pem: link 1→2: certificate 2 (\"O=Istio, CN=Offline Intermediate CA, L=offline\") has the issuer's name but its key does not verify certificate 1"),
        "{e:?}"
    );

    // The offline CA left out: the top of the chain is not signed by the root.
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", west.cert_pem(), root.cert_pem()),
    )
    .unwrap();
    let e = errors(&dir);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("ca-cert.pem: does not chain to root-cert.pem: its issuer \"O=Istio, CN=Offline Intermediate CA, L=offline\" is not the root's subject"), "{e:?}");

    // In the wrong order.
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}{}", root.cert_pem(), west.cert_pem(), off.cert_pem()),
    )
    .unwrap();
    let e = errors(&dir).join("\n");
    assert!(
        e.contains("its first certificate is not ca-cert.pem"),
        "{e}"
    );
    assert!(
        e.contains("certificate 1 is a root (self-signed), which can only come last"),
        "{e}"
    );
}

#[test]
fn path_length_constraints_are_checked_per_link() {
    // An offline CA with pathlen:0 cannot sign a CA: pki refuses to issue it...
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let off0 = root
        .issue_intermediate(&IntermediateOptions::new("offline"))
        .unwrap();
    let err = off0
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has pathlen 0, so it cannot sign a CA"),
        "{err}"
    );

    // ...and verify names the link when such a chain is made elsewhere (rcgen directly).
    let off_key = rcgen::KeyPair::from_pem(off0.key_pem()).unwrap();
    let off_der = rustls_pki_types::CertificateDer::from(off0.cert_der().to_vec());
    let issuer = rcgen::Issuer::from_ca_cert_der(&off_der, off_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Cluster CA");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("ca-cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root.cert_pem()).unwrap();
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}{}", cert.pem(), off0.cert_pem(), root.cert_pem()),
    )
    .unwrap();
    let e = errors(dir);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].contains("link 1→2: certificate 2 (\"O=Istio, CN=Intermediate CA, L=offline\") has pathlen 0, but 1 CA(s) sit below it"), "{e:?}");
}

#[test]
fn a_bundle_with_two_roots_verifies_against_the_one_that_signs() {
    let old = RootCa::generate(&RootOptions::default()).unwrap();
    let new = RootCa::generate(&RootOptions::default()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    for (name, signer) in [("old", &old), ("new", &new)] {
        let ca = signer
            .issue_intermediate(&IntermediateOptions::new("west"))
            .unwrap();
        let dir = tmp.path().join(name);
        write(&ca, &dir);
        std::fs::write(dir.join("root-cert.pem"), &both).unwrap();
        let report = verify_bundles(&[&dir], &VerifyOptions::default());
        assert!(
            report.is_ok() && report.findings.is_empty(),
            "{name}: {report}"
        );
        let chain = std::fs::read_to_string(dir.join("cert-chain.pem")).unwrap();
        assert_eq!(
            pki::signing_root(ca.cert_pem(), &chain, &both),
            Some(signer.cert_der().to_vec()),
            "{name}"
        );
    }
    // Bundles that trust different sets of roots differ.
    let report = verify_bundles(
        &[&tmp.path().join("old"), &tmp.path().join("new")],
        &VerifyOptions::default(),
    );
    assert!(report.is_ok(), "same two roots: {report}");
    std::fs::write(tmp.path().join("new/root-cert.pem"), new.cert_pem()).unwrap();
    let report = verify_bundles(
        &[&tmp.path().join("old"), &tmp.path().join("new")],
        &VerifyOptions::default(),
    );
    assert!(
        report
            .to_string()
            .contains("new/root-cert.pem: differs from"),
        "{report}"
    );
}
