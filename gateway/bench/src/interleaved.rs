//! `rr-interleaved`: c=1 request/response through several targets in turn, in short slices.
//!
//! An idle core's wakeup on this kind of VM has two modes (round trips of about 15 or 36 µs
//! through any of the proxies) that flip over seconds and after bulk load. Measured one after
//! the other, each target's window gets whichever mode the host was in; in turns of 100 ms,
//! every target gets the same mix, so a ratio of their tails compares the proxies, not the
//! moments they were measured in.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend::OP_ECHO;
use crate::client::{Dialer, Io, hist, merge, pcts, us};
use crate::cost::{Cost, CostArgs, Meter};
use crate::{Target, parse_duration};

#[derive(Args, Debug)]
pub struct InterleavedArgs {
    /// A target as `name=address` (address in 127.0.0.0/8); two or more, names unique
    /// (letters, digits, `-`: they name the result files).
    #[arg(long = "at", value_parser = parse_at, required = true)]
    pub at: Vec<(String, SocketAddr)>,
    /// SNI sent in every ClientHello.
    #[arg(
        long,
        default_value = "outbound_.80_._.bench.default.svc.cluster.local"
    )]
    pub sni: String,
    /// Directory written by `certs` (the client trusts its root).
    #[arg(long)]
    pub certs: PathBuf,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Measured time per target (in turns of `--slice`).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up per target, in turns too; not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// One target's turn.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub slice: Duration,
    /// Upper bound on requests over all targets, whatever the duration.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_requests: u64,
    /// The core the proxies are pinned to: its busy and steal time in each target's turns.
    #[arg(long)]
    pub proxy_core: Option<usize>,
    /// Each target's result goes to `<out-dir>/<prefix>-<name>.json`, in `rr`'s shape.
    #[arg(long)]
    pub out_dir: PathBuf,
    #[arg(long, default_value = "rr1")]
    pub prefix: String,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

fn parse_at(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected name=address, e.g. gateway=127.0.0.1:27001"))?;
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if name.is_empty() || !name.chars().all(ok) {
        return Err(format!(
            "{name:?}: a target's name is letters, digits and '-'"
        ));
    }
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((name.to_string(), addr))
}

/// Which target each turn goes to: round `r` starts at target `r % n`, so no target always
/// follows the same one (its first round trip would pay for that one's use of the caches).
pub fn turns(n: usize, rounds: usize) -> impl Iterator<Item = usize> {
    (0..rounds).flat_map(move |r| (0..n).map(move |i| (r + i) % n))
}

/// Turns of `slice` that cover `d`.
fn rounds(d: Duration, slice: Duration) -> usize {
    d.as_nanos().div_ceil(slice.as_nanos().max(1)) as usize
}

/// One target's connection and what its measured turns gathered.
pub struct Lane {
    pub stream: Box<dyn Io>,
    pub hist: Histogram<u64>,
    pub requests: u64,
    pub busy: Duration,
    pub cost: Option<Cost>,
    pub error: Option<String>,
}

impl Lane {
    pub fn new(stream: Box<dyn Io>) -> Lane {
        Lane {
            stream,
            hist: hist(),
            requests: 0,
            busy: Duration::ZERO,
            cost: None,
            error: None,
        }
    }
}

/// Closed-loop echo on the lanes in turns: warm-up rounds, then measured ones. The first
/// round trip of a measured turn is not recorded (it pays for the caches the previous target
/// used). A lane that fails stops taking turns; its error is kept.
pub async fn interleave(
    lanes: &mut [Lane],
    size: usize,
    slice: Duration,
    (warm, measured): (usize, usize),
    max_requests: u64,
    cost: &CostArgs,
) {
    let msg = vec![1u8; size];
    let mut back = vec![0u8; size];
    let mut done = 0u64;
    let n = lanes.len();
    for (k, i) in turns(n, warm + measured).enumerate() {
        let counted = k >= warm * n;
        let lane = &mut lanes[i];
        if lane.error.is_some() || done >= max_requests {
            continue;
        }
        let meter = counted.then(|| Meter::start(cost));
        let t0 = Instant::now();
        let until = t0 + slice;
        let mut first = true;
        while Instant::now() < until && done < max_requests {
            let r0 = Instant::now();
            let rt = async {
                lane.stream.write_all(&msg).await?;
                lane.stream.read_exact(&mut back).await?;
                io::Result::Ok(())
            };
            match tokio::time::timeout(Duration::from_secs(10), rt).await {
                Ok(Ok(())) => {
                    done += 1;
                    if counted {
                        lane.requests += 1;
                        if !first {
                            let _ = lane.hist.record(us(r0.elapsed()));
                        }
                    }
                    first = false;
                }
                Ok(Err(e)) => {
                    lane.error = Some(e.to_string());
                    break;
                }
                Err(e) => {
                    lane.error = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(m) = meter {
            lane.busy += t0.elapsed();
            let c = m.stop();
            lane.cost = Some(lane.cost.map_or(c, |sum| sum.plus(&c)));
        }
    }
}

pub async fn run(a: InterleavedArgs) -> Result<Value> {
    if a.at.len() < 2 {
        bail!("rr-interleaved needs two targets or more (--at name=address, repeated)");
    }
    for (i, (name, _)) in a.at.iter().enumerate() {
        if a.at[..i].iter().any(|(other, _)| other == name) {
            bail!("target name {name:?} is given twice");
        }
    }
    if a.slice.is_zero() || a.slice > a.duration {
        bail!("--slice must be above zero and at most --duration");
    }
    let mut lanes = Vec::new();
    for (name, addr) in &a.at {
        let t = Target {
            target: *addr,
            sni: a.sni.clone(),
            certs: a.certs.clone(),
            plain: false,
            name: name.clone(),
        };
        let d = Dialer::new(&t)?;
        let s = d
            .open(OP_ECHO, 0)
            .await
            .with_context(|| format!("connect to {name} ({addr})"))?;
        lanes.push(Lane::new(s));
    }
    let cost = CostArgs {
        proxy_core: a.proxy_core,
        ..CostArgs::default()
    };
    let plan = (rounds(a.warmup, a.slice), rounds(a.duration, a.slice));
    interleave(&mut lanes, a.size, a.slice, plan, a.max_requests, &cost).await;
    let mut files = Vec::new();
    for ((name, _), mut lane) in a.at.iter().zip(lanes) {
        let _ = lane.stream.shutdown().await;
        let secs = lane.busy.as_secs_f64();
        let mut v = json!({
            "mode": "rr", "name": name, "interleaved": {"slice_ms": a.slice.as_millis(), "turns": plan.1},
            "connections": 1, "size": a.size,
            "seconds": secs, "requests": lane.requests,
            "rps": if secs > 0.0 { lane.requests as f64 / secs } else { 0.0 },
            "latency": pcts(&lane.hist),
            "errors": u64::from(lane.error.is_some()), "first_error": lane.error,
        });
        if let Some(c) = lane.cost {
            merge(&mut v, c.json("", "us_per_req", lane.requests as f64, 1e6));
        }
        let f = a.out_dir.join(format!("{}-{name}.json", a.prefix));
        std::fs::write(&f, format!("{v}\n")).with_context(|| format!("write {}", f.display()))?;
        files.push(f.display().to_string());
    }
    Ok(json!({"mode": "rr-interleaved", "files": files}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    #[test]
    fn each_round_starts_one_target_later() {
        let t: Vec<usize> = turns(3, 4).collect();
        assert_eq!(t, [0, 1, 2, 1, 2, 0, 2, 0, 1, 0, 1, 2]);
        assert_eq!(
            rounds(Duration::from_secs(5), Duration::from_millis(100)),
            50
        );
        assert_eq!(
            rounds(Duration::from_millis(250), Duration::from_millis(100)),
            3
        );
    }

    #[test]
    fn names_become_file_names_only_when_plain() {
        assert!(parse_at("gateway=127.0.0.1:1").is_ok());
        assert!(parse_at("../x=127.0.0.1:1").is_err());
        assert!(parse_at("gateway").is_err());
        assert!(parse_at("=127.0.0.1:1").is_err());
        assert!(parse_at("g=nowhere").is_err());
    }

    /// An echo peer that waits `delay` before each answer.
    fn echo(delay: Duration) -> Box<dyn Io> {
        let (a, mut b) = duplex(1024);
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(n) = b.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tokio::time::sleep(delay).await;
                if b.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        Box::new(a)
    }

    /// Each target's round trips land in its own lane, every lane gets the same measured
    /// time, and a failing target stops without stopping the others.
    #[tokio::test]
    async fn turns_keep_targets_apart() {
        let (dead, peer) = duplex(64);
        drop(peer);
        let mut lanes = vec![
            Lane::new(echo(Duration::ZERO)),
            Lane::new(echo(Duration::from_millis(3))),
            Lane::new(Box::new(dead)),
        ];
        let slice = Duration::from_millis(20);
        interleave(
            &mut lanes,
            64,
            slice,
            (4, 2),
            1_000_000,
            &CostArgs::default(),
        )
        .await;
        let (fast, slow, failed) = (&lanes[0], &lanes[1], &lanes[2]);
        assert!(fast.error.is_none() && slow.error.is_none());
        assert!(failed.error.is_some() && failed.requests == 0);
        // Two measured turns of 20 ms each (the four warm-up rounds, 80 ms more, not counted).
        for l in [fast, slow] {
            let ms = l.busy.as_millis();
            assert!((40..110).contains(&ms), "{ms} ms measured");
        }
        assert!(slow.hist.value_at_quantile(0.5) >= 3_000);
        assert!(fast.hist.value_at_quantile(0.5) < 3_000);
        assert!(fast.requests > slow.requests);
        // Per turn the first round trip is counted but not recorded.
        assert_eq!(slow.hist.len() + 2, slow.requests);
        assert_eq!(fast.hist.len() + 2, fast.requests);
    }
}
