//! An injectable clock, so tests can expire tokens without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The server's notion of "now": the system time plus an offset that tests can move either
/// way (ahead to expire what it issued; behind to issue tokens "in the past", as if minted
/// earlier, which a client judging by its own clock then sees as old).
#[derive(Clone, Debug, Default)]
pub struct Clock(Arc<Mutex<Offset>>);

#[derive(Clone, Copy, Debug, Default)]
struct Offset {
    ahead: Duration,
    behind: Duration,
}

impl Clock {
    pub fn now(&self) -> SystemTime {
        let o = *self.0.lock().expect("clock lock");
        SystemTime::now() + o.ahead - o.behind
    }

    /// Moves this server's clock forward (token expiry, timestamps). Does not affect timers
    /// such as watch timeouts or bookmarks, which use real time.
    pub fn advance(&self, by: Duration) {
        let mut o = self.0.lock().expect("clock lock");
        let back = by.min(o.behind);
        o.behind -= back;
        o.ahead += by - back;
    }

    /// Moves this server's clock back (the opposite of [`Clock::advance`]).
    pub fn rewind(&self, by: Duration) {
        let mut o = self.0.lock().expect("clock lock");
        let fwd = by.min(o.ahead);
        o.ahead -= fwd;
        o.behind += by - fwd;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_and_advance_cancel_out() {
        let c = Clock::default();
        c.rewind(Duration::from_secs(3600));
        let behind = SystemTime::now().duration_since(c.now()).unwrap();
        assert!(behind >= Duration::from_secs(3599), "{behind:?}");
        c.advance(Duration::from_secs(7200));
        let ahead = c.now().duration_since(SystemTime::now()).unwrap();
        assert!(ahead > Duration::from_secs(3590) && ahead <= Duration::from_secs(3600));
    }
}
