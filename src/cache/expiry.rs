//! Withdraws a published token at its expiry, whatever the refresher is
//! doing.
//!
//! The refresher expires its tokens itself, but only between awaits: a
//! store or token request that is slow would otherwise keep an expired token
//! out until the call returns. One task per cache, told of each new token
//! through a `watch` channel, so replaced tokens leave no timer behind (a
//! token rejected again and again used to leave one sleeping task each).
//!
//! It also reads the wall clock at least every [`WALL_CHECK`]: Tokio's
//! clock does not move while the machine is suspended, so a token whose
//! wall-clock expiry passed during a suspension would otherwise be served
//! until the monotonic expiry, late by the suspension.

use std::{
    sync::{Arc, Weak},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use super::{Message, Shared, Slot};
use crate::clock::{self, Instant};

/// The longest the task goes without reading the wall clock.
pub(super) const WALL_CHECK: Duration = Duration::from_secs(5);

/// The token that is out, and when it must go.
#[derive(Clone)]
pub(super) struct Expiry {
    at: Instant,
    wall_at: SystemTime,
    id: u64,
    /// A weak pointer keeps the allocation, so its address cannot have been
    /// reused, and not the token, which is dropped once it is replaced.
    slot: Weak<Slot>,
}

impl Expiry {
    /// For the token `id` published in `slot`, expiring at `at`.
    pub(super) fn new(at: Instant, id: u64, slot: &Arc<Slot>) -> Self {
        let now = clock::now();
        Self {
            at,
            wall_at: clock::wall_now() + at.saturating_duration_since(now),
            id,
            slot: Arc::downgrade(slot),
        }
    }
}

/// The task: ends when the cache's handles (and the sender with them) go.
pub(super) async fn run(shared: Weak<Shared>, mut published: watch::Receiver<Option<Expiry>>) {
    loop {
        let current = published.borrow_and_update().clone();
        let wake = current
            .as_ref()
            .map(|e| e.at.min(clock::now() + WALL_CHECK));
        tokio::select! {
            changed = published.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
            () = async {
                match wake {
                    Some(wake) => tokio::time::sleep_until(wake).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        let Some(expiry) = current else { continue };
        if clock::now() < expiry.at && clock::wall_now() < expiry.wall_at {
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
