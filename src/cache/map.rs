//! One [`TokenCache`] per key, for a process that holds many credentials:
//! a proxy that exchanges each caller's token (one cache per caller), a
//! service acting for many tenants.
//!
//! ```no_run
//! # async fn run(client: tower_oauth2::OAuthClient, caller_token: &str) -> Result<(), tower_oauth2::Error> {
//! use std::time::Duration;
//! use tower_oauth2::{secrecy::SecretString, token_types, CacheMap, RefreshPolicy, TokenCache};
//!
//! let callers = CacheMap::builder()
//!     .max_caches(100_000)
//!     .idle(Duration::from_secs(30 * 60))
//!     .build();
//! // Per request: the key is a digest of the caller's token, never the token.
//! let key = CacheMap::digest(caller_token);
//! let cache = callers.get_or_insert_with(&key, || {
//!     let grant = client
//!         .token_exchange(SecretString::from(caller_token), token_types::ACCESS_TOKEN)
//!         .audience("orders");
//!     let quiet = RefreshPolicy::new().refresh_unused(false);
//!     TokenCache::with_policy(grant, quiet)
//! });
//! let token = cache.token().await?;
//! # Ok(())
//! # }
//! ```
//!
//! What a cache costs here grows with its use, not with the number of
//! caches. A cache that was built but not asked holds its memory and
//! nothing else: no task, no timer (see [`census`](super::census)). Built
//! with [`RefreshPolicy::refresh_unused`] off, a cache whose caller went
//! quiet lets its token expire and goes back to that. The map is bounded:
//! when it holds `max_caches`, the cache used longest ago is dropped to make
//! room, and with [`idle`](CacheMapBuilder::idle) set, caches nobody asked
//! for that long are dropped as the map is used. Every call is O(1)
//! amortized, under one lock held for a hash-map lookup.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    hash::Hash,
    marker::PhantomData,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use sha2::{Digest, Sha256};

use super::TokenCache;
use crate::clock::{self, Instant};

/// One [`TokenCache`] per key, made on first use, dropped when the map is
/// full or the key goes quiet. Cheap to clone: clones share the map. See
/// the [module docs](self).
pub struct CacheMap<K> {
    shared: Arc<Mutex<Caches<K>>>,
}

impl<K> Clone for CacheMap<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for CacheMap<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caches = self.lock();
        f.debug_struct("CacheMap")
            .field("caches", &caches.entries.len())
            .field("max_caches", &caches.max)
            .field("idle", &caches.idle)
            .finish()
    }
}

/// Configures a [`CacheMap`]. Made by [`CacheMap::builder`].
pub struct CacheMapBuilder<K> {
    max: usize,
    idle: Option<Duration>,
    _key: PhantomData<fn() -> K>,
}

impl<K> fmt::Debug for CacheMapBuilder<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheMapBuilder")
            .field("max_caches", &self.max)
            .field("idle", &self.idle)
            .finish()
    }
}

/// Recency is kept per tick (a quarter of `idle`, or a second without it):
/// a key is queued again at most once a tick, however often it is used.
const TICKS_PER_IDLE: u32 = 4;

struct Caches<K> {
    entries: HashMap<K, Entry>,
    /// Keys in the order of their last use, by tick. A key used again is
    /// queued again; its older places are stale and skipped.
    order: VecDeque<(K, u64)>,
    max: usize,
    idle: Option<Duration>,
    tick: Duration,
    started: Instant,
}

struct Entry {
    cache: TokenCache,
    /// The tick of its last use: its newest place in `order`.
    used: u64,
}

impl<K: Hash + Eq + Clone> CacheMapBuilder<K> {
    /// The most caches held at once (default 10,000; at least 1). When full,
    /// the cache used longest ago is dropped for a new one.
    pub fn max_caches(mut self, max: usize) -> Self {
        self.max = max.max(1);
        self
    }

    /// Drops a cache nobody asked for during `idle` (checked as the map is
    /// used, within a quarter more). None by default: caches go only when
    /// the map is full. A dropped cache's token goes with it: its key's
    /// next request fetches a new one.
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }

    /// Makes the map. Runs nothing in the background.
    pub fn build(self) -> CacheMap<K> {
        let tick = self
            .idle
            .map_or(Duration::from_secs(1), |idle| idle / TICKS_PER_IDLE)
            .max(Duration::from_millis(1));
        CacheMap {
            shared: Arc::new(Mutex::new(Caches {
                entries: HashMap::new(),
                order: VecDeque::new(),
                max: self.max,
                idle: self.idle,
                tick,
                started: clock::now(),
            })),
        }
    }
}

impl CacheMap<[u8; 32]> {
    /// A key for a secret (a caller's token): its SHA-256 digest, so the map
    /// never holds the secret itself.
    pub fn digest(secret: &str) -> [u8; 32] {
        Sha256::digest(secret.as_bytes()).into()
    }
}

impl<K: Hash + Eq + Clone> CacheMap<K> {
    /// A map of at most `max_caches` caches (see [`CacheMapBuilder`]).
    pub fn new(max_caches: usize) -> Self {
        Self::builder().max_caches(max_caches).build()
    }

    /// Starts configuring a map.
    pub fn builder() -> CacheMapBuilder<K> {
        CacheMapBuilder {
            max: 10_000,
            idle: None,
            _key: PhantomData,
        }
    }

    /// The cache for `key`, made with `make` when there is none. `make`
    /// runs under the map's lock: keep it to building the grant and the
    /// cache, which start nothing (a cache starts its task when first asked
    /// for a token). Counts as a use of the cache's token (see
    /// [`RefreshPolicy::refresh_unused`](crate::RefreshPolicy::refresh_unused)).
    pub fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> TokenCache) -> TokenCache {
        match self.try_get_or_insert_with(key, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(cache) => cache,
            Err(never) => match never {},
        }
    }

    /// [`get_or_insert_with`](Self::get_or_insert_with) for a `make` that
    /// may fail (building a grant does): its error is returned and nothing
    /// is inserted.
    pub fn try_get_or_insert_with<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<TokenCache, E>,
    ) -> Result<TokenCache, E> {
        let mut dropped = Vec::new();
        let found = {
            let mut caches = self.lock();
            let now = caches.now();
            let cache = match caches.entries.get_mut(key) {
                Some(entry) => {
                    let requeue = entry.used != now;
                    entry.used = now;
                    let cache = entry.cache.clone();
                    if requeue {
                        caches.order.push_back((key.clone(), now));
                    }
                    cache
                }
                None => {
                    let cache = make()?;
                    caches.entries.insert(
                        key.clone(),
                        Entry {
                            cache: cache.clone(),
                            used: now,
                        },
                    );
                    caches.order.push_back((key.clone(), now));
                    cache
                }
            };
            caches.evict(now, Some(key), &mut dropped);
            cache
        };
        // Dropped outside the lock: the last handle of a cache ends its task.
        drop(dropped);
        found.note_use();
        Ok(found)
    }

    /// The cache for `key`, if the map holds one. Counts as a use.
    pub fn get(&self, key: &K) -> Option<TokenCache> {
        let mut caches = self.lock();
        let now = caches.now();
        let entry = caches.entries.get_mut(key)?;
        let requeue = entry.used != now;
        entry.used = now;
        let cache = entry.cache.clone();
        if requeue {
            caches.order.push_back((key.clone(), now));
        }
        drop(caches);
        cache.note_use();
        Some(cache)
    }

    /// Takes the cache for `key` out of the map (a caller logged out, say).
    /// Handles to it still work; it stops when the last one goes.
    pub fn remove(&self, key: &K) -> Option<TokenCache> {
        // Its place in `order` is stale now, and skipped.
        self.lock().entries.remove(key).map(|entry| entry.cache)
    }

    /// How many caches the map holds, after dropping those idle too long.
    pub fn len(&self) -> usize {
        let mut dropped = Vec::new();
        let mut caches = self.lock();
        let now = caches.now();
        caches.evict(now, None, &mut dropped);
        let len = caches.entries.len();
        drop(caches);
        len
    }

    /// Whether the map holds no cache (see [`len`](Self::len)).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K> CacheMap<K> {
    fn lock(&self) -> MutexGuard<'_, Caches<K>> {
        // Every change leaves the map consistent: a panic in `make` changed nothing.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + Clone> Caches<K> {
    fn now(&self) -> u64 {
        let elapsed = clock::now().saturating_duration_since(self.started);
        u64::try_from(elapsed.as_nanos() / self.tick.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Drops the caches used longest ago while the map is over its bound,
    /// and those idle too long; never `keep`, the one just asked for.
    /// Amortized O(1): each queued place is looked at once.
    fn evict(&mut self, now: u64, keep: Option<&K>, dropped: &mut Vec<TokenCache>) {
        let idle_ticks = self.idle.map(|_| u64::from(TICKS_PER_IDLE) + 1);
        while let Some((key, tick)) = self.order.front() {
            let Some(entry) = self.entries.get(key) else {
                self.order.pop_front();
                continue;
            };
            if entry.used != *tick {
                self.order.pop_front();
                continue;
            }
            let full = self.entries.len() > self.max;
            if full && keep == Some(key) {
                // As recent as any: the next one goes instead.
                if let Some(place) = self.order.pop_front() {
                    self.order.push_back(place);
                }
                continue;
            }
            let idle = idle_ticks.is_some_and(|ticks| now.saturating_sub(*tick) >= ticks);
            if !(full || idle) {
                break;
            }
            if let Some((key, _)) = self.order.pop_front() {
                if let Some(entry) = self.entries.remove(&key) {
                    dropped.push(entry.cache);
                }
            }
        }
        // Keys used over and over leave stale places behind a quiet one:
        // rebuilt from the entries once they outnumber them, O(1) amortized.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let mut order: Vec<(K, u64)> = self
                .entries
                .iter()
                .map(|(key, entry)| (key.clone(), entry.used))
                .collect();
            order.sort_by_key(|(_, tick)| *tick);
            self.order = order.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    };

    use super::*;
    use crate::{Error, Token, TokenSource};

    struct Never;

    impl TokenSource for Never {
        async fn fetch(&mut self) -> Result<Token, Error> {
            unreachable!("no test here asks for a token")
        }
    }

    fn made(count: &Arc<AtomicUsize>) -> impl FnOnce() -> TokenCache + '_ {
        move || {
            count.fetch_add(1, Ordering::SeqCst);
            TokenCache::new(Never)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_gets_one_cache_until_it_is_removed() {
        let map = CacheMap::new(10);
        let count = Arc::new(AtomicUsize::new(0));
        let a = map.get_or_insert_with(&"a", made(&count));
        let again = map.get_or_insert_with(&"a", made(&count));
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert!(a.downgrade().is(&again));
        assert!(map.remove(&"a").is_some());
        assert!(map.get(&"a").is_none());
        map.get_or_insert_with(&"a", made(&count));
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_map_drops_the_cache_used_longest_ago() {
        let map = CacheMap::new(3);
        let count = Arc::new(AtomicUsize::new(0));
        for key in ["a", "b", "c"] {
            map.get_or_insert_with(&key, made(&count));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // `a` is used again: `b` is now the one used longest ago.
        assert!(map.get(&"a").is_some());
        tokio::time::advance(Duration::from_secs(2)).await;
        map.get_or_insert_with(&"d", made(&count));
        assert_eq!(map.len(), 3);
        assert!(
            map.get(&"b").is_none(),
            "the least recently used cache stays"
        );
        for key in ["a", "c", "d"] {
            assert!(map.get(&key).is_some(), "{key} was dropped");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn caches_idle_too_long_are_dropped_and_used_ones_kept() {
        let map = CacheMap::builder()
            .max_caches(100)
            .idle(Duration::from_secs(60))
            .build();
        let count = Arc::new(AtomicUsize::new(0));
        map.get_or_insert_with(&"quiet", made(&count));
        let busy = map.get_or_insert_with(&"busy", made(&count));
        let weak = busy.downgrade();
        drop(busy);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(10)).await;
            assert!(map.get(&"busy").is_some());
        }
        // 100 s: `quiet` was idle past 60 s (+ a quarter), `busy` never.
        assert_eq!(map.len(), 1);
        assert!(map.get(&"quiet").is_none());
        assert!(weak.upgrade().is_some(), "the busy cache was dropped");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_cache_is_freed_and_its_key_made_anew() {
        let map = CacheMap::new(1);
        let count = Arc::new(AtomicUsize::new(0));
        let first = map.get_or_insert_with(&1, made(&count)).downgrade();
        tokio::time::advance(Duration::from_secs(2)).await;
        map.get_or_insert_with(&2, made(&count));
        assert!(
            first.upgrade().is_none(),
            "the evicted cache is still alive"
        );
        map.get_or_insert_with(&1, made(&count));
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn keys_used_over_and_over_do_not_grow_the_queue() {
        let map = CacheMap::new(1000);
        let count = Arc::new(AtomicUsize::new(0));
        map.get_or_insert_with(&0, made(&count));
        for round in 0..500 {
            tokio::time::advance(Duration::from_secs(1)).await;
            for key in 1..=10 {
                map.get_or_insert_with(&key, made(&count));
            }
            let queued = map.lock().order.len();
            assert!(queued <= 2 * 11 + 64 + 10, "round {round}: {queued} queued");
        }
        assert_eq!(count.load(Ordering::SeqCst), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_make_inserts_nothing() {
        let map: CacheMap<u8> = CacheMap::new(10);
        let failed: Result<TokenCache, &str> = map.try_get_or_insert_with(&1, || Err("bad grant"));
        assert_eq!(failed.err(), Some("bad grant"));
        assert!(map.is_empty());
    }
}
