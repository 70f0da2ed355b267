//! Files given the wrong way, a chain holding only the root, keys other users may read, and
//! a forced write over files that already hold their new contents.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use pki::{IntermediateCa, IntermediateOptions, RootCa, RootOptions, VerifyOptions};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn swapped_root_cert_and_key_are_named_as_swapped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    root.write_dir(tmp.path(), false).unwrap();
    let (cert, key) = (
        tmp.path().join("root-cert.pem"),
        tmp.path().join("root-key.pem"),
    );
    RootCa::load_files(&cert, &key).unwrap();
    let e = RootCa::load_files(&key, &cert).unwrap_err().to_string();
    assert!(
        e.contains("this is a private key")
            && e.contains("did you swap --root-cert and --root-key"),
        "{e}"
    );
    assert!(!e.contains("treat the key as exposed"), "{e}");
    // A key appended to a certificate file is still the exposure message.
    let both = tmp.path().join("both.pem");
    std::fs::write(&both, format!("{}{}", root.cert_pem(), root.key_pem())).unwrap();
    let e = RootCa::load_files(&both, &key).unwrap_err().to_string();
    assert!(e.contains("treat the key as exposed"), "{e}");
    // The certificate as the key: no private key, said so.
    let e = RootCa::load_files(&cert, &cert).unwrap_err().to_string();
    assert!(e.contains("certificates only, no private key"), "{e}");
}

#[test]
fn a_chain_of_only_the_root_gets_its_own_message() {
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    let bundle = pki::Bundle {
        source: "b".into(),
        ca_cert: ca.cert_pem().into(),
        ca_key: ca.key_pem().into(),
        root_cert: ca.root_pem().into(),
        cert_chain: ca.root_pem().into(),
    };
    let report = pki::verify(&[bundle], &VerifyOptions::default());
    let errors: Vec<_> = report.errors().collect();
    assert_eq!(errors.len(), 1, "{report}");
    assert!(
        errors[0].message.contains("holds only the root")
            && errors[0]
                .message
                .contains("cat ca-cert.pem root-cert.pem > cert-chain.pem"),
        "{report}"
    );
}

#[test]
fn a_key_other_users_may_read_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let ca = root
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    ca.write_dir(tmp.path(), false).unwrap();
    let key = tmp.path().join("ca-key.pem");
    let (_, w) = pki::files::read_key_noting(&key).unwrap();
    assert_eq!(w, None);
    let report = pki::verify_bundles(&[tmp.path()], &VerifyOptions::default());
    assert_eq!(report.warnings().count(), 0, "{report}");

    chmod(&key, 0o644);
    let (_, w) = pki::files::read_key_noting(&key).unwrap();
    let w = w.expect("a warning for mode 0644");
    assert!(w.contains("mode 0644") && w.contains("chmod 600"), "{w}");
    let report = pki::verify_bundles(&[tmp.path()], &VerifyOptions::default());
    assert!(report.is_ok(), "{report}");
    assert!(
        report
            .warnings()
            .any(|f| f.file == key && f.message.contains("mode 0644")),
        "{report}"
    );
    // Still usable to sign.
    IntermediateCa::load_dir(tmp.path()).unwrap();
}

#[test]
fn a_forced_write_leaves_files_that_already_hold_their_contents_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let a = root
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    a.write_dir(tmp.path(), false).unwrap();
    let root_cert = tmp.path().join("root-cert.pem");
    let ino = |p: &Path| std::fs::symlink_metadata(p).unwrap().ino();
    let (root_ino, ca_ino) = (ino(&root_cert), ino(&tmp.path().join("ca-cert.pem")));
    // A renewal: a new CA, the same root-cert.pem.
    let b = root
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    b.write_dir(tmp.path(), true).unwrap();
    assert_eq!(ino(&root_cert), root_ino, "root-cert.pem was rewritten");
    assert_ne!(ino(&tmp.path().join("ca-cert.pem")), ca_ino);
    assert_eq!(
        std::fs::read_to_string(tmp.path().join("ca-cert.pem")).unwrap(),
        b.cert_pem()
    );
    // A key with a wider mode than a writer gives is rewritten (to 0600) even if equal.
    let key = tmp.path().join("ca-key.pem");
    chmod(&key, 0o644);
    b.write_dir(tmp.path(), true).unwrap();
    assert_eq!(std::fs::metadata(&key).unwrap().mode() & 0o777, 0o600);

    // An immutable unchanged file (chattr +i, as root on a filesystem that has it) does
    // not stop the write.
    let immutable = std::process::Command::new("chattr")
        .arg("+i")
        .arg(&root_cert)
        .status()
        .is_ok_and(|s| s.success());
    if immutable {
        let c = root
            .issue_intermediate(&IntermediateOptions::new("west"))
            .unwrap();
        let written = c.write_dir(tmp.path(), true);
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&root_cert)
            .status();
        written.unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("ca-cert.pem")).unwrap(),
            c.cert_pem()
        );
    }
}
