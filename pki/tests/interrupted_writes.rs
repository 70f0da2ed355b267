//! Real crashes in the middle of a multi-file write. A child process (this test binary, run
//! again) writes a cluster bundle and pauses at the N-th point where a crash leaves a
//! distinct state on disk; the test SIGKILLs it there. The next run (`recover_dir`, the next
//! write, a bundle read) must leave exactly the complete previous set or the complete new
//! set (every byte, every name, keys 0600), never a mix, and say which in one line; what it
//! cannot decide it refuses without changing anything.
#![cfg(unix)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pki::{IntermediateCa, IntermediateOptions, OutFile, RootCa, RootOptions};

/// The bundle's files in the order `IntermediateCa::files` writes them.
const FILES: [&str; 4] = [pki::CA_CERT, pki::CA_KEY, pki::CERT_CHAIN, pki::ROOT_CERT];
const CHILD: &str = "PKI_CRASH_CHILD";
/// The files a forced write of one set over another changes: all but `root-cert.pem`, which
/// is the same in every set (one root) and so left out of the write, as a renewal leaves it.
const CHANGED: usize = FILES.len() - 1;

/// The child: writes the files of the source directory into the target directory and pauses
/// (prints `PAUSED <state>`, then sleeps) at the given point, or prints `DONE` if the write
/// has fewer. Run only by [`crash_at`], never as a test of its own.
#[test]
#[ignore = "the crashing child process of the tests below"]
fn crash_child_entry() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let [dir, src, force, at] = spec.split('|').collect::<Vec<_>>()[..] else {
        panic!("bad {CHILD}: {spec}")
    };
    let (dir, src) = (Path::new(dir), Path::new(src));
    let files = match force {
        "tree" => tree_files(dir, src),
        _ => bundle_files(dir, src),
    };
    let r =
        pki::files::write_files_pausing(&files, force != "new", at.parse().unwrap(), &mut |what| {
            // On a line of its own: libtest's "test NAME ... " has no newline yet.
            println!("\nPAUSED {what}");
            std::thread::sleep(Duration::from_secs(60));
            std::process::exit(3);
        });
    println!("\nDONE {}", r.is_ok());
}

/// The four files of the bundle in `src`, to be written into `dir`.
fn bundle_files(dir: &Path, src: &Path) -> Vec<OutFile> {
    FILES
        .iter()
        .map(|n| OutFile {
            path: dir.join(n),
            contents: std::fs::read_to_string(src.join(n)).unwrap(),
            secret: *n == pki::CA_KEY,
        })
        .collect()
}

/// A root and one cluster's bundle below it, as `certs init` writes them in one write:
/// `root-cert.pem` and `root-key.pem` in `dir`, the bundle in `dir/west`.
fn tree_files(dir: &Path, src: &Path) -> Vec<OutFile> {
    let mut files: Vec<OutFile> = [pki::ROOT_CERT, pki::ROOT_KEY]
        .iter()
        .map(|n| OutFile {
            path: dir.join(n),
            contents: std::fs::read_to_string(src.join(n)).unwrap(),
            secret: *n == pki::ROOT_KEY,
        })
        .collect();
    files.extend(bundle_files(&dir.join("west"), &src.join("west")));
    files
}

/// A child paused at a point, and that point's description.
struct Paused {
    child: Child,
    what: String,
}

impl Paused {
    /// SIGKILL, and check that it was one.
    fn kill(mut self) -> String {
        self.child.kill().unwrap();
        let status = self.child.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status:?}");
        std::mem::take(&mut self.what)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a child writing the bundle of `src` into `dir` that pauses at point `at`: `None`
/// when it finished instead (there are fewer points).
fn crash_at(dir: &Path, src: &Path, force: bool, at: usize) -> Option<Paused> {
    crash_with(dir, src, if force { "force" } else { "new" }, at)
}

/// [`crash_at`] with the child's mode: `force`, `new`, or `tree` ([`tree_files`], forced).
fn crash_with(dir: &Path, src: &Path, mode: &str, at: usize) -> Option<Paused> {
    let spec = format!("{}|{}|{mode}|{at}", dir.display(), src.display());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "crash_child_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, spec)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    // Reads to the end: a child that finished still writes libtest's summary.
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if line.starts_with("PAUSED ") || line.starts_with("DONE ") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30));
    let mut paused = Paused {
        child,
        what: String::new(),
    };
    match line {
        Ok(l) if l.starts_with("PAUSED ") => {
            paused.what = l["PAUSED ".len()..].to_string();
            Some(paused)
        }
        Ok(l) => {
            assert_eq!(l, "DONE true");
            assert!(paused.child.wait().unwrap().success());
            None
        }
        Err(e) => panic!("the child neither paused nor finished within 30 s: {e}"),
    }
}

/// Every entry of `dir`: name → (digest of its bytes, mode); keys stay out of failure
/// messages. Hidden entries (journal, leftovers) included.
fn state(dir: &Path) -> Files {
    use std::hash::{DefaultHasher, Hash, Hasher};
    std::fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| !e.file_type().unwrap().is_dir())
        .map(|e| {
            let mode = e.metadata().unwrap().permissions().mode() & 0o7777;
            let mut h = DefaultHasher::new();
            std::fs::read(e.path()).unwrap().hash(&mut h);
            (
                e.file_name().to_string_lossy().into_owned(),
                (h.finish(), mode),
            )
        })
        .collect()
}

/// The targets only (what a reader sees).
fn targets(dir: &Path) -> Files {
    let mut s = state(dir);
    s.retain(|name, _| !name.starts_with('.'));
    s
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Two bundles of one cluster (same root, different CA keys): the previous and the new.
struct Sets {
    _tmp: tempfile::TempDir,
    old: PathBuf,
    new: PathBuf,
    third: PathBuf,
}

fn sets() -> Sets {
    let tmp = tempfile::tempdir().unwrap();
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let dirs = ["old", "new", "third"].map(|n| tmp.path().join("src").join(n));
    for d in &dirs {
        let ca: IntermediateCa = root
            .issue_intermediate(&IntermediateOptions::new("west"))
            .unwrap();
        ca.write_dir(d, false).unwrap();
    }
    let [old, new, third] = dirs;
    Sets {
        _tmp: tmp,
        old,
        new,
        third,
    }
}

/// The rule: forward when every target holds its new contents, i.e. after the last rename,
/// or after the k-th when the files not yet placed are the same in both sets (a renewal
/// keeps root-cert.pem); else back to the previous set.
fn expect_new(what: &str, old: &Files, new: &Files) -> bool {
    let placed = match what
        .strip_prefix("placed ")
        .and_then(|w| w.split(' ').next())
    {
        Some(k) => k.parse::<usize>().unwrap(),
        None => return what == "leftovers removed",
    };
    let bytes = |set: &Files, n: &str| set.get(n).map(|f| f.0);
    FILES[placed..]
        .iter()
        .all(|n| bytes(old, n) == bytes(new, n))
}

type Files = BTreeMap<String, (u64, u32)>;

fn journal_written(what: &str) -> bool {
    what.starts_with("placed ") || what == "leftovers removed"
}

/// A `--force` write over an existing bundle, killed at every point: before any rename the
/// directory holds only leftovers (removed by the next write); during the renames it is a
/// real mix (a new ca-cert.pem beside the old ca-key.pem); recovery brings back the complete
/// previous set, or after the last rename finishes the new one.
#[test]
fn a_crash_at_every_point_of_a_forced_write_ends_in_one_complete_set() {
    let s = sets();
    let old = targets(&s.old);
    let new = targets(&s.new);
    let mut seen = Vec::new();
    for at in 0..40 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("west");
        IntermediateCa::load_dir(&s.old)
            .unwrap()
            .write_dir(&dir, false)
            .unwrap();
        let Some(paused) = crash_at(&dir, &s.new, true, at) else {
            break;
        };
        let what = paused.kill();
        let crashed = targets(&dir);
        if let Some(k) = what
            .strip_prefix("placed ")
            .and_then(|w| w.split(' ').next())
            && let Ok(k) = k.parse::<usize>()
            && (1..FILES.len()).contains(&k)
        {
            // The mix the journal exists for: the first k files new, the rest old.
            for (i, name) in FILES.iter().enumerate() {
                let want = if i < k { &new[*name] } else { &old[*name] };
                assert_eq!(&crashed[*name], want, "{what}: {name}");
            }
        }
        let journal = dir.join(".pki-write.journal");
        assert_eq!(journal.exists(), journal_written(&what), "{what}");
        if journal_written(&what) {
            assert_eq!(mode(&journal), 0o600, "{what}");
        }

        let note = pki::files::recover_dir(&dir).unwrap();
        if journal_written(&what) {
            let note = note.unwrap_or_else(|| panic!("{what}: nothing recovered"));
            let forward = expect_new(&what, &old, &new);
            let verb = if forward {
                "finished a write"
            } else {
                "rolled back a write"
            };
            assert!(note.contains(verb), "{what}: {note}");
            assert!(note.contains(&dir.display().to_string()), "{note}");
            assert!(!note.contains('\n'), "one line: {note}");
            let want = if forward { &new } else { &old };
            assert_eq!(&state(&dir), want, "{what}: not exactly one complete set");
            assert_eq!(pki::files::recover_dir(&dir).unwrap(), None, "{what}");
        } else {
            // Before the journal: nothing was replaced; the next write clears the leftovers.
            assert_eq!(note, None, "{what}");
            assert_eq!(targets(&dir), old, "{what}");
            assert!(state(&dir).len() > old.len(), "{what}: no leftovers?");
            let notes =
                pki::files::write_files_noting(&bundle_files(&dir, &s.third), true).unwrap();
            assert_eq!(notes.len(), 1, "{what}: {notes:?}");
            assert!(
                notes[0].contains("left by a write interrupted"),
                "{notes:?}"
            );
            assert_eq!(state(&dir), targets(&s.third), "{what}");
        }
        assert_eq!(mode(&dir.join(pki::CA_KEY)), 0o600, "{what}");
        assert_eq!(mode(&dir), 0o700, "{what}");
        seen.push(what);
    }
    // Staged 1..3, kept, placed 0..3, leftovers removed (root-cert.pem is unchanged).
    assert_eq!(seen.len(), 2 * CHANGED + 3, "{seen:?}");
}

/// A write of new files (no `--force`) into a directory it creates: a crash part way is
/// rolled back to no files at all, one after the last link finished forward.
#[test]
fn a_crash_while_writing_new_files_ends_in_none_or_all_of_them() {
    let s = sets();
    let new = targets(&s.new);
    let mut points = 0;
    for at in 0..40 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("fresh");
        let Some(paused) = crash_at(&dir, &s.new, false, at) else {
            break;
        };
        let what = paused.kill();
        let note = pki::files::recover_dir(&dir).unwrap();
        assert_eq!(note.is_some(), journal_written(&what), "{what}");
        if !journal_written(&what) {
            pki::files::write_files_noting(&bundle_files(&dir, &s.third), false).unwrap();
            assert_eq!(state(&dir), targets(&s.third), "{what}");
        } else if expect_new(&what, &BTreeMap::new(), &new) {
            assert_eq!(state(&dir), new, "{what}");
        } else {
            assert_eq!(state(&dir), BTreeMap::new(), "{what}");
        }
        assert_eq!(mode(&dir), 0o700, "{what}");
        points += 1;
    }
    // Staged 1..4, placed 0..4, leftovers removed (nothing to keep without --force).
    assert_eq!(points, 2 * FILES.len() + 2);
}

/// The next write into the directory and the readers of a bundle settle it first: a read
/// sees the previous bundle again, a write after a crash past the last rename starts from
/// the new one. While the writer still runs, its journal is not touched.
#[test]
fn the_next_write_and_bundle_reads_recover_but_not_under_a_live_writer() {
    let s = sets();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("west");
    let place_2 = CHANGED + 1 + 2; // after staged 1..3 and kept: placed 0, placed 1, placed 2
    IntermediateCa::load_dir(&s.old)
        .unwrap()
        .write_dir(&dir, false)
        .unwrap();
    let old = state(&dir);

    let paused = crash_at(&dir, &s.new, true, place_2).unwrap();
    assert_eq!(paused.what, "placed 2 of 3");
    // Alive: recovery and other writers are refused, and nothing changes.
    let during = state(&dir);
    let e = pki::files::recover_dir(&dir).unwrap_err().to_string();
    assert!(
        e.contains("another write into this directory is in progress"),
        "{e}"
    );
    let e = pki::files::write_files_noting(&bundle_files(&dir, &s.third), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("in progress") && e.contains("nothing was written"),
        "{e}"
    );
    let findings = pki::Bundle::load_dir(&dir).map(|_| ()).unwrap_err();
    assert!(findings[0].message.contains("in progress"), "{findings:?}");
    assert_eq!(state(&dir), during);
    paused.kill();

    // A bundle read (as `cacerts apply` and `certs verify` make) rolls it back.
    let bundle = pki::Bundle::load_dir(&dir).unwrap();
    assert_eq!(state(&dir), old);
    assert_eq!(
        bundle.ca_key,
        std::fs::read_to_string(s.old.join(pki::CA_KEY)).unwrap()
    );
    let report = pki::verify_bundles(&[dir.as_path()], &pki::VerifyOptions::default());
    assert!(report.is_ok(), "{report}");

    // Past the last rename: the next write (here the third set) starts from the new set.
    let paused = crash_at(&dir, &s.new, true, place_2 + 1).unwrap();
    assert_eq!(paused.kill(), "placed 3 of 3");
    let notes = pki::files::write_files_noting(&bundle_files(&dir, &s.third), true).unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(notes[0].contains("finished a write"), "{notes:?}");
    assert_eq!(state(&dir), targets(&s.third));

    // `certs renew` reads ca-cert.pem first (read_cert_pem), `certs workload` loads the CA.
    let paused = crash_at(&dir, &s.new, true, place_2).unwrap();
    paused.kill();
    pki::files::read_cert_pem(&dir.join(pki::CA_CERT)).unwrap();
    assert_eq!(state(&dir), targets(&s.third));
    let paused = crash_at(&dir, &s.new, true, place_2 - 1).unwrap();
    assert_eq!(paused.kill(), "placed 1 of 3");
    IntermediateCa::load_dir(&dir).unwrap();
    assert_eq!(state(&dir), targets(&s.third));
}

/// What the rule cannot decide is refused, changing nothing: a replaced file whose kept copy
/// is gone, a file changed after the crash, a journal copied from another directory, one
/// that is not this user's. The error names the files and the commands that restore either
/// set; following them works.
#[test]
fn an_undecidable_state_is_refused_with_the_fix_and_changes_nothing() {
    let s = sets();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("west");
    IntermediateCa::load_dir(&s.old)
        .unwrap()
        .write_dir(&dir, false)
        .unwrap();
    let paused = crash_at(&dir, &s.new, true, CHANGED + 1 + 1).unwrap();
    assert_eq!(paused.kill(), "placed 1 of 3");
    let kept_cert = state(&dir)
        .into_keys()
        .find(|n| n.starts_with(".ca-cert.pem.old-"))
        .unwrap();
    std::fs::remove_file(dir.join(&kept_cert)).unwrap();
    std::fs::write(dir.join(pki::CERT_CHAIN), "changed by hand\n").unwrap();
    let before = state(&dir);
    let e = pki::files::recover_dir(&dir).unwrap_err().to_string();
    for want in [
        "cannot be finished or rolled back safely, so nothing was changed",
        &format!(
            "{} holds its new contents and its previous contents are gone",
            dir.join(pki::CA_CERT).display()
        ),
        &format!(
            "{} holds neither its previous nor its new contents",
            dir.join(pki::CERT_CHAIN).display()
        ),
        "to keep the new files, run `mv ",
        "the previous files cannot all be restored",
        "rm ",
    ] {
        assert!(e.contains(want), "missing {want:?} in: {e}");
    }
    assert_eq!(state(&dir), before);
    let e = pki::files::write_files_noting(&bundle_files(&dir, &s.third), true)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be finished or rolled back safely"),
        "{e}"
    );
    assert_eq!(state(&dir), before);

    // The printed fix for the new set, run as printed, gives exactly the new set.
    let fix = e.split("to keep the new files, run `").nth(1).unwrap();
    let fix = &fix[..fix.find('`').unwrap()];
    let rm = e.split("remove the journal(s): ").nth(1).unwrap();
    let rm = &rm[..rm.find(" (and any").unwrap()];
    let sh = Command::new("sh")
        .args(["-c", &format!("{fix} && {rm}")])
        .status()
        .unwrap();
    assert!(sh.success());
    assert_eq!(targets(&dir), targets(&s.new));
    assert_eq!(pki::files::recover_dir(&dir).unwrap(), None);

    // A journal copied with its directory is not acted on in the copy.
    let paused = crash_at(&dir, &s.third, true, CHANGED + 1 + 1).unwrap();
    paused.kill();
    let copy = tmp.path().join("copy");
    std::fs::create_dir(&copy).unwrap();
    for (name, (_, mode)) in state(&dir) {
        std::fs::copy(dir.join(&name), copy.join(&name)).unwrap();
        std::fs::set_permissions(copy.join(&name), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let e = pki::files::recover_dir(&copy).unwrap_err().to_string();
    assert!(e.contains("it was copied or moved here"), "{e}");

    // A journal that is a symlink, or readable by others, is not one pki wrote.
    let journal = copy.join(".pki-write.journal");
    std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = pki::files::recover_dir(&copy).unwrap_err().to_string();
    assert!(
        e.contains("mode 0644") && e.contains("pki did not write it"),
        "{e}"
    );
    std::fs::remove_file(&journal).unwrap();
    std::os::unix::fs::symlink(dir.join(".pki-write.journal"), &journal).unwrap();
    let e = pki::files::recover_dir(&copy).unwrap_err().to_string();
    assert!(e.contains("is not a regular file"), "{e}");

    // The original still rolls back (what the manual fix left beside it stays).
    let note = pki::files::recover_dir(&dir).unwrap().unwrap();
    assert!(note.contains("rolled back"), "{note}");
    assert_eq!(targets(&dir), targets(&s.new));
    assert!(!dir.join(".pki-write.journal").exists());
}

/// A journal cut short (the crash came while writing it, before any rename) is recognised:
/// it is removed, the next write removes the staged files, the files never changed.
#[test]
fn a_journal_cut_short_means_nothing_was_replaced() {
    let s = sets();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("west");
    IntermediateCa::load_dir(&s.old)
        .unwrap()
        .write_dir(&dir, false)
        .unwrap();
    let old = state(&dir);
    let paused = crash_at(&dir, &s.new, true, CHANGED + 1).unwrap();
    assert_eq!(paused.kill(), "placed 0 of 3");
    let journal = dir.join(".pki-write.journal");
    let text = std::fs::read(&journal).unwrap();
    for cut in [0, 10, text.len() / 2, text.len() - 1] {
        std::fs::write(&journal, &text[..cut]).unwrap();
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o600)).unwrap();
        let note = pki::files::recover_dir(&dir).unwrap().unwrap();
        assert!(
            note.contains("interrupted before it replaced any file"),
            "{cut}: {note}"
        );
        assert!(!journal.exists());
    }
    assert_eq!(targets(&dir), old);
    pki::files::write_files_noting(&bundle_files(&dir, &s.new), true).unwrap();
    assert_eq!(state(&dir), targets(&s.new));
}

/// `certs init --force` writes the root and every cluster's bundle in one write: a crash
/// part way is settled for all its directories together, from whichever is read or written
/// next, so a new root never stays beside a bundle still signed by the old one.
#[test]
fn a_crash_across_directories_settles_all_of_them_the_same_way() {
    let tmp = tempfile::tempdir().unwrap();
    let tree = |name: &str| {
        let src = tmp.path().join(name);
        let root = RootCa::generate(&RootOptions::default()).unwrap();
        let ca = root
            .issue_intermediate(&IntermediateOptions::new("west"))
            .unwrap();
        let mut files = root.files(&src);
        files.extend(ca.files(&src.join("west")));
        pki::write_files(&files, false).unwrap();
        src
    };
    let (old, new) = (tree("old"), tree("new"));
    let both = |d: &Path| (state(d), state(&d.join("west")));
    // staged 1..6, kept, placed 0..6: "placed 3 of 6" is the new root with one new file of
    // the old bundle; "placed 6 of 6" all new.
    for (at, what, forward, from) in [
        (10, "placed 3 of 6", false, "west"),
        (10, "placed 3 of 6", false, ""),
        (13, "placed 6 of 6", true, "west"),
    ] {
        let out = tmp.path().join(format!("out-{at}-{from}"));
        pki::write_files(&tree_files(&out, &old), false).unwrap();
        let paused = crash_with(&out, &new, "tree", at).unwrap();
        assert_eq!(paused.kill(), what);
        for d in [&out, &out.join("west")] {
            assert!(d.join(".pki-write.journal").exists(), "{}", d.display());
        }
        let note = pki::files::recover_dir(&out.join(from)).unwrap().unwrap();
        assert!(
            note.contains(if forward { "finished" } else { "rolled back" }),
            "{note}"
        );
        assert_eq!(
            both(&out),
            both(if forward { &new } else { &old }),
            "{what}"
        );
        assert_eq!(pki::files::recover_dir(&out).unwrap(), None);
        assert_eq!(pki::files::recover_dir(&out.join("west")).unwrap(), None);
    }
}
