//! Waiting for a condition instead of sleeping: poll every [`POLL`] until it holds, for at
//! most a given time, then fail with what was awaited. The condition is always checked at
//! least once, and once more at the deadline, so a short timeout cannot skip it.

use std::future::Future;
use std::time::{Duration, Instant};

/// Interval between two checks.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` until it holds; panics after `timeout` naming `what`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually_some(what, timeout, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Polls `f` until it returns `Some`, and returns that value; panics after `timeout`.
pub async fn eventually_some<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last_try = Instant::now() >= deadline;
        if let Some(v) = f().await {
            return v;
        }
        if last_try {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Blocking [`eventually`], for tests without a runtime (processes, namespaces).
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    if !poll_until(timeout, &mut cond) {
        panic!("timed out after {timeout:?} waiting for {what}");
    }
}

/// Like [`wait_until`], but returns whether `cond` held instead of panicking (for demos,
/// which report a failed check and go on).
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let last_try = Instant::now() >= deadline;
        if cond() {
            return true;
        }
        if last_try {
            return false;
        }
        std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn blocking_wait_returns_once_the_condition_holds() {
        let mut n = 0;
        let t0 = Instant::now();
        wait_until("third check", Duration::from_secs(10), || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
        assert!(t0.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn blocking_wait_is_bounded_and_checks_at_the_deadline() {
        let mut n = 0;
        let t0 = Instant::now();
        assert!(!poll_until(Duration::from_millis(100), || {
            n += 1;
            false
        }));
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert!(n >= 2, "checked {n} times");
        // A zero timeout still checks once.
        assert!(poll_until(Duration::ZERO, || true));
    }

    #[test]
    #[should_panic(expected = "timed out after 50ms waiting for the impossible")]
    fn blocking_wait_panics_with_what_it_awaited() {
        wait_until("the impossible", Duration::from_millis(50), || false);
    }

    #[tokio::test]
    async fn eventually_some_returns_the_value() {
        let n = Arc::new(AtomicUsize::new(0));
        let v = eventually_some("fourth poll", Duration::from_secs(10), || {
            let n = n.clone();
            async move { (n.fetch_add(1, Ordering::SeqCst) == 3).then_some("done") }
        })
        .await;
        assert_eq!(v, "done");
        assert_eq!(n.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 60ms waiting for never")]
    async fn eventually_panics_after_the_timeout() {
        eventually("never", Duration::from_millis(60), || async { false }).await;
    }
}
