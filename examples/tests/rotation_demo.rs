//! Runs the built `rotation-demo` (a root rotation across three Kubernetes API test servers,
//! real `meshctl`, gateway and workload processes) and checks that every expectation held and
//! that each stage and the refused steps are in its output. It needs `gateway` and `meshctl`
//! built next to it (`cargo build -p gateway -p meshctl`; `cargo test --workspace` does).

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::proc::ChildGuard;

#[test]
fn rotation_demo_runs_every_stage_and_every_check_passes() {
    let demo = PathBuf::from(env!("CARGO_BIN_EXE_rotation-demo"));
    for tool in ["gateway", "meshctl"] {
        let p = demo.with_file_name(tool);
        assert!(
            p.is_file(),
            "{} is missing: build it first with `cargo build -p gateway -p meshctl`",
            p.display()
        );
    }
    // About 12 s on an idle machine; the bound only stops a hang.
    let started = Instant::now();
    let mut child = ChildGuard::spawn(
        Command::new(&demo)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = child.wait_exit(Duration::from_secs(180));
    if status.is_none() {
        child.kill();
    }
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    let took = started.elapsed();
    let status = status.unwrap_or_else(|| panic!("rotation-demo hung ({took:?}):\n{stdout}"));
    assert!(
        status.success(),
        "rotation-demo failed:\n{stdout}\n{stderr}"
    );
    println!("rotation-demo took {took:?}");
    assert!(!stdout.contains('✘'), "{stdout}");
    // Every check line passed, and there are as many as the demo makes.
    let passed = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with('✔'))
        .count();
    assert!(
        stdout.contains(&format!("Result: {passed} of {passed} checks passed")),
        "{stdout}"
    );
    assert!(passed >= 25, "{stdout}");
    for want in [
        "Kubernetes API TEST SERVER",
        "meshctl rotate prepare --dir $WORK/rotation --context west --context east --context north --dry-run",
        "interrupted: updated 1 of 3 cluster(s) that needed it (west)",
        "not every cluster trusts both roots yet: east, north",
        "root rotation stage: west prepared · east none · north none",
        "root rotation stage: west activated · east activated · north activated",
        "root rotation stage: west finished · east finished · north finished",
        "may still be valid until",
        // Each step says what istiod does with it (istio/istio pilot/pkg/bootstrap/istio_ca.go).
        "istiod reloads a changed root-cert.pem by itself only with ISTIO_MULTIROOT_MESH=true",
        "istiod 1.18+ loads the new intermediate from its mounted cacerts by itself",
        "[new cert, trusts old+new] → gateway → catalog [old cert, trusts old]: refused by catalog",
        "[new cert, trusts new] → gateway → catalog [new cert, trusts new]: called",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // The work dir (keys included) is removed after a passing run.
    let work = stdout
        .lines()
        .next()
        .and_then(|l| l.split("work dir ").nth(1))
        .map(|s| s.trim_end_matches(')'))
        .unwrap();
    assert!(!std::path::Path::new(work).exists(), "{work} left behind");
}
