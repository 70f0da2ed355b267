//! The splice experiment: a minimal plain TCP forwarder over `gateway::forward::one_way`,
//! with three settings of its `splice_after`:
//!
//! - `copy` (`u64::MAX`): readiness, `try_read` into a 16 KiB stack buffer, `try_write`, a
//!   heap tail only for what the peer could not take.
//! - `splice` (0): socket -> pipe -> socket with `splice(2)` from the first byte, driven by
//!   tokio readiness through `try_io`; one pipe per direction.
//! - `hybrid` (`forward::SPLICE_AFTER`): what the gateway runs: copy, then splice after
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
                let last = AtomicU64::new(0);
                let p = forward::Progress::new(Counter::default(), Counter::default());
                let splice_after = match mode {
                    Mode::Copy => u64::MAX,
                    Mode::Splice => 0,
                    Mode::Hybrid => forward::SPLICE_AFTER,
                };
                tokio::try_join!(
                    forward::one_way(&c, &u, &p.sent, &last, splice_after),
                    forward::one_way(&u, &c, &p.received, &last, splice_after)
                )?;
                io::Result::Ok(())
            };
            if let Err(e) = r.await {
                eprintln!("forward: {e}");
            }
        });
    }
}
