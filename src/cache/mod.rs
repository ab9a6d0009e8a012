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
//!
//! A cache costs by its use. The task starts with the first message (at
//! once for a cache with a store to read) and parks when nothing is due: no
//! token to serve or refresh, nobody waiting, nothing unsaved, no shared
//! store to watch. Parked, it is a boxed closure in the cache and holds no
//! timer; the next message spawns it again where it stopped. Many caches in
//! one process (one per caller) are kept in a [`CacheMap`]; [`census`]
//! counts what they hold.

mod census;
mod expiry;
mod map;
mod policy;
mod protocol;
mod refresher;

use std::{
    borrow::Cow,
    ops::Deref,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak,
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use http::HeaderValue;
use tokio::sync::{mpsc, oneshot, Notify};

pub use census::{census, Census};
pub use map::{CacheMap, CacheMapBuilder};
pub use policy::RefreshPolicy;

use crate::{
    clock, metrics,
    store::{NoStore, StoreKey, TokenStore},
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
    // To the background task, which holds only a weak reference: when the
    // last handle goes, this sender goes with it and the task ends.
    inbox: mpsc::UnboundedSender<Message>,
    /// The background task while it is not running: not started yet, or
    /// stopped with nothing to do. The next message starts it (see `send`).
    parked: Mutex<Option<Parked>>,
    /// A request took the token since the refresher last looked: with
    /// [`RefreshPolicy::refresh_unused`] off, only such a token is refreshed.
    used: AtomicBool,
    /// This cache's place in the layer's registry, once a layer uses it.
    registry_index: OnceLock<usize>,
    _counted: census::Counted,
    // Set while a `Wanted` is on its way, so many waiting requests send one.
    wanted: AtomicBool,
    wait_for_retry: Duration,
    store_error: Mutex<Option<Error>>,
    /// The `cache` label of this cache's metrics.
    metrics: metrics::Name,
    /// Whether a person must authorize, once the store has been read.
    authorization: tokio::sync::watch::Sender<Option<Result<bool, Error>>>,
    /// The published token's expiry, for the task that withdraws it.
    expiry: tokio::sync::watch::Sender<Option<expiry::Expiry>>,
}

/// Starts the background task again, on the runtime the cache was built on.
pub(super) type Parked = Box<dyn FnOnce() + Send>;

impl Shared {
    /// Tells the background task, starting it if it is parked. `Err` when
    /// it has ended for good.
    pub(crate) fn send(&self, message: Message) -> Result<(), Error> {
        self.inbox.send(message).map_err(|_| Error::closed())?;
        // After the send: a task parking meanwhile looks at the inbox while
        // it holds this lock, so either it sees the message or we see it parked.
        self.wake();
        Ok(())
    }

    /// Starts the background task if it is parked.
    fn wake(&self) {
        let parked = self.parked().take();
        if let Some(start) = parked {
            start();
        }
    }

    /// Where the task leaves itself when it parks: it looks at its inbox
    /// once more while holding this, so a message sent meanwhile is seen.
    pub(super) fn parked(&self) -> MutexGuard<'_, Option<Parked>> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(index) = self.registry_index.get() {
            crate::layer::registry::release(*index);
        }
    }
}

/// What requests tell the background task.
pub(crate) enum Message {
    /// A request waits and found no token.
    Wanted,
    /// The server rejected the token with this id (the slot no longer holds it).
    Rejected(u64),
    /// The token with this id was withdrawn at its expiry (by the wall
    /// clock, perhaps before the refresher's own timer).
    Expired(u64),
    /// Finish the token request under way and its save, then stop.
    Shutdown(oneshot::Sender<Result<(), Error>>),
    /// `Shutdown`, then give the grant back to the server (RFC 7009) and
    /// clear it from the store.
    Revoke(oneshot::Sender<Result<(), Error>>),
    /// Ask for a token now, whatever the backoff; answer with the outcome.
    RefreshNow(oneshot::Sender<Result<Token, Error>>),
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
    saves: AtomicU64,
    save_failures: AtomicU64,
    adopted: AtomicU64,
    leases: AtomicU64,
    lease_wait_ms: AtomicU64,
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
    /// Token states saved to the cache's [`TokenStore`].
    pub saves: u64,
    /// Saves that failed (each is retried with backoff until one succeeds).
    pub save_failures: u64,
    /// Tokens taken from a shared store, fetched by another replica, instead
    /// of asking the token endpoint.
    pub adopted: u64,
    /// Times this replica took a shared store's lease to ask the token
    /// endpoint (a fleet's holder changes are the sum over its replicas).
    pub leases: u64,
    /// How long this replica waited, in all, while another replica held
    /// the lease (for that one's token, or for the lease to expire).
    pub lease_wait: Duration,
}

impl TokenCache {
    /// A cache over `source` with the default [`RefreshPolicy`].
    ///
    /// Nothing is fetched until a token is first needed.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime: the cache's background task
    /// runs on the current runtime (started when a token is first asked for).
    pub fn new<S: TokenSource>(source: S) -> Self {
        Self::with_policy(source, RefreshPolicy::default())
    }

    /// A cache over `source` with `policy`.
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime.
    pub fn with_policy<S: TokenSource>(source: S, policy: RefreshPolicy) -> Self {
        Self::builder(source).policy(policy).build()
    }

    /// Starts configuring a cache over `source`: its policy, and a
    /// [`TokenStore`] to keep token state across restarts.
    pub fn builder<S: TokenSource>(source: S) -> CacheBuilder<S, NoStore> {
        CacheBuilder {
            source,
            policy: RefreshPolicy::default(),
            store: None,
            store_key: None,
            metrics_name: metrics::Name::default(),
        }
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
        // A ready token needs no waiter: one load, a reference count.
        if let Slot::Ready(token) = &**self.shared.slot.load() {
            self.note_use();
            return Ok(token.clone());
        }
        self.wait_for_token().await
    }

    /// [`token`](Self::token) when the first look found none ready.
    async fn wait_for_token(&self) -> Result<Token, Error> {
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
                metrics::waited(&self.shared.metrics);
            }
            self.want()?;
            notified.await;
        }
    }

    /// Whether a person must authorize before this cache can get a token:
    /// its grant holds neither a code nor a refresh token (none configured,
    /// none in the store), or the server refused the grant
    /// ([`ErrorKind::ReauthorizationRequired`]). Waits until the cache has
    /// read its store; the store's error when it could not (it is tried
    /// again: ask again later). Replaces a check for the store's file:
    ///
    /// ```no_run
    /// # async fn run(cache: tower_oauth2::TokenCache) -> Result<(), tower_oauth2::Error> {
    /// if cache.authorization_required().await? {
    ///     // Send the person to the authorization URL; exchange the code
    ///     // with an `AuthorizationCode` grant over the same store.
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// [`ErrorKind::ReauthorizationRequired`]: crate::ErrorKind::ReauthorizationRequired
    pub async fn authorization_required(&self) -> Result<bool, Error> {
        // The answer comes from reading the store: the task must run.
        self.shared.wake();
        let mut answers = self.shared.authorization.subscribe();
        let answer = answers.wait_for(Option::is_some).await;
        match answer.as_deref() {
            Ok(Some(answer)) => answer.clone(),
            _ => Err(Error::closed()),
        }
    }

    /// Asks the token endpoint for a new token now and waits for the
    /// outcome: the new token, or the error of that attempt. A token still
    /// valid keeps serving meanwhile. Skips the backoff of a cache that
    /// failed (an `invalid_client` during a key rollout, say, which otherwise
    /// waits [`max_backoff`](RefreshPolicy::max_backoff)), and refreshes a
    /// cache that serves a token, without holding it. One attempt, shared by
    /// every caller asking at once and by a fetch already under way; with a
    /// shared store, under the fleet's lease (a token another replica stores
    /// meanwhile answers it too). After
    /// [`ErrorKind::ReauthorizationRequired`](crate::ErrorKind::ReauthorizationRequired)
    /// it returns that error: a person must authorize. Each call may cost a
    /// token request: call it on an operator's action, not per request.
    pub async fn refresh_now(&self) -> Result<Token, Error> {
        let (done, answer) = oneshot::channel();
        self.shared.send(Message::RefreshNow(done))?;
        answer.await.unwrap_or_else(|_| Err(Error::closed()))
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
                metrics::invalidated(&self.shared.metrics);
                tracing::debug!(target: "tower_oauth2", "token invalidated");
                // Closed: the task is gone, and requests will hear of it.
                let _ = self.shared.send(Message::Rejected(id));
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

    /// Where the layer's registry keeps this cache's index.
    pub(crate) fn registry_index(&self) -> &OnceLock<usize> {
        &self.shared.registry_index
    }

    /// A handle that does not keep the cache (nor its task) alive.
    pub(crate) fn downgrade(&self) -> WeakTokenCache {
        WeakTokenCache(Arc::downgrade(&self.shared))
    }

    /// The `cache` label of this cache's metrics.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(crate) fn metrics_name(&self) -> &metrics::Name {
        &self.shared.metrics
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
            saves: c.saves.load(Ordering::Relaxed),
            save_failures: c.save_failures.load(Ordering::Relaxed),
            adopted: c.adopted.load(Ordering::Relaxed),
            leases: c.leases.load(Ordering::Relaxed),
            lease_wait: Duration::from_millis(c.lease_wait_ms.load(Ordering::Relaxed)),
        }
    }

    /// The error of the last failed save, while the newest token state is
    /// not in the store; `None` once a save succeeds. The token stays in
    /// memory and in use meanwhile, and the save is retried with backoff:
    /// this is how to learn that a restart now would lose it.
    pub fn store_error(&self) -> Option<Error> {
        self.shared
            .store_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Stops the cache cleanly: waits for a token request under way and the
    /// save of what it brought (a rotated refresh token, say), retries a
    /// save that failed once more, then ends the background task. Every
    /// clone stops with it: later requests get [`ErrorKind::Closed`].
    ///
    /// Returns the save's error when the newest state could not be stored.
    /// The cache is stopped all the same, but the state is not given up: the
    /// task keeps retrying the save with backoff while the runtime runs, and
    /// each later call of `shutdown` tries at once and returns `Ok` once it is
    /// saved. Callers asking at once all hear the same answer; if the task
    /// stopped without answering (a panicking source or store), the answer
    /// is [`ErrorKind::Closed`]. How long to wait before the process exits is
    /// yours to choose:
    ///
    /// ```no_run
    /// # async fn stop(cache: tower_oauth2::TokenCache) {
    /// use std::time::Duration;
    /// let wait = async {
    ///     while let Err(error) = cache.shutdown().await {
    ///         eprintln!("token state not saved yet: {error}");
    ///         tokio::time::sleep(Duration::from_secs(1)).await;
    ///     }
    /// };
    /// if tokio::time::timeout(Duration::from_secs(30), wait).await.is_err() {
    ///     eprintln!("exiting with the newest token state unsaved");
    /// }
    /// # }
    /// ```
    ///
    /// Without it, a Tokio runtime that shuts down drops the task at its next
    /// `.await`: a token request under way is abandoned. If the server had
    /// rotated the refresh token in that answer, the new one is lost with
    /// it, and the next start sends the old one (which a server with reuse
    /// detection answers by revoking the grant). Call this before `main`
    /// returns.
    ///
    /// [`ErrorKind::Closed`]: crate::ErrorKind::Closed
    pub async fn shutdown(&self) -> Result<(), Error> {
        let (done, finished) = oneshot::channel();
        if self.shared.send(Message::Shutdown(done)).is_err() {
            // The task is gone: it ended after saving, unless a save failed
            // last (and the runtime stopped it before a retry succeeded).
            return self.store_error().map_or(Ok(()), Err);
        }
        // No answer: the task stopped mid-way (a panic, the runtime).
        finished.await.unwrap_or_else(|_| Err(Error::closed()))
    }

    /// Notes that a request took the current token, for
    /// [`RefreshPolicy::refresh_unused`]. A load, and a store only the first
    /// time after the refresher looked: nothing that contends.
    #[inline]
    pub(crate) fn note_use(&self) {
        if !self.shared.used.load(Ordering::Relaxed) {
            self.shared.used.store(true, Ordering::Relaxed);
        }
    }

    /// Stops the cache as [`shutdown`](Self::shutdown) does, then gives the
    /// grant back to the server (RFC 7009): the refresh token, or without
    /// one the current access token (see [`TokenSource::revoke`]). Then the
    /// store is cleared of it, so no restart and no replica sends it again,
    /// and [`authorization_required`](Self::authorization_required) answers
    /// `true` for a grant that needs a person. For a person logging out of a
    /// CLI or an app, or a credential taken out of service. In a fleet
    /// this ends the grant for every replica (under the fleet's lease, with
    /// the newest refresh token): call it on decommission, never on a
    /// rolling restart.
    ///
    /// Needs the grant's revocation endpoint (`revocation_url`, or the
    /// discovered one); without it the answer is a
    /// [`Config`](crate::ErrorKind::Config) error. On any error the cache
    /// is stopped all the same and the store keeps what it held: give the
    /// token back with [`OAuthClient::revoke`](crate::OAuthClient::revoke).
    /// After a [`shutdown`](Self::shutdown) it answers
    /// [`Closed`](crate::ErrorKind::Closed).
    pub async fn shutdown_and_revoke(&self) -> Result<(), Error> {
        let (done, finished) = oneshot::channel();
        self.shared.send(Message::Revoke(done))?;
        finished.await.unwrap_or_else(|_| Err(Error::closed()))
    }

    /// Tells the task a request waits, unless a `Wanted` is already on its way.
    fn want(&self) -> Result<(), Error> {
        if self.shared.wanted.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        self.shared.send(Message::Wanted)
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
    /// A handle to no cache.
    pub(crate) fn none() -> Self {
        Self(Weak::new())
    }

    /// The cache, if any strong handle is left.
    pub(crate) fn upgrade(&self) -> Option<TokenCache> {
        self.0.upgrade().map(|shared| TokenCache { shared })
    }

    /// Whether both handles are for one cache.
    #[cfg(test)]
    pub(crate) fn is(&self, cache: &TokenCache) -> bool {
        std::ptr::eq(self.0.as_ptr(), Arc::as_ptr(&cache.shared))
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

/// Configures a [`TokenCache`]. Made by [`TokenCache::builder`].
#[derive(Debug)]
pub struct CacheBuilder<S, T> {
    source: S,
    policy: RefreshPolicy,
    store: Option<T>,
    store_key: Option<StoreKey>,
    metrics_name: metrics::Name,
}

impl<S: TokenSource, T: TokenStore> CacheBuilder<S, T> {
    /// When to refresh and how to back off (default: [`RefreshPolicy::new`]).
    pub fn policy(mut self, policy: RefreshPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Keeps the token state in `store`: loaded when the cache starts, saved
    /// after every token request that changed it, before the new token is
    /// used. See [`store`](crate::store) for what that guarantees.
    pub fn store<U: TokenStore>(self, store: U) -> CacheBuilder<S, U> {
        CacheBuilder {
            source: self.source,
            policy: self.policy,
            store: Some(store),
            store_key: self.store_key,
            metrics_name: self.metrics_name,
        }
    }

    /// Names the credential in the store, instead of the key the source
    /// names ([`TokenSource::store_key`]). A source of your own that names
    /// none needs one: without it, a cache with a store stays empty and
    /// every request gets an [`ErrorKind::Config`](crate::ErrorKind::Config)
    /// error (two such sources would otherwise read each other's tokens).
    pub fn store_key(mut self, key: StoreKey) -> Self {
        self.store_key = Some(key);
        self
    }

    /// Names this cache in its metrics (the `cache` label; `"default"`
    /// unless set), with the `metrics` feature: one fixed name per API or
    /// credential, such as `"officernd"`, never anything unbounded or
    /// secret. See [`metrics`] for what is emitted. Without
    /// the feature, it does nothing.
    pub fn metrics_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.metrics_name = metrics::Name::new(name.into());
        self
    }

    /// Makes the cache. Nothing runs yet: its background task starts when a
    /// token is first asked for, or at once when it has a store to read
    /// (the state there decides what requests find). See [`census`].
    ///
    /// # Panics
    ///
    /// When called outside a Tokio runtime: the task will run on this one.
    pub fn build(self) -> TokenCache {
        let runtime = tokio::runtime::Handle::current();
        let (inbox, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            authorization: tokio::sync::watch::Sender::new(None),
            expiry: tokio::sync::watch::Sender::new(None),
            slot: ArcSwap::from_pointee(Slot::Empty),
            changed: Notify::new(),
            counters: Counters::default(),
            inbox,
            parked: Mutex::new(None),
            used: AtomicBool::new(false),
            registry_index: OnceLock::new(),
            _counted: census::cache(),
            wanted: AtomicBool::new(false),
            wait_for_retry: self.policy.retry_wait(),
            store_error: Mutex::new(None),
            metrics: self.metrics_name.clone(),
        });
        metrics::describe();
        let key = self.store_key.or_else(|| self.source.store_key());
        let store = match (self.store, key) {
            (Some(store), Some(key)) => Some((store, key)),
            (None, _) => None,
            (Some(_), None) => {
                // No task: nothing is fetched, and the store is never touched.
                let error = Error::config(
                    "a cache with a store needs a store key: this token source names none; \
                     give one with CacheBuilder::store_key",
                );
                tracing::error!(target: "tower_oauth2", %error, "the cache will not start");
                shared.authorization.send_replace(Some(Err(error.clone())));
                shared.slot.store(Arc::new(Slot::Failed(error)));
                return TokenCache { shared };
            }
        };
        let eager = store.is_some();
        let start = refresher::start(
            runtime,
            self.source,
            self.policy,
            store,
            Arc::downgrade(&shared),
            rx,
            self.metrics_name,
        );
        *shared.parked() = Some(start);
        if eager {
            shared.wake();
        }
        TokenCache { shared }
    }
}
