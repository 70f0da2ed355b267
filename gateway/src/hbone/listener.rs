//! Accepting on 15008: TLS handshake (counted in the undecided budget, bounded by
//! `--detect-timeout`), a place under `--hbone-max-connections`, then one HTTP/2 server
//! connection whose CONNECT streams each run as a tracked task. The connection sends GOAWAY
//! when the drain stops accepting or after `--hbone-idle-timeout` without a tunnel, and keeps
//! serving its open tunnels until they end; an idle one shed for a newcomer closes at once.
//! One whose client resets most of its streams before using them gets GOAWAY
//! ENHANCE_YOUR_CALM, sooner if its identity was cut before ([`super::rapid_reset`]).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, warn};

use super::Hbone;
use super::connections::Place;
use super::identity::{self, HandshakeFailure};
use super::metered::Metered;
use super::metrics::Refusal;
use super::queued::Queue;
use super::rapid_reset::{PREMATURE_RESETS_MIN, ResetWatch};
use crate::undecided::Ticket;
use crate::{accept, clock};

impl Hbone {
    /// Accepts until the drain stops accepting. Each connection runs as a tracked task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let errors = self.proxy_metrics.accept_errors.clone();
        accept::accept_until(
            &listener,
            &self.drain.stop_accepting,
            errors,
            |stream, peer| {
                if self.places.full_of_busy() {
                    // Every place carries tunnels: close before spending a TLS handshake,
                    // counted first, so that the count is there once the client sees the close.
                    self.metrics.refuse(Refusal::ConnectionLimit);
                    drop(stream);
                    debug!(%peer, reason = Refusal::ConnectionLimit.as_str(), "HBONE connection refused: every --hbone-max-connections place carries tunnels");
                    return;
                }
                let ticket = self.undecided.admit();
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let span =
                    tracing::info_span!("hbone", id, %peer, client_id = tracing::field::Empty);
                let this = self.clone();
                self.drain
                    .tasks
                    .spawn(this.connection(stream, peer, ticket).instrument(span));
            },
        )
        .await;
        debug!("HBONE listener stopped accepting");
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, ticket: Ticket) {
        // Boxed, so freed once done: inline, the handshakes' futures (about 4 KiB beside the
        // connection they produce) would stay in the task of every idle connection, whose
        // future is most of what the gateway itself keeps per connection.
        let Some((mut conn, place, client_id, queue)) = Box::pin(self.establish(tcp, ticket)).await
        else {
            return;
        };
        let force = &self.drain.force_close;
        let m = &self.metrics;
        m.connections_opened.inc();
        m.connections_active.inc();
        place.ready();
        let watch = Arc::new(ResetWatch::new(
            self.cooling.clone(),
            client_id.clone(),
            clock::now_ms(),
        ));
        // When GOAWAY was sent (`None`: not yet).
        let mut goaway: Option<Instant> = None;
        let mut calmed = false;
        let mut shed = false;
        // Set once GOAWAY is sent: a peer that never reads it (nor closes) must not hold
        // the connection forever.
        let mut close_by: Option<Instant> = None;
        let mut last_active = Instant::now();
        let idle = self.cfg.hbone_idle_timeout;
        let keepalive = self.cfg.hbone_keepalive;
        let mut pings = conn.ping_pong();
        // When the PING now waiting for its PONG was sent, and when the last one was.
        let (mut ping_out, mut last_ping): (Option<Instant>, Instant) = (None, Instant::now());
        let mut tick =
            tokio::time::interval((idle / 4).min(keepalive / 2).max(Duration::from_millis(10)));
        loop {
            tokio::select! {
                _ = force.cancelled() => break,
                _ = self.drain.stop_accepting.cancelled(), if goaway.is_none() => {
                    debug!("draining: GOAWAY");
                    conn.graceful_shutdown();
                    goaway = Some(Instant::now());
                }
                pong = poll_fn(|cx| match pings.as_mut() {
                    Some(p) => p.poll_pong(cx),
                    None => Poll::Pending,
                }), if ping_out.is_some() => {
                    ping_out = None;
                    if pong.is_err() {
                        // The connection failed; accept says how.
                        pings = None;
                    }
                }
                _ = watch.calm.notified(), if !calmed => {
                    let (cooling, began_cooling) = watch.record_cut(clock::now_ms());
                    warn!(
                        client_id = &*client_id,
                        streams = watch.streams(),
                        premature = watch.premature(),
                        threshold = watch.threshold(),
                        began_cooling,
                        cooling_s = cooling.as_secs(),
                        "HBONE client reset most of its streams before using them: GOAWAY ENHANCE_YOUR_CALM; its identity's new connections get the lower premature-reset threshold while it cools"
                    );
                    m.refuse(Refusal::EnhanceYourCalm);
                    if watch.threshold() < PREMATURE_RESETS_MIN {
                        m.cooling_cuts.inc();
                    }
                    conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                    goaway.get_or_insert_with(Instant::now);
                    calmed = true;
                    close_by.get_or_insert(Instant::now() + CLOSE_GRACE);
                }
                _ = place.shed() => {
                    debug!("idle, and its place is wanted (--hbone-max-connections): GOAWAY");
                    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                    // The wait for the close is after the loop: in it, its timer and future
                    // would take room in every connection's future.
                    shed = true;
                    break;
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if ping_out.is_some_and(|t| now >= t + 2 * keepalive) {
                        m.refuse(Refusal::KeepaliveTimeout);
                        debug!("no PONG within twice --hbone-keepalive: closing");
                        break;
                    }
                    if ping_out.is_none() && now >= last_ping + keepalive
                        && let Some(p) = pings.as_mut()
                        && p.send_ping(h2::Ping::opaque()).is_ok()
                    {
                        (ping_out, last_ping) = (Some(now), now);
                    }
                    if place.open_tunnels() > 0 {
                        last_active = Instant::now();
                    } else if close_by.is_some_and(|t| Instant::now() >= t) {
                        debug!("GOAWAY not taken in time: closing");
                        break;
                    } else if goaway.is_none() && last_active.elapsed() >= idle {
                        debug!("idle: GOAWAY");
                        conn.graceful_shutdown();
                        goaway = Some(now);
                        close_by = Some(Instant::now() + CLOSE_GRACE.min(idle));
                    }
                }
                next = conn.accept() => match next {
                    None => break,
                    Some(Ok((req, mut respond))) => {
                        // h2 sends its last GOAWAY once the client answers the PING sent with
                        // the first; a client that never does could keep opening tunnels on a
                        // draining gateway. Past a round trip's grace they are refused, safe
                        // for the client to retry elsewhere.
                        if goaway.is_some_and(|t| t.elapsed() > GOAWAY_GRACE) {
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        }
                        let Some(guard) = place.tunnel() else {
                            // Shed a moment ago; the shed branch closes it next.
                            respond.send_reset(h2::Reason::REFUSED_STREAM);
                            continue;
                        };
                        watch.accepted();
                        last_active = Instant::now();
                        let this = self.clone();
                        let client_id = client_id.clone();
                        let watch = watch.clone();
                        let queue = queue.clone();
                        self.drain.tasks.spawn(
                            async move {
                                this.stream(req, respond, &client_id, peer, &watch, &queue).await;
                                drop(guard);
                            }
                            .in_current_span(),
                        );
                    }
                    Some(Err(e)) => {
                        // The peer going away (GOAWAY NO_ERROR, or its socket closing)
                        // is an end, not a protocol error.
                        let clean_goaway =
                            e.is_go_away() && e.reason() == Some(h2::Reason::NO_ERROR);
                        if e.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM) {
                            // h2's own limits: resets before accept, CONTINUATION and
                            // small DATA floods, stream errors.
                            if !calmed {
                                m.refuse(Refusal::EnhanceYourCalm);
                            }
                        } else if !(clean_goaway || e.is_io()) {
                            self.metrics.refuse(Refusal::H2Error);
                        }
                        debug!(error = %e, "HBONE connection ended with an error");
                        break;
                    }
                },
            }
        }
        if shed {
            // h2 closes once the GOAWAY is written; a peer that does not read gets
            // SHED_GRACE. Streams the peer sent meanwhile are past the GOAWAY's last stream
            // id, so it knows they were not processed.
            let closed = async {
                while let Some(Ok((_, mut respond))) = conn.accept().await {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                }
            };
            let _ = tokio::time::timeout(SHED_GRACE, closed).await;
        }
        // The place is free before the gauge says so.
        drop(place);
        let streams = watch.streams();
        m.streams_per_connection.observe(streams as f64);
        m.connections_active.dec();
        info!(target: "access", client_id = &*client_id, client = %peer, streams, "HBONE connection closed");
    }

    /// The TLS handshake (under the undecided budget), a place, then HTTP/2's: the connection
    /// ready to serve, or `None` once refused (and counted) or force-closed.
    async fn establish(&self, tcp: TcpStream, ticket: Ticket) -> Option<Established> {
        let force = &self.drain.force_close;
        let handshake = tokio::time::timeout(self.cfg.detect_timeout, self.acceptor.accept(tcp));
        let tls = tokio::select! {
            r = handshake => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = match identity::classify_handshake_error(&e) {
                        HandshakeFailure::BadClientCert => Refusal::BadClientCert,
                        HandshakeFailure::TrustDomain => Refusal::TrustDomainNotAllowed,
                        HandshakeFailure::Other => Refusal::HandshakeFailed,
                    };
                    return self.refuse(reason, &e.to_string());
                }
                Err(_) => return self.refuse(Refusal::Timeout, "handshake timed out"),
            },
            _ = ticket.shed() => return self.refuse(Refusal::OverLimit, "shed from the undecided budget"),
            _ = force.cancelled() => return None,
        };
        drop(ticket);
        // Taken once the client has authenticated, so only a mesh member can shed an idle one.
        let place = tokio::select! {
            p = self.places.take(SHED_WAIT) => match p {
                Some(p) => p,
                None => return self.refuse(Refusal::ConnectionLimit, "every --hbone-max-connections place carries tunnels"),
            },
            _ = force.cancelled() => return None,
        };
        let client_id: Arc<str> = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| self.identity.client_id(c))
            .unwrap_or_default()
            .into();
        tracing::Span::current().record("client_id", &*client_id);
        let builder = h2_builder(self.cfg.hbone_max_streams, self.cfg.hbone_connection_window);
        let m = &self.metrics;
        let queue = Arc::new(Queue::new(
            self.cfg.hbone_connection_queue,
            m.queued_bytes.clone(),
            m.queue_waits.clone(),
        ));
        let io = Metered::new(tls, queue.clone());
        let conn = tokio::select! {
            r = tokio::time::timeout(self.cfg.detect_timeout, builder.handshake(io)) => match r {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return self.refuse(Refusal::H2Error, &e.to_string()),
                Err(_) => return self.refuse(Refusal::Timeout, "no HTTP/2 preface"),
            },
            _ = force.cancelled() => return None,
        };
        Some((conn, place, client_id, queue))
    }

    fn refuse<T>(&self, reason: Refusal, why: &str) -> Option<T> {
        self.metrics.refuse(reason);
        // Expected on an open port: debug, not warn.
        debug!(reason = reason.as_str(), why, "HBONE connection refused");
        None
    }
}

/// A served connection: HTTP/2 over mutual TLS, its place, the client's SPIFFE id, and its
/// queue toward the client.
type Established = (
    h2::server::Connection<Metered<tokio_rustls::server::TlsStream<TcpStream>>, bytes::Bytes>,
    Place,
    Arc<str>,
    Arc<Queue>,
);

/// Bytes h2 may queue per stream for a client that does not read (its windows can be wide
/// open): four upstream reads, so a bulk stream never waits on a refill. The streams of one
/// connection share `--hbone-connection-queue-kib` besides ([`super::queued`]), so no single stream takes more
/// than a sixteenth of it. ztunnel's own h2 server uses 400 KiB per stream.
pub const SEND_BUFFER: usize = 4 * super::splice::READ_CHUNK;

/// After GOAWAY, how long the client's streams sent before it saw it are still taken.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// After GOAWAY, how long a connection with no tunnel left may take to close.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// How long an idle connection shed for a newcomer may take to write its GOAWAY and close.
const SHED_GRACE: Duration = Duration::from_secs(1);

/// How long the newcomer waits for that place: the shed one's grace, and some.
const SHED_WAIT: Duration = Duration::from_secs(2);

/// ztunnel's settings (windows, frame size), the stream cap and `--hbone-connection-window-kib`
/// (a stream's window no wider than the connection's); h2 answers PINGs itself, and the
/// connection sends its own (`--hbone-keepalive`).
/// h2's abuse limits are stated, not left implicit: at most 20 streams reset while not yet
/// accepted, and 1024 streams the gateway resets for protocol errors per connection, each
/// ended with GOAWAY ENHANCE_YOUR_CALM.
fn h2_builder(max_streams: u32, connection_window: u32) -> h2::server::Builder {
    let mut b = h2::server::Builder::new();
    b.initial_window_size(super::STREAM_WINDOW.min(connection_window))
        .initial_connection_window_size(connection_window)
        .max_frame_size(super::MAX_FRAME)
        .max_header_list_size(super::MAX_HEADER_LIST)
        .max_concurrent_streams(max_streams)
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(Some(1024))
        .max_send_buffer_size(SEND_BUFFER);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Discovery};
    use crate::drain::Drain;
    use crate::metrics::ProxyMetrics;
    use crate::routes::Routes;
    use crate::undecided::Undecided;
    use prometheus_client::metrics::gauge::Gauge;

    /// Each outer connection's task keeps its future allocated for as long as the connection
    /// stays open, idle and pooled too, so its size is paid per connection. Most of it is
    /// h2's connection (2,464 bytes with the TLS stream inside). Debug build: 3,248 bytes
    /// (3,168 before the keepalive's PING handle and its two times), 40 of them for the queue
    /// toward the client (its handle, and where
    /// the written bytes are in h2's frames); 7,008 when the TLS and HTTP/2 handshakes'
    /// futures were kept inline beside the connection they produce, 3,384 with the shed
    /// branch's timed wait inside the loop. A dependency update that grows h2's or rustls's
    /// types may need the bound raised: check that the growth is theirs.
    #[tokio::test]
    async fn the_connection_future_stays_small() {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let identity = crate::hbone::identity::Identity::from_istiod(
            std::path::Path::new("root-cert.pem"),
            root.cert_pem().as_bytes(),
            vec!["cluster.local".into()],
        )
        .unwrap();
        let mut reg = prometheus_client::registry::Registry::default();
        let hbone = Arc::new(
            Hbone::new(
                Arc::new(Config::new(Discovery::File("unused".into()))),
                Arc::new(Routes::new()),
                ProxyMetrics::new(&mut reg),
                crate::hbone::metrics::HboneMetrics::new(&mut reg),
                Arc::new(Drain::new()),
                identity,
                Arc::new(Undecided::new(
                    1,
                    usize::MAX,
                    Gauge::default(),
                    Gauge::default(),
                )),
            )
            .unwrap(),
        );
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peer = l.local_addr().unwrap();
        let tcp = TcpStream::connect(peer).await.unwrap();
        let ticket = hbone.undecided.admit();
        let fut = hbone.clone().connection(tcp, peer, ticket);
        let size = std::mem::size_of_val(&fut);
        eprintln!("HBONE connection future: {size} B");
        assert!(size <= 3_300, "the HBONE connection future is {size} bytes");
    }
}
