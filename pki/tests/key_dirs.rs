//! Private keys are never written into, or read for reuse from, a symlinked directory or one
//! other users may write; input files are read bounded.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use pki::{IntermediateCa, IntermediateOptions, PkiError, RootCa, RootOptions};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn root() -> RootCa {
    RootCa::generate(&RootOptions::default()).unwrap()
}

fn io_message(e: PkiError) -> String {
    match e {
        PkiError::Io { .. } => e.to_string(),
        other => panic!("expected an I/O refusal, got {other}"),
    }
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

#[test]
fn a_symlinked_key_directory_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let evil = tmp.path().join("evil");
    std::fs::create_dir(&evil).unwrap();
    let rot = tmp.path().join("rot");
    std::fs::create_dir(&rot).unwrap();
    std::os::unix::fs::symlink("../evil", rot.join("west")).unwrap();

    let r = root();
    let ca = r
        .issue_intermediate(&IntermediateOptions::new("west"))
        .unwrap();
    let e = io_message(ca.write_dir(&rot.join("west"), true).unwrap_err());
    assert!(e.contains("is a symlink") && e.contains("real path"), "{e}");
    assert!(empty(&evil));
    let e = io_message(r.write_dir(&rot.join("west"), false).unwrap_err());
    assert!(e.contains("is a symlink"), "{e}");
    assert!(empty(&evil));

    // Reading a key for reuse through it is refused too.
    ca.write_dir(&evil, false).unwrap();
    let e = io_message(IntermediateCa::load_dir(&rot.join("west")).unwrap_err());
    assert!(e.contains("is a symlink"), "{e}");
    IntermediateCa::load_dir(&evil).unwrap();
    let bundle = pki::Bundle::load_dir(&rot.join("west"))
        .map(|_| ())
        .unwrap_err();
    assert!(bundle[0].message.contains("is a symlink"), "{bundle:?}");

    // A symlink higher up is resolved: a new directory below it is fine.
    r.write_dir(&rot.join("west").join("new"), false).unwrap();
    assert!(evil.join("new").join(pki::ROOT_KEY).exists());
}

#[test]
fn a_group_or_world_writable_key_directory_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let r = root();
    for mode in [0o777, 0o775, 0o1777, 0o757] {
        let ww = tmp.path().join(format!("ww{mode:o}"));
        std::fs::create_dir(&ww).unwrap();
        chmod(&ww, mode);
        let e = io_message(r.write_dir(&ww, false).unwrap_err());
        assert!(e.contains("chmod 700"), "{mode:o}: {e}");
        assert!(empty(&ww), "{mode:o}");
        // Fixed as said: written, then refused for reuse once shared again.
        chmod(&ww, 0o700);
        r.write_dir(&ww, false).unwrap();
        chmod(&ww, mode);
        let e = io_message(
            RootCa::load_files(&ww.join(pki::ROOT_CERT), &ww.join(pki::ROOT_KEY)).unwrap_err(),
        );
        assert!(e.contains("chmod 700"), "{mode:o}: {e}");
        chmod(&ww, 0o700);
        RootCa::load_files(&ww.join(pki::ROOT_CERT), &ww.join(pki::ROOT_KEY)).unwrap();
    }
    // A new key directory under a world-writable, non-sticky ancestor: refused.
    let open = tmp.path().join("open");
    std::fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let e = io_message(r.write_dir(&open.join("sub"), false).unwrap_err());
    assert!(e.contains("sticky"), "{e}");
    assert!(empty(&open));
    // ... with the sticky bit (like /tmp): fine, the new directory is ours and 0700.
    chmod(&open, 0o1777);
    r.write_dir(&open.join("sub"), false).unwrap();
    let mode = std::fs::metadata(open.join("sub"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn certificates_alone_may_go_anywhere() {
    // Only directories receiving a private key are checked.
    let tmp = tempfile::tempdir().unwrap();
    chmod(tmp.path(), 0o777);
    let f = pki::OutFile {
        path: tmp.path().join("root-cert.pem"),
        contents: root().cert_pem().to_string(),
        secret: false,
    };
    pki::write_files(&[f], false).unwrap();
    chmod(tmp.path(), 0o700);
}

#[test]
fn input_files_are_bounded_and_regular() {
    let tmp = tempfile::tempdir().unwrap();
    let e =
        io_message(RootCa::load_files(Path::new("/dev/zero"), &tmp.path().join("k")).unwrap_err());
    assert!(e.contains("character device"), "{e}");
    let big = tmp.path().join("big.pem");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(pki::files::MAX_INPUT_BYTES + 1).unwrap();
    let e = io_message(RootCa::load_files(&big, &tmp.path().join("k")).unwrap_err());
    assert!(e.contains("larger than 4 MiB"), "{e}");
    // certs verify's reader: a finding, not a hang.
    let bundle = tmp.path().join("west");
    std::fs::create_dir(&bundle).unwrap();
    std::os::unix::fs::symlink("/dev/zero", bundle.join(pki::CA_CERT)).unwrap();
    let report = pki::verify_bundles(&[&bundle], &pki::VerifyOptions::default());
    assert!(
        report
            .findings
            .iter()
            .any(|f| f.message.contains("character device")),
        "{report}"
    );
}
