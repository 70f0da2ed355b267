//! The files a rotation keeps in `--dir` are sets, used whole or made whole: half of the new
//! root (a stray root-key.pem or root-cert.pem) or of a cluster's new intermediate (a stray
//! ca-key.pem) is refused before any cluster or file changes, naming the files and the fix.
//! A step (or `certs renew --apply`) whose stdout closes (`| head`) still finishes every
//! cluster. And the `certs` messages for an expired root (`certs intermediate`) and for a
//! root directory given as `--ca`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::runs::*;
use common::*;
use k8s_test_server::{Fault, TestApiServer};
use serde_json::Value;

fn stage(s: &TestApiServer) -> String {
    secret(s, "cacerts").unwrap()["metadata"]["annotations"]["meshctl.io/rotation-stage"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

fn cacerts(m: &Mesh) -> (Value, Value) {
    (
        secret(&m.west, "cacerts").unwrap(),
        secret(&m.east, "cacerts").unwrap(),
    )
}

/// A 0700 rotation directory holding `files` copied from `from`.
fn rotation_dir_with(dir: &Path, from: &Path, files: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    for f in files {
        std::fs::copy(from.join(f), dir.join(f)).unwrap();
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn with_dry_run<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut a = args.to_vec();
    a.push("--dry-run");
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_refuses_half_a_root_in_dir_and_changes_nothing() {
    let m = mesh_with_cacerts().await;
    let before = cacerts(&m);
    // The audit's case: the old root's key copied into --dir, no root-cert.pem. prepare used
    // to make a new root, write only its certificate beside the stale key, and prepare both
    // clusters for a root whose key existed nowhere.
    let dir = m.dir.path().join("rot");
    rotation_dir_with(&dir, &m.certs, &["root-key.pem"]);
    let stale = std::fs::read(dir.join("root-key.pem")).unwrap();
    let prepare = m.rotate_args("prepare", &dir);
    for args in [with_dry_run(&prepare), prepare.clone()] {
        let out = m.fails(&args).await;
        says(
            &out,
            &[
                "holds root-key.pem but no root-cert.pem",
                "nothing was changed (in the clusters or on disk)",
                &format!("move {} away", dir.join("root-key.pem").display()),
            ],
        );
        assert_eq!(cacerts(&m), before, "no cluster changed");
        assert_eq!(names(&dir), ["root-key.pem"], "no file written");
        assert_eq!(std::fs::read(dir.join("root-key.pem")).unwrap(), stale);
    }

    // The other half: a root-cert.pem without its key.
    let dir2 = m.dir.path().join("rot2");
    rotation_dir_with(&dir2, &m.certs, &["root-cert.pem"]);
    let out = m.fails(&m.rotate_args("prepare", &dir2)).await;
    says(
        &out,
        &[
            "holds root-cert.pem but no root-key.pem",
            "nothing was changed (in the clusters or on disk)",
            "put the matching root-key.pem back",
        ],
    );
    assert_eq!(cacerts(&m), before);
    assert_eq!(names(&dir2), ["root-cert.pem"]);

    // A complete pair whose key is not its certificate's is refused too.
    let other = m.dir.path().join("other");
    m.ok(&["certs", "root", "--out", p(&other)]).await;
    let dir3 = m.dir.path().join("rot3");
    rotation_dir_with(&dir3, &m.certs, &["root-cert.pem"]);
    rotation_dir_with(&dir3, &other, &["root-key.pem"]);
    let out = m.fails(&m.rotate_args("prepare", &dir3)).await;
    says(&out, &["loading the new root from", "nothing was changed"]);
    assert_eq!(cacerts(&m), before);

    // The stray key moved away: prepare writes the pair, and activate signs with its key.
    std::fs::remove_file(dir.join("root-key.pem")).unwrap();
    let out = m.ok(&prepare).await;
    says(&out, &["wrote", "root-key.pem (private key, 0600)"]);
    pki::RootCa::load_files(&dir.join("root-cert.pem"), &dir.join("root-key.pem"))
        .expect("the root in --dir is a whole pair");
    m.ok(&m.rotate_args("activate", &dir)).await;
    assert_eq!(
        (stage(&m.west), stage(&m.east)),
        ("activated".into(), "activated".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activate_refuses_part_of_an_intermediate_in_dir_and_changes_nothing() {
    let m = mesh_with_cacerts().await;
    let dir = m.dir.path().join("rot");
    m.ok(&m.rotate_args("prepare", &dir)).await;
    let prepared = cacerts(&m);
    // A stale ca-key.pem in west's directory: activate used to write a new ca-cert.pem (and
    // its chain) beside it, keep the stale key on disk and exit 0.
    let west = dir.join("west");
    rotation_dir_with(&west, &m.certs.join("west"), &["ca-key.pem"]);
    let activate = m.rotate_args("activate", &dir);
    for args in [with_dry_run(&activate), activate.clone()] {
        let out = m.fails(&args).await;
        says(
            &out,
            &[
                &format!(
                    "{} holds ca-key.pem but no ca-cert.pem, cert-chain.pem, root-cert.pem",
                    west.display()
                ),
                "nothing was changed (in the clusters or on disk)",
                "move the files named away",
            ],
        );
        assert_eq!(cacerts(&m), prepared, "no cluster changed");
        assert_eq!(names(&west), ["ca-key.pem"], "no file written beside it");
        assert!(!dir.join("east").exists(), "nor for another cluster");
    }

    // A complete set kept from the old root (not an interrupted activate's) is refused too.
    std::fs::remove_file(west.join("ca-key.pem")).unwrap();
    rotation_dir_with(
        &west,
        &m.certs.join("west"),
        &[
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ],
    );
    let out = m.fails(&activate).await;
    says(
        &out,
        &["does not chain to the new root", "nothing was changed"],
    );
    assert_eq!(cacerts(&m), prepared);

    // Moved away: activate makes west's and east's intermediates, each a verified bundle.
    std::fs::remove_dir_all(&west).unwrap();
    m.ok(&activate).await;
    assert_eq!(
        (stage(&m.west), stage(&m.east)),
        ("activated".into(), "activated".into())
    );
    m.ok(&["certs", "verify", p(&west), p(&dir.join("east"))])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_never_stops_a_step_between_clusters() {
    let m = mesh_with_cacerts().await;
    let dir = m.dir.path().join("rot");
    // Each step completes in every cluster with exit 0 (it used to panic on its first line
    // of progress, exit 101, possibly with a cluster left behind).
    for (step, want) in [
        ("prepare", "prepared"),
        ("activate", "activated"),
        ("finish", "finished"),
    ] {
        let (code, err) = with_stdout_closed(&m.rotate_args(step, &dir)).await;
        assert_eq!(code, Some(0), "{step}: {err}");
        assert!(!err.contains("panicked"), "{step}: {err}");
        assert_eq!((stage(&m.west), stage(&m.east)), (want.into(), want.into()));
    }

    // Interrupted between clusters with stdout closed: the interrupted message still comes,
    // on stderr, with exit 1.
    let m = mesh_with_cacerts().await;
    outage(&m.east, Fault::Unavailable, "patch", "secrets");
    let dir = m.dir.path().join("rot");
    let (code, err) = with_stdout_closed(&m.rotate_args("prepare", &dir)).await;
    assert_eq!(code, Some(1), "{err}");
    says(
        &err,
        &[
            "interrupted: updated 1 of 2 cluster(s) that needed it (west)",
            "re-run the same command",
        ],
    );
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(
        (stage(&m.west), stage(&m.east)),
        ("prepared".into(), "none".into())
    );
}

/// `certs renew --apply` writes the bundle, then applies it: a closed stdout used to panic
/// on "wrote ..." in between, the old CA key replaced on disk and cacerts never updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stdout_never_stops_renew_between_the_bundle_and_the_cluster() {
    let m = mesh_with_cacerts().await;
    let before = std::fs::read_to_string(m.certs.join("west/ca-cert.pem")).unwrap();
    let args = renew_west_args(&m, &m.certs, &[]);
    let (code, err) =
        with_stdout_closed(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    // Exit 0: every line renew prints after a change ignores a closed stdout (the last one,
    // `cacerts::report_applied`, too), so the work done is not reported as a crash (101).
    assert_eq!(code, Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let on_disk = std::fs::read_to_string(m.certs.join("west/ca-cert.pem")).unwrap();
    assert_ne!(on_disk, before, "renewed on disk");
    let applied = secret(&m.west, "cacerts").unwrap()["data"]["ca-cert.pem"]
        .as_str()
        .map(|b| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.decode(b).unwrap()
        })
        .unwrap();
    assert_eq!(
        String::from_utf8(applied).unwrap(),
        on_disk,
        "and applied in west"
    );
}

#[tokio::test]
async fn certs_intermediate_with_an_expired_root_says_what_to_do_instead() {
    let dir = tempfile::tempdir().unwrap();
    let now = time::OffsetDateTime::now_utc();
    let root = pki::RootCa::generate(&pki::RootOptions {
        not_before: Some(now - time::Duration::days(20)),
        not_after: Some(now - time::Duration::days(1)),
        ..Default::default()
    })
    .unwrap();
    let r = dir.path().join("root");
    root.write_dir(&r, false).unwrap();
    let out = dir.path().join("x");
    let (code, _, t) = run(&intermediate_args(
        &r.join("root-cert.pem"),
        &r.join("root-key.pem"),
        "x",
        &out,
        &[],
    ))
    .await;
    assert_eq!(code, Some(1), "{t}");
    says(
        &t,
        &[
            "expired on",
            "cannot sign a new intermediate",
            "meshctl certs root --out DIR",
            "rotate prepare",
        ],
    );
    // The words of `certs renew`, which do not answer `certs intermediate`.
    assert!(!t.contains("renewed in place"), "{t}");
    assert!(!out.exists());
}

#[tokio::test]
async fn a_root_directory_as_ca_says_what_ca_expects() {
    let dir = tempfile::tempdir().unwrap();
    let c1 = dir.path().join("c1");
    succeeds(&["certs", "init", "--clusters", "west,east", "--out", p(&c1)]).await;
    let w = dir.path().join("w");
    let (root_cert, root_key) = (c1.join("root-cert.pem"), c1.join("root-key.pem"));
    let expects = "--ca expects a cluster bundle directory (ca-cert.pem, ca-key.pem, \
                   cert-chain.pem, root-cert.pem), e.g.";
    let root_dir = format!("{} looks like a root directory", c1.display());
    let west = c1.join("west").display().to_string();

    let (code, _, t) = run(&workload_args(&c1, "default", "sa", &w, &[])).await;
    assert_eq!(code, Some(1), "{t}");
    says(&t, &[&root_dir, expects, &west]);
    assert!(!t.contains("No such file"), "{t}");
    assert!(!w.exists());

    let (code, _, t) = run(&renew_args(&c1, &root_cert, &root_key, &[])).await;
    assert_eq!(code, Some(1), "{t}");
    says(
        &t,
        &[
            &root_dir,
            expects,
            &west,
            "the root itself goes to --root-cert",
        ],
    );
    assert!(!t.contains("No such file"), "{t}");

    // A directory that is neither.
    let (code, _, t) = run(&workload_args(&w, "default", "sa", &c1.join("x"), &[])).await;
    assert_eq!(code, Some(1), "{t}");
    says(&t, &["does not exist", expects]);
}
