//! The demo's stage: run the CLIs as processes (echoing each command), start the long-running
//! binaries with their logs in the work dir, and record each check's outcome.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testkit::proc::ChildGuard;

/// What a finished CLI run said.
pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub use examples::stage::{Proc, header, wait_listening};

pub struct Demo {
    pub bin: PathBuf,
    pub work: PathBuf,
    /// `KUBECONFIG` for meshctl: the three clusters' kubeconfig files, merged as kubectl does.
    pub kubeconfig: String,
    pub checks: Vec<(String, bool)>,
}

impl Demo {
    pub fn path(&self, rel: &str) -> String {
        self.work.join(rel).to_string_lossy().into_owned()
    }

    fn shown(&self, s: &str) -> String {
        s.replace(self.work.to_str().unwrap_or("\0"), "$WORK")
    }

    /// Runs `meshctl` as a user would, echoing the command, with `kubeconfig` as KUBECONFIG.
    pub fn meshctl_with(&self, kubeconfig: &str, args: &[&str]) -> Result<Out> {
        let shown: Vec<String> = args.iter().map(|a| self.shown(a)).collect();
        let env = if kubeconfig == self.kubeconfig {
            String::new()
        } else {
            format!("KUBECONFIG={} ", self.shown(kubeconfig))
        };
        println!("  $ {env}meshctl {}", shown.join(" "));
        let out = examples::stage::output(
            Command::new(self.bin.join("meshctl"))
                .args(args)
                .env("KUBECONFIG", kubeconfig),
        )
        .context("running meshctl")?;
        Ok(Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn meshctl(&self, args: &[&str]) -> Result<Out> {
        self.meshctl_with(&self.kubeconfig.clone(), args)
    }

    /// A meshctl step that must succeed (the demo cannot go on otherwise).
    pub fn meshctl_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.meshctl(args)?;
        if !out.ok {
            bail!("meshctl failed:\n{}{}", out.stdout, out.stderr);
        }
        Ok(out.stdout)
    }

    /// A command's output, indented under it; its `wrote <file>` lines as one count.
    pub fn show(&self, text: &str) {
        let wrote = text.lines().filter(|l| l.starts_with("wrote ")).count();
        if wrote > 0 {
            println!("  │ wrote {wrote} file(s) under $WORK/rotation (keys 0600)");
        }
        for l in text
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("wrote "))
        {
            println!("  │ {}", self.shown(l));
        }
    }

    pub fn spawn(&self, name: &str, tool: &str, args: &[&str]) -> Result<Proc> {
        let log = self.work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = ChildGuard::spawn(
            Command::new(self.bin.join(tool))
                .args(args)
                .env("RUST_LOG", "info")
                .env_remove("KUBECONFIG")
                .stdin(Stdio::null())
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

    /// Runs a short-lived tool (not meshctl) without echoing it.
    pub fn quiet(&self, tool: &str, args: &[&str]) -> Result<Out> {
        let out = examples::stage::output(
            Command::new(self.bin.join(tool))
                .args(args)
                .env_remove("KUBECONFIG"),
        )
        .with_context(|| format!("running {tool}"))?;
        Ok(Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    pub fn check(&mut self, what: &str, ok: bool) {
        println!("  {} {what}", if ok { "✔" } else { "✘" });
        self.checks.push((what.into(), ok));
    }
}

/// A plain HTTP/1.0 GET (the gateway's admin port); the body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: gateway\r\n\r\n").as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// A private directory (0700), created fresh: never an existing one or a symlink.
pub fn private_dir(p: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(false)
        .mode(0o700)
        .create(p)
        .with_context(|| format!("creating {}", p.display()))
}

/// Writes a new file (never through a symlink: `create_new`), 0600 when `secret`.
pub fn write_new(p: &Path, text: &str, secret: bool) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(p)
        .with_context(|| format!("creating {}", p.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}
