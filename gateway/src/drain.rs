//! Graceful drain: fail readiness, keep accepting for a grace period, stop accepting (taking
//! what the listeners' backlogs hold), let connections finish until a deadline, then close
//! what is left.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    /// Cancelled when listeners must stop accepting.
    pub stop_accepting: CancellationToken,
    /// Cancelled when open connections must close now.
    pub force_close: ForceClose,
    /// Every connection task runs on this tracker.
    pub tasks: TaskTracker,
    /// Every listener's accept loop runs on this tracker. Once told to stop, a loop takes the
    /// connections already queued in its backlog (which closing the listener would reset)
    /// before it ends: the drain waits for that before counting and waiting for connections.
    pub listeners: TaskTracker,
}

/// The drain deadline as connections watch it: a token, plus a flag read without locking.
/// Forwarding checks it on every wakeup of every connection, and a `CancellationToken`'s
/// own check (or re-polling its waiter) takes a lock each time.
#[derive(Debug, Default)]
pub struct ForceClose {
    fired: AtomicBool,
    token: CancellationToken,
}

impl ForceClose {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the flag, then wakes every waiter: a waiter woken sees the flag set.
    pub fn cancel(&self) {
        self.fired.store(true, Ordering::Release);
        self.token.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.fired.load(Ordering::Acquire)
    }

    /// Completes once [`ForceClose::cancel`] was called.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }
}

/// What a drain did, for the final log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub open_at_stop: usize,
    pub forced: usize,
}

impl Drain {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub async fn run(&self, grace: Duration, deadline: Duration) -> Outcome {
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!(
            ?grace,
            ?deadline,
            "draining: readiness now fails, still accepting"
        );
        tokio::time::sleep(grace).await;
        self.stop_accepting.cancel();
        // Bounded: a loop takes at most a backlog's worth, without waiting for any.
        self.listeners.close();
        self.listeners.wait().await;
        self.tasks.close();
        let open_at_stop = self.tasks.len();
        tracing::info!(
            open = open_at_stop,
            "draining: stopped accepting; waiting for open connections"
        );
        let forced = match tokio::time::timeout(deadline, self.tasks.wait()).await {
            Ok(()) => 0,
            Err(_) => {
                let left = self.tasks.len();
                tracing::warn!(
                    open = left,
                    "drain deadline passed; closing remaining connections"
                );
                self.force_close.cancel();
                self.tasks.wait().await;
                left
            }
        };
        Outcome {
            open_at_stop,
            forced,
        }
    }
}
