//! The outer connection's I/O as h2 sees it, telling the connection's [`Queue`] which
//! stream's DATA bytes have been written: h2 says when a stream may queue more, not when
//! what it queued left. Writes pass through unchanged; the frame headers in them (9 bytes
//! each, RFC 9113 §4.1) are read as they go by, so the cost is per frame, not per byte.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::queued::Queue;

const HEADER: usize = 9;
const DATA: u8 = 0x0;

pub struct Metered<T> {
    io: T,
    frames: Frames,
    queue: Arc<Queue>,
}

impl<T> Metered<T> {
    pub fn new(io: T, queue: Arc<Queue>) -> Self {
        Metered {
            io,
            frames: Frames::default(),
            queue,
        }
    }
}

/// Where the written bytes are in the frame sequence: h2 writes whole frames, in order,
/// starting with its SETTINGS (a server sends no preface).
#[derive(Default)]
struct Frames {
    header: [u8; HEADER],
    /// Header bytes seen of the next frame.
    have: u8,
    /// Payload bytes of the current frame still to come.
    left: u32,
    /// The current frame's stream if it is DATA, else 0.
    data_of: u32,
}

impl Frames {
    /// Walks `bytes`, just written; `out(stream, n)` for each run of DATA payload.
    fn wrote(&mut self, mut bytes: &[u8], out: &mut impl FnMut(u32, usize)) {
        while !bytes.is_empty() {
            if self.left > 0 {
                let n = bytes.len().min(self.left as usize);
                if self.data_of != 0 {
                    out(self.data_of, n);
                }
                self.left -= n as u32;
                bytes = &bytes[n..];
                continue;
            }
            let have = self.have as usize;
            let n = bytes.len().min(HEADER - have);
            self.header[have..have + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            self.have += n as u8;
            if self.have as usize == HEADER {
                let h = &self.header;
                self.have = 0;
                self.left = u32::from_be_bytes([0, h[0], h[1], h[2]]);
                let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                self.data_of = if h[3] == DATA { stream } else { 0 };
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        let queue = &this.queue;
        this.frames
            .wrote(&buf[..n.min(buf.len())], &mut |s, k| queue.written(s, k));
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write_vectored(cx, bufs))?;
        let queue = &this.queue;
        let mut left = n;
        for b in bufs {
            if left == 0 {
                break;
            }
            let k = left.min(b.len());
            this.frames.wrote(&b[..k], &mut |s, k| queue.written(s, k));
            left -= k;
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend([kind, 0]);
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    /// DATA payload is attributed to its stream however the writes cut the frames; other
    /// frames (SETTINGS, HEADERS, WINDOW_UPDATE, empty END_STREAM DATA) count nothing.
    #[test]
    fn data_payload_is_counted_per_stream_at_any_cut() {
        let mut all = frame(0x4, 0, &[0; 6]);
        all.extend(frame(0x1, 1, b"headers"));
        all.extend(frame(DATA, 1, &[1; 300]));
        all.extend(frame(0x8, 0, &[0, 0, 1, 0]));
        all.extend(frame(DATA, 3, &[3; 17]));
        all.extend(frame(DATA, 1, &[]));
        all.extend(frame(DATA, 0x8000_0003, &[3; 5]));
        for cut in [1, 2, 8, 9, 10, 64, 1000] {
            let mut f = Frames::default();
            let mut got = std::collections::BTreeMap::new();
            for part in all.chunks(cut) {
                f.wrote(part, &mut |s, n| *got.entry(s).or_insert(0) += n);
            }
            // The reserved bit of the stream id is not part of it.
            assert_eq!(
                got.into_iter().collect::<Vec<_>>(),
                vec![(1, 300), (3, 22)],
                "cut {cut}"
            );
            assert_eq!((f.have, f.left), (0, 0));
        }
    }

    #[tokio::test]
    async fn vectored_writes_count_only_what_was_taken() {
        use crate::hbone::queued::{BUDGET, CHUNK_COST};
        use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
        use tokio::io::AsyncWriteExt;
        let queue = Arc::new(Queue::new(BUDGET, Gauge::default(), Counter::default()));
        let all = queue.free();
        let t = queue.take(100).await;
        queue.hand(5, t, 100, 100);
        let (a, _b) = tokio::io::duplex(40);
        let mut m = Metered::new(a, queue.clone());
        let f = frame(DATA, 5, &[9; 100]);
        // The duplex takes at most 40 of the 109 bytes, the header's 9 first.
        let n = m
            .write_vectored(&[IoSlice::new(&f[..20]), IoSlice::new(&f[20..])])
            .await
            .unwrap();
        assert!((20..=40).contains(&n), "{n}");
        // The chunk is not out whole: its bytes come back, its cost not yet.
        assert_eq!(queue.free(), all - 100 - CHUNK_COST + n - HEADER);
    }
}
