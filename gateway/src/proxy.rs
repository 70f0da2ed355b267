//! The passthrough listener: accept, read the preamble, decide (SNI policy and route), then
//! forward. Connecting and endpoint health live in `upstream`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info};

use crate::accept;
use crate::breaker::Held;
use crate::client_hello::{self, ClientHello, Detect};
use crate::config::Config;
use crate::drain::Drain;
use crate::endpoint::EndpointState;
use crate::forward::{self, Progress};
use crate::loop_guard::InFlight;
use crate::metrics::{ConnMetrics, ProxyMetrics};
use crate::proxy_protocol;
use crate::reject::Reject;
use crate::routes::Routes;
use crate::sni_name;
use crate::sockets;
use crate::undecided::{Ticket, Undecided};
use crate::upstream;

/// A duration in whole seconds, rounded up (a rule's `500ms` waits a second), at most
/// `u32::MAX` (136 years).
fn whole_secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs() + u64::from(d.subsec_nanos() > 0)).unwrap_or(u32::MAX)
}

fn secs_of(secs: u32) -> Duration {
    Duration::from_secs(u64::from(secs))
}

/// A decided, connected connection. Its fields are read in place, never moved out: the
/// forwarding future keeps this one copy for the connection's life.
struct Decided<'a> {
    upstream: TcpStream,
    ep: Arc<EndpointState>,
    /// The place under the route's `maxConnections`, where its DestinationRule sets one.
    _held: Option<Held>,
    metrics: Arc<ConnMetrics>,
    /// The original client (from a PROXY header, or the peer).
    client_addr: SocketAddr,
    /// What was read before deciding (the hello and anything after it), to replay.
    replay: Vec<u8>,
    /// The route's DestinationRule idle timeout, else `--idle-timeout`, in whole seconds (a
    /// word less per connection than a `Duration`).
    idle_secs: u32,
    /// Its `maxConnectionDuration` in whole seconds; 0: none.
    max_secs: u32,
    _permit: Permit<'a>,
}

/// What routing decided: the connected upstream, its endpoint, the SNI name's metrics and
/// the idle timeout and lifetime to forward under.
struct Routed {
    upstream: TcpStream,
    ep: Arc<EndpointState>,
    held: Option<Held>,
    metrics: Arc<ConnMetrics>,
    idle_secs: u32,
    max_secs: u32,
}

/// One `--max-connections` place and the mark of the connection's hello among those in
/// flight (`loop_guard`), both given back on drop. Two words: every idle connection keeps it.
struct Permit<'a> {
    proxy: &'a Proxy,
    hello: u64,
}

impl<'a> Permit<'a> {
    fn try_new(proxy: &'a Proxy, random: &[u8; 32]) -> Result<Self, Reject> {
        let Ok(place) = proxy.permits.try_acquire() else {
            debug!("connection limit reached; closing");
            return Err(Reject::OverLimit);
        };
        let Some(hello) = proxy.in_flight.enter(random) else {
            // Within the limit: the place is given back as `place` drops.
            return Err(Reject::Loop);
        };
        place.forget();
        Ok(Permit { proxy, hello })
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.proxy.in_flight.leave(self.hello);
        self.proxy.permits.add_permits(1);
    }
}

pub struct Proxy {
    pub cfg: Arc<Config>,
    pub routes: Arc<Routes>,
    pub metrics: ProxyMetrics,
    pub drain: Arc<Drain>,
    /// `--max-connections`: taken once a connection is decided.
    permits: Semaphore,
    /// The hellos of the connections taking a place: one seen twice went round a loop.
    in_flight: InFlight,
    undecided: Arc<Undecided>,
    next_id: AtomicU64,
}

impl Proxy {
    pub fn new(
        cfg: Arc<Config>,
        routes: Arc<Routes>,
        metrics: ProxyMetrics,
        drain: Arc<Drain>,
    ) -> Self {
        Proxy {
            // Clamped: Semaphore panics above MAX_PERMITS (tests and library users set this directly).
            permits: Semaphore::new(cfg.max_connections.clamp(1, Semaphore::MAX_PERMITS)),
            in_flight: InFlight::default(),
            undecided: Arc::new(Undecided::new(
                cfg.max_undecided,
                cfg.max_undecided_bytes,
                metrics.undecided.clone(),
                metrics.undecided_bytes.clone(),
            )),
            cfg,
            routes,
            metrics,
            drain,
            next_id: AtomicU64::new(1),
        }
    }

    /// The undecided-connection budget, shared with the HBONE listener's TLS handshakes.
    pub fn undecided(&self) -> Arc<Undecided> {
        self.undecided.clone()
    }

    /// Accepts until the drain stops accepting. Each connection runs as a tracked task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let errors = self.metrics.accept_errors.clone();
        accept::accept_until(&listener, &self.drain.stop_accepting, errors, |stream, peer| {
            self.metrics.accepted.inc();
            // Admitted here, in accept order, so "oldest" means what it says.
            let ticket = self.undecided.admit_from(Some(peer));
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!("conn", id, %peer, client = tracing::field::Empty, sni = tracing::field::Empty, upstream = tracing::field::Empty);
            // The task's future is `handle` itself, not a block around it that would keep
            // its own copy of the arguments. A span filtered out by the log level is not
            // carried: every idle connection would pay for it.
            let conn = Self::handle(self.clone(), stream, ticket);
            if span.is_disabled() {
                self.drain.tasks.spawn(conn);
            } else {
                self.drain.tasks.spawn(conn.instrument(span));
            }
        })
        .await;
        debug!("listener stopped accepting");
    }

    /// A connection's task. Functions returning `async move` blocks rather than `async fn`s:
    /// an `async fn` keeps a second copy of each argument in its future, and every idle
    /// connection would pay for those bytes.
    #[allow(clippy::manual_async_fn)]
    fn handle(
        self: Arc<Self>,
        mut client: TcpStream,
        ticket: Ticket,
    ) -> impl Future<Output = ()> + Send + 'static {
        async move {
            let start = Instant::now();
            // Boxed: routing state (hello, name, candidates, connect timers) is freed once
            // decided instead of sizing the future every forwarded connection keeps.
            let conn = {
                let decided = tokio::select! {
                    d = Box::pin(self.decide(&mut client, ticket)) => d,
                    _ = self.drain.force_close.cancelled() => Err(Reject::DrainDeadline),
                };
                match decided {
                    Ok(conn) => conn,
                    Err(r) => {
                        // Counted before the close, so that the count is there once the
                        // client sees it. An async block's captures live as long as its
                        // future, not until it returns: close the client now.
                        self.reject(r, start);
                        drop(client);
                        return;
                    }
                }
            };
            self.forward(&client, conn, start).await;
        }
    }

    /// Replays what was read, forwards until the end and logs it. The drain deadline is
    /// watched inside `forward::run`, so a forced close is logged and counted like any other.
    #[allow(clippy::manual_async_fn)] // see `handle`
    fn forward<'a>(
        &'a self,
        client: &'a TcpStream,
        mut conn: Decided<'a>,
        start: Instant,
    ) -> impl Future<Output = ()> + Send + 'a {
        async move {
            // A `move` block captures only the fields it uses: the permit must be one of
            // them, or it would be given back as soon as this future is made.
            let _permit = &conn._permit;
            let _held = &conn._held;
            record_on_conn_span("upstream", tracing::field::display(conn.ep.addr));
            let _active_ep = conn.ep.track();
            conn.metrics.opened.inc();
            conn.metrics.active.inc();
            let progress = Progress::new(conn.metrics.sent.clone(), conn.metrics.received.clone());
            // Replay exactly what was read: the hello and anything the client sent after it.
            // In a block, so the buffer's slot is not kept while forwarding.
            let replayed = {
                let replay = std::mem::take(&mut conn.replay);
                let written = conn.upstream.write_all(&replay).await;
                written.map(|()| replay.len() as u64)
            };
            let end = match replayed {
                Ok(n) => {
                    progress.add_sent(n);
                    let idle = secs_of(conn.idle_secs);
                    let splice = self.cfg.splice;
                    let force = &self.drain.force_close;
                    let run = forward::run(client, &conn.upstream, idle, splice, &progress, force);
                    match conn.max_secs {
                        0 => run.await,
                        // Boxed: only connections under a limit pay for its timer.
                        // From the accept, as Envoy times it from the new connection.
                        secs => Box::pin(tokio::time::timeout(
                            secs_of(secs).saturating_sub(start.elapsed()),
                            run,
                        ))
                        .await
                        .unwrap_or(forward::End::MaxDuration),
                    }
                }
                Err(e) => forward::End::from_error(e, true),
            };
            let metrics = &conn.metrics;
            metrics.active.dec();
            let outcome = end.as_str();
            metrics.closed(outcome);
            let (sent, received) = progress.totals();
            if let forward::End::Error(e) = &end {
                debug!(error = %e, "connection ended with an error");
            }
            info!(
                target: "access",
                client = %conn.client_addr,
                sni = %metrics.sni,
                upstream = %conn.ep.addr,
                sent,
                received,
                duration_ms = start.elapsed().as_millis() as u64,
                outcome,
                "connection closed"
            );
        }
    }

    /// Reads the preamble under the detect timeout and the undecided budget, then takes a
    /// `--max-connections` permit, routes and connects. Routing state (hello, name,
    /// candidates) lives in this future, so none of it is kept for the life of the forwarded
    /// connection.
    async fn decide(&self, client: &mut TcpStream, ticket: Ticket) -> Result<Decided<'_>, Reject> {
        let mut buf = Vec::with_capacity(2048);
        let detected = tokio::select! {
            d = tokio::time::timeout(
                self.cfg.detect_timeout,
                self.read_preamble(client, &mut buf, &ticket),
            ) => d,
            _ = ticket.shed() => return Err(Reject::Shed),
        };
        let (hello, proxied) = match detected {
            Err(_) => return Err(Reject::Timeout),
            Ok(r) => r?,
        };
        // A balancer on a dual-stack socket may name an IPv4 client as `::ffff:a.b.c.d`.
        let client_addr = proxied.map(sockets::canonical).or_else(|| ticket.peer());
        drop(ticket);
        let permit = Permit::try_new(self, &hello.random)?;
        // The peer from `accept` waited in the ticket, not in this future: every byte held
        // across the connection's awaits is paid by every idle connection.
        let peer = || client.peer_addr().ok().map(sockets::canonical);
        let Some(client_addr) = client_addr.or_else(peer) else {
            return Err(Reject::ClientClosed);
        };
        record_on_conn_span("client", tracing::field::display(client_addr));
        let Routed {
            upstream,
            ep,
            held,
            metrics,
            idle_secs,
            max_secs,
        } = self.route_and_connect(hello, client_addr.ip()).await?;
        Ok(Decided {
            upstream,
            ep,
            _held: held,
            metrics,
            client_addr,
            replay: buf,
            idle_secs,
            max_secs,
            _permit: permit,
        })
    }

    /// Decodes and checks the SNI (policy: allowed host, Istio ALPN), finds the route and
    /// connects to one of its endpoints.
    async fn route_and_connect(
        &self,
        hello: ClientHello,
        client: IpAddr,
    ) -> Result<Routed, Reject> {
        let Some(raw) = hello.sni else {
            return Err(Reject::NoSni);
        };
        record_on_conn_span("sni", raw.as_str());
        let Ok(target) = sni_name::parse_owned(raw) else {
            return Err(Reject::BadName);
        };
        if !self.cfg.allow_hosts.iter().any(|p| p.matches(&target.host)) {
            return Err(Reject::HostNotAllowed);
        }
        if self.cfg.require_istio_alpn && !sni_name::offers_istio_alpn(&hello.alpn) {
            return Err(Reject::AlpnNotAllowed);
        }
        let Some(table) = self.routes.load() else {
            return Err(Reject::NoRoute);
        };
        let Some(route) = table.lookup(&target.host, target.port) else {
            return Err(Reject::NoRoute);
        };
        let connected = upstream::connect(
            route,
            &target.subset,
            Some(client),
            &self.cfg,
            &self.metrics,
        );
        let upstream::Connected {
            stream: upstream,
            ep,
            held,
        } = connected.await?;
        // After the connect, so that only forwarded names get series. The subset is known:
        // the connect found its candidates.
        let Some(metrics) = route.metrics(&target.subset, &self.metrics) else {
            return Err(Reject::NoRoute);
        };
        let idle = route.conn.idle_timeout().unwrap_or(self.cfg.idle_timeout);
        Ok(Routed {
            upstream,
            ep,
            held,
            metrics,
            idle_secs: whole_secs(idle),
            max_secs: route.conn.max_duration().map_or(0, whole_secs),
        })
    }

    /// Reads an optional PROXY header (v1 or v2), then the ClientHello. Returns the hello and
    /// the original client address; `buf` is left holding only bytes to replay upstream.
    async fn read_preamble(
        &self,
        client: &mut TcpStream,
        buf: &mut Vec<u8>,
        ticket: &Ticket,
    ) -> Result<(ClientHello, Option<SocketAddr>), Reject> {
        let mut client_addr = None;
        if self.cfg.proxy_protocol {
            loop {
                match proxy_protocol::parse(buf) {
                    proxy_protocol::Parse::Done(proxy_protocol::Header::Proxied {
                        source,
                        len,
                        ..
                    }) => {
                        client_addr = source;
                        buf.drain(..len);
                        break;
                    }
                    proxy_protocol::Parse::Invalid(why) => {
                        debug!(why, "bad PROXY header");
                        return Err(Reject::BadProxyHeader);
                    }
                    proxy_protocol::Parse::NeedMore => {
                        read_more(client, buf, proxy_protocol::MAX_HEADER, ticket).await?
                    }
                }
            }
        }
        let max = self.cfg.max_hello_bytes;
        loop {
            match client_hello::detect(buf, max) {
                Detect::Found(hello) => return Ok((hello, client_addr)),
                Detect::NotTls(client_hello::NotTls::TooLarge) => return Err(Reject::OverLimit),
                // A balancer sending PROXY to a gateway without --proxy-protocol (or a
                // second header): named for what it is, the misconfiguration, not "not TLS".
                Detect::NotTls(_) if proxy_protocol::starts_with_header(buf) => {
                    debug!("unexpected PROXY header");
                    return Err(Reject::BadProxyHeader);
                }
                Detect::NotTls(why) => {
                    debug!(?why, "not a TLS ClientHello");
                    return Err(Reject::NotTls);
                }
                Detect::Malformed(why) => {
                    debug!(why, "malformed ClientHello");
                    return Err(Reject::MalformedHello);
                }
                Detect::NeedMore if buf.len() >= max => return Err(Reject::OverLimit),
                Detect::NeedMore => read_more(client, buf, max, ticket).await?,
            }
        }
    }

    fn reject(&self, reason: Reject, start: Instant) {
        self.metrics.reject(reason);
        // Expected on an open port: debug, not warn.
        debug!(
            reason = reason.as_str(),
            duration_ms = start.elapsed().as_millis() as u64,
            "connection rejected"
        );
    }
}

/// Fills a field of the connection's span (`serve` makes it at INFO). When nothing takes INFO
/// anywhere, that span was never made, and finding the current span (the dispatcher's and the
/// registry's lookups, some 80 instructions and their code's cache lines) is skipped.
fn record_on_conn_span(field: &str, value: impl tracing::Value) {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    if tracing::Level::INFO <= STATIC_MAX_LEVEL && tracing::Level::INFO <= LevelFilter::current() {
        tracing::Span::current().record(field, value);
    }
}

/// Reads at least one more byte into `buf`, never past `max` bytes in total, and charges
/// the buffered bytes to the undecided budget.
async fn read_more(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    ticket: &Ticket,
) -> Result<(), Reject> {
    let room = max.saturating_sub(buf.len());
    if room == 0 {
        return Err(Reject::OverLimit);
    }
    let mut limited = (&mut *client).take(room as u64);
    match limited.read_buf(buf).await {
        Ok(0) | Err(_) => Err(Reject::ClientClosed),
        Ok(_) if !ticket.buffered(buf.len()) => Err(Reject::Shed),
        Ok(_) => Ok(()),
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle forwarded connection keeps its task's future allocated, so its size is
    /// most of the gateway's per-connection memory (the benchmark's idle scenario). Bounds
    /// with little headroom (debug build: 296 and 624 bytes; 864 and 1408 with nested
    /// `select!`/`try_join!` direction futures and `async fn`s, and the bounds were 1200 and
    /// 1800 before issue 11): a regression such as nesting combinators again, an `async fn`
    /// (its arguments are kept twice), moving `Decided` apart into locals, or keeping the
    /// routing state unboxed fails here.
    #[tokio::test]
    async fn connection_futures_stay_small() {
        let cfg = Arc::new(Config::new(crate::config::Discovery::File("unused".into())));
        let mut reg = prometheus_client::registry::Registry::default();
        let p = Proxy::new(
            cfg,
            Arc::new(Routes::new()),
            ProxyMetrics::new(&mut reg),
            Arc::new(Drain::new()),
        );
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        let progress = Progress::new(Default::default(), Default::default());
        let force = crate::drain::ForceClose::new();
        let run = forward::run(
            &b,
            &b,
            std::time::Duration::from_secs(1),
            true,
            &progress,
            &force,
        );
        let run_size = std::mem::size_of_val(&run);
        drop(run);
        let p = Arc::new(p);
        let handle = Proxy::handle(p.clone(), a, p.undecided.admit());
        let handle_size = std::mem::size_of_val(&handle);
        eprintln!("future sizes: forward::run {run_size} B, handle {handle_size} B");
        assert!(run_size <= 320, "forward::run future is {run_size} bytes");
        assert!(handle_size <= 650, "handle future is {handle_size} bytes");
    }
}
