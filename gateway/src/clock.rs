//! A monotonic millisecond clock, so ejection and idle deadlines fit in an atomic. Its own
//! module (not merged into `endpoint`) because `forward` uses it too.

use std::sync::OnceLock;
use std::time::Instant;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Milliseconds since the first call in this process; starts at 1 so 0 can mean "never".
pub fn now_ms() -> u64 {
    base().elapsed().as_millis() as u64 + 1
}
