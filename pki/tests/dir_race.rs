//! Writers that start together on a directory that does not exist yet: one holds the
//! directory's lock, the others are refused with the lock's message, and none removes the
//! directory from under the one that holds it (each creates one level at a time and removes
//! only what it created, never after failing to lock).

use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use pki::OutFile;

const WRITERS: usize = 4;
const ROUNDS: usize = 300;

fn files(dir: &Path, writer: usize) -> Vec<OutFile> {
    ["ca-cert.pem", "ca-key.pem", "cert-chain.pem"]
        .iter()
        .map(|n| OutFile {
            path: dir.join(n),
            contents: format!("writer {writer} {n}\n"),
            secret: n.contains("key"),
        })
        .collect()
}

#[test]
fn writers_racing_on_a_new_directory_never_remove_it_from_under_the_lock_holder() {
    let started = Instant::now();
    for round in 0..ROUNDS {
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out/a/b");
        let barrier = Arc::new(Barrier::new(WRITERS));
        let handles: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (dir, barrier) = (dir.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    pki::files::write_files_noting(&files(&dir, w), true).map_err(|e| e.to_string())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<usize> = (0..WRITERS).filter(|&w| results[w].is_ok()).collect();
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                r.contains("another write into this directory is in progress"),
                "round {round}: a writer failed otherwise than on the lock: {r}"
            );
        }
        assert!(!winners.is_empty(), "round {round}: no writer wrote");
        // The directory holds a complete set, from one writer that succeeded.
        let text = |n: &str| std::fs::read_to_string(dir.join(n)).unwrap();
        let first = text("ca-cert.pem");
        let w = winners
            .iter()
            .find(|&&w| first == format!("writer {w} ca-cert.pem\n"))
            .unwrap_or_else(|| panic!("round {round}: {first:?} is from no winner"));
        for n in ["ca-key.pem", "cert-chain.pem"] {
            assert_eq!(text(n), format!("writer {w} {n}\n"), "round {round}");
        }
    }
}
