//! An injectable clock, so tests can expire tokens without sleeping.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The server's notion of "now": the system time plus an offset that tests can advance.
#[derive(Clone, Debug, Default)]
pub struct Clock(Arc<Mutex<Duration>>);

impl Clock {
    pub fn now(&self) -> SystemTime {
        SystemTime::now() + *self.0.lock().expect("clock lock")
    }

    /// Moves this server's clock forward (token expiry, timestamps). Does not affect timers
    /// such as watch timeouts or bookmarks, which use real time.
    pub fn advance(&self, by: Duration) {
        *self.0.lock().expect("clock lock") += by;
    }
}
