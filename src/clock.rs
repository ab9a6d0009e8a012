//! The one place the crate reads the time.
//!
//! Everything goes through Tokio's clock, so tests drive it with
//! `tokio::time::pause` and `advance` instead of sleeping.

use std::time::SystemTime;

pub(crate) use tokio::time::Instant;

/// Monotonic now, on Tokio's (pausable) clock.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Wall-clock now; only for reading HTTP dates such as `Retry-After`.
pub(crate) fn wall_now() -> SystemTime {
    SystemTime::now()
}
