//! Admin listener: `/healthz/ready` (Istio's status-port path), `/healthz/live`, `/metrics`,
//! `/debug/routes` (filtered by `?host=` and `?limit=`, serialized on the blocking pool; the
//! view itself is in `routes_view`). The status listener (`--status-listen`) serves only the
//! two health paths: it is the port a load balancer may expose, as Istio's 15021, while the
//! metrics and the route table (every endpoint's address) stay inside the cluster. What a
//! client may hold on either (connections, head size, time) is bounded in `limits`. Each keeps
//! one descriptor in `reserve`, so that probes are answered when the data path has taken all
//! the others.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::drain::Drain;
use crate::hbone::identity::Identity;
use crate::routes::{RouteTable, Routes};

mod body;
pub mod limits;
pub mod reserve;
mod routes_view;
use crate::undecided::Ticket;
use body::AdminBody;
pub use limits::Limits;
use limits::{AdminMetrics, StallGuard};
use reserve::{Reserve, ReserveMetrics};
use routes_view::debug_filter;

/// Large responses (/metrics, /debug/routes) being built or sent at once: each grows with the
/// route table (14 MB for 20,000 routes), so without a bound concurrent requests multiply it.
const LARGE_RESPONSES: usize = 4;

/// What a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything: health, metrics, the route table.
    Admin,
    /// Only `/healthz/ready` and `/healthz/live`.
    Status,
}

pub struct Admin {
    pub registry: Registry,
    pub routes: Arc<Routes>,
    pub drain: Arc<Drain>,
    /// Extra readiness condition from the discovery source (e.g. first Kubernetes sync).
    pub synced: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The HBONE identity, when 15008 is on: not ready until it has a certificate (istiod's
    /// first answer).
    pub hbone_identity: Option<Arc<Identity>>,
    /// Permits for large responses in flight ([`LARGE_RESPONSES`]).
    large: Arc<Semaphore>,
    /// Per-connection bounds; [`Limits::default`] unless a test shortens them.
    pub limits: Limits,
    metrics: AdminMetrics,
    reserve_metrics: ReserveMetrics,
}

impl Admin {
    pub fn new(
        mut registry: Registry,
        routes: Arc<Routes>,
        drain: Arc<Drain>,
        synced: Arc<dyn Fn() -> bool + Send + Sync>,
        hbone_identity: Option<Arc<Identity>>,
    ) -> Admin {
        let metrics = AdminMetrics::register(&mut registry);
        let reserve_metrics = ReserveMetrics::register(&mut registry);
        Admin {
            registry,
            routes,
            drain,
            synced,
            hbone_identity,
            large: Arc::new(Semaphore::new(LARGE_RESPONSES)),
            limits: Limits::default(),
            metrics,
            reserve_metrics,
        }
    }

    fn ready(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            return Err("draining".into());
        }
        if !self.routes.is_loaded() || !(self.synced)() {
            return Err("no route table loaded yet".into());
        }
        if let Some(id) = &self.hbone_identity {
            id.readiness()?;
        }
        Ok(())
    }

    /// A permit for a large response, if one is free.
    fn large_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.large.clone().try_acquire_owned().ok()
    }

    async fn respond(&self, req: Request<Incoming>, scope: Scope) -> Response<AdminBody> {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            // RFC 9110 15.5.6: a 405 names the methods that are allowed.
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
            r.headers_mut().insert(
                "allow",
                hyper::header::HeaderValue::from_static("GET, HEAD"),
            );
            return r;
        }
        match (scope, req.uri().path()) {
            (_, "/healthz/ready") => match self.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            (_, "/healthz/live") => text(StatusCode::OK, "live\n".into()),
            (Scope::Status, _) => text(
                StatusCode::NOT_FOUND,
                "not found; the status port serves /healthz/ready and /healthz/live \
                 (/metrics and /debug/routes are on the admin listener, --admin)\n"
                    .into(),
            ),
            (Scope::Admin, "/metrics") => {
                let Some(permit) = self.large_permit() else {
                    return busy();
                };
                let mut out = String::with_capacity(8192);
                if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry)
                {
                    return text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("encoding metrics: {e}\n"),
                    );
                }
                Response::builder()
                    .header(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )
                    .body(AdminBody::holding(Bytes::from(out), permit))
                    .expect("static response parts")
            }
            (Scope::Admin, "/debug/routes") => {
                let filter = match debug_filter(req.uri().query()) {
                    Ok(f) => f,
                    Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
                };
                let Some(permit) = self.large_permit() else {
                    return busy();
                };
                // A large table takes long to serialize: keep it off the data path's threads.
                let routes = self.routes.clone();
                let body = tokio::task::spawn_blocking(move || {
                    let view = match routes.load() {
                        Some(t) => routes_view::view(&t, &filter),
                        None => routes_view::view(&RouteTable::default(), &filter),
                    };
                    let mut body = serde_json::to_vec_pretty(&view).map_err(|e| e.to_string())?;
                    body.push(b'\n');
                    Ok(Bytes::from(body))
                })
                .await
                .unwrap_or_else(|e| Err(e.to_string()));
                match body {
                    Ok(b) => Response::builder()
                        .header("content-type", "application/json")
                        .body(AdminBody::holding(b, permit))
                        .expect("static response parts"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            (Scope::Admin, _) => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz/ready, /healthz/live, /metrics, /debug/routes\n".into(),
            ),
        }
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        scope: Scope,
        stop: CancellationToken,
    ) {
        let name = match scope {
            Scope::Admin => "admin",
            Scope::Status => "status",
        };
        let conns = limits::conns(self.limits.max_connections, name, &self.metrics);
        let listener = Arc::new(listener);
        let mut reserve = Reserve::new(listener.clone(), name, &self.reserve_metrics);
        loop {
            let accepted = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            // Taken back here if a descriptor freed since it went missing.
            reserve.refill();
            let e = match accepted {
                Ok((stream, _)) => {
                    // Admitted here, in accept order, so "oldest" means what it says.
                    let slot = conns.admit();
                    let conn =
                        self.clone()
                            .connection(stream, scope, slot, name, false, stop.clone());
                    tokio::spawn(conn);
                    continue;
                }
                Err(e) => e,
            };
            if reserve::is_emfile(&e)
                && let Some(stream) = reserve.accept().await
            {
                let slot = conns.admit();
                let conn = self
                    .clone()
                    .connection(stream, scope, slot, name, true, stop.clone());
                tokio::spawn(conn);
                continue;
            }
            tracing::debug!(error = %e, "admin accept failed");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Serves one connection within [`Limits`] and counts why the gateway cut it, if it did.
    /// One `reserved` (on the listener's reserved descriptor) serves one request, and its head
    /// must come within [`reserve::HEAD_TIMEOUT`]: others wait for that descriptor.
    async fn connection<S>(
        self: Arc<Self>,
        stream: S,
        scope: Scope,
        slot: Ticket,
        listener: &'static str,
        reserved: bool,
        stop: CancellationToken,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let limits = self.limits;
        let header_read = match reserved {
            true => limits.header_read.min(reserve::HEAD_TIMEOUT),
            false => limits.header_read,
        };
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.respond(req, scope).await) }
        });
        let io = StallGuard::new(stream, limits.write_stall);
        let head_started = io.head_started();
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_read)
            .keep_alive(!reserved)
            .max_buf_size(limits::MAX_HEAD)
            .serve_connection(TokioIo::new(io), svc);
        tokio::pin!(conn);
        let deadline = tokio::time::sleep(limits.lifetime);
        tokio::pin!(deadline);
        let mut closing = false;
        let cut = loop {
            tokio::select! {
                r = conn.as_mut() => match r {
                    Err(e) => break cut_reason(&e, head_started.load(Ordering::Relaxed)),
                    // Closed at its lifetime, between responses.
                    Ok(()) => break closing.then_some("lifetime"),
                },
                _ = &mut deadline => {
                    if closing {
                        break Some("lifetime");
                    }
                    // The response in flight finishes; an idle connection closes at once.
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                    deadline.as_mut().reset(tokio::time::Instant::now() + limits.grace);
                }
                _ = slot.shed() => break Some("shed"),
                _ = stop.cancelled() => break None,
            }
        };
        if let Some(reason) = cut {
            tracing::debug!(listener, reason, "admin connection cut");
            self.metrics.cut(listener, reason);
        }
    }
}

/// Why hyper ended a connection, when the gateway's bounds did it (not the client's close).
/// hyper's header timeout also ends a connection that sent nothing (more): `idle`, apart
/// from a head that started and did not finish in time, the slowloris.
fn cut_reason(e: &hyper::Error, head_started: bool) -> Option<&'static str> {
    if e.is_timeout() {
        Some(if head_started {
            "header_timeout"
        } else {
            "idle"
        })
    } else if e.is_parse() || e.is_parse_too_large() || e.is_parse_version_h2() {
        Some("bad_request")
    } else if limits::is_write_stall(e) {
        Some("write_stall")
    } else {
        tracing::debug!(error = %e, "admin connection error");
        None
    }
}

fn text(code: StatusCode, body: String) -> Response<AdminBody> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(AdminBody::new(Bytes::from(body)))
        .expect("static response parts")
}

/// The answer when every large-response permit is taken: retry shortly.
fn busy() -> Response<AdminBody> {
    let mut r = text(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{LARGE_RESPONSES} large responses are being sent already; retry\n"),
    );
    r.headers_mut()
        .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Filler {
        name: String,
    }

    /// An admin listener whose /metrics is some MB (more than loopback socket buffers hold
    /// for a reader that stops), with a short lifetime and a write stall too long to matter.
    async fn short_lived() -> (Arc<Admin>, std::net::SocketAddr, CancellationToken) {
        let mut registry = Registry::default();
        let filler = Family::<Filler, Counter>::default();
        for i in 0..200_000 {
            filler
                .get_or_create(&Filler {
                    name: format!("filler-{i:08}"),
                })
                .inc();
        }
        registry.register("filler", "Bulk", filler);
        let mut admin = Admin::new(
            registry,
            Arc::new(Routes::new()),
            Arc::new(Drain::new()),
            Arc::new(|| true),
            None,
        );
        admin.limits = Limits {
            lifetime: Duration::from_millis(300),
            grace: Duration::from_millis(300),
            write_stall: Duration::from_secs(60),
            ..Limits::default()
        };
        let admin = Arc::new(admin);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(admin.clone().serve(listener, Scope::Admin, stop.clone()));
        (admin, addr, stop)
    }

    /// A reader that takes a /metrics response and then reads nothing more (slowly enough
    /// never to trip the write stall) gives its large-response permit back at the lifetime
    /// plus the grace, not never.
    #[tokio::test]
    async fn a_stalled_large_response_is_cut_at_the_lifetime() {
        let (admin, addr, stop) = short_lived().await;
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200");
        assert_eq!(admin.large.available_permits(), LARGE_RESPONSES - 1);
        let started = Instant::now();
        while admin.large.available_permits() < LARGE_RESPONSES {
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "the stalled response still holds its permit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut = admin.metrics.cut.get_or_create(&limits::CutLabels {
            listener: "admin",
            reason: "lifetime",
        });
        assert_eq!(cut.get(), 1);
        stop.cancel();
    }

    /// A keep-alive client that never pauses is asked to close at the lifetime: the response
    /// in flight is finished, then the connection closes.
    #[tokio::test]
    async fn a_busy_keep_alive_connection_is_closed_between_responses() {
        let (_admin, addr, stop) = short_lived().await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut answered = 0;
        let mut buf = Vec::new();
        let closed = loop {
            assert!(started.elapsed() < Duration::from_secs(3), "never closed");
            if s.write_all(b"GET /healthz/live HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .is_err()
            {
                break started.elapsed();
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap_or(0);
            if n == 0 {
                break started.elapsed();
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            answered = text.matches("\r\n\r\nlive\n").count();
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            closed >= Duration::from_millis(250),
            "closed after {closed:?}"
        );
        assert!(answered >= 3, "{answered} answers");
        // Every response that started was whole.
        let text = String::from_utf8_lossy(&buf);
        assert_eq!(text.matches("HTTP/1.1 200").count(), answered, "{text}");
        stop.cancel();
    }
}
