//! `load`: a remote ztunnel under steady use. One pooled outer connection to the gateway;
//! every `--every` a new tunnel that exchanges `--lines` lines `--hold` apart, so several are
//! open at any time. Stops starting tunnels at `--max`, `--max-time`, or once the gateway's
//! GOAWAY refuses a new one, then waits for every started tunnel. Prints one line per tunnel
//! (`tunnel <n> ok|failed|not-started at_ms=<start> end_ms=<end> …`) and a summary line;
//! exits 1 if any started tunnel failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Args;

use crate::ClientArgs;
use crate::tunnel::{self, TunnelError};

#[derive(Args)]
pub struct LoadArgs {
    #[command(flatten)]
    client: ClientArgs,
    /// Time between tunnel starts, in milliseconds.
    #[arg(long, default_value_t = 50)]
    every: u64,
    /// Lines exchanged per tunnel.
    #[arg(long, default_value_t = 3)]
    lines: usize,
    /// Time between a tunnel's lines, in milliseconds.
    #[arg(long, default_value_t = 200)]
    hold: u64,
    /// Most tunnels started.
    #[arg(long, default_value_t = 1000)]
    max: usize,
    /// Stop starting tunnels after this many seconds.
    #[arg(long, default_value_t = 30)]
    max_time: u64,
}

pub async fn run(a: LoadArgs) -> anyhow::Result<()> {
    let (outer, inner) = a.client.clients()?;
    let conn = tokio::time::timeout(tunnel::TIMEOUT, outer.connect(a.client.gateway))
        .await
        .map_err(|_| anyhow::anyhow!("connect to {}: timed out", a.client.gateway))?
        .map_err(|e| anyhow::anyhow!("connect to {}: {e}", a.client.gateway))?;
    println!(
        "load: outer connection to {} ({})",
        a.client.gateway,
        conn.peer_identity().unwrap_or("<none>")
    );
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis();
    let going_away = Arc::new(AtomicBool::new(false));
    let client = Arc::new(a.client.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..a.max {
        if going_away.load(Ordering::SeqCst) || t0.elapsed() > Duration::from_secs(a.max_time) {
            break;
        }
        let (conn, inner, client, going_away) = (
            conn.clone(),
            inner.clone(),
            client.clone(),
            going_away.clone(),
        );
        let lines: Vec<String> = (0..a.lines).map(|i| format!("t{n}-{i}")).collect();
        let hold = Duration::from_millis(a.hold);
        tasks.spawn(async move {
            let at = ms();
            let r = tunnel::exchange(&conn, &inner, &client, &lines, hold).await;
            let end = ms();
            match r {
                Ok(x) => {
                    let endpoint = x.replies[0].split(':').next().unwrap_or("").to_string();
                    println!("tunnel {n} ok at_ms={at} end_ms={end} endpoint={endpoint}");
                    Outcome::Ok
                }
                Err(TunnelError::NotStarted(e)) => {
                    going_away.store(true, Ordering::SeqCst);
                    println!("tunnel {n} not-started at_ms={at} end_ms={end} error={e}");
                    Outcome::NotStarted
                }
                Err(e) => {
                    println!("tunnel {n} failed at_ms={at} end_ms={end} error={e}");
                    Outcome::Failed
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(a.every)).await;
    }
    let (mut ok, mut failed, mut not_started) = (0, 0, 0);
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Outcome::Ok) => ok += 1,
            Ok(Outcome::NotStarted) => not_started += 1,
            Ok(Outcome::Failed) | Err(_) => failed += 1,
        }
    }
    println!(
        "load summary: started={} ok={ok} failed={failed} not_started={not_started} goaway={} elapsed_ms={}",
        ok + failed,
        going_away.load(Ordering::SeqCst),
        ms()
    );
    tunnel::settle().await;
    if failed > 0 {
        anyhow::bail!("{failed} tunnels failed");
    }
    Ok(())
}

enum Outcome {
    Ok,
    Failed,
    NotStarted,
}
