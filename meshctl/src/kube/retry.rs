//! Bounded retries of the answers an overloaded or restarting API server gives before it
//! does anything: 429 (API Priority and Fairness, or shutting down), 503, and 504 for
//! requests that are safe to repeat. Each waits the server's `Retry-After` (capped) or a
//! short back-off, and says so on stderr. kube's default retry is replaced: it retries up
//! to 15 times with back-off up to 1000 s and honours any `Retry-After`, so one overloaded
//! server could hold a command for many minutes without a word.

use std::time::Duration;

use kube::client::Body;
use tower::BoxError;
use tower::retry::Policy;

/// Retries per request.
pub const MAX_RETRIES: u32 = 4;
/// The most one request waits in total before giving up.
pub const WAIT_BUDGET: Duration = Duration::from_secs(20);
/// The longest `Retry-After` honoured as given.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Retry {
    /// The server, as messages name it (`context "west"`).
    who: String,
    retries: u32,
    waited: Duration,
}

impl Retry {
    pub fn new(who: &str) -> Self {
        Retry {
            who: who.to_string(),
            retries: 0,
            waited: Duration::ZERO,
        }
    }

    /// The wait before the next try, or `None` to give up.
    fn next_delay(
        &mut self,
        code: u16,
        method: &http::Method,
        retry_after: Option<&str>,
    ) -> Option<Duration> {
        // A 504 may come after the change was made: only repeat what is safe to repeat.
        let retryable = match code {
            429 | 503 => true,
            504 => method != http::Method::POST,
            _ => false,
        };
        if !retryable || self.retries >= MAX_RETRIES {
            return None;
        }
        let backoff = Duration::from_millis(250 << self.retries.min(4));
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

impl<Res> Policy<http::Request<Body>, http::Response<Res>, BoxError> for Retry {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        req: &mut http::Request<Body>,
        result: &mut Result<http::Response<Res>, BoxError>,
    ) -> Option<Self::Future> {
        let resp = result.as_ref().ok()?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok());
        let delay = self.next_delay(status.as_u16(), req.method(), retry_after)?;
        eprintln!(
            "meshctl: {}: the API server answered {status} to {} {}; retrying in {:.1}s (retry {} of {MAX_RETRIES})",
            self.who,
            req.method(),
            req.uri().path(),
            delay.as_secs_f64(),
            self.retries,
        );
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
    fn retry_after_is_honoured_capped_and_bounded() {
        let get = http::Method::GET;
        let mut r = Retry::new("west");
        assert_eq!(
            r.next_delay(429, &get, Some("1")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            r.next_delay(503, &get, None),
            Some(Duration::from_millis(500))
        );
        // An absurd Retry-After is capped, and the budget ends the retries.
        assert_eq!(r.next_delay(429, &get, Some("3600")), Some(MAX_RETRY_AFTER));
        assert_eq!(r.next_delay(429, &get, Some("3600")), None);
        let mut r = Retry::new("west");
        for _ in 0..MAX_RETRIES {
            assert!(r.next_delay(503, &get, None).is_some());
        }
        assert_eq!(r.next_delay(503, &get, None), None, "at most MAX_RETRIES");
    }

    #[test]
    fn only_overload_answers_are_retried_and_a_504_create_is_not() {
        let mut r = Retry::new("west");
        assert_eq!(r.next_delay(500, &http::Method::GET, Some("1")), None);
        assert_eq!(r.next_delay(409, &http::Method::PATCH, None), None);
        assert_eq!(r.next_delay(504, &http::Method::POST, None), None);
        assert!(r.next_delay(504, &http::Method::PATCH, None).is_some());
        assert!(r.next_delay(429, &http::Method::POST, None).is_some());
    }
}
