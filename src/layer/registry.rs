//! How a response future finds its cache again without holding a handle.
//!
//! To drop a rejected token, a response future needs the cache it came
//! from. Holding a [`TokenCache`] handle would cost every request a
//! reference-count increment and decrement on memory every thread shares,
//! which is most of the hot path's budget. So each cache a layer uses is
//! entered once, as a weak handle, in this process-wide table, and a
//! response future carries only two integers: the cache's index here and the
//! token's id. Only a rejected token ever takes the lock.
//!
//! An index is reused once its cache is gone. A stale index is harmless: a
//! token id is unique in the process, and a cache ignores an invalidation
//! for a token it does not hold.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cache::{TokenCache, WeakTokenCache};

static CACHES: Mutex<Vec<WeakTokenCache>> = Mutex::new(Vec::new());

fn caches() -> MutexGuard<'static, Vec<WeakTokenCache>> {
    // The table stays consistent whatever panicked while it was held.
    CACHES.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The index of `cache`, entering it if it is not there yet. Called when a
/// layer is built, never per request.
pub(crate) fn index_of(cache: &TokenCache) -> usize {
    let mut caches = caches();
    if let Some(index) = caches.iter().position(|entry| entry.is(cache)) {
        return index;
    }
    let entry = cache.downgrade();
    match caches.iter().position(|entry| entry.upgrade().is_none()) {
        Some(free) => {
            caches[free] = entry;
            free
        }
        None => {
            caches.push(entry);
            caches.len() - 1
        }
    }
}

/// Drops token `token_id` from the cache at `index`, if both are still
/// there; returns that cache.
pub(crate) fn invalidate(index: usize, token_id: u64) -> Option<TokenCache> {
    let cache = caches().get(index).and_then(WeakTokenCache::upgrade);
    if let Some(cache) = &cache {
        cache.invalidate_id(token_id);
    }
    cache
}
