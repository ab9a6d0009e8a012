//! The background task that owns the token source: the only writer of the
//! cache's slot.
//!
//! A small state machine, in the spirit of tower's `buffer` worker. It owns
//! the [`TokenSource`], works out from its [`Phase`] what is due next, and
//! publishes what requests should find in the slot. Requests talk to it only
//! through [`Message`]s.
//!
//! | phase | event | next |
//! |---|---|---|
//! | `Idle` | `Wanted` | `Wanted` |
//! | `Wanted` | (at once) | fetch |
//! | `Serving` | its refresh point | fetch (the token is still served) |
//! | `Serving` | `Rejected` for its token | `Wanted` |
//! | `Failing` | retry due, with a token to replace or a request waiting | fetch |
//! | `Failing` | `Wanted` | note it: the retry is for that request |
//! | `Failing`, `Stopped` | its token expires, or is `Rejected` | the same, without it: requests get the last error |
//! | `Stopped` | anything else | nothing: re-authorization is required |
//! | any | `Shutdown` | end, once the fetch under way (if any) and its save are done; a failed save is answered, then retried until saved |
//!
//! A fetch ends in `Serving` (a token), `Failing` (an error: a token still
//! valid is kept until it expires, and retries follow the backoff), or
//! `Stopped` (re-authorization required). While it runs, messages and the
//! expiry of the current token are still handled, and its result is kept even
//! when every handle goes meanwhile: the source has already absorbed what the
//! server answered. When the last handle is gone, the task ends.
//!
//! With a store, three more steps, all in this task and never on a request's
//! path: the state is loaded before anything else (a valid stored token
//! starts in `Serving`; an unreadable store in `Stopped`); after every fetch
//! the new state is saved *before* the result is published; a failed save is
//! retried on its own timer, apart from the phases. `invalid_grant` reads the
//! store once more, and a refresh token rotated meanwhile by another process
//! is tried at once instead of stopping. `Shutdown` is answered once the
//! fetch under way (if any) and its save are done; when that save failed,
//! requests get `Closed` while the save is retried, and every later
//! `Shutdown` tries it at once and hears whether it worked.

use std::sync::{atomic::Ordering, Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::{Message, RefreshPolicy, Shared, Slot};
use crate::{
    clock::{self, Instant},
    metrics::{self, Outcome},
    store::{Lease, StoreKey, TokenState, TokenStore},
    token::expose,
    Error, Token, TokenSource,
};
use secrecy::SecretString;

/// The token being handed out, with the two moments that matter to it.
struct Live {
    token: Token,
    /// When to ask for the next token.
    refresh_at: Instant,
    /// The announced expiry: handed out until then, never after.
    expires_at: Instant,
}

enum Phase {
    /// No token, and no request has asked for one.
    Idle,
    /// A request waits and there is no token: fetch now.
    Wanted,
    /// Handing out a token; refresh at its refresh point.
    Serving(Live),
    /// The last attempt failed; the next is due at `retry_at`.
    Failing {
        /// Still handed out until it expires.
        live: Option<Live>,
        /// What requests get once no token is left.
        error: Error,
        failures: u32,
        retry_at: Instant,
        /// A request waits for the retry (matters only without `live`).
        wanted: bool,
    },
    /// The source can never succeed again: re-authorization is required.
    Stopped { live: Option<Live>, error: Error },
}

/// The longest a replica waits, while another one holds the fleet's lease,
/// before it looks at the store again (a store that announces changes wakes
/// it sooner). Messages wait meanwhile.
const PEER_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The lease outlives the longest fetch by this much, so it cannot expire
/// while its holder's request is still running.
const LEASE_SLACK: std::time::Duration = std::time::Duration::from_secs(5);

/// What the task does next.
enum Next {
    Fetch,
    /// Retry a save that failed.
    Save,
    /// Wait for a message or this moment, whichever comes first.
    Until(Instant),
    /// Wait for a message.
    Message,
}

/// The slowest of the last few token requests: the room a refresh needs.
#[derive(Default)]
struct RoundTrips {
    recent: [std::time::Duration; 3],
    next: usize,
}

impl RoundTrips {
    fn record(&mut self, took: std::time::Duration) {
        self.recent[self.next] = took;
        self.next = (self.next + 1) % self.recent.len();
    }

    fn slowest(&self) -> std::time::Duration {
        self.recent.iter().copied().max().unwrap_or_default()
    }
}

/// A store, and what this task knows of it.
struct Persist<T> {
    store: T,
    key: StoreKey,
    /// What the store holds, as far as this task knows.
    stored: TokenState,
    /// The newest state, not saved yet because the last save failed.
    unsaved: Option<Unsaved>,
    /// `invalid_grant` has made the task read the store again since the
    /// last success: once is enough.
    reread: bool,
    /// This task holds the fleet's lease (a shared store only).
    leased: bool,
}

/// What the fleet says before a fetch.
enum Step {
    /// Ask the token endpoint (holding the lease, or with no fleet).
    Fetch,
    /// Another replica stored a newer token: it is now this one's.
    Adopted,
    /// Another replica is asking and has not stored its token yet: try
    /// again.
    Wait,
    /// The shared store is unreachable and the source would send a refresh
    /// token: not without the lease. A failed attempt, retried with backoff.
    NoLease(Error),
}

struct Unsaved {
    state: TokenState,
    failures: u32,
    retry_at: Instant,
}

struct Refresher<T> {
    policy: RefreshPolicy,
    // Weak: the task must not keep the handles' state (and its sender)
    // alive, or it would never learn that they are all gone.
    shared: Weak<Shared>,
    phase: Phase,
    round_trips: RoundTrips,
    store: Option<Persist<T>>,
    /// `Shutdown` was asked: answer here once the fetch under way is done.
    /// Every caller waiting for the answer: two may ask at once.
    closing: Vec<oneshot::Sender<Result<(), Error>>>,
    /// This task's name in the fleet's lease.
    owner: String,
    /// The last token the server rejected: a shared store may still hold
    /// it, and adopting it back would serve it again.
    rejected: Option<Token>,
    /// The `cache` label of the metrics.
    metrics: metrics::Name,
}

pub(super) async fn run<S: TokenSource, T: TokenStore>(
    mut source: S,
    policy: RefreshPolicy,
    store: Option<(T, StoreKey)>,
    shared: Weak<Shared>,
    mut inbox: mpsc::UnboundedReceiver<Message>,
    metrics: metrics::Name,
) {
    let mut task = Refresher {
        policy,
        shared,
        phase: Phase::Idle,
        round_trips: RoundTrips::default(),
        store: store.map(|(store, key)| Persist {
            store,
            key,
            stored: TokenState::default(),
            unsaved: None,
            reread: false,
            leased: false,
        }),
        closing: Vec::new(),
        owner: format!("{:032x}", rand::random::<u128>()),
        rejected: None,
        metrics,
    };
    task.restore(&mut source).await;
    loop {
        if !task.closing.is_empty() {
            let flushed = task.flush().await;
            let saved = flushed.is_ok();
            for done in task.closing.drain(..) {
                let _ = done.send(flushed.clone());
            }
            if saved {
                answer_the_rest(&mut inbox);
            } else {
                // Stopped for requests, but the state is not given up.
                publish(&task.shared, Slot::Failed(Error::closed()));
                task.save_until_saved(Some(&mut inbox)).await;
            }
            return;
        }
        let now = clock::now();
        task.expire(now, false);
        let deadline = match task.next(now) {
            Next::Fetch => {
                if task.fetch(&mut source, &mut inbox).await.is_break() {
                    task.save_until_saved(None).await;
                    return;
                }
                continue;
            }
            Next::Save => {
                task.retry_save().await;
                continue;
            }
            Next::Until(deadline) => Some(deadline),
            Next::Message => None,
        };
        tokio::select! {
            biased;
            message = inbox.recv() => match message {
                Some(message) => task.on_message(message, false),
                // Every handle is gone.
                None => {
                    task.save_until_saved(None).await;
                    return;
                }
            },
            () = sleep_until(deadline) => {}
        }
    }
}

impl<T: TokenStore> Refresher<T> {
    fn next(&self, now: Instant) -> Next {
        let next = self.next_for_phase(now);
        let Some(unsaved) = self.store.as_ref().and_then(|p| p.unsaved.as_ref()) else {
            return next;
        };
        match next {
            _ if unsaved.retry_at <= now => Next::Save,
            Next::Until(deadline) => Next::Until(deadline.min(unsaved.retry_at)),
            Next::Message => Next::Until(unsaved.retry_at),
            fetch => fetch,
        }
    }

    fn next_for_phase(&self, now: Instant) -> Next {
        let at = |deadline: Instant| {
            if deadline <= now {
                Next::Fetch
            } else {
                Next::Until(deadline)
            }
        };
        match &self.phase {
            Phase::Idle => Next::Message,
            Phase::Wanted => Next::Fetch,
            Phase::Serving(live) => at(live.refresh_at),
            Phase::Failing {
                live: Some(live),
                retry_at,
                ..
            } => match at(*retry_at) {
                Next::Until(retry_at) => Next::Until(retry_at.min(live.expires_at)),
                fetch => fetch,
            },
            Phase::Failing {
                live: None,
                retry_at,
                wanted: true,
                ..
            } => at(*retry_at),
            Phase::Failing { live: None, .. } => Next::Message,
            Phase::Stopped {
                live: Some(live), ..
            } => Next::Until(live.expires_at),
            Phase::Stopped { live: None, .. } => Next::Message,
        }
    }

    fn on_message(&mut self, message: Message, fetching: bool) {
        match message {
            Message::Wanted => {
                if let Some(shared) = self.shared.upgrade() {
                    shared.wanted.store(false, Ordering::Release);
                }
                match &mut self.phase {
                    Phase::Idle => self.phase = Phase::Wanted,
                    Phase::Failing { wanted, .. } => *wanted = true,
                    // A token is served or a fetch is due: the request finds it.
                    Phase::Wanted | Phase::Serving(_) | Phase::Stopped { .. } => {}
                }
            }
            Message::Rejected(id) => {
                if self.live().is_some_and(|live| live.token.id() == id) {
                    tracing::debug!(target: "tower_oauth2", "token rejected by the server");
                    self.rejected = self.live().map(|live| live.token.clone());
                    self.drop_live(fetching);
                }
            }
            Message::Shutdown(done) => self.closing.push(done),
        }
    }

    /// Leaves the phase for the caller to set; the token it was serving.
    fn take_live(&mut self) -> Option<Live> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Serving(live) => Some(live),
            Phase::Failing { live, .. } | Phase::Stopped { live, .. } => live,
            Phase::Idle | Phase::Wanted => None,
        }
    }

    fn live(&self) -> Option<&Live> {
        match &self.phase {
            Phase::Serving(live) => Some(live),
            Phase::Failing { live, .. } | Phase::Stopped { live, .. } => live.as_ref(),
            Phase::Idle | Phase::Wanted => None,
        }
    }

    /// Stops handing out the current token once it has expired.
    fn expire(&mut self, now: Instant, fetching: bool) {
        if self.live().is_some_and(|live| live.expires_at <= now) {
            tracing::debug!(target: "tower_oauth2", "token expired without a replacement");
            self.drop_live(fetching);
        }
    }

    /// Forgets the current token. Requests then wait for the fetch under
    /// way, or for a new one, or get the last error.
    fn drop_live(&mut self, fetching: bool) {
        let slot = match &mut self.phase {
            Phase::Serving(_) => {
                self.phase = Phase::Wanted;
                Slot::Empty
            }
            Phase::Failing { live, error, .. } | Phase::Stopped { live, error } => {
                *live = None;
                if fetching {
                    Slot::Empty
                } else {
                    Slot::Failed(error.clone())
                }
            }
            Phase::Idle | Phase::Wanted => return,
        };
        metrics::expires_in(&self.metrics, None);
        self.publish(slot);
    }

    fn publish(&self, slot: Slot) {
        publish(&self.shared, slot);
    }

    /// For the metrics: `live` is about to be handed out.
    fn published(&self, live: &Live, now: Instant) {
        metrics::expires_in(
            &self.metrics,
            Some(live.expires_at.saturating_duration_since(now)),
        );
    }

    /// One token request, start to end. `Break` when every handle has gone.
    async fn fetch<S: TokenSource>(
        &mut self,
        source: &mut S,
        inbox: &mut mpsc::UnboundedReceiver<Message>,
    ) -> std::ops::ControlFlow<()> {
        let failures = match &self.phase {
            Phase::Failing { failures, .. } => *failures,
            _ => 0,
        };
        match self.coordinate(source).await {
            Step::Fetch => {}
            Step::Adopted => return std::ops::ControlFlow::Continue(()),
            Step::NoLease(error) => {
                let live = self.take_live();
                self.failed(
                    error,
                    live,
                    failures + 1,
                    clock::now(),
                    &tracing::Span::current(),
                );
                return std::ops::ControlFlow::Continue(());
            }
            // Between two looks at the store: what requests said meanwhile
            // (a shutdown, say) must not wait for the other replica.
            Step::Wait => loop {
                match inbox.try_recv() {
                    Ok(message) => self.on_message(message, false),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        return std::ops::ControlFlow::Continue(())
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        return std::ops::ControlFlow::Break(())
                    }
                }
            },
        }
        if let Some(shared) = self.shared.upgrade() {
            shared
                .counters
                .token_requests
                .fetch_add(1, Ordering::Relaxed);
        }
        let span = tracing::debug_span!(
            target: "tower_oauth2",
            "token_fetch",
            ahead = self.live().is_some(),
            attempt = failures + 1
        );
        let timeout = self.policy.timeout();
        let sent = source.refresh_token().cloned();
        let started = clock::now();
        let mut open = true;
        let result = {
            let fetch = tokio::time::timeout(timeout, source.fetch()).instrument(span.clone());
            tokio::pin!(fetch);
            // The fetch is never dropped early: a rotated refresh token may be
            // in its answer. Meanwhile the current token may expire or be
            // rejected.
            loop {
                let expires_at = self.live().map(|live| live.expires_at);
                tokio::select! {
                    biased;
                    result = &mut fetch => break result.unwrap_or_else(|_| Err(Error::timeout(timeout))),
                    message = inbox.recv(), if open => match message {
                        Some(message) => self.on_message(message, true),
                        None => open = false,
                    },
                    () = sleep_until(expires_at) => self.expire(clock::now(), true),
                }
            }
        };

        let now = clock::now();
        let took = now - started;
        if result.is_ok() {
            self.round_trips.record(took);
        }
        let fresh = result.and_then(|token| self.schedule(token, now));
        // Saved before it is published: a rotated refresh token reaches the
        // store before the token that came with it serves any request.
        let new = fresh.as_ref().ok().map(|next| next.token.clone());
        let current = self.live().map(|live| live.token.clone());
        self.persist(
            sent.as_ref(),
            source.refresh_token(),
            new.as_ref(),
            current.as_ref(),
        )
        .await;
        // Saved first, then released: the next holder reads it (kept
        // instead when the save failed).
        self.release().await;

        let live = self.take_live();
        match fresh {
            Ok(next) => {
                span.in_scope(|| {
                    tracing::debug!(
                        target: "tower_oauth2",
                        refresh_in = ?next.refresh_at.saturating_duration_since(now),
                        "token stored"
                    )
                });
                metrics::token_request(&self.metrics, Outcome::Ok, took);
                if let Some(shared) = self.shared.upgrade() {
                    if live.is_some() {
                        shared
                            .counters
                            .refreshes_ahead
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
                if live.is_some() {
                    metrics::refreshed_ahead(&self.metrics);
                }
                self.published(&next, now);
                if let Some(persist) = &mut self.store {
                    persist.reread = false;
                }
                self.publish(Slot::Ready(next.token.clone()));
                self.phase = Phase::Serving(next);
            }
            Err(error) if error.is_reauthorization_required() && self.reread(source).await => {
                // Another process rotated the refresh token: try it at once.
                span.in_scope(|| {
                    tracing::info!(target: "tower_oauth2", "refresh token rejected; the store holds a newer one")
                });
                // Tried again at once: not a stop.
                metrics::token_request(&self.metrics, Outcome::Transient, took);
                if let Some(shared) = self.shared.upgrade() {
                    shared.counters.failures.fetch_add(1, Ordering::Relaxed);
                }
                self.phase = Phase::Failing {
                    live,
                    error,
                    failures: 0,
                    retry_at: now,
                    wanted: true,
                };
            }
            Err(error) => {
                metrics::token_request(&self.metrics, Outcome::of(&error), took);
                self.failed(error, live, failures + 1, now, &span)
            }
        }
        if open {
            std::ops::ControlFlow::Continue(())
        } else {
            std::ops::ControlFlow::Break(())
        }
    }

    fn failed(
        &mut self,
        error: Error,
        live: Option<Live>,
        failures: u32,
        now: Instant,
        span: &tracing::Span,
    ) {
        if let Some(shared) = self.shared.upgrade() {
            shared.counters.failures.fetch_add(1, Ordering::Relaxed);
        }
        let serving = live.is_some();
        if error.is_reauthorization_required() {
            span.in_scope(|| {
                tracing::error!(target: "tower_oauth2", %error, serving_current = serving, "token source stopped: re-authorization required")
            });
            let error = error.with_next_attempt(None);
            if !serving {
                self.publish(Slot::Failed(error.clone()));
            }
            self.phase = Phase::Stopped { live, error };
            return;
        }
        let delay = self.policy.backoff(
            failures,
            error.is_transient(),
            error.retry_after(),
            rand::random(),
        );
        let retry_at = now + delay;
        span.in_scope(|| {
            tracing::warn!(
                target: "tower_oauth2",
                %error,
                transient = error.is_transient(),
                retry_in = ?delay,
                serving_current = serving,
                "token fetch failed"
            )
        });
        let error = error.with_next_attempt(Some(retry_at));
        if !serving {
            self.publish(Slot::Failed(error.clone()));
        }
        self.phase = Phase::Failing {
            live,
            error,
            failures,
            retry_at,
            wanted: false,
        };
    }

    /// When a fresh token is refreshed and when it expires.
    fn schedule(&self, token: Token, now: Instant) -> Result<Live, Error> {
        let lifetime = self.policy.lifetime(token.expires_in());
        let expires_at = token.issued_at() + lifetime;
        if expires_at <= now {
            return Err(Error::invalid_response(
                "the token expired before it arrived (expires_in shorter than the round trip)",
            ));
        }
        let planned = token.issued_at()
            + self
                .policy
                .refresh_point(lifetime, self.round_trips.slowest(), rand::random());
        // A round trip slower than the lifetime allows for eats the planned
        // lead; never refresh in a loop.
        let refresh_at = if planned > now {
            planned
        } else {
            now + (expires_at - now) / 2
        };
        Ok(Live {
            token,
            refresh_at,
            expires_at,
        })
    }
}

/// The store's part.
impl<T: TokenStore> Refresher<T> {
    /// Loads what an earlier run stored, before anything else happens.
    async fn restore<S: TokenSource>(&mut self, source: &mut S) {
        let Some(persist) = &mut self.store else {
            return;
        };
        let state = match persist.store.load(&persist.key).await {
            Ok(Some(state)) => state,
            Ok(None) => return,
            Err(error) => {
                // Nothing is fetched, so nothing is written over the store
                // until a person has looked at it.
                tracing::error!(target: "tower_oauth2", %error, key = %persist.key, "cannot load the token store; the cache is stopped");
                self.publish(Slot::Failed(error.clone()));
                self.phase = Phase::Stopped { live: None, error };
                return;
            }
        };
        if let Some(refresh_token) = state.refresh_token() {
            source.resume(refresh_token.clone());
        }
        let token = state.access_token(self.policy.lifetime(None));
        persist.stored = state;
        let now = clock::now();
        if let Some(live) = token.and_then(|token| self.schedule(token, now).ok()) {
            tracing::debug!(target: "tower_oauth2", "token loaded from the store");
            self.published(&live, now);
            self.publish(Slot::Ready(live.token.clone()));
            self.phase = Phase::Serving(live);
        }
    }

    /// Saves the state after a fetch: after a success, or after a failure
    /// whose answer still rotated the refresh token (`sent` is the one the
    /// fetch started with). A failure that changed nothing saves nothing: the
    /// store may hold a newer state from another process.
    async fn persist(
        &mut self,
        sent: Option<&SecretString>,
        refresh_token: Option<&SecretString>,
        new: Option<&Token>,
        current: Option<&Token>,
    ) {
        let Some(persist) = &self.store else {
            return;
        };
        let rotated = refresh_token.map(expose) != sent.map(expose);
        if new.is_none() && !rotated {
            return;
        }
        let state = TokenState::of(new.or(current), refresh_token);
        if state.same_as(&persist.stored) && persist.unsaved.is_none() {
            return;
        }
        self.save(state).await;
    }

    async fn retry_save(&mut self) {
        let state = self
            .store
            .as_ref()
            .and_then(|p| p.unsaved.as_ref())
            .map(|unsaved| unsaved.state.clone());
        if let Some(state) = state {
            self.save(state).await;
            // Kept while the state was unsaved; a no-op otherwise.
            self.release().await;
        }
    }

    /// One save; on failure the state waits in `unsaved` for a retry.
    async fn save(&mut self, state: TokenState) {
        let Some(persist) = &mut self.store else {
            return;
        };
        let result = persist.store.save(&persist.key, &state).await;
        let shared = self.shared.upgrade();
        match result {
            Ok(()) => {
                persist.stored = state;
                persist.unsaved = None;
                if let Some(shared) = &shared {
                    shared.counters.saves.fetch_add(1, Ordering::Relaxed);
                    *shared.store_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                metrics::saved(&self.metrics);
            }
            Err(error) => {
                let failures = persist.unsaved.as_ref().map_or(1, |u| u.failures + 1);
                let delay = self.policy.backoff(failures, true, None, rand::random());
                tracing::error!(
                    target: "tower_oauth2",
                    %error,
                    key = %persist.key,
                    retry_in = ?delay,
                    "cannot save the token state; the token stays in use and the save is retried"
                );
                persist.unsaved = Some(Unsaved {
                    state,
                    failures,
                    retry_at: clock::now() + delay,
                });
                if let Some(shared) = &shared {
                    shared
                        .counters
                        .save_failures
                        .fetch_add(1, Ordering::Relaxed);
                    *shared.store_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                }
                metrics::save_failed(&self.metrics);
            }
        }
    }

    /// The task is ending, with every handle gone or after a `shutdown`
    /// whose save failed: a state that could not be saved yet (a rotated
    /// refresh token, say) is retried with backoff until it is saved, or
    /// until the runtime stops, since losing it would mean a person
    /// authorizing again. With the `inbox` (after a `shutdown`), each later
    /// `shutdown` tries at once and hears whether the state is saved now.
    async fn save_until_saved(&mut self, mut inbox: Option<&mut mpsc::UnboundedReceiver<Message>>) {
        while let Some(retry_at) = self
            .store
            .as_ref()
            .and_then(|p| p.unsaved.as_ref())
            .map(|unsaved| unsaved.retry_at)
        {
            let message = async {
                match inbox.as_mut() {
                    Some(inbox) => inbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                biased;
                message = message => message,
                () = tokio::time::sleep_until(retry_at) => {
                    self.retry_save().await;
                    continue;
                }
            };
            match message {
                Some(Message::Shutdown(done)) => {
                    let _ = done.send(self.flush().await);
                }
                // The cache is closed: nothing else is served.
                Some(Message::Wanted | Message::Rejected(_)) => {}
                None => inbox = None,
            }
        }
        self.release().await;
        if let Some(inbox) = inbox {
            answer_the_rest(inbox);
        }
    }

    /// Before the task ends on `shutdown`: one more try at a save that
    /// failed; the caller hears whether it worked and decides.
    async fn flush(&mut self) -> Result<(), Error> {
        self.retry_save().await;
        self.release().await;
        match self.store.as_ref().and_then(|p| p.unsaved.as_ref()) {
            None => Ok(()),
            Some(_) => Err(self
                .shared
                .upgrade()
                .and_then(|shared| shared.store_error.lock().ok()?.clone())
                .unwrap_or_else(|| {
                    Error::store(
                        crate::StoreErrorKind::WriteFailed,
                        "the newest token state could not be saved",
                    )
                })),
        }
    }

    /// Before a fetch, with a shared store: take the fleet's lease, read what
    /// the others stored meanwhile, and adopt a newer token instead of
    /// fetching. The holder also takes over the newest refresh token, so
    /// only the holder ever sends it, and always the newest one.
    async fn coordinate<S: TokenSource>(&mut self, source: &mut S) -> Step {
        let Some(persist) = &mut self.store else {
            return Step::Fetch;
        };
        let ttl = self.policy.timeout() + LEASE_SLACK;
        match persist.store.acquire(&persist.key, &self.owner, ttl).await {
            Ok(Lease::Acquired) => persist.leased = true,
            Ok(Lease::Busy) => {
                // Woken as soon as the holder has saved, or after the poll
                // interval; then the store may hold the holder's token.
                persist.store.changed(&persist.key, PEER_POLL).await;
                return match self.adopt(source).await {
                    Ok(true) => Step::Adopted,
                    Ok(false) | Err(_) => Step::Wait,
                };
            }
            Ok(Lease::Unshared) => return Step::Fetch,
            // Another replica may hold a copy of this refresh token and be
            // sending it now; two senders get the family revoked by a server
            // that detects reuse. Serve the current token, wait for the store.
            Err(error) if source.refresh_token().is_some() => {
                tracing::warn!(target: "tower_oauth2", %error, key = %persist.key, "the shared store is unreachable; the refresh token is not sent without the fleet's lease");
                return Step::NoLease(
                    Error::store(
                        crate::StoreErrorKind::Unavailable,
                        "the shared store is unreachable: the refresh token is sent only under the fleet's lease",
                    )
                    .with_source(error),
                );
            }
            // Nothing that another replica could be sending too.
            Err(error) => {
                tracing::warn!(target: "tower_oauth2", %error, key = %persist.key, "the shared store is unreachable; fetching without the fleet's lease");
                return Step::Fetch;
            }
        }
        match self.adopt(source).await {
            Ok(true) => Step::Adopted,
            Ok(false) => Step::Fetch,
            // The lease is ours, but the newest refresh token may be in the
            // store we cannot read: the one in memory may be spent already.
            Err(error) if source.refresh_token().is_some() => {
                self.release().await;
                Step::NoLease(
                    Error::store(
                        crate::StoreErrorKind::Unavailable,
                        "the shared store cannot be read: the refresh token is sent only after reading the newest one",
                    )
                    .with_source(error),
                )
            }
            Err(_) => Step::Fetch,
        }
    }

    /// Reads the shared store: hands the newest refresh token to the source
    /// (only a lease holder sends it), and adopts the access token if
    /// another replica fetched it after this one's. Gives the lease back
    /// when it adopts. The store's error when it cannot be read.
    async fn adopt<S: TokenSource>(&mut self, source: &mut S) -> Result<bool, Error> {
        let Some(persist) = &mut self.store else {
            return Ok(false);
        };
        let state = match persist.store.load(&persist.key).await {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(false),
            Err(error) => {
                tracing::warn!(target: "tower_oauth2", %error, key = %persist.key, "cannot read the shared store");
                return Err(error);
            }
        };
        // A state of ours not saved yet is newer than anything stored.
        if persist.unsaved.is_none() {
            if let Some(stored) = state.refresh_token() {
                if source.refresh_token().map(expose) != Some(expose(stored)) {
                    source.resume(stored.clone());
                }
            }
        }
        let token = state.access_token(self.policy.lifetime(None));
        persist.stored = state;
        // Another replica's token, fetched after this one's (the state may
        // hold the very token this task saved: that is no reason to wait).
        let same = |a: &Token, b: &Token| expose(a.access_token()) == expose(b.access_token());
        let newer = token.filter(|token| {
            self.live().is_none_or(|live| {
                !same(token, &live.token) && token.issued_at() > live.token.issued_at()
            }) && self
                .rejected
                .as_ref()
                .is_none_or(|rejected| !same(token, rejected))
        });
        let now = clock::now();
        let Some(live) = newer.and_then(|token| self.schedule(token, now).ok()) else {
            return Ok(false);
        };
        self.release().await;
        tracing::debug!(target: "tower_oauth2", "token adopted from the shared store");
        if let Some(shared) = self.shared.upgrade() {
            shared.counters.adopted.fetch_add(1, Ordering::Relaxed);
        }
        metrics::adopted(&self.metrics);
        self.published(&live, now);
        self.publish(Slot::Ready(live.token.clone()));
        self.phase = Phase::Serving(live);
        Ok(true)
    }

    /// Gives the fleet's lease back, unless a state is still unsaved: the
    /// next holder would read the older state and send a refresh token this
    /// replica has already spent. Kept, the lease goes back after the save
    /// that succeeds, or expires by itself.
    async fn release(&mut self) {
        let Some(persist) = &mut self.store else {
            return;
        };
        if persist.unsaved.is_some() {
            return;
        }
        if std::mem::take(&mut persist.leased) {
            if let Err(error) = persist.store.release(&persist.key, &self.owner).await {
                // It expires by itself.
                tracing::warn!(target: "tower_oauth2", %error, "cannot release the fleet's lease");
            }
        }
    }

    /// After `invalid_grant`: whether the store holds a refresh token other
    /// than the one just refused, now handed to the source.
    async fn reread<S: TokenSource>(&mut self, source: &mut S) -> bool {
        let Some(persist) = &mut self.store else {
            return false;
        };
        // A state of ours not saved yet is newer than anything stored.
        if persist.unsaved.is_some() || std::mem::replace(&mut persist.reread, true) {
            return false;
        }
        let Ok(Some(state)) = persist.store.load(&persist.key).await else {
            return false;
        };
        let newer = match (state.refresh_token(), source.refresh_token()) {
            (Some(stored), Some(sent)) => expose(stored) != expose(sent),
            (Some(_), None) => true,
            (None, _) => false,
        };
        if newer {
            if let Some(refresh_token) = state.refresh_token() {
                source.resume(refresh_token.clone());
            }
            persist.stored = state;
        }
        newer
    }
}

/// The state is saved and the task ends: a `shutdown` still queued hears
/// `Ok`, and one sent from now on finds the task gone (which means the same).
fn answer_the_rest(inbox: &mut mpsc::UnboundedReceiver<Message>) {
    inbox.close();
    while let Ok(message) = inbox.try_recv() {
        if let Message::Shutdown(done) = message {
            let _ = done.send(Ok(()));
        }
    }
}

impl<T> Drop for Refresher<T> {
    /// The task is gone (a panicking source, a runtime shutting down): tell
    /// every waiter now rather than leave them waiting for ever.
    fn drop(&mut self) {
        publish(&self.shared, Slot::Failed(Error::closed()));
    }
}

fn publish(shared: &Weak<Shared>, slot: Slot) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let expires_at = match &slot {
        Slot::Ready(token) => token.expires_at(),
        Slot::Empty | Slot::Failed(_) => None,
    };
    let slot = Arc::new(slot);
    strong.slot.store(slot.clone());
    strong.changed.notify_waiters();
    if let Some(expires_at) = expires_at {
        tokio::spawn(withdraw_at(
            expires_at,
            shared.clone(),
            Arc::downgrade(&slot),
        ));
    }
}

/// Withdraws a published token at its expiry if it is still out. The task
/// expires its tokens itself, but only between awaits: a store that does
/// not answer (Redis down, a slow disk) would otherwise keep an expired
/// token in the slot until the call returns.
async fn withdraw_at(expires_at: Instant, shared: Weak<Shared>, published: Weak<Slot>) {
    tokio::time::sleep_until(expires_at).await;
    let Some(shared) = shared.upgrade() else {
        return;
    };
    // A weak pointer keeps the allocation, so its address cannot have been
    // reused, and not the token, which is dropped once it is replaced.
    let current = shared.slot.load();
    if std::ptr::eq(Arc::as_ptr(&current), published.as_ptr()) {
        let previous = shared
            .slot
            .compare_and_swap(&current, Arc::new(Slot::Empty));
        if std::ptr::eq(Arc::as_ptr(&previous), published.as_ptr()) {
            shared.changed.notify_waiters();
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
