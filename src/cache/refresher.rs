//! The background task that owns the token source.

use std::sync::{atomic::Ordering, Arc, Weak};

use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::{RefreshPolicy, Shared, Slot};
use crate::{
    clock::{self, Instant},
    Error, Token, TokenSource,
};

/// The token being handed out, with the two moments that matter to it.
struct Live {
    token: Token,
    refresh_at: Instant,
    retire_at: Instant,
}

struct Refresher {
    policy: RefreshPolicy,
    // Weak: the task must not keep the handles' state (and its wake-up
    // sender) alive, or it would never learn that they are all gone.
    shared: Weak<Shared>,
    current: Option<Live>,
    /// Consecutive failed fetches.
    failures: u32,
    /// No fetch before this, after a failure.
    next_try: Option<Instant>,
    /// The last failure while a token was still being served.
    last_error: Option<Error>,
    /// A caller is waiting, or was told to come back.
    demand: bool,
    /// The source can never succeed again (re-authorization required).
    terminal: bool,
}

pub(super) async fn run<S: TokenSource>(
    mut source: S,
    policy: RefreshPolicy,
    shared: Weak<Shared>,
    mut wake: mpsc::Receiver<()>,
) {
    let mut task = Refresher {
        policy,
        shared,
        current: None,
        failures: 0,
        next_try: None,
        last_error: None,
        demand: false,
        terminal: false,
    };
    loop {
        task.notice_invalidation();
        let now = clock::now();
        if task
            .current
            .as_ref()
            .is_some_and(|live| live.retire_at <= now)
        {
            task.retire();
        }
        let attempt_at = task.next_attempt(now);
        if attempt_at.is_some_and(|at| at <= now) {
            task.attempt(&mut source).await;
            continue;
        }
        let retire_at = task.current.as_ref().map(|live| live.retire_at);
        tokio::select! {
            biased;
            message = wake.recv() => match message {
                Some(()) => task.demand = true,
                // Every handle is gone.
                None => return,
            },
            () = sleep_until(earliest(attempt_at, retire_at)) => {}
        }
    }
}

impl Refresher {
    /// When to fetch next, if at all.
    fn next_attempt(&self, now: Instant) -> Option<Instant> {
        if self.terminal {
            return None;
        }
        match &self.current {
            Some(live) => Some(
                self.next_try
                    .map_or(live.refresh_at, |t| t.max(live.refresh_at)),
            ),
            None if self.demand => Some(self.next_try.unwrap_or(now)),
            None => None,
        }
    }

    /// A caller invalidated our token: forget it and fetch for them.
    fn notice_invalidation(&mut self) {
        let Some(live) = &self.current else { return };
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let still_current =
            matches!(&**shared.slot.load(), Slot::Ready(t) if t.same_as(&live.token));
        if !still_current {
            self.current = None;
            self.demand = true;
        }
    }

    /// Stops handing out the current token: it is about to expire.
    fn retire(&mut self) {
        if self.current.take().is_none() {
            return;
        }
        tracing::debug!(target: "tower_oauth2", "token reached its expiry margin without a replacement");
        let slot = match &self.last_error {
            Some(error) => self.failed(error.clone()),
            None => Slot::Empty,
        };
        self.publish(slot);
    }

    fn failed(&self, error: Error) -> Slot {
        Slot::Failed {
            error,
            retry_at: if self.terminal { None } else { self.next_try },
        }
    }

    fn publish(&self, slot: Slot) {
        if let Some(shared) = self.shared.upgrade() {
            shared.slot.store(Arc::new(slot));
            shared.changed.notify_waiters();
        }
    }

    async fn attempt<S: TokenSource>(&mut self, source: &mut S) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let counters = &shared.counters;
        counters.token_requests.fetch_add(1, Ordering::Relaxed);
        let ahead = self.current.is_some();
        let span = tracing::debug_span!(
            target: "tower_oauth2",
            "token_fetch",
            ahead,
            attempt = self.failures + 1
        );
        let timeout = self.policy.timeout();
        let fetch = tokio::time::timeout(timeout, source.fetch()).instrument(span.clone());
        tokio::pin!(fetch);
        // The fetch is never dropped early; the token may expire meanwhile.
        let result = loop {
            let retire_at = self.current.as_ref().map(|live| live.retire_at);
            tokio::select! {
                biased;
                result = &mut fetch => break result.unwrap_or_else(|_| Err(Error::timeout(timeout))),
                () = sleep_until(retire_at) => self.retire(),
            }
        };

        let now = clock::now();
        match result.and_then(|token| self.schedule(token, now)) {
            Ok(live) => {
                if self.current.is_some() {
                    counters.refreshes_ahead.fetch_add(1, Ordering::Relaxed);
                }
                span.in_scope(|| {
                    tracing::debug!(
                        target: "tower_oauth2",
                        refresh_in = ?live.refresh_at.saturating_duration_since(now),
                        "token stored"
                    )
                });
                self.publish(Slot::Ready(live.token.clone()));
                self.current = Some(live);
                self.failures = 0;
                self.next_try = None;
                self.last_error = None;
                self.demand = false;
            }
            Err(error) => {
                counters.failures.fetch_add(1, Ordering::Relaxed);
                self.failures = self.failures.saturating_add(1);
                self.terminal |= error.is_reauthorization_required();
                let delay = self.policy.backoff(
                    self.failures,
                    error.is_transient(),
                    error.retry_after(),
                    rand::random(),
                );
                self.next_try = Some(now + delay);
                span.in_scope(|| {
                    tracing::warn!(
                        target: "tower_oauth2",
                        %error,
                        transient = error.is_transient(),
                        retry_in = ?delay,
                        serving_current = self.current.is_some(),
                        "token fetch failed"
                    )
                });
                if self.current.is_some() {
                    self.last_error = Some(error);
                } else {
                    self.publish(self.failed(error));
                    self.demand = false;
                }
            }
        }
    }

    /// Decides when a fresh token is refreshed and when it stops being handed out.
    fn schedule(&self, token: Token, now: Instant) -> Result<Live, Error> {
        let lifetime = self.policy.lifetime(token.expires_in());
        let schedule = self.policy.schedule(lifetime, rand::random());
        let retire_at = token.issued_at() + schedule.retire_after;
        if retire_at <= now {
            return Err(Error::invalid_response(
                "the token expired before it arrived (expires_in shorter than the round trip)",
            ));
        }
        let planned = token.issued_at() + schedule.refresh_after;
        // A slow round trip can eat the planned lead time; never refresh in a loop.
        let refresh_at = if planned > now {
            planned
        } else {
            now + (retire_at - now) / 2
        };
        Ok(Live {
            token,
            refresh_at,
            retire_at,
        })
    }
}

impl Drop for Refresher {
    /// The task is gone (a panicking source, a runtime shutting down): tell
    /// every waiter now rather than leave them waiting for ever.
    fn drop(&mut self) {
        self.publish(Slot::Failed {
            error: Error::closed(),
            retry_at: None,
        });
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
