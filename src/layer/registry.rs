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
//! A cache keeps its index, so building a layer over it again is O(1), and
//! gives it back when it is dropped, for the next cache to take. A stale
//! index is harmless: a token id is unique in the process, and a cache
//! ignores an invalidation for a token it does not hold.

use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::cache::{TokenCache, WeakTokenCache};

static TABLE: Mutex<Table> = Mutex::new(Table {
    caches: Vec::new(),
    free: Vec::new(),
});

struct Table {
    caches: Vec<WeakTokenCache>,
    /// Indices whose cache was dropped.
    free: Vec<usize>,
}

fn table() -> MutexGuard<'static, Table> {
    // The table stays consistent whatever panicked while it was held.
    TABLE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The index of `cache`, entering it the first time. Called when a layer is
/// built, never per request; O(1).
pub(crate) fn index_of(cache: &TokenCache) -> u32 {
    let index = *cache.registry_index().get_or_init(|| {
        let entry = cache.downgrade();
        let mut table = table();
        match table.free.pop() {
            Some(free) => {
                table.caches[free] = entry;
                free
            }
            None => {
                table.caches.push(entry);
                table.caches.len() - 1
            }
        }
    });
    // Four billion caches at once cannot fit in memory; were it ever
    // reached, an index past it is merely stale (see the module docs).
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// Gives `index` back: its cache is being dropped.
pub(crate) fn release(index: usize) {
    let mut table = table();
    if let Some(entry) = table.caches.get_mut(index) {
        *entry = WeakTokenCache::none();
        table.free.push(index);
    }
}

/// Drops token `token_id` from the cache at `index`, if both are still
/// there; returns that cache.
pub(crate) fn invalidate(index: u32, token_id: u64) -> Option<TokenCache> {
    let index = usize::try_from(index).ok()?;
    let cache = table().caches.get(index).and_then(WeakTokenCache::upgrade);
    if let Some(cache) = &cache {
        cache.invalidate_id(token_id);
    }
    cache
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, Token, TokenSource};

    struct Never;

    impl TokenSource for Never {
        async fn fetch(&mut self) -> Result<Token, Error> {
            unreachable!("no test here asks for a token")
        }
    }

    #[tokio::test]
    async fn a_cache_keeps_its_index_and_a_dropped_one_gives_it_back() {
        let a = TokenCache::new(Never);
        let index = index_of(&a);
        assert_eq!(index_of(&a.clone()), index);
        drop(a);
        // Other tests enter caches meanwhile: the freed index is taken by
        // one of them or by `b`, and `b`'s index names `b`.
        let b = TokenCache::new(Never);
        let of_b = index_of(&b);
        let found = table().caches[of_b as usize].upgrade();
        assert!(found.is_some_and(|found| found.downgrade().is(&b)));
        let length = table().caches.len();
        for _ in 0..100 {
            let c = TokenCache::new(Never);
            index_of(&c);
        }
        // Each of the hundred gave its index back before the next took one.
        assert!(table().caches.len() <= length + 1 + 8);
    }
}
