//! Withdraws a published token at its expiry, whatever the refresher is
//! doing.
//!
//! The refresher expires its tokens itself, but only between awaits: a
//! store or token request that is slow would otherwise keep an expired token
//! out until the call returns. One task per cache, told of each new token
//! through a `watch` channel, so replaced tokens leave no timer behind (a
//! token rejected again and again used to leave one sleeping task each).
//!
//! It also reads the wall clock at least every [`clock::WALL_RECHECK`]: Tokio's
//! clock does not move while the machine is suspended, so a token whose
//! wall-clock expiry passed during a suspension would otherwise be served
//! until the monotonic expiry, late by the suspension.

use std::sync::{Arc, Weak};

use tokio::sync::watch;

use super::{Message, Shared, Slot};
use crate::clock::{self, Deadline, Instant};

/// The token that is out, and when it must go.
#[derive(Clone)]
pub(super) struct Expiry {
    deadline: Deadline,
    id: u64,
    /// A weak pointer keeps the allocation, so its address cannot have been
    /// reused, and not the token, which is dropped once it is replaced.
    slot: Weak<Slot>,
}

impl Expiry {
    /// For the token `id` published in `slot`, expiring at `at`.
    pub(super) fn new(at: Instant, id: u64, slot: &Arc<Slot>) -> Self {
        Self {
            deadline: Deadline::at(at),
            id,
            slot: Arc::downgrade(slot),
        }
    }
}

/// The task: ends when the cache's handles (and the sender with them) go.
pub(super) async fn run(shared: Weak<Shared>, mut published: watch::Receiver<Option<Expiry>>) {
    let _running = super::census::task();
    loop {
        let current = published.borrow_and_update().clone();
        let wake = current
            .as_ref()
            .map(|e| e.deadline.instant().min(clock::now() + clock::WALL_RECHECK));
        tokio::select! {
            changed = published.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
            () = async {
                match wake {
                    Some(wake) => super::census::sleep_until(wake).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let Some(expiry) = current else { continue };
        if !expiry.deadline.passed() {
            continue;
        }
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let out = shared.slot.load();
        if std::ptr::eq(Arc::as_ptr(&out), expiry.slot.as_ptr()) {
            let previous = shared.slot.compare_and_swap(&out, Arc::new(Slot::Empty));
            if std::ptr::eq(Arc::as_ptr(&previous), expiry.slot.as_ptr()) {
                shared.changed.notify_waiters();
                // The refresher's own timer may be late by a suspension.
                let _ = shared.inbox.send(Message::Expired(expiry.id));
            }
        }
        // Once per token: wait for the next one.
        let same = published
            .borrow()
            .as_ref()
            .is_some_and(|e| e.id == expiry.id);
        if same && published.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::atomic::{AtomicUsize, Ordering},
        time::Duration,
    };

    use crate::{Error, Token, TokenCache, TokenSource};

    struct Counting(Arc<AtomicUsize>);

    impl TokenSource for Counting {
        async fn fetch(&mut self) -> Result<Token, Error> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Token::builder(format!("token-{n}"))
                .expires_in(Duration::from_secs(3600))
                .build()
        }
    }

    use super::*;

    /// The machine slept through the token's expiry: Tokio's clock did not
    /// move, the wall clock did. The token is withdrawn within one wall
    /// check of waking, and the next request gets a new one.
    #[tokio::test(start_paused = true)]
    async fn a_token_whose_wall_expiry_passed_during_a_suspension_is_withdrawn() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = TokenCache::new(Counting(calls.clone()));
        let first = cache.token().await.unwrap();
        clock::step_wall_clock(2 * 3600);
        tokio::time::sleep(clock::WALL_RECHECK + Duration::from_secs(1)).await;
        let second = cache.token().await.unwrap();
        assert!(!second.same_as(&first), "the expired token was served");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        clock::step_wall_clock(-2 * 3600);
    }
}
