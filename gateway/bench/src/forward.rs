//! The splice experiment: a minimal plain TCP forwarder with two copy strategies.
//!
//! - `copy`: `gateway::forward::copy_one_way` (readiness, `try_read` into a 16 KiB stack
//!   buffer, `try_write`, a heap tail only for what the peer could not take).
//! - `splice`: socket -> pipe -> socket with `splice(2)` (`SPLICE_F_MOVE | SPLICE_F_NONBLOCK`),
//!   driven by tokio readiness through `try_io`; one pipe per direction.
//!
//! - `hybrid`: `gateway::forward::one_way`, what the gateway runs: copy, then splice after
//!   256 KiB per direction.
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
use gateway::forward;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::AtomicU64;

/// Pipe capacity for splice; the default (16 pages) is 64 KiB on 4 KiB pages.
const PIPE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Mode {
    Copy,
    Splice,
    /// `gateway::forward::one_way`: copy first, splice after 256 KiB per direction.
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
                        let (last, sent, received) =
                            (AtomicU64::new(0), Counter::default(), Counter::default());
                        let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
                        tokio::try_join!(
                            forward::copy_one_way(&c, &u, &sent, &t1, &last),
                            forward::copy_one_way(&u, &c, &received, &t2, &last)
                        )?;
                    }
                    Mode::Splice => {
                        tokio::try_join!(splice_one_way(&c, &u), splice_one_way(&u, &c))?;
                    }
                    Mode::Hybrid => {
                        let (last, sent, received) =
                            (AtomicU64::new(0), Counter::default(), Counter::default());
                        let (t1, t2) = (AtomicU64::new(0), AtomicU64::new(0));
                        tokio::try_join!(
                            forward::one_way(&c, &u, &sent, &t1, &last),
                            forward::one_way(&u, &c, &received, &t2, &last)
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
