//! The splice experiment: a minimal plain TCP forwarder with two copy strategies.
//!
//! - `copy`: `gateway::forward::copy_one_way` (readiness, `try_read` into a 16 KiB stack
//!   buffer, `try_write`, a heap tail only for what the peer could not take).
//! - `splice`: `gateway::forward::splice_one_way`, socket -> pipe -> socket with `splice(2)`
//!   from the first byte, driven by tokio readiness through `try_io`; one pipe per direction.
//!
//! - `hybrid`: `gateway::forward::one_way`, what the gateway runs: copy, then splice after
//!   256 KiB per direction.
//!
//! All half-close like the gateway: EOF one way becomes `shutdown(Write)` the other way.

use std::io;
use std::net::SocketAddr;

use anyhow::Result;
use clap::{Args, ValueEnum};
use tokio::net::{TcpListener, TcpStream};

use crate::check_loopback;
use gateway::forward;
use prometheus_client::metrics::counter::Counter;
use std::sync::atomic::AtomicU64;

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
                // Counters the gateway's forwarders update; unused here beyond that.
                let (last, up_total, down_total) =
                    (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
                let (sent, received) = (Counter::default(), Counter::default());
                match mode {
                    Mode::Copy => tokio::try_join!(
                        forward::copy_one_way(&c, &u, &sent, &up_total, &last),
                        forward::copy_one_way(&u, &c, &received, &down_total, &last)
                    )?,
                    Mode::Splice => tokio::try_join!(
                        forward::splice_one_way(&c, &u, &sent, &up_total, &last),
                        forward::splice_one_way(&u, &c, &received, &down_total, &last)
                    )?,
                    Mode::Hybrid => tokio::try_join!(
                        forward::one_way(&c, &u, &sent, &up_total, &last),
                        forward::one_way(&u, &c, &received, &down_total, &last)
                    )?,
                };
                io::Result::Ok(())
            };
            if let Err(e) = r.await {
                eprintln!("forward: {e}");
            }
        });
    }
}
