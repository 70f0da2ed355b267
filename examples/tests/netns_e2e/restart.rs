//! Step 3: the east gateway restarted under traffic: drain, take-over, in-flight connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use testkit::mesh::{CATALOG, WEBAPP, spiffe_id};
use testkit::wait::wait_until;

use crate::caller::LongConn;
use crate::fixture::Mesh;
use crate::{
    CALL_PACING, DRAIN_GRACE, DRAIN_TIMEOUT, EAST_ADMIN_IP, EAST_GW, EAST2_ADMIN_IP, EGW,
    GAP_MARGIN, MAX_RESTART_FAILURES, RESTART_MAX_CALLS, RESTART_MAX_TIME, WPOD, catalog_sni,
};

pub fn step3_gateway_restart_and_drain_under_traffic(m: &mut Mesh) {
    println!("== step 3: east gateway restart and drain under traffic");
    assert_eq!(
        m.ready_status(EGW, EAST_ADMIN_IP),
        Some(200),
        "east gateway should be ready"
    );

    let webapp = m.caller(WPOD, "west", "webapp");
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = {
        let (webapp, samples, stop) = (webapp.clone(), samples.clone(), stop.clone());
        StopOnDrop(
            stop.clone(),
            thread::spawn(move || {
                let t0 = Instant::now();
                for i in 0..RESTART_MAX_CALLS {
                    if stop.load(Ordering::SeqCst) || t0.elapsed() > RESTART_MAX_TIME {
                        break;
                    }
                    let c = webapp.call(
                        EAST_GW,
                        &catalog_sni(),
                        &spiffe_id(CATALOG),
                        &format!("loop-{i}"),
                    );
                    let detail = if c.ok {
                        c.reply.clone().unwrap_or_default()
                    } else {
                        c.error_line()
                    };
                    samples.lock().unwrap().push(Sample {
                        at: c.started,
                        ok: c.ok,
                        detail,
                    });
                    thread::sleep(CALL_PACING);
                }
            })
            .into(),
        )
    };
    let successes_after = |t: Instant| {
        samples
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.ok && s.at >= t)
            .count()
    };

    // A long connection, opened before SIGTERM and used again after the old gateway stopped
    // accepting.
    let mut long = LongConn::open(m);
    let r = long.exchange("long-1 before SIGTERM", Duration::from_secs(5));
    assert!(
        r.contains(&format!("(caller {})", spiffe_id(WEBAPP))),
        "{r:?}"
    );
    println!("   long connection open: {r}");

    let t_begin = Instant::now();
    wait_until(
        "5 calls through the old gateway",
        Duration::from_secs(10),
        || successes_after(t_begin) >= 5,
    );

    let t_term = Instant::now();
    m.proc("east-gateway").signal("TERM");
    let mut saw_503 = None;
    while t_term.elapsed() < DRAIN_GRACE {
        if m.ready_status(EGW, EAST_ADMIN_IP) == Some(503) {
            saw_503 = Some(t_term.elapsed());
            break;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let saw_503 =
        saw_503.expect("readiness should fail (503) right after SIGTERM, during the grace");
    println!("   SIGTERM sent; /healthz/ready answered 503 after {saw_503:?}");

    let (t_stop, _) = m
        .proc_mut("east-gateway")
        .wait_for("stopped accepting", DRAIN_GRACE + Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("old east gateway never stopped accepting: {e}"));
    let grace_ok = samples
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.ok && s.at > t_term && s.at < t_stop)
        .count();
    println!(
        "   old gateway stopped accepting {:?} after SIGTERM; {grace_ok} calls succeeded during the grace",
        t_stop - t_term
    );
    assert!(
        grace_ok >= 1,
        "the gateway should keep accepting during --drain-grace"
    );

    // Take over the same address. The old instance still runs (draining the long
    // connection); its listener is closed, so the new one can bind.
    let t_new = m.start_east_gateway_retrying("east-gateway-2");
    println!(
        "   new gateway listening {:?} after the old stopped accepting",
        t_new - t_stop
    );
    assert_eq!(
        m.ready_status(EGW, EAST2_ADMIN_IP),
        Some(200),
        "new east gateway should be ready"
    );
    assert_eq!(
        m.ready_status(EGW, EAST_ADMIN_IP),
        Some(503),
        "old east gateway should still be draining"
    );

    let r = long.exchange("long-2 during drain", Duration::from_secs(5));
    assert!(
        r.contains("long-2 during drain") && r.contains(&spiffe_id(WEBAPP)),
        "{r:?}"
    );
    assert!(
        m.proc_mut("east-gateway")
            .child
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the old gateway should still be draining while the long connection is open"
    );
    println!("   in-flight connection still served by the draining old gateway: {r}");
    let long_status = long.close(Duration::from_secs(5));
    println!("   long connection closed by the client ({long_status:?})");

    let status = m
        .proc_mut("east-gateway")
        .wait_exit(DRAIN_TIMEOUT + Duration::from_secs(5))
        .expect("old gateway should exit after its last connection closed");
    let t_exit = Instant::now();
    assert!(
        status.success(),
        "old gateway should exit 0 after draining, got {status}\n{}",
        m.proc("east-gateway").tail(30)
    );
    assert!(
        t_exit - t_stop < DRAIN_TIMEOUT,
        "old gateway should exit when its connections finish, before the drain deadline"
    );
    let drained = m
        .proc("east-gateway")
        .find("drained")
        .map(|(_, l)| l)
        .unwrap_or_default();
    assert!(
        drained.contains("forced=0") && !drained.contains("open_at_stop=0"),
        "old gateway should report open connections at stop and none forced: {drained:?}"
    );
    println!(
        "   old gateway exited 0, {:?} after SIGTERM: {}",
        t_exit - t_term,
        drained.trim()
    );

    wait_until(
        "10 calls through the new gateway",
        Duration::from_secs(15),
        || successes_after(t_new) >= 10,
    );
    traffic.stop();

    let samples = samples.lock().unwrap();
    let failures: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    let gap = (t_new - t_stop).as_millis();
    println!(
        "   traffic: {} calls, {} failed; no gateway listened for {gap} ms (old stopped accepting -> new listening)",
        samples.len(),
        failures.len()
    );
    for f in &failures {
        println!(
            "     failed at SIGTERM{:+} ms: {}",
            signed_ms(f.at, t_term),
            f.detail
        );
    }
    for f in &failures {
        assert!(
            f.at + GAP_MARGIN >= t_stop && f.at <= t_new + GAP_MARGIN,
            "a call failed outside the restart gap (SIGTERM{:+} ms; gap SIGTERM{:+}..{:+} ms): {}",
            signed_ms(f.at, t_term),
            signed_ms(t_stop, t_term),
            signed_ms(t_new, t_term),
            f.detail
        );
    }
    assert!(
        failures.len() <= MAX_RESTART_FAILURES,
        "{} calls failed during the restart, more than {MAX_RESTART_FAILURES}",
        failures.len()
    );
    let last = samples.iter().rev().take(10).collect::<Vec<_>>();
    assert!(
        last.iter().all(|s| s.ok),
        "the last 10 calls after the restart should all succeed"
    );
}

pub fn signed_ms(t: Instant, origin: Instant) -> i128 {
    if t >= origin {
        (t - origin).as_millis() as i128
    } else {
        -((origin - t).as_millis() as i128)
    }
}

/// Stops and joins the traffic thread, also when a step panics (its current call ends
/// within the call timeout).
pub struct StopOnDrop(Arc<AtomicBool>, Option<thread::JoinHandle<()>>);

impl StopOnDrop {
    pub fn new(stop: Arc<AtomicBool>, thread: thread::JoinHandle<()>) -> StopOnDrop {
        StopOnDrop(stop, Some(thread))
    }

    pub fn stop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if let Some(t) = self.1.take() {
            t.join().expect("traffic thread panicked");
        }
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
        if let Some(t) = self.1.take() {
            let _ = t.join();
        }
    }
}

pub struct Sample {
    pub at: Instant,
    pub ok: bool,
    pub detail: String,
}
