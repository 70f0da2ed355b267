//! A demo's scene blocked on a command (`stage::output`) does not hold the demo when it is
//! signalled: the command is sent the same signal, no later command starts, and the demo
//! stops as interrupted. Before, the signal waited until the command ended on its own (a
//! review session found it). Alone in its test binary: it signals its own process.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use examples::stage::{self, Interrupted};

#[test]
fn a_scene_blocked_on_a_command_stops_when_the_demo_is_signalled() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let started = Instant::now();
    let refused = AtomicBool::new(false);
    let refused = &refused;
    let scene = async {
        // Sent from another thread once the scene runs (the demo's handlers are installed
        // then), again every 200 ms in case the command was not started yet; at most 50.
        let pid = std::process::id().to_string();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let signaller = std::thread::spawn(move || {
            for _ in 0..50 {
                if done_rx.recv_timeout(Duration::from_millis(200)).is_ok() {
                    return;
                }
                let _ = Command::new("kill").args(["-TERM", &pid]).status();
            }
        });
        let out = stage::output(Command::new("sleep").arg("30"));
        let _ = done_tx.send(());
        signaller.join().unwrap();
        // Once the demo is stopping, no command starts.
        let again = stage::output(&mut Command::new("true"));
        refused.store(
            again.is_err_and(|e| e.kind() == std::io::ErrorKind::Interrupted),
            Ordering::SeqCst,
        );
        let out = out?;
        anyhow::ensure!(out.status.success(), "sleep ended by {:?}", out.status);
        Ok(())
    };
    let result = rt.block_on(stage::until_interrupted(scene));
    let took = started.elapsed();
    let err = result.expect_err("a signalled demo is interrupted");
    let why = err
        .downcast_ref::<Interrupted>()
        .unwrap_or_else(|| panic!("not an interruption: {err:#}"));
    assert_eq!(why.to_string(), "interrupted by SIGTERM");
    assert!(
        refused.load(Ordering::SeqCst),
        "a command started after the signal"
    );
    assert!(
        took < Duration::from_secs(15),
        "the scene held the demo for {took:?}"
    );
}
