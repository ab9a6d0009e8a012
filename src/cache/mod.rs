//! The token cache: one current token shared by every clone, refreshed by a
//! background task.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_oauth2::Error> {
//! use tower_oauth2::{ClientCredentials, RefreshPolicy, TokenCache};
//!
//! let grant = ClientCredentials::builder()
//!     .token_url("https://auth.example.com/oauth/token")
//!     .client_id("my-app")
//!     .client_secret("s3cret")
//!     .build()?;
//! let cache = TokenCache::with_policy(grant, RefreshPolicy::new().max_backoff(std::time::Duration::from_secs(60)));
//! let token = cache.token().await?; // fetches once; later calls reuse it
//! # Ok(())
//! # }
//! ```
//!
//! How it works. The current state (a token, nothing yet, or the last error)
//! sits in an [`ArcSwap`]: reading it is one atomic load. Only the background
//! task writes tokens there. It fetches when a request asks and nothing is
//! cached, refreshes ahead of expiry as the [`RefreshPolicy`] decides, backs
//! off after failures, and stops handing out a token shortly before it
//! expires. Requests never fetch themselves: they wake the task and wait on a
//! [`Notify`] (enabled before they look at the state, so no wake-up is lost).
//! A waiting request that is dropped leaves the fetch running; a rotated
//! refresh token is never lost to a cancelled request. When the last handle
//! is dropped, the task ends.

mod policy;
mod refresher;

use std::{
    ops::Deref,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Weak,
    },
};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::{mpsc, Notify};

pub use policy::RefreshPolicy;

use crate::{
    clock::{self, Instant},
    Error, Token, TokenSource,
};

/// A shared, self-refreshing access token. Cheap to clone; every clone sees
/// the same token and the same background task.
#[derive(Clone)]
pub struct TokenCache {
    // One reference count per clone: cloning a handle (which the layer does
    // per request when it may replay) costs a single atomic increment.
    shared: Arc<Shared>,
}

pub(crate) struct Shared {
    slot: ArcSwap<Slot>,
    changed: Notify,
    counters: Counters,
    // Wakes the background task, which holds only a weak reference: when the
    // last handle goes, this sender goes with it and the task ends.
    wake: mpsc::Sender<()>,
}

/// What a request finds in the cache.
pub(crate) enum Slot {
    /// Nothing to hand out yet: wait for the task.
    Empty,
    /// A token that has not reached its expiry margin.
    Ready(Token),
    /// The last attempt failed and no valid token is left: fail fast until
    /// `retry_at` (never, when `None`), then wait for the next attempt.
    Failed {
        error: Error,
        retry_at: Option<Instant>,
    },
}

#[derive(Default)]
struct Counters {
    token_requests: AtomicU64,
    failures: AtomicU64,
    waits: AtomicU64,
    refreshes_ahead: AtomicU64,
    invalidations: AtomicU64,
}

/// What a [`TokenCache`] has done so far. Returned by [`TokenCache::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Token fetches started.
    pub token_requests: u64,
    /// Token fetches that failed.
    pub failures: u64,
    /// Times a caller found no token and had to wait for a fetch.
    pub waits: u64,
    /// Fetches that replaced a token before it expired.
    pub refreshes_ahead: u64,
    /// Tokens dropped through [`TokenCache::invalidate`].
    pub invalidations: u64,
}

impl TokenCache {
    /// A cache over `source` with the default [`RefreshPolicy`].
    ///
    /// Nothing is fetched until a token is first needed.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime: the cache spawns its background
    /// task on the current runtime.
    pub fn new<S: TokenSource>(source: S) -> Self {
        Self::with_policy(source, RefreshPolicy::default())
    }

    /// A cache over `source` with `policy`.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn with_policy<S: TokenSource>(source: S, policy: RefreshPolicy) -> Self {
        let (wake, rx) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            slot: ArcSwap::from_pointee(Slot::Empty),
            changed: Notify::new(),
            counters: Counters::default(),
            wake,
        });
        tokio::spawn(refresher::run(source, policy, Arc::downgrade(&shared), rx));
        Self { shared }
    }

    /// The current valid token, waiting for a fetch when there is none.
    ///
    /// Returns the fetch's error when it fails and no valid token is left.
    /// Until the next attempt is due (after the policy's backoff, or never
    /// after [`ErrorKind::ReauthorizationRequired`]), callers get that error at
    /// once rather than piling up; once it is due, they wait for the attempt.
    ///
    /// [`ErrorKind::ReauthorizationRequired`]: crate::ErrorKind::ReauthorizationRequired
    pub async fn token(&self) -> Result<Token, Error> {
        let mut counted = false;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            // Registered before the state is read: a store in between still wakes us.
            notified.as_mut().enable();
            match &**self.shared.slot.load() {
                Slot::Ready(token) => return Ok(token.clone()),
                Slot::Failed { error, retry_at } => {
                    // Off the hot path: only a failed cache reads the clock here.
                    if retry_at.is_none_or(|at| clock::now() < at) {
                        return Err(error.clone());
                    }
                    if !counted {
                        counted = true;
                        self.shared.counters.waits.fetch_add(1, Ordering::Relaxed);
                    }
                    self.wake()?;
                }
                Slot::Empty => {
                    if !counted {
                        counted = true;
                        self.shared.counters.waits.fetch_add(1, Ordering::Relaxed);
                    }
                    self.wake()?;
                }
            }
            notified.await;
        }
    }

    /// Drops `token` if it is still the current one, so the next request
    /// waits for a new one. A token fetched since is kept: many requests that
    /// saw the same token rejected cause one refresh, not many.
    pub fn invalidate(&self, token: &Token) {
        self.invalidate_id(token.id());
    }

    pub(crate) fn invalidate_id(&self, id: u64) {
        let current = self.shared.slot.load();
        if matches!(&**current, Slot::Ready(token) if token.id() == id) {
            let previous = self
                .shared
                .slot
                .compare_and_swap(&*current, Arc::new(Slot::Empty));
            if Arc::ptr_eq(&previous, &*current) {
                self.shared
                    .counters
                    .invalidations
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(target: "tower_oauth2", "token invalidated");
                // A full channel means the task is already due to look.
                let _ = self.shared.wake.try_send(());
            }
        }
    }

    /// The header and identity of the current token, if one is ready: the
    /// layer's hot path. One atomic load; no lock, clock or allocation.
    #[inline]
    // The layer reads through a `HeaderReader`; the reqwest-middleware adapter, here.
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn current_header(&self) -> Option<(HeaderValue, u64)> {
        match &**self.shared.slot.load() {
            Slot::Ready(token) => Some((token.header_value().clone(), token.id())),
            _ => None,
        }
    }

    /// A reader of the current header for one service clone: the layer's
    /// hot path (see [`HeaderReader`]).
    pub(crate) fn header_reader(&self) -> HeaderReader {
        HeaderReader {
            slot: arc_swap::Cache::new(SlotOf(self.shared.clone())),
            cache: self.clone(),
        }
    }

    /// A handle that does not keep the cache (nor its task) alive.
    pub(crate) fn downgrade(&self) -> WeakTokenCache {
        WeakTokenCache(Arc::downgrade(&self.shared))
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.shared.counters;
        CacheStats {
            token_requests: c.token_requests.load(Ordering::Relaxed),
            failures: c.failures.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            refreshes_ahead: c.refreshes_ahead.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
        }
    }

    fn wake(&self) -> Result<(), Error> {
        match self.shared.wake.try_send(()) {
            Err(mpsc::error::TrySendError::Closed(())) => Err(Error::closed()),
            // Full: a wake-up is already pending.
            _ => Ok(()),
        }
    }
}

/// The current header, read through an [`arc_swap::Cache`]: while the slot
/// has not changed, a read is one relaxed load and a pointer comparison (no
/// reference count, no write to shared memory). Each service clone has its
/// own, so it needs `&mut`.
#[derive(Clone)]
pub(crate) struct HeaderReader {
    slot: arc_swap::Cache<SlotOf, Arc<Slot>>,
    cache: TokenCache,
}

impl HeaderReader {
    /// Same answer as [`TokenCache::current_header`], cheaper.
    #[inline]
    pub(crate) fn current_header(&mut self) -> Option<(HeaderValue, u64)> {
        match &**self.slot.load() {
            Slot::Ready(token) => Some((token.header_value().clone(), token.id())),
            _ => None,
        }
    }

    /// The cache this reader reads.
    pub(crate) fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

#[derive(Clone)]
struct SlotOf(Arc<Shared>);

impl Deref for SlotOf {
    type Target = ArcSwap<Slot>;

    fn deref(&self) -> &ArcSwap<Slot> {
        &self.0.slot
    }
}

/// A [`TokenCache`] that is not kept alive by this handle.
#[derive(Clone)]
pub(crate) struct WeakTokenCache(Weak<Shared>);

impl WeakTokenCache {
    /// The cache, if any strong handle is left.
    pub(crate) fn upgrade(&self) -> Option<TokenCache> {
        self.0.upgrade().map(|shared| TokenCache { shared })
    }

    /// Whether both handles are for one cache.
    pub(crate) fn is(&self, cache: &TokenCache) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&cache.shared))
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &**self.shared.slot.load() {
            Slot::Empty => "empty",
            Slot::Ready(_) => "ready",
            Slot::Failed { .. } => "failed",
        };
        f.debug_struct("TokenCache")
            .field("state", &state)
            .field("stats", &self.stats())
            .finish()
    }
}
