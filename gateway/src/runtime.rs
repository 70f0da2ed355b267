//! The runtime's shape: how many worker threads, and which scheduler runs them.
//!
//! With one worker the gateway runs tokio's single-threaded scheduler: a wakeup then goes
//! through no work-stealing machinery (run queues shared with other workers, their idle
//! bookkeeping and the poll-time statistics that tune them), which took 4 % of the
//! instructions per connection and 7 % per request (gateway/PERFORMANCE.md, change 19). With
//! more workers it is tokio's multi-threaded scheduler with that many.

use std::io;

use tokio::runtime::{Builder, Runtime};

/// The number of workers: `--workers` when given, else `TOKIO_WORKER_THREADS` (tokio's own
/// variable, which the gateway has always honoured) when it is a positive number, else the
/// CPUs this process may run on (`available`, which counts a cgroup CPU quota).
pub fn workers(flag: Option<u16>, tokio_env: Option<&str>, available: usize) -> usize {
    if let Some(n) = flag {
        return usize::from(n).max(1);
    }
    match tokio_env.and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(n) if n > 0 => n,
        _ => available.max(1),
    }
}

/// A runtime with `workers` workers, I/O and timers enabled.
pub fn build(workers: usize) -> io::Result<Runtime> {
    let mut builder = if workers <= 1 {
        Builder::new_current_thread()
    } else {
        let mut b = Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder.enable_all().build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_then_tokios_variable_then_the_cpus() {
        assert_eq!(workers(Some(3), Some("5"), 8), 3);
        assert_eq!(workers(None, Some("5"), 8), 5);
        assert_eq!(workers(None, Some(" 1 "), 8), 1);
        // Tokio itself rejects these; here they fall back to the CPUs, as an unset one does.
        for bad in ["0", "-1", "two", ""] {
            assert_eq!(workers(None, Some(bad), 8), 8, "{bad:?}");
        }
        assert_eq!(workers(None, None, 8), 8);
        assert_eq!(workers(None, None, 0), 1);
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
