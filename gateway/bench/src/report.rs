//! Turns the JSON results of one run (`<scenario>-<target>.json`) into markdown.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::Args;
use serde_json::Value;

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Directory of result files.
    #[arg(long)]
    pub dir: PathBuf,
    /// Text file describing the machine and the run, included verbatim.
    #[arg(long)]
    pub machine: Option<PathBuf>,
}

const TARGETS: [&str; 4] = ["direct", "gateway", "haproxy", "nginx"];

fn load(dir: &Path, file: &str) -> Option<Value> {
    let s = std::fs::read_to_string(dir.join(format!("{file}.json"))).ok()?;
    serde_json::from_str(s.lines().last()?).ok()
}

fn get(dir: &Path, scenario: &str, target: &str, ptr: &str) -> Option<f64> {
    load(dir, &format!("{scenario}-{target}"))?
        .pointer(ptr)?
        .as_f64()
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}")).unwrap_or_else(|| "–".into())
}

struct Row {
    label: &'static str,
    scenario: &'static str,
    ptr: &'static str,
    with_direct: bool,
}

const ROWS: &[Row] = &[
    Row {
        label: "New TLS connections/s",
        scenario: "connrate",
        ptr: "/conn_per_s",
        with_direct: true,
    },
    Row {
        label: "Latency p50 (µs)",
        scenario: "latency",
        ptr: "/latency/p50_us",
        with_direct: true,
    },
    Row {
        label: "Latency p99 (µs)",
        scenario: "latency",
        ptr: "/latency/p99_us",
        with_direct: true,
    },
    Row {
        label: "Latency p99.9 (µs)",
        scenario: "latency",
        ptr: "/latency/p999_us",
        with_direct: true,
    },
    Row {
        label: "Throughput down (MB/s)",
        scenario: "throughput",
        ptr: "/down_mb_per_s",
        with_direct: true,
    },
    Row {
        label: "Throughput up (MB/s)",
        scenario: "throughput",
        ptr: "/up_mb_per_s",
        with_direct: true,
    },
    Row {
        label: "Proxy CPU s per GB (down)",
        scenario: "throughput",
        ptr: "/down_proxy_cpu_s_per_gb",
        with_direct: false,
    },
    Row {
        label: "Idle: proxy RSS bytes/conn",
        scenario: "idle",
        ptr: "/bytes_per_conn",
        with_direct: false,
    },
];

pub fn run(a: &ReportArgs) -> Result<()> {
    let d = &a.dir;
    let mut out = String::new();
    if let Some(m) = &a.machine {
        out.push_str(&std::fs::read_to_string(m)?);
        out.push('\n');
    }
    out.push_str("| Metric | direct | gateway | haproxy | nginx | gateway ÷ haproxy | nginx ÷ haproxy | gateway ÷ direct |\n");
    out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in ROWS {
        let vals: Vec<Option<f64>> = TARGETS
            .iter()
            .map(|t| {
                if *t == "direct" && !r.with_direct {
                    None
                } else {
                    get(d, r.scenario, t, r.ptr)
                }
            })
            .collect();
        let vs_direct = if r.scenario == "throughput" && r.with_direct {
            fmt_ratio(ratio(vals[1], vals[0]))
        } else {
            "".into()
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            fmt(vals[0]),
            fmt(vals[1]),
            fmt(vals[2]),
            fmt(vals[3]),
            fmt_ratio(ratio(vals[1], vals[2])),
            fmt_ratio(ratio(vals[3], vals[2])),
            vs_direct,
        );
    }

    // Errors and context, so a failed scenario cannot hide behind a number.
    let mut notes = String::new();
    for s in ["connrate", "latency", "throughput", "idle"] {
        for t in TARGETS {
            if let Some(v) = load(d, &format!("{s}-{t}")) {
                let errs = v.get("errors").and_then(Value::as_u64).unwrap_or(0);
                if errs > 0 {
                    let _ = writeln!(
                        notes,
                        "- {s}/{t}: {errs} errors, first: {}",
                        v.get("first_error").unwrap_or(&Value::Null)
                    );
                }
            }
        }
    }
    for t in ["gateway", "haproxy", "nginx"] {
        if let Some(v) = load(d, &format!("idle-{t}")) {
            let _ = writeln!(
                notes,
                "- idle/{t}: {} of {} connections open (opened in {:.1} s), RSS {} KiB -> {} KiB",
                v["open"],
                v["requested"],
                v["open_seconds"].as_f64().unwrap_or(0.0),
                v["rss_before_kib"],
                v["rss_after_kib"]
            );
        }
    }
    if let Some(v) = load(d, "latency-gateway") {
        let _ = writeln!(
            notes,
            "- latency: {} connections, {} requests/s in total (achieved {:.0}), {}-byte echo",
            v["connections"],
            v["rate"],
            v["achieved_rps"].as_f64().unwrap_or(0.0),
            v["size"]
        );
    }
    if let Some(v) = load(d, "connrate-gateway") {
        let _ = writeln!(
            notes,
            "- connrate: {} connections in flight; each = TCP connect + full TLS 1.3 handshake + 64-byte echo + close",
            v["concurrency"]
        );
    }
    if let Some(v) = load(d, "throughput-gateway") {
        let _ = writeln!(
            notes,
            "- throughput: {} connection(s), each direction for {:.1} s",
            v["connections"],
            v["down_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    out.push('\n');
    out.push_str(&notes);

    // Targets of issue 3.
    let g = |s, p| get(d, s, "gateway", p);
    let h = |s, p| get(d, s, "haproxy", p);
    let checks = [
        (
            "connection rate ≥ HAProxy's",
            ratio(g("connrate", "/conn_per_s"), h("connrate", "/conn_per_s")),
            true,
            1.0,
        ),
        (
            "throughput (down) ≥ 90% of direct",
            ratio(
                g("throughput", "/down_mb_per_s"),
                get(d, "throughput", "direct", "/down_mb_per_s"),
            ),
            true,
            0.9,
        ),
        (
            "throughput (up) ≥ 90% of direct",
            ratio(
                g("throughput", "/up_mb_per_s"),
                get(d, "throughput", "direct", "/up_mb_per_s"),
            ),
            true,
            0.9,
        ),
        (
            "p99 ≤ HAProxy's",
            ratio(
                g("latency", "/latency/p99_us"),
                h("latency", "/latency/p99_us"),
            ),
            false,
            1.0,
        ),
        (
            "memory per idle connection ≤ HAProxy's",
            ratio(g("idle", "/bytes_per_conn"), h("idle", "/bytes_per_conn")),
            false,
            1.0,
        ),
    ];
    out.push_str("\n| Target (issue 3) | ratio | goal | result |\n|---|---:|---:|---|\n");
    for (name, r, at_least, goal) in checks {
        let verdict = match r {
            None => "not measured",
            Some(x) if (at_least && x >= goal) || (!at_least && x <= goal) => "met",
            Some(_) => "missed",
        };
        let _ = writeln!(
            out,
            "| {name} | {} | {}{goal:.2} | {verdict} |",
            fmt_ratio(r),
            if at_least { "≥ " } else { "≤ " }
        );
    }

    // Splice experiment, if it ran.
    if load(d, "splice-copy").is_some() {
        out.push_str("\n### splice(2) experiment (plain TCP through a minimal forwarder)\n\n");
        out.push_str("| Forwarder | down MB/s | up MB/s | forwarder CPU s/GB down | forwarder CPU s/GB up |\n|---|---:|---:|---:|---:|\n");
        for (label, f) in [
            ("none (direct)", "splice-direct"),
            ("userspace copy", "splice-copy"),
            ("splice(2)", "splice-splice"),
            (
                "copy, then splice after 256 KiB (the gateway's)",
                "splice-hybrid",
            ),
        ] {
            let v = load(d, f);
            let p = |k: &str| v.as_ref().and_then(|v| v.get(k)).and_then(Value::as_f64);
            let cpu = |k: &str| {
                if f == "splice-direct" {
                    "–".into()
                } else {
                    fmt(p(k))
                }
            };
            let _ = writeln!(
                out,
                "| {label} | {} | {} | {} | {} |",
                fmt(p("down_mb_per_s")),
                fmt(p("up_mb_per_s")),
                cpu("down_proxy_cpu_s_per_gb"),
                cpu("up_proxy_cpu_s_per_gb"),
            );
        }
    }
    print!("{out}");
    Ok(())
}
