//! `interleaved`: the targets (proxies, and `direct` at c=1) take turns, round after round,
//! instead of one window each.
//!
//! The host's state drifts over seconds: at c=1 an idle core wakes in about 15 or about
//! 36 µs depending on the moment, and the proxy core's cost of the same new connection moved
//! from 29 to 58 µs within a minute for nginx alone (gateway/bench/README.md). Measured one
//! after the other, each target's figure carries whatever the host did in its window; in
//! turns, every target meets the same mix, so their ratio compares the proxies. The HBONE
//! scenarios do the same for HBONE listeners (two gateway builds, say), whose cost per new
//! connection moved from 658 to 1,036 µs within a minute on one host.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::backend::OP_ECHO;
use crate::client::{
    Dialer, Errors, Io, OneConn, Pace, conn_result, conn_turn, echo_64, hist, merge, round_trip,
    rr_result, us,
};
use crate::cost::{Cost, CostArgs, Meter};
use crate::hbone::{self, HboneTarget};
use crate::{Target, Tls, parse_duration};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Scenario {
    /// Closed-loop request/response on `--connections` persistent connections per target.
    Rr,
    /// New connections (as `connrate`), `--concurrency` in flight, in each turn.
    Connrate,
    /// HBONE targets: a new outer connection and tunnel per attempt (as `hbone-connrate`),
    /// `--concurrency` in flight.
    HboneConnrate,
    /// HBONE targets: a new tunnel on a pooled outer connection per attempt (as
    /// `hbone-pooled`), `--concurrency` in flight.
    HbonePooled,
    /// HBONE targets: closed-loop request/response inside `--connections` tunnels (as
    /// `hbone-rr`).
    HboneRr,
}

impl Scenario {
    /// The mode whose result shape (and name) a target's file takes.
    pub fn mode(self) -> &'static str {
        match self {
            Scenario::Rr => "rr",
            Scenario::Connrate => "connrate",
            Scenario::HboneConnrate => "hbone-connrate",
            Scenario::HbonePooled => "hbone-pooled",
            Scenario::HboneRr => "hbone-rr",
        }
    }
}

#[derive(Args, Debug)]
pub struct InterleavedArgs {
    #[arg(long, value_enum)]
    pub scenario: Scenario,
    /// A target as `name=address` (address in 127.0.0.0/8); two or more, names unique
    /// (letters, digits, `-`: they name the result files).
    #[arg(long = "at", value_parser = parse_at, required = true)]
    pub at: Vec<(String, SocketAddr)>,
    /// A target's processes as `name=pid,pid`: their CPU time in its turns is reported too.
    #[arg(long = "pids", value_parser = parse_pids)]
    pub pids: Vec<(String, Vec<u32>)>,
    #[command(flatten)]
    pub tls: Tls,
    /// `rr`, `hbone-rr`: request and response size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// `rr`: persistent connections per target (`hbone-rr`: tunnels, on one outer
    /// connection).
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// HBONE scenarios: `:authority` of each CONNECT.
    #[arg(long, default_value = "bench.default.svc.cluster.local:80")]
    pub authority: String,
    /// HBONE scenarios: double HBONE (TLS + CONNECT again inside each tunnel, to a
    /// destination behind the targets), as through the gateway.
    #[arg(long)]
    pub double: bool,
    /// `connrate`, `hbone-connrate`, `hbone-pooled`: attempts in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Measured time per target, in turns of `--slice`.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Warm-up per target, in turns too; not measured.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// One target's turn.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    pub slice: Duration,
    /// Upper bound on requests or connections over all targets, whatever the duration.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_work: u64,
    /// The core the proxies are pinned to: its busy and steal time in each target's turns.
    #[arg(long)]
    pub proxy_core: Option<usize>,
    /// Each target's result goes to `<out-dir>/<prefix>-<name>.json`, in the shape of the
    /// scenario's own mode (`rr` or `connrate`).
    #[arg(long)]
    pub out_dir: PathBuf,
    #[arg(long)]
    pub prefix: String,
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

fn parse_name(name: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-';
    if name.is_empty() || !name.chars().all(ok) {
        return Err(format!(
            "{name:?}: a target's name is letters, digits and '-'"
        ));
    }
    Ok(name.to_string())
}

fn parse_at(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected name=address, e.g. gateway=127.0.0.1:27001"))?;
    let addr = addr.parse().map_err(|e| format!("{addr:?}: {e}"))?;
    Ok((parse_name(name)?, addr))
}

fn parse_pids(s: &str) -> Result<(String, Vec<u32>), String> {
    let (name, pids) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected name=pid,pid, e.g. nginx=41,42"))?;
    let pids = pids
        .split(',')
        .map(|p| p.parse().map_err(|e| format!("{p:?}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok((parse_name(name)?, pids))
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

/// What a target does in its turns.
pub enum Work {
    /// Persistent connections, each a closed loop.
    Rr(Vec<Box<dyn Io>>),
    /// One new connection after another, from `concurrency` tasks.
    Connrate { one: OneConn, concurrency: usize },
}

/// One target and what its measured turns gathered.
pub struct Lane {
    pub work: Work,
    pub cost_args: CostArgs,
    pub hist: Histogram<u64>,
    /// Requests or connections completed in measured turns.
    pub done: u64,
    pub busy: Duration,
    pub cost: Option<Cost>,
    pub errors: Arc<Errors>,
    /// An `rr` connection failed: the lane takes no more turns.
    pub broken: bool,
}

impl Lane {
    pub fn new(work: Work, cost_args: CostArgs) -> Lane {
        Lane {
            work,
            cost_args,
            hist: hist(),
            done: 0,
            busy: Duration::ZERO,
            cost: None,
            errors: Arc::default(),
            broken: false,
        }
    }
}

/// The lanes in turns of `slice`: `warm` rounds not counted, then `measured` rounds. In an
/// `rr` turn the first round trip of each connection is not recorded (it pays for the caches
/// the previous target used); a connection that fails stops its lane.
pub async fn interleave(
    lanes: &mut [Lane],
    size: usize,
    slice: Duration,
    (warm, measured): (usize, usize),
    max_work: u64,
) -> Result<()> {
    let mut done = 0u64;
    let n = lanes.len();
    for (k, i) in turns(n, warm + measured).enumerate() {
        let counted = k >= warm * n;
        let lane = &mut lanes[i];
        if lane.broken || done >= max_work {
            continue;
        }
        let (n_done, h, secs, cost) = match &mut lane.work {
            Work::Rr(conns) => {
                let meter = Meter::start(&lane.cost_args);
                let t0 = Instant::now();
                let streams = std::mem::take(conns);
                let (back, n_done, h, broken) =
                    rr_turn(streams, size, t0 + slice, &lane.errors).await?;
                *conns = back;
                lane.broken = broken;
                (n_done, h, t0.elapsed(), meter.stop())
            }
            Work::Connrate { one, concurrency } => {
                let pace = Pace {
                    concurrency: *concurrency,
                    duration: slice,
                    max_conns: max_work - done,
                    threads: 1,
                };
                let t = conn_turn(&pace, one.clone(), &lane.cost_args, &lane.errors).await?;
                (t.ok, t.hist, Duration::from_secs_f64(t.secs), t.cost)
            }
        };
        done += n_done;
        if counted {
            lane.done += n_done;
            lane.hist.add(h).ok();
            lane.busy += secs;
            lane.cost = Some(lane.cost.map_or(cost, |sum| sum.plus(&cost)));
        }
    }
    Ok(())
}

/// One `rr` turn: every connection in a closed loop until `until`. Returns the connections,
/// the round trips completed, their times (each connection's first left out) and whether
/// one failed (its error counted; the failed one is dropped).
async fn rr_turn(
    conns: Vec<Box<dyn Io>>,
    size: usize,
    until: Instant,
    errors: &Arc<Errors>,
) -> Result<(Vec<Box<dyn Io>>, u64, Histogram<u64>, bool)> {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|mut s| {
            let errors = errors.clone();
            tokio::spawn(async move {
                let (msg, mut back) = (vec![1u8; size], vec![0u8; size]);
                let (mut h, mut n) = (hist(), 0u64);
                while Instant::now() < until {
                    let r0 = Instant::now();
                    if let Err(e) = round_trip(&mut s, &msg, &mut back).await {
                        errors.add(&e);
                        return (None, n, h);
                    }
                    if n > 0 {
                        let _ = h.record(us(r0.elapsed()));
                    }
                    n += 1;
                }
                (Some(s), n, h)
            })
        })
        .collect();
    let (mut back, mut total, mut all, mut broken) = (Vec::new(), 0, hist(), false);
    for t in tasks {
        let (s, n, h) = t.await?;
        total += n;
        all.add(h).ok();
        match s {
            Some(s) => back.push(s),
            None => broken = true,
        }
    }
    Ok((back, total, all, broken))
}

pub async fn run(a: InterleavedArgs) -> Result<Value> {
    if a.at.len() < 2 {
        bail!("interleaved needs two targets or more (--at name=address, repeated)");
    }
    for (i, (name, _)) in a.at.iter().enumerate() {
        if a.at[..i].iter().any(|(other, _)| other == name) {
            bail!("target name {name:?} is given twice");
        }
    }
    for (name, _) in &a.pids {
        if !a.at.iter().any(|(t, _)| t == name) {
            bail!("--pids names {name:?}, which no --at names");
        }
    }
    if a.slice.is_zero() || a.slice > a.duration {
        bail!("--slice must be above zero and at most --duration");
    }
    let mut lanes = Vec::new();
    for (name, addr) in &a.at {
        let t = Target {
            target: *addr,
            tls: a.tls.clone(),
            plain: false,
            name: name.clone(),
        };
        // Each scenario builds its own client: the HBONE ones send no SNI of theirs.
        let d = || Dialer::new(&t).map(Arc::new);
        let hb = || {
            hbone::Dialer::new(&HboneTarget {
                target: *addr,
                authority: a.authority.clone(),
                certs: a.tls.certs.clone(),
                server_id: Vec::new(),
                double: a.double,
                inner_server_id: Vec::new(),
                outer: 1,
                name: name.clone(),
            })
        };
        let reach = || format!("connect to {name} ({addr})");
        let work = match a.scenario {
            Scenario::HboneConnrate => Work::Connrate {
                one: hbone::new_outer(&hb()?),
                concurrency: a.concurrency.max(1),
            },
            Scenario::HbonePooled => Work::Connrate {
                one: hbone::new_tunnel(&hb()?).await.with_context(reach)?,
                concurrency: a.concurrency.max(1),
            },
            Scenario::HboneRr => Work::Rr(
                hbone::echo_tunnels(&*hb()?, a.connections)
                    .await
                    .with_context(reach)?
                    .0,
            ),
            Scenario::Rr => {
                let d = d()?;
                let mut conns = Vec::new();
                for _ in 0..a.connections.max(1) {
                    let s = d.open(OP_ECHO, 0).await;
                    conns.push(s.with_context(reach)?);
                }
                Work::Rr(conns)
            }
            Scenario::Connrate => {
                let d = d()?;
                let one: OneConn = Arc::new(move || {
                    let d = d.clone();
                    Box::pin(async move { echo_64(d.open(OP_ECHO, 0).await?).await })
                });
                Work::Connrate {
                    one,
                    concurrency: a.concurrency.max(1),
                }
            }
        };
        let cpu_pid = a
            .pids
            .iter()
            .filter(|(t, _)| t == name)
            .flat_map(|(_, p)| p.iter().copied())
            .collect();
        let cost = CostArgs {
            proxy_core: a.proxy_core,
            load_core: None,
            cpu_pid,
        };
        lanes.push(Lane::new(work, cost));
    }
    let plan = (rounds(a.warmup, a.slice), rounds(a.duration, a.slice));
    interleave(&mut lanes, a.size, a.slice, plan, a.max_work).await?;
    let mut files = Vec::new();
    for ((name, _), lane) in a.at.iter().zip(lanes) {
        let secs = lane.busy.as_secs_f64();
        let (h, cost, errors) = (&lane.hist, lane.cost.as_ref(), &lane.errors);
        let result = match lane.work {
            Work::Rr(conns) => {
                for mut s in conns {
                    let _ = s.shutdown().await;
                }
                let shape = (a.connections.max(1), a.size);
                rr_result(shape, secs, lane.done, h, cost, errors)
            }
            Work::Connrate { concurrency, .. } => {
                conn_result(concurrency, secs, lane.done, h, cost, errors)
            }
        };
        let mode = a.scenario.mode();
        let turns = json!({"slice_ms": a.slice.as_millis(), "turns": plan.1});
        let mut v = json!({"mode": mode, "name": name, "interleaved": turns});
        merge(&mut v, result);
        let f = a.out_dir.join(format!("{}-{name}.json", a.prefix));
        std::fs::write(&f, format!("{v}\n")).with_context(|| format!("write {}", f.display()))?;
        files.push(f.display().to_string());
    }
    Ok(json!({"mode": "interleaved", "files": files}))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, duplex};

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
        assert_eq!(parse_pids("nginx=4,5"), Ok(("nginx".into(), vec![4, 5])));
        assert!(parse_pids("nginx=4,x").is_err());
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

    fn rr(streams: Vec<Box<dyn Io>>) -> Lane {
        Lane::new(Work::Rr(streams), CostArgs::default())
    }

    /// Each target's round trips land in its own lane, every lane gets the same measured
    /// time, and a failing target stops without stopping the others.
    #[tokio::test]
    async fn rr_turns_keep_targets_apart() {
        let (dead, peer) = duplex(64);
        drop(peer);
        let mut lanes = vec![
            rr(vec![echo(Duration::ZERO), echo(Duration::ZERO)]),
            rr(vec![echo(Duration::from_millis(3))]),
            rr(vec![Box::new(dead)]),
        ];
        let slice = Duration::from_millis(20);
        interleave(&mut lanes, 64, slice, (4, 2), 1_000_000)
            .await
            .unwrap();
        let (fast, slow, failed) = (&lanes[0], &lanes[1], &lanes[2]);
        assert!(!fast.broken && !slow.broken);
        assert!(failed.broken && failed.done == 0);
        assert_eq!(failed.errors.json()["errors"], 1);
        // Two measured turns of 20 ms each (the four warm-up rounds, 80 ms more, not counted).
        for l in [fast, slow] {
            let ms = l.busy.as_millis();
            assert!((40..110).contains(&ms), "{ms} ms measured");
        }
        assert!(slow.hist.value_at_quantile(0.5) >= 3_000);
        assert!(fast.hist.value_at_quantile(0.5) < 3_000);
        assert!(fast.done > slow.done);
        // Per turn each connection's first round trip is counted but not recorded.
        assert_eq!(slow.hist.len() + 2, slow.done);
        assert_eq!(fast.hist.len() + 2 * 2, fast.done);
        let Work::Rr(kept) = &fast.work else { panic!() };
        assert_eq!(kept.len(), 2, "the connections stay open between turns");
    }

    /// A connection-rate lane: one "connection" per `ms`, two at a time.
    fn conns(ms: u64) -> Lane {
        let one: OneConn = Arc::new(move || {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok(())
            })
        });
        Lane::new(
            Work::Connrate {
                one,
                concurrency: 2,
            },
            CostArgs::default(),
        )
    }

    #[tokio::test]
    async fn connrate_turns_keep_targets_apart() {
        let mut lanes = vec![conns(1), conns(4)];
        interleave(&mut lanes, 64, Duration::from_millis(20), (1, 3), 1_000_000)
            .await
            .unwrap();
        let (fast, slow) = (&lanes[0], &lanes[1]);
        assert!(slow.hist.value_at_quantile(0.5) >= 4_000);
        assert!(fast.hist.value_at_quantile(0.5) < 4_000);
        assert!(fast.done > slow.done && slow.done >= 6);
        assert_eq!(slow.hist.len(), slow.done);
        for l in [fast, slow] {
            let ms = l.busy.as_millis();
            assert!((60..150).contains(&ms), "{ms} ms measured");
        }
    }
}
