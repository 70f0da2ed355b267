//! The runtime's shape: how many worker threads, and which scheduler runs them.
//!
//! With one worker the gateway runs tokio's single-threaded scheduler: a wakeup then goes
//! through no work-stealing machinery (run queues shared with other workers, their idle
//! bookkeeping and the poll-time statistics that tune them), which took 4 % of the
//! instructions per connection and 7 % per request (gateway/PERFORMANCE.md, change 19). With
//! more workers it is tokio's multi-threaded scheduler with that many.

use std::io;
use std::ops::Deref;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

/// The bounds of `--workers`, which `TOKIO_WORKER_THREADS` must meet as well.
pub const MIN_WORKERS: usize = 1;
pub const MAX_WORKERS: usize = 1024;

/// tokio's variable for the worker count, which the gateway has always honoured.
pub const TOKIO_ENV: &str = "TOKIO_WORKER_THREADS";

/// How long the end of `main` waits for blocking work still running (a file read, a parse)
/// before leaving it: the connections have been drained by then, and a thread stuck in a
/// system call must not keep a terminated gateway alive.
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// The number of workers: `--workers` when given, else `TOKIO_WORKER_THREADS` (tokio's own
/// variable, which the gateway has always honoured), else the CPUs this process may run on
/// (`available`, which counts a cgroup CPU quota). A `TOKIO_WORKER_THREADS` that is not a
/// number from 1 to 1024 (the bounds of `--workers`) is an error that says so, not a count:
/// tokio would have taken 100000 and started as many threads.
pub fn checked_workers(
    flag: Option<u16>,
    tokio_env: Option<&str>,
    available: usize,
) -> Result<usize, String> {
    if let Some(n) = flag {
        return Ok(usize::from(n).clamp(MIN_WORKERS, MAX_WORKERS));
    }
    let Some(raw) = tokio_env else {
        return Ok(available.clamp(MIN_WORKERS, MAX_WORKERS));
    };
    match raw.trim().parse::<usize>() {
        Ok(n) if (MIN_WORKERS..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "{TOKIO_ENV}={raw:?} is not a worker count: set it to a number from {MIN_WORKERS} \
             to {MAX_WORKERS}, or unset it (--workers / GATEWAY_WORKERS, when given, takes \
             precedence)"
        )),
    }
}

/// The gateway's runtime: a tokio [`Runtime`] that, when dropped at the end of `main`, waits
/// at most [`SHUTDOWN_WAIT`] for blocking work instead of forever (tokio's own drop waits for
/// every `spawn_blocking` task to return, so one stuck thread kept the process alive after
/// SIGTERM).
#[derive(Debug)]
pub struct GatewayRuntime(Option<Runtime>);

impl Deref for GatewayRuntime {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        // Taken only by Drop.
        self.0.as_ref().expect("runtime present until dropped")
    }
}

impl Drop for GatewayRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(SHUTDOWN_WAIT);
        }
    }
}

/// A runtime with `workers` workers (1 to 1024, from [`checked_workers`]), I/O and timers
/// enabled. The count is always given to the builder explicitly, so tokio never reads
/// `TOKIO_WORKER_THREADS` itself.
pub fn build(workers: usize) -> io::Result<GatewayRuntime> {
    if !(MIN_WORKERS..=MAX_WORKERS).contains(&workers) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{workers} worker threads: the count must be from {MIN_WORKERS} to {MAX_WORKERS}"
            ),
        ));
    }
    let mut builder = if workers <= 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .build()
        .map(|rt| GatewayRuntime(Some(rt)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_then_tokios_variable_then_the_cpus() {
        let w = |flag, env, cpus| checked_workers(flag, env, cpus).unwrap();
        assert_eq!(w(Some(3), Some("5"), 8), 3);
        assert_eq!(w(Some(3), Some("100000"), 8), 3, "the flag wins");
        assert_eq!(w(None, Some("5"), 8), 5);
        assert_eq!(w(None, Some(" 1 "), 8), 1);
        assert_eq!(w(None, Some("1024"), 8), 1024);
        // Out of --workers' bounds or not a number: an error naming the variable and the fix
        // (it used to fall back silently, and 100000 started 100000 workers).
        for bad in ["0", "-1", "two", "", "1025", "100000"] {
            let e = checked_workers(None, Some(bad), 8).unwrap_err();
            assert!(
                e.contains(&format!("TOKIO_WORKER_THREADS={bad:?}")) && e.contains("1 to 1024"),
                "{e}"
            );
        }
        assert_eq!(w(None, None, 8), 8);
        assert_eq!(w(None, None, 0), 1);
        assert_eq!(w(None, None, 5000), MAX_WORKERS);
    }

    #[test]
    fn build_refuses_a_count_out_of_bounds() {
        for n in [0, MAX_WORKERS + 1, 100_000] {
            let e = build(n).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        }
    }

    /// A blocking task that never returns does not hold the runtime's drop (and so the end
    /// of `main`) for longer than [`SHUTDOWN_WAIT`].
    #[test]
    fn drop_does_not_wait_for_stuck_blocking_work() {
        let (_keep, stuck) = std::sync::mpsc::channel::<()>();
        let rt = build(2).unwrap();
        rt.block_on(async {
            // Bounded, so that the test fails rather than hangs without the fix.
            tokio::task::spawn_blocking(move || {
                let _ = stuck.recv_timeout(Duration::from_secs(10));
            });
        });
        let t0 = std::time::Instant::now();
        drop(rt);
        assert!(t0.elapsed() < SHUTDOWN_WAIT + Duration::from_secs(2));
    }

    #[test]
    fn one_worker_is_the_single_threaded_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        assert_eq!(
            build(1).unwrap().handle().runtime_flavor(),
            RuntimeFlavor::CurrentThread
        );
        let rt = build(2).unwrap();
        assert_eq!(rt.handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        assert_eq!(rt.metrics().num_workers(), 2);
        // Both run the gateway's kind of work: spawned tasks and blocking work (the file
        // reloads), timers and sockets.
        for rt in [build(1).unwrap(), rt] {
            let got = rt.block_on(async {
                let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                let accept = tokio::spawn(async move { l.accept().await.map(|_| ()) });
                tokio::net::TcpStream::connect(addr).await.unwrap();
                tokio::time::timeout(std::time::Duration::from_secs(5), accept)
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                tokio::task::spawn_blocking(|| 7).await.unwrap()
            });
            assert_eq!(got, 7);
        }
    }
}
