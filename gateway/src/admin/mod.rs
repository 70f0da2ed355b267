//! Admin listener: `/healthz/ready` (Istio's status-port path), `/healthz/live`, `/metrics`,
//! `/debug/routes` (filtered by `?host=` and `?limit=`, serialized on the blocking pool; the
//! view itself is in `routes_view`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::drain::Drain;
use crate::hbone::identity::Identity;
use crate::routes::{RouteTable, Routes};

mod routes_view;
use routes_view::debug_filter;

pub struct Admin {
    pub registry: Registry,
    pub routes: Arc<Routes>,
    pub drain: Arc<Drain>,
    /// Extra readiness condition from the discovery source (e.g. first Kubernetes sync).
    pub synced: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The HBONE identity, when 15008 is on: not ready until it has a certificate (istiod's
    /// first answer).
    pub hbone_identity: Option<Arc<Identity>>,
}

impl Admin {
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

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let text = |code: StatusCode, body: String| {
            Response::builder()
                .status(code)
                .header("content-type", "text/plain; charset=utf-8")
                .body(Full::new(Bytes::from(body)))
                .expect("static response parts")
        };
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into());
        }
        match req.uri().path() {
            "/healthz/ready" => match self.ready() {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {why}\n"),
                ),
            },
            "/healthz/live" => text(StatusCode::OK, "live\n".into()),
            "/metrics" => {
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
                    .body(Full::new(Bytes::from(out)))
                    .expect("static response parts")
            }
            "/debug/routes" => {
                let filter = match debug_filter(req.uri().query()) {
                    Ok(f) => f,
                    Err(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
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
                        .body(Full::new(b))
                        .expect("static response parts"),
                    Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
                }
            }
            _ => text(
                StatusCode::NOT_FOUND,
                "not found; try /healthz/ready, /metrics, /debug/routes\n".into(),
            ),
        }
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener, stop: CancellationToken) {
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
                    async move { Ok::<_, Infallible>(this.respond(req).await) }
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
