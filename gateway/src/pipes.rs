//! The pipes bulk forwarding splices through, and how many may be open at once. Each pipe is
//! two descriptors the connection limits do not count, so without a cap a few thousand bulk
//! connections could take the descriptors the API server and istiod connections need. The cap
//! is [`MAX`] pipes, what Linux gives an unprivileged user anyway (`fs.pipe-user-pages-soft`,
//! 64 MiB, in 64 KiB pipes); a lower descriptor limit lowers it at start ([`crate::fd_limit`]).
//! Past it a direction copies, as it does when the kernel refuses a pipe.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustix::pipe::PipeFlags;

/// Pipe capacity asked for (the kernel default is 16 pages).
const SIZE: usize = 64 * 1024;

/// Pipes open at once by default: 64 MiB of [`SIZE`] pipes.
pub const MAX: usize = (64 << 20) / SIZE;

/// Open pipes against a cap.
struct Budget {
    open: AtomicUsize,
    max: AtomicUsize,
}

impl Budget {
    const fn new(max: usize) -> Budget {
        Budget {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// Takes a place if one is free.
    fn take(&self) -> bool {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The process's pipes.
static PIPES: Budget = Budget::new(MAX);

/// Sets the cap; start-up calls it once, before any connection.
pub fn set_max(max: usize) {
    PIPES.max.store(max, Ordering::Relaxed);
}

/// A place in [`PIPES`], given back on drop. Zero-sized, so a spliced direction's state keeps
/// its size.
pub struct Place(());

impl Drop for Place {
    fn drop(&mut self) {
        PIPES.give_back();
    }
}

/// A pipe worth splicing through: (read end, write end, capacity, its place). Fails when the
/// cap is reached or the kernel refuses or gives only a small pipe.
pub fn open() -> io::Result<(OwnedFd, OwnedFd, u32, Place)> {
    if !PIPES.take() {
        return Err(io::Error::other("the gateway's pipe cap is reached"));
    }
    let place = Place(());
    let (r, w) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
    let cap = match rustix::pipe::fcntl_setpipe_size(&w, SIZE) {
        Ok(cap) => cap,
        Err(_) => rustix::pipe::fcntl_getpipe_size(&w)?,
    };
    capacity(cap).map(|cap| (r, w, cap, place))
}

/// Past the user's pipe budget (`fs.pipe-user-pages-soft`, 64 MiB), Linux gives an
/// unprivileged process 8 KiB pipes it may not grow, and a splice through those moves less
/// than one copy does: the direction keeps copying instead.
fn capacity(cap: usize) -> io::Result<u32> {
    if cap < SIZE {
        return Err(io::Error::other(format!(
            "a {cap}-byte pipe: the user's pipe budget is spent"
        )));
    }
    Ok(u32::try_from(cap).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pipes_are_not_spliced_through() {
        assert!(capacity(8 * 1024).is_err());
        assert!(capacity(SIZE - 1).is_err());
        assert_eq!(capacity(SIZE).unwrap(), SIZE as u32);
        assert_eq!(capacity(1 << 20).unwrap(), 1 << 20);
    }

    #[test]
    fn the_cap_holds_and_places_come_back() {
        let b = Budget::new(2);
        assert!(b.take() && b.take());
        assert!(!b.take(), "a third place past a cap of two");
        assert_eq!(b.open.load(Ordering::Relaxed), 2);
        b.give_back();
        assert!(b.take());
        b.max.store(0, Ordering::Relaxed);
        b.give_back();
        assert!(!b.take(), "a cap of zero never splices");
    }

    #[test]
    fn the_default_is_the_unprivileged_users_budget() {
        assert_eq!(MAX, 1024);
        assert_eq!(std::mem::size_of::<Place>(), 0);
    }
}
