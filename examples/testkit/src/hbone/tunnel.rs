//! One HBONE tunnel: an HTTP/2 CONNECT stream read and written as a byte stream, the way
//! ztunnel's `H2Stream` does it (zt:`src/proxy/h2.rs`): received DATA gives its flow-control
//! capacity back at once, a write waits for send capacity, `shutdown` sends END_STREAM (a
//! half-close), the peer's END_STREAM reads as EOF, and [`Tunnel::cancel`] resets the stream
//! with CANCEL, which is how ztunnel ends a tunnel early.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received but not yet read by the caller: at most one DATA frame.
    pending: Bytes,
    write_closed: bool,
    headers: http::HeaderMap,
}

impl Tunnel {
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream, headers: http::HeaderMap) -> Self {
        Tunnel {
            send,
            recv,
            pending: Bytes::new(),
            write_closed: false,
            headers,
        }
    }

    /// Resets the stream with `RST_STREAM(CANCEL)`, ending both directions at once.
    pub fn cancel(mut self) {
        self.send.send_reset(Reason::CANCEL);
    }

    /// Resets the stream with any reason (tests of how a peer takes other errors).
    pub fn reset(mut self, reason: Reason) {
        self.send.send_reset(reason);
    }

    /// The HTTP/2 stream id (1, 3, 5, … on one client connection).
    pub fn stream_id(&self) -> u32 {
        self.send.stream_id().as_u32()
    }

    /// The headers of the response (client side) or request (server side) that opened it.
    pub fn headers(&self) -> &http::HeaderMap {
        &self.headers
    }
}

/// The HTTP/2 reset reason behind an I/O error from a [`Tunnel`], if the stream was reset.
pub fn reset_reason(e: &io::Error) -> Option<Reason> {
    e.get_ref()?
        .downcast_ref::<h2::Error>()
        .and_then(|h| h.reason())
}

fn to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = if e.is_reset() {
        io::ErrorKind::ConnectionReset
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => {
                    // Give the window back as soon as the frame is ours, as ztunnel does.
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
            }
        }
        let n = buf.remaining().min(this.pending.len());
        buf.put_slice(&this.pending.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len());
        loop {
            match ready!(this.send.poll_capacity(cx)) {
                // No capacity assigned this time: poll again (registers the waker).
                Some(Ok(0)) => continue,
                Some(Ok(n)) => {
                    let n = n.min(buf.len());
                    this.send
                        .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(to_io(e))),
                // The stream can no longer send: say why.
                None => {
                    return Poll::Ready(Err(match ready!(this.send.poll_reset(cx)) {
                        Ok(reason) => {
                            io::Error::new(io::ErrorKind::ConnectionReset, h2::Error::from(reason))
                        }
                        Err(e) => to_io(e),
                    }));
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 buffers within the window it granted; its connection task writes it out.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.write_closed {
            this.write_closed = true;
            this.send.send_data(Bytes::new(), true).map_err(to_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
