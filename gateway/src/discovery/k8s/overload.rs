//! Request-level retries of what an overloaded or restarting API server refuses before doing
//! anything (429 from API Priority and Fairness or shutdown, 503, 504): a few, short, and
//! honouring `Retry-After` up to a cap, so a brief overload costs nothing but a persistent
//! one reaches the watch within seconds. kube's default retry (15 tries, back-off up to
//! 1000 s, any `Retry-After`) would hide a failing API server from the watches, and so from
//! `gateway_discovery_route_table_stale_seconds`, for minutes.

use std::time::Duration;

use kube::client::Body;
use tower::BoxError;
use tower::retry::Policy;

const MAX_RETRIES: u32 = 3;
/// The most one request waits before its error reaches the watch.
const WAIT_BUDGET: Duration = Duration::from_secs(5);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

#[derive(Clone, Default)]
pub struct Overload {
    retries: u32,
    waited: Duration,
}

impl Overload {
    fn next_delay(&mut self, code: u16, retry_after: Option<&str>) -> Option<Duration> {
        // The gateway only reads, so a 504 is safe to repeat.
        if !matches!(code, 429 | 503 | 504) || self.retries >= MAX_RETRIES {
            return None;
        }
        let backoff = Duration::from_millis(250 << self.retries.min(3));
        let delay = retry_after
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(backoff, |s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
        if self.waited + delay > WAIT_BUDGET {
            return None;
        }
        self.retries += 1;
        self.waited += delay;
        Some(delay)
    }
}

impl<Res> Policy<http::Request<Body>, http::Response<Res>, BoxError> for Overload {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut http::Request<Body>,
        result: &mut Result<http::Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        let resp = result.as_ref().ok()?;
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        let delay = self.next_delay(resp.status().as_u16(), retry_after)?;
        tracing::debug!(status = %resp.status(), path = req.uri().path(), ?delay, retry = self.retries, "API server overloaded; retrying the request");
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &http::Request<Body>) -> Option<http::Request<Body>> {
        let mut out = http::Request::new(req.body().try_clone()?);
        *out.method_mut() = req.method().clone();
        *out.uri_mut() = req.uri().clone();
        *out.version_mut() = req.version();
        *out.headers_mut() = req.headers().clone();
        *out.extensions_mut() = req.extensions().clone();
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_short_retries_honouring_a_capped_retry_after() {
        let mut o = Overload::default();
        assert_eq!(o.next_delay(500, None), None);
        assert_eq!(o.next_delay(429, Some("1")), Some(Duration::from_secs(1)));
        assert_eq!(o.next_delay(429, Some("600")), Some(MAX_RETRY_AFTER));
        assert_eq!(o.next_delay(503, None), Some(Duration::from_secs(1)));
        assert_eq!(o.next_delay(503, None), None, "at most {MAX_RETRIES}");
    }
}
