//! The proposed drop-in for `gateway/src/forward.rs` (not used by the gateway; exercised here
//! by `sni-bench forward --mode hybrid` so the code in the report is compiled and measured).
//!
//! `forward_splice` has the signature of `forward::one_way`. It starts with the same userspace
//! copy, so idle and chatty connections cost nothing more (no pipe, no extra descriptors);
//! once a direction has moved `SPLICE_AFTER` bytes it creates a pipe and moves the rest with
//! `splice(2)`. If the pipe cannot be created (EMFILE), it keeps copying.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use rustix::pipe::{PipeFlags, SpliceFlags};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::clock;

const CHUNK: usize = 16 * 1024;
/// Bytes one direction copies in userspace before it switches to splice.
const SPLICE_AFTER: u64 = 256 * 1024;
/// Pipe capacity asked for (the default is 16 pages).
const PIPE: usize = 64 * 1024;

pub async fn forward_splice(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &Counter,
    total: &AtomicU64,
    last: &AtomicU64,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    let mut copied = 0u64;
    // Phase 1: the userspace copy of `one_way`.
    let (r, w, cap) = loop {
        if copied >= SPLICE_AFTER {
            match new_pipe() {
                Ok(p) => break p,
                Err(_) => copied = 0, // out of descriptors: copy on, try again later
            }
        }
        let Some(n) = copy_step(src, dst, &mut pending, last).await? else {
            return shutdown_write(dst);
        };
        counter.inc_by(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
        copied += n as u64;
    };
    // Phase 2: src -> pipe -> dst. The pipe is drained before the next splice in, so EAGAIN
    // on the way in always means "src not readable" and on the way out "dst not writable".
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
        last.store(clock::now_ms(), Ordering::Relaxed);
        counter.inc_by(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
        let mut left = n;
        while left > 0 {
            match dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&r, None, dst, None, left, flags).map_err(io::Error::from)
            }) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => {
                    left -= m;
                    last.store(clock::now_ms(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dst.writable().await?,
                Err(e) => return Err(e),
            }
        }
    }
}

fn new_pipe() -> io::Result<(OwnedFd, OwnedFd, usize)> {
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let cap = rustix::pipe::fcntl_setpipe_size(&w, PIPE).unwrap_or(16 * 4096);
    Ok((r, w, cap))
}

/// One read from `src` and everything written to `dst`: `one_way`'s loop body. `None` is EOF.
async fn copy_step(
    src: &TcpStream,
    dst: &TcpStream,
    pending: &mut Vec<u8>,
    last: &AtomicU64,
) -> io::Result<Option<usize>> {
    loop {
        src.readable().await?;
        // The buffer lives only between awaits, so it is not part of the task's state.
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
        if got.is_some() {
            last.store(clock::now_ms(), Ordering::Relaxed);
        }
        while !pending.is_empty() {
            dst.writable().await?;
            match dst.try_write(pending) {
                Ok(w) => {
                    pending.drain(..w);
                    last.store(clock::now_ms(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if pending.capacity() > CHUNK {
            *pending = Vec::new();
        }
        return Ok(got);
    }
}

fn shutdown_write(dst: &TcpStream) -> io::Result<()> {
    match SockRef::from(dst).shutdown(Shutdown::Write) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(e),
    }
}
