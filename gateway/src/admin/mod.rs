//! Admin listener: `/healthz/ready` (Istio's status-port path), `/healthz/live`, `/metrics`,
//! `/debug/routes` (filtered by `?host=` and `?limit=`, serialized on the blocking pool; the
//! view itself is in `routes_view`). The status listener (`--status-listen`) serves only the
//! two health paths: it is the port a load balancer may expose, as Istio's 15021, while the
//! metrics and the route table (every endpoint's address) stay inside the cluster.

use std::convert::Infallible;
use std::sync::Arc;

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
mod routes_view;
use body::AdminBody;
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
}

impl Admin {
    pub fn new(
        registry: Registry,
        routes: Arc<Routes>,
        drain: Arc<Drain>,
        synced: Arc<dyn Fn() -> bool + Send + Sync>,
        hbone_identity: Option<Arc<Identity>>,
    ) -> Admin {
        Admin {
            registry,
            routes,
            drain,
            synced,
            hbone_identity,
            large: Arc::new(Semaphore::new(LARGE_RESPONSES)),
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
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
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
                "not found; try /healthz/ready, /metrics, /debug/routes\n".into(),
            ),
        }
    }

    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        scope: Scope,
        stop: CancellationToken,
    ) {
        loop {
            let (stream, _) = tokio::select! {
                _ = stop.cancelled() => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::debug!(error = %e, "admin accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        continue;
                    }
                },
            };
            let this = self.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let this = this.clone();
                    async move { Ok::<_, Infallible>(this.respond(req, scope).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(std::time::Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::select! {
                    r = conn => if let Err(e) = r { tracing::debug!(error = %e, "admin connection error") },
                    _ = stop.cancelled() => {}
                }
            });
        }
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
