//! The demo's stage: run the CLIs as a user would (echoing each command), start the
//! long-running binaries with their logs in the work dir, and record each check's outcome.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::proc::ChildGuard;
use testkit::{mesh, prom};

use crate::EAST_GW_ADMIN;

pub use examples::stage::{Proc, header, wait_listening};

pub struct Demo {
    pub bin: PathBuf,
    pub work: PathBuf,
    pub checks: Vec<(String, bool)>,
}

impl Demo {
    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs a CLI step the way a user would, echoing the command.
    pub fn run(&self, tool: &str, args: &[&str]) -> Result<String> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.replace(self.work.to_str().unwrap_or(""), "$WORK"))
            .collect();
        println!("  $ {tool} {}", shown.join(" "));
        let out = examples::stage::output(Command::new(self.tool(tool)).args(args))
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn spawn(&self, name: &str, tool: &str, args: &[&str]) -> Result<Proc> {
        let log = self.work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = ChildGuard::spawn(
            Command::new(self.tool(tool))
                .args(args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(file),
        )
        .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    pub fn check(&mut self, what: &str, ok: bool) {
        println!("  {} {what}", if ok { "✔" } else { "✘" });
        self.checks.push((what.into(), ok));
    }
}

pub async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: gateway\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

/// A series' value in a scrape (`name{labels}` as exposed); 0 when absent.
pub fn metric(text: &str, series: &str) -> u64 {
    prom::series_value(text, series) as u64
}

/// East gateway's metrics text.
pub async fn metrics() -> Result<String> {
    Ok(http_get(EAST_GW_ADMIN, "/metrics").await?.1)
}

/// Connections east's gateway routed for `host` on port 80.
pub fn opened(m: &str, host: &str) -> u64 {
    metric(
        m,
        &format!(
            "gateway_connections_opened_total{{sni=\"{}\"}}",
            mesh::sni(80, "", host)
        ),
    )
}
