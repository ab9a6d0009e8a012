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
//! How it works. What requests should see (a token, nothing yet, or the
//! last error) sits in an [`ArcSwap`]: reading it is one atomic load. Only
//! the background task writes there. It fetches when a request asks and
//! nothing is cached, refreshes ahead of expiry as the [`RefreshPolicy`]
//! decides, retries with backoff after failures, and hands out the current
//! token until its announced expiry when no replacement has come. Requests
//! never fetch themselves: they send the task a message and wait on a
//! [`Notify`] (enabled before they look at the state, so no wake-up is lost).
//! A waiting request that is dropped leaves the fetch running; a rotated
//! refresh token is never lost to a cancelled request. When the last handle
//! is dropped, the task ends. The task's states are listed in
//! `src/cache/refresher.rs`.

mod policy;
mod refresher;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::{mpsc, Notify};

pub use policy::RefreshPolicy;

use crate::{clock, Error, Token, TokenSource};

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
    // To the background task, which holds only a weak reference: when the
    // last handle goes, this sender goes with it and the task ends.
    inbox: mpsc::UnboundedSender<Message>,
    // Set while a `Wanted` is on its way, so many waiting requests send one.
    wanted: AtomicBool,
    wait_for_retry: Duration,
}

/// What requests tell the background task.
pub(crate) enum Message {
    /// A request waits and found no token.
    Wanted,
    /// The server rejected the token with this id (the slot no longer holds it).
    Rejected(u64),
}

/// What a request finds in the cache.
pub(crate) enum Slot {
    /// Nothing to hand out yet: wait for the task.
    Empty,
    /// A token that has not expired.
    Ready(Token),
    /// The last attempt failed and no valid token is left. The error says
    /// when the next attempt is due ([`Error::next_attempt_at`]): requests
    /// get the error until shortly before then, and wait for the attempt after.
    Failed(Error),
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
        let (inbox, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            slot: ArcSwap::from_pointee(Slot::Empty),
            changed: Notify::new(),
            counters: Counters::default(),
            inbox,
            wanted: AtomicBool::new(false),
            wait_for_retry: policy.retry_wait(),
        });
        tokio::spawn(refresher::run(source, policy, Arc::downgrade(&shared), rx));
        Self { shared }
    }

    /// The current valid token, waiting for a fetch when there is none.
    ///
    /// Returns the last attempt's error when it failed and no valid token is
    /// left; [`Error::next_attempt_at`] says when the cache tries again. A
    /// caller waits for that attempt instead when it is due within the
    /// policy's [`wait_for_retry`](RefreshPolicy::wait_for_retry), or has
    /// already come; never after [`ErrorKind::ReauthorizationRequired`].
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
                Slot::Failed(error) => {
                    // Off the hot path: only a failed cache reads the clock here.
                    let soon = clock::now() + self.shared.wait_for_retry;
                    if error.next_attempt_at().is_none_or(|at| at > soon) {
                        return Err(error.clone());
                    }
                }
                Slot::Empty => {}
            }
            if !counted {
                counted = true;
                self.shared.counters.waits.fetch_add(1, Ordering::Relaxed);
            }
            self.want()?;
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
                // Closed: the task is gone, and requests will hear of it.
                let _ = self.shared.inbox.send(Message::Rejected(id));
            }
        }
    }

    /// The header and identity of the current token, if one is ready: the
    /// layer's hot path. One atomic load; no lock, clock or allocation.
    #[inline]
    pub(crate) fn current_header(&self) -> Option<(HeaderValue, u64)> {
        match &**self.shared.slot.load() {
            Slot::Ready(token) => Some((token.header_value().clone(), token.id())),
            _ => None,
        }
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

    /// Tells the task a request waits, unless a `Wanted` is already on its way.
    fn want(&self) -> Result<(), Error> {
        if self.shared.wanted.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared
            .inbox
            .send(Message::Wanted)
            .map_err(|_| Error::closed())
    }
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &**self.shared.slot.load() {
            Slot::Empty => "empty",
            Slot::Ready(_) => "ready",
            Slot::Failed(_) => "failed",
        };
        f.debug_struct("TokenCache")
            .field("state", &state)
            .field("stats", &self.stats())
            .finish()
    }
}
