//! Byte forwarding between the client and the upstream, both directions, until both end.
//!
//! Each direction reads into a stack buffer, so an idle connection holds no userspace buffer
//! at all; only bytes the peer cannot take yet are kept on the heap. It tries the read first
//! and registers for readiness whenever there was nothing ([`Read::Empty`]).
//! A FIN one way becomes a write shutdown the other way and the reverse direction goes on
//! (half-close), which TLS close_notify and request/response protocols rely on.
//!
//! Bulk transfers switch to `splice(2)`: once a direction has moved [`SPLICE_AFTER`] bytes in
//! reads that filled the whole buffer (a stream, not messages) it gets a pipe and the kernel
//! moves the rest without copying through userspace: 15–38% less CPU per GB than the copy
//! (`gateway/bench`). Small messages cost more through a pipe than through a copy (two splices
//! and page references for a few bytes, and an `EAGAIN` splice more), so a chatty
//! connection, however long it lives, keeps copying, and a spliced direction whose reads turn
//! small goes back to copying ([`Phase`]).

use std::io;
use std::mem::MaybeUninit;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use rustix::net::{RecvFlags, SendFlags};
use rustix::pipe::SpliceFlags;
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::TcpStream;

use futures::ready;
use tokio::time::Sleep;
use tokio_util::sync::WaitForCancellationFuture;

use crate::clock;
use crate::drain::ForceClose;
use crate::idle::{Next, Quiet};

const CHUNK: usize = 16 * 1024;

/// How forwarding ended: the `outcome` of the access log and the close count.
#[derive(Debug)]
pub enum End {
    /// Both directions saw EOF; the first was passed on as a write shutdown, the second by
    /// the close that follows.
    Done,
    /// No byte either way for the idle timeout.
    Idle,
    /// The upstream reset the connection (a crashed or killed backend).
    UpstreamReset,
    /// The client reset the connection.
    ClientReset,
    /// Any other socket error; both sides were closed.
    Error(io::Error),
    /// Cut by the drain deadline (the caller decides this, not the forwarder).
    DrainDeadline,
    /// Cut when the route's DestinationRule `maxConnectionDuration` passed (the caller
    /// decides this too), as Envoy's TCP proxy closes both sides then.
    MaxDuration,
}

impl End {
    pub const OUTCOMES: [&'static str; 7] = [
        "ok",
        "idle_timeout",
        "upstream_reset",
        "client_reset",
        "error",
        "drain_deadline",
        "max_duration",
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            End::Done => "ok",
            End::Idle => "idle_timeout",
            End::UpstreamReset => "upstream_reset",
            End::ClientReset => "client_reset",
            End::Error(_) => "error",
            End::DrainDeadline => "drain_deadline",
            End::MaxDuration => "max_duration",
        }
    }

    /// An error on the upstream socket (`upstream: true`) or the client socket. A reset, or
    /// a broken pipe from writing after one, is that side's reset.
    pub fn from_error(e: io::Error, upstream: bool) -> End {
        match e.kind() {
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe if upstream => {
                End::UpstreamReset
            }
            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => End::ClientReset,
            _ => End::Error(e),
        }
    }
}

/// An error of one direction, with the socket it came from.
#[derive(Debug)]
pub struct DirError {
    /// From the destination socket (a write), not the source (a read).
    pub at_dst: bool,
    pub error: io::Error,
}

fn at_src(error: io::Error) -> DirError {
    DirError {
        at_dst: false,
        error,
    }
}

fn at_dst(error: io::Error) -> DirError {
    DirError {
        at_dst: true,
        error,
    }
}

impl From<DirError> for io::Error {
    fn from(e: DirError) -> Self {
        e.error
    }
}

/// One direction's byte counts, updated as bytes move: the metric, and this connection's
/// total for the access log.
pub struct Direction {
    pub counter: Counter,
    total: AtomicU64,
}

impl Direction {
    pub fn new(counter: Counter) -> Self {
        Direction {
            counter,
            total: AtomicU64::new(0),
        }
    }

    fn add(&self, n: u64) {
        self.counter.inc_by(n);
        self.total.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes moved so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Live byte counts of one connection: client to upstream (`sent`) and back (`received`).
pub struct Progress {
    pub sent: Direction,
    pub received: Direction,
}

impl Progress {
    pub fn new(sent: Counter, received: Counter) -> Self {
        Progress {
            sent: Direction::new(sent),
            received: Direction::new(received),
        }
    }

    /// Counts bytes sent upstream outside the copy loop (the replayed ClientHello).
    pub fn add_sent(&self, n: u64) {
        self.sent.add(n);
    }

    /// (client to upstream, upstream to client) so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.sent.total(), self.received.total())
    }
}

/// Copies `client <-> upstream` until both directions are done, the idle timeout passes, an
/// error occurs, or `force` (the drain deadline) is cancelled. The caller closes both sockets
/// when it returns: the second EOF is passed on by that close, not by a shutdown. Without
/// `splice` every byte is copied (`--splice false`).
pub fn run<'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    idle: Duration,
    splice: bool,
    p: &'a Progress,
    force: &'a ForceClose,
) -> Run<'a> {
    let after = if splice { SPLICE_AFTER } else { u64::MAX };
    run_with(client, upstream, idle, p, force, after)
}

/// [`run`] with the splice threshold as a parameter: `u64::MAX` copies only and 0 splices
/// from the first byte (the tests cover all three; with 0, a direction sent back to copying
/// splices again at once).
fn run_with<'a>(
    client: &'a TcpStream,
    upstream: &'a TcpStream,
    idle: Duration,
    p: &'a Progress,
    force: &'a ForceClose,
    splice_after: u64,
) -> Run<'a> {
    let quiet = Quiet::new(idle);
    Run {
        client,
        upstream,
        p,
        force,
        registered: None,
        up: Phase::new(),
        down: Phase::new(),
        moved: false,
        quiet,
        // u32, so the flag above fits beside it; u32::MAX means never.
        splice_after: u32::try_from(splice_after).unwrap_or(u32::MAX),
        sleep: tokio::time::sleep(quiet.first_check()),
        forced: force.cancelled(),
    }
}

pin_project_lite::pin_project! {
    /// Forwarding as one hand-written future rather than nested `select!`/`try_join!`
    /// futures: the state every idle connection keeps is two small direction states, the
    /// idle timer and the drain waiter (a third of the nested futures' size), and a wakeup
    /// polls no combinators.
    pub struct Run<'a> {
        client: &'a TcpStream,
        upstream: &'a TcpStream,
        p: &'a Progress,
        force: &'a ForceClose,
        // The waker the idle timer and the drain waiter hold. While a wakeup brings the same
        // one, they are not polled again: re-polling the waiter takes a lock shared by every
        // connection and the timer re-registers its waker, on every request.
        registered: Option<Waker>,
        up: Phase,
        down: Phase,
        // Bytes moved since the idle timer last fired: a flag, not a clock read per byte.
        moved: bool,
        quiet: Quiet,
        splice_after: u32,
        // Fires as `idle::Quiet` says.
        #[pin]
        sleep: Sleep,
        #[pin]
        forced: WaitForCancellationFuture<'a>,
    }
}

impl Future for Run<'_> {
    type Output = End;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<End> {
        let mut this = self.project();
        let fresh = !this
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()));
        if fresh {
            *this.registered = Some(cx.waker().clone());
            if this.forced.poll(cx).is_ready() {
                return Poll::Ready(End::DrainDeadline);
            }
        } else if this.force.is_cancelled() {
            return Poll::Ready(End::DrainDeadline);
        }
        let (client, upstream, p, after) =
            (*this.client, *this.upstream, *this.p, *this.splice_after);
        let down_done = matches!(this.down, Phase::Done);
        let up = Leg {
            src: client,
            dst: upstream,
            dir: &p.sent,
        };
        let a = this.up.poll(cx, up, this.moved, after, down_done);
        if let Poll::Ready(Err(e)) = a {
            return Poll::Ready(End::from_error(e.error, e.at_dst));
        }
        let up_done = matches!(this.up, Phase::Done);
        let down = Leg {
            src: upstream,
            dst: client,
            dir: &p.received,
        };
        let b = this.down.poll(cx, down, this.moved, after, up_done);
        if let Poll::Ready(Err(e)) = b {
            return Poll::Ready(End::from_error(e.error, !e.at_dst));
        }
        if a.is_ready() && b.is_ready() {
            return Poll::Ready(End::Done);
        }
        // Fired (or reset and not yet registered with this waker): see whether the
        // connection was idle for the whole timeout, else re-arm.
        if !fresh && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let moved = std::mem::take(this.moved);
            match this.quiet.fired(clock::now_ms(), moved) {
                Next::Idle => return Poll::Ready(End::Idle),
                Next::CheckIn(ms) => {
                    let at = tokio::time::Instant::now() + Duration::from_millis(ms);
                    this.sleep.as_mut().reset(at);
                }
            }
        }
    }
}

/// One direction's ends and byte count, as [`Run`] polls it.
struct Leg<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    dir: &'a Direction,
}

/// Bytes one direction moves in full reads ([`CHUNK`]) before it switches to splice.
pub const SPLICE_AFTER: u64 = 256 * 1024;
/// A splice that moves less than this is a message, not part of a stream...
const SMALL_SPLICE: usize = 4 * 1024;
/// ...and this many in a row send the direction back to copying.
const BACK_TO_COPY_AFTER: u8 = 8;

/// One direction's state. It copies through a stack buffer until `splice_after` bytes have
/// moved in reads that filled the buffer, then splices through a pipe (if no pipe worth it can
/// be had, past the gateway's pipe cap ([`crate::pipes`]), out of descriptors or of the user's
/// pipe budget, it copies for the rest of the connection) until [`BACK_TO_COPY_AFTER`] splices in a row were small. Only bytes the
/// destination could not take yet are kept, on the heap.
enum Phase {
    Copy {
        pending: Vec<u8>,
        /// Bytes moved by reads that filled the whole buffer (saturating: the threshold is
        /// far below `u32::MAX`, which as the threshold means never).
        streamed: u32,
        /// No pipe could be had: trying again for every 256 KiB would cost more syscalls
        /// than the copy saves.
        no_pipe: bool,
    },
    /// `src -> pipe -> dst`. The pipe is drained before the next splice in, so EAGAIN on
    /// the way in always means "src not readable" and on the way out "dst not writable".
    Splice {
        r: OwnedFd,
        w: OwnedFd,
        // u32, as the pipe's size is (fcntl's int): the variant then fits beside `Copy`'s
        // niche and the enum stays 32 bytes.
        cap: u32,
        /// Bytes in the pipe not yet written to `dst`.
        left: u32,
        /// Small splices in from `src` in a row.
        small: u8,
        /// Its place under the pipe cap.
        _place: crate::pipes::Place,
    },
    /// EOF seen and passed on as a write shutdown.
    Done,
}

impl Phase {
    fn new() -> Self {
        Phase::Copy {
            pending: Vec::new(),
            streamed: 0,
            no_pipe: false,
        }
    }

    /// Moves what can be moved now. `Ready(Ok)` once EOF was passed on; `Pending` with
    /// the waker registered on the socket it waits for. `moved` is set whenever bytes move.
    /// `other_done`: the reverse direction has ended, so this one's EOF ends the connection.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        leg: Leg<'_>,
        moved: &mut bool,
        splice_after: u32,
        other_done: bool,
    ) -> Poll<Result<(), DirError>> {
        let Leg { src, dst, dir } = leg;
        loop {
            match self {
                Phase::Done => return Poll::Ready(Ok(())),
                Phase::Copy {
                    pending,
                    streamed,
                    no_pipe,
                } => {
                    if !pending.is_empty() {
                        ready!(dst.poll_write_ready(cx)).map_err(at_dst)?;
                        match send(dst, pending) {
                            Ok(w) => {
                                pending.drain(..w);
                                *moved = true;
                                if pending.is_empty() && pending.capacity() > CHUNK {
                                    *pending = Vec::new();
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                            Err(e) => return Poll::Ready(Err(at_dst(e))),
                        }
                        continue;
                    }
                    if *streamed >= splice_after && splice_after != u32::MAX && !*no_pipe {
                        match crate::pipes::open() {
                            Ok((r, w, cap, place)) => {
                                *self = Phase::Splice {
                                    r,
                                    w,
                                    cap,
                                    left: 0,
                                    small: 0,
                                    _place: place,
                                };
                                continue;
                            }
                            Err(_) => *no_pipe = true,
                        }
                    }
                    // The buffer lives only within this poll, so it is not part of the
                    // connection's state. Left uninitialised: zeroing 16 KiB per read was
                    // most of a small request's cost.
                    let mut raw = [MaybeUninit::<u8>::uninit(); CHUNK];
                    match read_some(src, &mut raw) {
                        Read::Eof => return self.finish(dst, other_done),
                        Read::Data(data) => {
                            let n = data.len();
                            let written = match send(dst, data) {
                                Ok(w) => w,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                                Err(e) => return Poll::Ready(Err(at_dst(e))),
                            };
                            if written < n {
                                pending.extend_from_slice(&data[written..]);
                            }
                            *moved = true;
                            dir.add(n as u64);
                            if n == CHUNK {
                                *streamed = streamed.saturating_add(CHUNK as u32);
                            }
                            // Reads no longer pass through `poll_read_ready`, which spent
                            // the task's budget: spent here instead, so a connection that
                            // always has bytes still yields to the others.
                            ready!(tokio::task::coop::poll_proceed(cx)).made_progress();
                            if n < CHUNK && pending.is_empty() {
                                // The short read cleared readiness: another read now
                                // would only find it clear.
                                ready!(wait_readable(src, cx))?;
                            }
                        }
                        Read::Empty => ready!(wait_readable(src, cx))?,
                        Read::Failed(e) => return Poll::Ready(Err(at_src(e))),
                    }
                }
                Phase::Splice {
                    r,
                    w,
                    cap,
                    left,
                    small,
                    ..
                } => {
                    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
                    if *left > 0 {
                        let n = *left as usize;
                        match dst.try_io(Interest::WRITABLE, || {
                            rustix::pipe::splice(&*r, None, dst, None, n, flags)
                                .map_err(io::Error::from)
                        }) {
                            Ok(0) => {
                                return Poll::Ready(Err(at_dst(io::ErrorKind::WriteZero.into())));
                            }
                            Ok(m) => {
                                *left -= m as u32;
                                *moved = true;
                            }
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                ready!(dst.poll_write_ready(cx)).map_err(at_dst)?;
                            }
                            Err(e) => return Poll::Ready(Err(at_dst(e))),
                        }
                        continue;
                    }
                    if *small >= BACK_TO_COPY_AFTER {
                        // The pipe is empty; dropping it closes both ends.
                        *self = Phase::new();
                        continue;
                    }
                    ready!(src.poll_read_ready(cx)).map_err(at_src)?;
                    let cap = *cap as usize;
                    match src.try_io(Interest::READABLE, || {
                        rustix::pipe::splice(src, None, &*w, None, cap, flags)
                            .map_err(io::Error::from)
                    }) {
                        Ok(0) => return self.finish(dst, other_done),
                        Ok(n) => {
                            *left = n as u32;
                            *small = if n < SMALL_SPLICE {
                                small.saturating_add(1)
                            } else {
                                0
                            };
                            *moved = true;
                            dir.add(n as u64);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Poll::Ready(Err(at_src(e))),
                    }
                }
            }
        }
    }

    /// EOF from `src`: passed on as a write shutdown of `dst`, once. Not when the reverse
    /// direction has ended too: `run` then returns and its caller closes both sockets at
    /// once, and the close sends the FIN (the receive queue is empty, having been read to
    /// EOF), so a shutdown would be one syscall more per connection for nothing.
    fn finish(&mut self, dst: &TcpStream, other_done: bool) -> Poll<Result<(), DirError>> {
        *self = Phase::Done;
        if other_done {
            return Poll::Ready(Ok(()));
        }
        Poll::Ready(shutdown_write(dst).map_err(at_dst))
    }
}

/// One read from `src` into `buf`: the bytes read, none at EOF. A short read (the buffer had
/// room left) also clears `src`'s readiness, as tokio's own `poll_read` does: it emptied the
/// receive queue, so the next read would only return EAGAIN. That saves one `recvfrom` per
/// burst of data (per request, on a request/response connection). Data arriving meanwhile is
/// not missed: it raises a new readiness event, which a clear of the older one leaves in place.
///
/// `recv` and [`send`] are rustix's direct syscalls rather than tokio's `try_read`/`try_write`,
/// which go through std and libc: libc's wrappers switch the thread's cancellation state
/// twice per call (two atomic updates), and tokio's read nests a second readiness check.
fn read_some<'b>(src: &TcpStream, buf: &'b mut [MaybeUninit<u8>]) -> Read<'b> {
    let room = buf.len();
    let mut short = None;
    let short_read = &mut short;
    let r = src.try_io(Interest::READABLE, move || {
        let ((data, _), _) = rustix::net::recv(src, buf, RecvFlags::empty())?;
        if !data.is_empty() && data.len() < room {
            *short_read = Some(data);
            // Makes `try_io` clear the readiness it saw; the bytes are returned below.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(data)
    });
    match (r, short) {
        (Err(_), Some(data)) => Read::Data(data),
        (Ok([]), _) => Read::Eof,
        (Ok(data), _) => Read::Data(data),
        (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => Read::Empty,
        (Err(e), None) => Read::Failed(e),
    }
}

/// Registers `cx`'s waker for `src` turning readable: `Ready` if it is already (read
/// again), `Pending` once registered.
fn wait_readable(src: &TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), DirError>> {
    src.poll_read_ready(cx).map_err(at_src)?.map(Ok)
}

/// What [`read_some`] found.
enum Read<'b> {
    Data(&'b mut [u8]),
    Eof,
    /// Nothing to read: tokio's readiness was clear, or a `recv` found nothing (which
    /// cleared it). The direction then registers its waker again, on every poll. It used to
    /// skip that when its previous poll had registered with the same waker, taking that
    /// registration to be still in place, but tokio's driver sets readiness and takes the
    /// waker in two steps: a read and clear on another worker can fall between them, and
    /// the waker is then taken for readiness that is already gone. The poll it causes finds
    /// nothing, and the direction waited with no waker in place: one connection in about a
    /// million (PGO's instrumented build, every core) left its response unread in the
    /// upstream socket until the client gave up.
    Empty,
    Failed(io::Error),
}

/// One write of `data` to `dst` (`MSG_NOSIGNAL`, as std's own); `WouldBlock` clears its
/// write readiness.
fn send(dst: &TcpStream, data: &[u8]) -> io::Result<usize> {
    dst.try_io(Interest::WRITABLE, || {
        rustix::net::send(dst, data, SendFlags::NOSIGNAL).map_err(io::Error::from)
    })
}

/// Passes an EOF on as a write shutdown; the peer having gone already is not an error.
fn shutdown_write(dst: &TcpStream) -> io::Result<()> {
    match SockRef::from(dst).shutdown(Shutdown::Write) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// `run` as the proxy calls it by default (`--splice true`).
    fn run_default<'a>(
        client: &'a TcpStream,
        upstream: &'a TcpStream,
        idle: Duration,
        p: &'a Progress,
        force: &'a ForceClose,
    ) -> Run<'a> {
        run(client, upstream, idle, true, p, force)
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Waits (bounded) until `s` has at least `n` bytes queued to read.
    async fn queued(s: &TcpStream, n: usize) {
        let mut buf = vec![0u8; n];
        for _ in 0..500 {
            if s.peek(&mut buf).await.unwrap() >= n {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{n} bytes never arrived");
    }

    /// A client and an upstream pair, `n` bytes queued for the forwarder to read from the
    /// client: (client, its forwarder side, the upstream's forwarder side, upstream).
    async fn with_queued(n: usize) -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let (mut client, client_side) = pair().await;
        let (upstream_side, upstream) = pair().await;
        client.write_all(&vec![7u8; n]).await.unwrap();
        queued(&client_side, n).await;
        (client, client_side, upstream_side, upstream)
    }

    /// `run` that never splices, with a long idle timeout.
    fn copy_only<'a>(
        client_side: &'a TcpStream,
        upstream_side: &'a TcpStream,
        progress: &'a Progress,
        force: &'a ForceClose,
    ) -> Run<'a> {
        let idle = std::time::Duration::from_secs(30);
        run_with(client_side, upstream_side, idle, progress, force, u64::MAX)
    }

    /// Spends the current task's budget, as a task does that has polled many ready resources.
    fn spend_budget(cx: &mut Context<'_>) {
        for _ in 0..100_000 {
            match tokio::task::coop::poll_proceed(cx) {
                Poll::Ready(r) => r.made_progress(),
                Poll::Pending => return,
            }
        }
        panic!("the budget never ran out");
    }

    /// Reads that find bytes do not pass through `poll_read_ready`, which spends the task's
    /// budget; the forwarder spends it per read itself. With the budget used up, a poll
    /// moves one read's worth and yields, though more bytes wait: a connection whose source
    /// never runs dry still lets the runtime's other connections run.
    #[tokio::test]
    async fn each_read_spends_the_task_budget() {
        let (_client, client_side, upstream_side, _upstream) = with_queued(4 * CHUNK).await;
        let (progress, force) = (
            Progress::new(Counter::default(), Counter::default()),
            ForceClose::new(),
        );
        let mut fwd = std::pin::pin!(copy_only(&client_side, &upstream_side, &progress, &force));
        std::future::poll_fn(|cx| {
            spend_budget(cx);
            assert!(fwd.as_mut().poll(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        assert_eq!(
            progress.totals(),
            (CHUNK as u64, 0),
            "one read, then a yield"
        );
        // With a new budget, the rest.
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            for _ in 0..1000 {
                if progress.totals().0 == 4 * CHUNK as u64 {
                    return;
                }
                tokio::select! {
                    end = fwd.as_mut() => panic!("ended: {end:?}"),
                    () = tokio::task::yield_now() => {}
                }
            }
            panic!("stuck at {:?}", progress.totals());
        })
        .await
        .unwrap();
    }

    /// A poll whose budget runs out moves one read up and leaves the idle direction down
    /// unregistered (tokio's `poll_read_ready` yields before registering); that direction
    /// must register on a later poll, or bytes the upstream sends next wake nothing until
    /// the idle timer.
    #[tokio::test]
    async fn a_direction_cut_short_by_the_budget_registers_later() {
        let (mut client, client_side, upstream_side, mut upstream) = with_queued(2 * CHUNK).await;
        let (progress, force) = (
            Progress::new(Counter::default(), Counter::default()),
            ForceClose::new(),
        );
        let mut fwd = std::pin::pin!(copy_only(&client_side, &upstream_side, &progress, &force));
        let wakes = std::sync::Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut spend = true;
        for _ in 0..100 {
            if progress.totals().0 == 2 * CHUNK as u64 {
                break;
            }
            std::future::poll_fn(|_| {
                let mut cx = Context::from_waker(&waker);
                if spend {
                    spend_budget(&mut cx);
                    spend = false;
                }
                assert!(fwd.as_mut().poll(&mut cx).is_pending());
                Poll::Ready(())
            })
            .await;
            // A new budget for the next poll.
            tokio::task::yield_now().await;
        }
        assert_eq!(progress.totals(), (2 * CHUNK as u64, 0));
        let before = wakes.0.load(Ordering::SeqCst);
        upstream.write_all(b"down").await.unwrap();
        for _ in 0..500 {
            if wakes.0.load(Ordering::SeqCst) > before {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            wakes.0.load(Ordering::SeqCst) > before,
            "bytes from the upstream woke nothing"
        );
        assert!(
            fwd.as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_pending()
        );
        let mut buf = [0u8; 4];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"down");
    }

    #[derive(Default)]
    struct Wakes(AtomicU64);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A direction that waits keeps the waker it registered and, while the task's waker is
    /// the same, does not register it again; polled with another waker, both directions
    /// register the new one, so bytes either way wake it and not the old one.
    #[tokio::test]
    async fn a_new_waker_is_registered_for_both_directions() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let progress = Progress::new(Counter::default(), Counter::default());
        let force = ForceClose::new();
        let idle = std::time::Duration::from_secs(30);
        let fwd = run_default(&client_side, &upstream_side, idle, &progress, &force);
        let mut fwd = std::pin::pin!(fwd);
        let (old, new) = (
            std::sync::Arc::new(Wakes::default()),
            std::sync::Arc::new(Wakes::default()),
        );
        let new_waker = Waker::from(new.clone());
        for w in [Waker::from(old.clone()), new_waker.clone()] {
            assert!(fwd.as_mut().poll(&mut Context::from_waker(&w)).is_pending());
        }
        let woken = |n: u64| {
            let new = new.clone();
            async move {
                for _ in 0..500 {
                    if new.0.load(Ordering::SeqCst) >= n {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("the new waker was not woken (wakes: {n} expected)");
            }
        };
        let mut buf = [0u8; 4];
        for (wakes, msg) in [(1, b"up!!"), (2, b"down")] {
            let (from, to) = if wakes == 1 {
                (&mut client, &mut upstream)
            } else {
                (&mut upstream, &mut client)
            };
            from.write_all(msg).await.unwrap();
            woken(wakes).await;
            let mut cx = Context::from_waker(&new_waker);
            assert!(fwd.as_mut().poll(&mut cx).is_pending());
            to.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, msg);
        }
        assert_eq!(old.0.load(Ordering::SeqCst), 0, "the old waker was woken");
    }

    /// Far past the splice threshold, with a slow reader so both the copy and the splice
    /// phase meet backpressure; every byte arrives in order and the EOF is passed on. The
    /// same for copy only and splice only.
    #[tokio::test]
    async fn bulk_switches_to_splice_and_stays_intact() {
        for splice_after in [SPLICE_AFTER, u64::MAX, 0] {
            bulk_stays_intact(splice_after).await;
        }
    }

    async fn bulk_stays_intact(splice_after: u64) {
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let data: Vec<u8> = (0..6 * 1024 * 1024u32)
            .map(|i| (i ^ (i >> 11)) as u8)
            .collect();
        let expect = data.clone();
        let progress = Progress::new(Counter::default(), Counter::default());
        let force = ForceClose::new();
        let fwd = async {
            let idle = std::time::Duration::from_secs(30);
            let end = run_with(
                &client_side,
                &upstream_side,
                idle,
                &progress,
                &force,
                splice_after,
            )
            .await;
            // As the proxy does: both sockets are closed as soon as forwarding ends.
            drop((client_side, upstream_side));
            end
        };
        let send = async {
            client.write_all(&data).await.unwrap();
            client.shutdown().await.unwrap();
        };
        let recv = async {
            let mut got = Vec::with_capacity(expect.len());
            let mut buf = vec![0u8; 100_000];
            for i in 0..10_000 {
                let n = upstream.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
                if i % 8 == 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            // The reverse direction ends too, so forwarding is done.
            upstream.shutdown().await.unwrap();
            got
        };
        let (end, _, got) = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            tokio::join!(fwd, send, recv)
        })
        .await
        .expect("forwarding finished");
        assert!(
            matches!(end, End::Done),
            "{end:?} (splice_after {splice_after})"
        );
        assert_eq!(got.len(), expect.len(), "splice_after {splice_after}");
        assert!(got == expect, "bytes differ (splice_after {splice_after})");
        assert_eq!(progress.totals(), (expect.len() as u64, 0));
        assert_eq!(progress.sent.counter.get(), expect.len() as u64);
        let mut rest = Vec::new();
        let read = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_to_end(&mut rest),
        );
        read.await.expect("the reverse EOF is passed on").unwrap();
        assert!(rest.is_empty(), "nothing after the EOF");
    }

    /// Request/response through `run` with an echoing upstream: `rounds` exchanges, one
    /// every `every`. Each wakes the forwarder with the waker its timer and drain waiter
    /// already hold, the path where those are not polled again.
    async fn talk(client: &mut TcpStream, rounds: usize, every: std::time::Duration) {
        let mut buf = [0u8; 5];
        for i in 0..rounds {
            client.write_all(b"ping!").await.unwrap();
            client.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping!", "round {i}");
            tokio::time::sleep(every).await;
        }
    }

    async fn echo(mut s: TcpStream) {
        let mut buf = [0u8; 64];
        for _ in 0..10_000 {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn drain_deadline_cuts_a_connection_after_it_has_talked() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, upstream) = pair().await;
        tokio::spawn(echo(upstream));
        let progress = Progress::new(Counter::default(), Counter::default());
        let force = ForceClose::new();
        let idle = std::time::Duration::from_secs(60);
        let fwd = run_default(&client_side, &upstream_side, idle, &progress, &force);
        let mut fwd = std::pin::pin!(fwd);
        let talked = async {
            talk(&mut client, 20, std::time::Duration::from_millis(5)).await;
            force.cancel();
        };
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            tokio::select! {
                end = &mut fwd => panic!("ended before the deadline: {end:?}"),
                () = talked => {}
            }
            fwd.await
        })
        .await
        .expect("the drain deadline ends forwarding");
        assert!(matches!(end, End::DrainDeadline), "{end:?}");
        assert_eq!(progress.totals(), (100, 100));
    }

    #[tokio::test]
    async fn idle_timeout_counts_from_the_last_byte_after_talking() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, upstream) = pair().await;
        tokio::spawn(echo(upstream));
        let progress = Progress::new(Counter::default(), Counter::default());
        let force = ForceClose::new();
        let idle = std::time::Duration::from_millis(600);
        let fwd = run_default(&client_side, &upstream_side, idle, &progress, &force);
        let mut fwd = std::pin::pin!(fwd);
        // Talking for about two and a half idle timeouts: the timer checks every 75 ms meanwhile.
        let talked = talk(&mut client, 15, std::time::Duration::from_millis(100));
        tokio::time::timeout(std::time::Duration::from_secs(20), async {
            tokio::select! {
                end = &mut fwd => panic!("ended while talking: {end:?}"),
                () = talked => {}
            }
        })
        .await
        .expect("the exchanges finish");
        let quiet = std::time::Instant::now();
        let end = tokio::time::timeout(std::time::Duration::from_secs(10), fwd)
            .await
            .expect("the idle timeout ends forwarding");
        let waited = quiet.elapsed();
        assert!(matches!(end, End::Idle), "{end:?}");
        // The last byte moved ~100 ms before `quiet`, so the timeout (never early, at most an
        // eighth late) is due 500 to 575 ms after it; the clock is in milliseconds, and the
        // upper bound leaves room for a loaded machine.
        assert!(
            waited >= std::time::Duration::from_millis(450),
            "{waited:?}"
        );
        assert!(
            waited <= std::time::Duration::from_millis(900),
            "{waited:?}"
        );
        assert_eq!(progress.totals(), (75, 75));
    }

    /// Polls `fwd` while `work` runs; forwarding must not end meanwhile.
    async fn beside<T>(fwd: Pin<&mut Run<'_>>, work: impl Future<Output = T>) -> T {
        let bounded = tokio::time::timeout(std::time::Duration::from_secs(20), async {
            tokio::select! {
                end = fwd => panic!("forwarding ended: {end:?}"),
                out = work => out,
            }
        });
        bounded.await.expect("bounded")
    }

    /// What a forwarder borrows besides the sockets: its counters and the drain flag.
    struct Borrowed {
        progress: Progress,
        force: ForceClose,
    }

    impl Borrowed {
        fn new() -> Self {
            Borrowed {
                progress: Progress::new(Counter::default(), Counter::default()),
                force: ForceClose::new(),
            }
        }

        /// `run_with` with a one-minute idle timeout.
        fn run<'a>(&'a self, client: &'a TcpStream, up: &'a TcpStream, after: u64) -> Run<'a> {
            let idle = std::time::Duration::from_secs(60);
            run_with(client, up, idle, &self.progress, &self.force, after)
        }
    }

    fn splicing(fwd: &Pin<&mut Run<'_>>) -> (bool, bool) {
        let run = fwd.as_ref().get_ref();
        let s = |p: &Phase| matches!(p, Phase::Splice { .. });
        (s(&run.up), s(&run.down))
    }

    /// A long-lived chatty connection moves far more than the threshold in small messages
    /// and still copies (it used to splice once the total passed it, paying two splices and
    /// an `EAGAIN` splice per message).
    #[tokio::test]
    async fn chatty_connection_past_the_threshold_keeps_copying() {
        let (mut client, client_side) = pair().await;
        let (upstream_side, upstream) = pair().await;
        tokio::spawn(echo(upstream));
        let b = Borrowed::new();
        let mut fwd = std::pin::pin!(b.run(&client_side, &upstream_side, 1024));
        // Past the threshold by a few messages, fewer than would send a spliced direction
        // back to copying: splicing by the total would show here.
        let rounds = 1024 / 5 + 1 + usize::from(BACK_TO_COPY_AFTER) / 2;
        let zero = std::time::Duration::ZERO;
        beside(fwd.as_mut(), talk(&mut client, rounds, zero)).await;
        let total = 5 * rounds as u64;
        assert_eq!(b.progress.totals(), (total, total));
        assert_eq!(splicing(&fwd), (false, false));
    }

    /// Bulk, then small messages, then bulk again, one way: the direction splices, goes back
    /// to copying after `BACK_TO_COPY_AFTER` small splices, splices again, and every byte
    /// arrives in order.
    #[tokio::test]
    async fn spliced_direction_goes_back_to_copying_for_small_messages() {
        use std::sync::Arc;
        use std::sync::atomic::AtomicUsize;
        let (mut client, client_side) = pair().await;
        let (upstream_side, mut upstream) = pair().await;
        let got = Arc::new(AtomicUsize::new(0));
        let counted = got.clone();
        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            let mut buf = vec![0u8; 256 * 1024];
            for _ in 0..100_000 {
                match upstream.read(&mut buf).await.unwrap() {
                    0 => break,
                    n => all.extend_from_slice(&buf[..n]),
                }
                counted.store(all.len(), Ordering::Relaxed);
            }
            all
        });
        let b = Borrowed::new();
        let mut fwd = std::pin::pin!(b.run(&client_side, &upstream_side, 64 * 1024));
        let bulk: Vec<u8> = (0..1024 * 1024u32).map(|i| (i ^ (i >> 9)) as u8).collect();
        let mut expect = Vec::new();
        let arrived = |n: usize| {
            let got = got.clone();
            async move {
                for _ in 0..20_000 {
                    if got.load(Ordering::Relaxed) >= n {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                panic!("only {} of {n} bytes arrived", got.load(Ordering::Relaxed));
            }
        };
        for round in 0..2 {
            expect.extend_from_slice(&bulk);
            beside(fwd.as_mut(), async {
                client.write_all(&bulk).await.unwrap();
                arrived(expect.len()).await;
            })
            .await;
            assert!(splicing(&fwd).0, "round {round}: bulk splices");
            for _ in 0..BACK_TO_COPY_AFTER {
                expect.extend_from_slice(b"ping!");
                beside(fwd.as_mut(), async {
                    client.write_all(b"ping!").await.unwrap();
                    arrived(expect.len()).await;
                })
                .await;
            }
            assert!(!splicing(&fwd).0, "round {round}: messages copy");
        }
        client.shutdown().await.unwrap();
        let both = async { tokio::join!(fwd.as_mut(), reader) };
        let (end, all) = tokio::time::timeout(std::time::Duration::from_secs(20), both)
            .await
            .expect("forwarding finished");
        assert!(matches!(end, End::Done), "{end:?}");
        assert!(all.unwrap() == expect, "bytes differ");
    }
}
