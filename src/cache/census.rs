//! What every cache in the process holds right now: how many caches, how
//! many background tasks run for them, how many timers those tasks have
//! armed. A credential should cost by its use: a cache nobody asks holds no
//! task and no timer. These counts are how that is checked (in tests and in
//! the many-caches bench) and how an operator sees it.

use std::sync::atomic::{AtomicUsize, Ordering};

static CACHES: AtomicUsize = AtomicUsize::new(0);
static TASKS: AtomicUsize = AtomicUsize::new(0);
static TIMERS: AtomicUsize = AtomicUsize::new(0);

/// The background work of every [`TokenCache`](crate::TokenCache) in the
/// process. Returned by [`census`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Census {
    /// Caches alive (a cache lives while any handle to it does).
    pub caches: usize,
    /// Background tasks running for them: two per cache that is serving a
    /// token or fetching one (the refresher and the task that withdraws a
    /// token at its expiry), none for a cache that is idle.
    pub tasks: usize,
    /// Timers armed by those tasks (a refresh point, an expiry, a backoff, a
    /// deadline on a token or store request).
    pub timers: usize,
}

/// Counts what every cache in the process holds now.
///
/// A cache starts its tasks when first asked for a token (at once when it
/// has a store to read), and stops them when it has nothing left to do: no
/// token to serve or refresh, no request waiting, nothing unsaved, no shared
/// store to watch. The next request starts them again. So a million caches
/// built and never used cost their memory and nothing else.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_oauth2::Error> {
/// use tower_oauth2::{cache::census, ClientCredentials, TokenCache};
///
/// let before = census();
/// let grant = ClientCredentials::builder()
///     .token_url("https://auth.example.com/oauth/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .build()?;
/// let cache = TokenCache::new(grant);
/// // Built, not used: no task, no timer.
/// assert_eq!(census().tasks, before.tasks);
/// # drop(cache);
/// # Ok(())
/// # }
/// ```
pub fn census() -> Census {
    Census {
        caches: CACHES.load(Ordering::Relaxed),
        tasks: TASKS.load(Ordering::Relaxed),
        timers: TIMERS.load(Ordering::Relaxed),
    }
}

/// Counted while it lives.
pub(super) struct Counted(&'static AtomicUsize);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn count(counter: &'static AtomicUsize) -> Counted {
    counter.fetch_add(1, Ordering::Relaxed);
    Counted(counter)
}

/// Held by a cache's shared state.
pub(super) fn cache() -> Counted {
    count(&CACHES)
}

/// Held by a background task for as long as it runs.
pub(super) fn task() -> Counted {
    count(&TASKS)
}

/// Held next to an armed timer.
pub(super) fn timer() -> Counted {
    count(&TIMERS)
}

/// `tokio::time::sleep_until`, counted while it waits.
pub(super) async fn sleep_until(deadline: tokio::time::Instant) {
    let _armed = timer();
    tokio::time::sleep_until(deadline).await;
}
