//! The splice experiment: a minimal plain TCP forwarder with two copy strategies.
//!
//! - `copy`: the loop of `gateway/src/forward.rs` (readiness, `try_read` into a 16 KiB stack
//!   buffer, `try_write`, a heap tail only for what the peer could not take), without the
//!   metrics and idle timer.
//! - `splice`: socket -> pipe -> socket with `splice(2)` (`SPLICE_F_MOVE | SPLICE_F_NONBLOCK`),
//!   driven by tokio readiness through `try_io`; one pipe per direction.
//!
//! - `hybrid`: `dropin::forward_splice`, the proposal for the gateway.
//!
//! All half-close like the gateway: EOF one way becomes `shutdown(Write)` the other way.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use anyhow::Result;
use clap::{Args, ValueEnum};
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

use crate::check_loopback;
use crate::dropin::forward_splice;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::AtomicU64;

const CHUNK: usize = 16 * 1024;
/// Pipe capacity for splice; the default (16 pages) is 64 KiB on 4 KiB pages.
const PIPE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Copy,
    Splice,
    /// `dropin::forward_splice`: copy first, splice after 256 KiB per direction.
    Hybrid,
}

#[derive(Args, Debug)]
pub struct ForwardArgs {
    #[arg(long, value_enum)]
    pub mode: Mode,
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub upstream: SocketAddr,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

pub async fn run(a: ForwardArgs) -> Result<()> {
    check_loopback(&a.listen)?;
    check_loopback(&a.upstream)?;
    let l = TcpListener::bind(a.listen).await?;
    eprintln!("forward ({:?}): {} -> {}", a.mode, a.listen, a.upstream);
    loop {
        let (c, _) = l.accept().await?;
        let (mode, up) = (a.mode, a.upstream);
        tokio::spawn(async move {
            let r = async {
                c.set_nodelay(true)?;
                let u = TcpStream::connect(up).await?;
                u.set_nodelay(true)?;
                match mode {
                    Mode::Copy => {
                        tokio::try_join!(copy_one_way(&c, &u), copy_one_way(&u, &c))?;
                    }
                    Mode::Splice => {
                        tokio::try_join!(splice_one_way(&c, &u), splice_one_way(&u, &c))?;
                    }
                    Mode::Hybrid => {
                        let (last, sent, received) =
                            (AtomicU64::new(0), Counter::default(), Counter::default());
                        let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
                        tokio::try_join!(
                            forward_splice(&c, &u, &sent, &t1, &last),
                            forward_splice(&u, &c, &received, &t2, &last)
                        )?;
                    }
                }
                io::Result::Ok(())
            };
            if let Err(e) = r.await {
                eprintln!("forward: {e}");
            }
        });
    }
}

fn shutdown_write(dst: &TcpStream) -> io::Result<()> {
    match rustix::net::shutdown(dst, rustix::net::Shutdown::Write) {
        Err(e) if io::Error::from(e).kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r.map_err(io::Error::from),
    }
}

/// The userspace copy of `gateway/src/forward.rs`, minus metrics.
pub async fn copy_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        src.readable().await?;
        let got = {
            let mut buf = [0u8; CHUNK];
            match src.try_read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    let written = match dst.try_write(&buf[..n]) {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    if written < n {
                        pending.extend_from_slice(&buf[written..n]);
                    }
                    Some(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if got.is_none() {
            return shutdown_write(dst);
        }
        while !pending.is_empty() {
            dst.writable().await?;
            match dst.try_write(&pending) {
                Ok(w) => {
                    pending.drain(..w);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if pending.capacity() > CHUNK {
            pending = Vec::new();
        }
    }
}

/// `src -> pipe -> dst` with splice(2). The pipe is drained completely before the next
/// splice in, so `EAGAIN` from the splice in always means "socket not readable" and from the
/// splice out "socket not writable"; the bytes in flight live in the kernel pipe.
pub async fn splice_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<()> {
    let (r, w): (OwnedFd, OwnedFd) =
        rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let cap = rustix::pipe::fcntl_setpipe_size(&w, PIPE).unwrap_or(PIPE);
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        src.readable().await?;
        let n = match src.try_io(Interest::READABLE, || {
            rustix::pipe::splice(src, None, &w, None, cap, flags).map_err(io::Error::from)
        }) {
            Ok(0) => return shutdown_write(dst),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&r, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}
