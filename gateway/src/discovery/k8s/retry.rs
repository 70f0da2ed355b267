//! What a failing Kubernetes watch does next.
//!
//! A 410 Gone (the resourceVersion it resumed from is too old, as after every API server
//! restart) means re-list now: waiting first only delays a table that is known to be stale.
//! A 404 on a CRD-backed type means the type is no longer served. A 403 means the gateway's
//! account may not read the type: it backs off like any error, but is told apart so the log
//! can name the permission to grant. Anything else backs off
//! like client-go (kube-runtime's default: 0.8 s doubling to 30 s, with jitter), but the wait
//! ends early once the API server is seen answering again, so an outage costs at most one
//! health tick after the server is back, not the remainder of a 30 s back-off.

use std::time::Duration;

use kube::runtime::utils::Backoff as _;
use kube::runtime::watcher::{self, DefaultBackoff};

/// How a watch error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 410 Gone: the watcher re-lists; do it at once.
    Expired,
    /// 404 Not Found: the resource type is not served (a deleted CRD).
    NotServed,
    /// 403 Forbidden: the gateway's account may not list or watch the type; back off.
    Forbidden,
    /// Anything else (connection refused, timeouts, 5xx, 401): back off.
    Other,
}

fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        _ => None,
    }
}

pub fn classify(e: &watcher::Error) -> Failure {
    match status_code(e) {
        Some(410) => Failure::Expired,
        Some(404) => Failure::NotServed,
        Some(403) => Failure::Forbidden,
        _ => Failure::Other,
    }
}

/// The back-off of one watch.
#[derive(Default)]
pub struct Backoff(DefaultBackoff);

impl Backoff {
    /// The watch delivered something: the next failure starts from the shortest delay.
    pub fn reset(&mut self) {
        self.0.reset();
    }

    /// How long to wait before retrying after `failure`; `None` means retry now.
    pub fn delay(&mut self, failure: Failure) -> Option<Duration> {
        match failure {
            Failure::Expired => None,
            Failure::NotServed | Failure::Forbidden | Failure::Other => {
                Some(self.0.next().unwrap_or(Duration::from_secs(30)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn status(code: u16) -> Box<Status> {
        let mut s = Status::failure("x", "y");
        s.code = code;
        Box::new(s)
    }

    #[test]
    fn a_410_retries_at_once_and_other_errors_back_off() {
        let expired = watcher::Error::WatchError(status(410));
        assert_eq!(classify(&expired), Failure::Expired);
        let mut b = Backoff::default();
        assert_eq!(b.delay(Failure::Expired), None);
        let first = b.delay(Failure::Other).unwrap();
        assert!(first >= Duration::from_millis(800), "{first:?}");
        let second = b.delay(Failure::Other).unwrap();
        assert!(second > first, "{first:?} then {second:?}");
        // A 410 between failures neither waits nor resets the back-off.
        assert_eq!(b.delay(Failure::Expired), None);
        assert!(b.delay(Failure::Other).unwrap() > second);
        b.reset();
        assert!(b.delay(Failure::Other).unwrap() < second);
    }

    #[test]
    fn a_404_means_not_served() {
        let gone = watcher::Error::WatchStartFailed(kube::Error::Api(status(404)));
        assert_eq!(classify(&gone), Failure::NotServed);
        let other = watcher::Error::WatchStartFailed(kube::Error::Api(status(500)));
        assert_eq!(classify(&other), Failure::Other);
        let denied = watcher::Error::InitialListFailed(kube::Error::Api(status(403)));
        assert_eq!(classify(&denied), Failure::Forbidden);
        assert_eq!(classify(&watcher::Error::NoResourceVersion), Failure::Other);
    }
}
