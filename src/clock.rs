//! The one place the crate reads the time.
//!
//! Everything goes through Tokio's clock, so tests drive it with
//! `tokio::time::pause` and `advance` instead of sleeping.

use std::{sync::OnceLock, time::SystemTime};

pub(crate) use tokio::time::Instant;

/// Monotonic now, on Tokio's (pausable) clock.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Wall-clock now, for what outlives the process (stored expiry times) and
/// HTTP dates such as `Retry-After`.
///
/// Derived from the Tokio clock, anchored to the system clock once per
/// process, so that paused test time moves it too: a token stored "24 h
/// ago" on paused time has expired when read back.
pub(crate) fn wall_now() -> SystemTime {
    static ANCHOR: OnceLock<(Instant, SystemTime)> = OnceLock::new();
    let (instant, wall) = *ANCHOR.get_or_init(|| (now(), SystemTime::now()));
    let now = now();
    if now >= instant {
        wall + (now - instant)
    } else {
        wall - (instant - now)
    }
}
