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
//! | `Serving` | `Rejected` for its token | `Wanted`; `Failing` with backoff when the token before it was rejected soon after it was issued too |
//! | `Serving`, `Failing`, `Stopped` | `Expired` (the wall clock passed its expiry) | as for its expiry |
//! | `Failing` | retry due, with a token to replace or a request waiting | fetch |
//! | `Failing` | `Wanted` | note it: the retry is for that request |
//! | `Failing`, `Stopped` | its token expires, or is `Rejected` | the same, without it: requests get the last error |
//! | `Stopped` | anything else | nothing: re-authorization is required |
//! | any | `Shutdown` | end, once the fetch under way (if any) and its save are done; a failed save is answered, then retried until saved |
//! | `Serving`, with `refresh_unused` off | its refresh point, the token not taken since it was published | look again halfway to its expiry; unused then too, serve it until it expires, then `Idle` |
//! | `Idle`, `Failing` or `Stopped` with nothing due | (no store, or one of one process) | park: the task ends, and the next message spawns it again in the same phase |
//!
//! A fetch ends in `Serving` (a token), `Failing` (an error: a token still
//! valid is kept until it expires, and retries follow the backoff), or
//! `Stopped` (re-authorization required). While it runs, messages and the
//! expiry of the current token are still handled, and its result is kept even
//! when every handle goes meanwhile: the source has already absorbed what the
//! server answered. When the last handle is gone, the task ends.
//!
//! With a store, more steps, all in this task and never on a request's
//! path; what the store protocol does (generations, the lease, fencing) is
//! `protocol`'s, and this task only publishes and schedules what it
//! answers. The state is loaded before anything else (a valid stored token
//! starts in `Serving`; a store it must not write over in `Stopped`; a load
//! that may pass is retried on its own timer, while a source that sends no
//! refresh token serves without it). Before a fetch, the protocol may hand
//! over a newer state another replica stored (adopted instead of fetching).
//! After every fetch the new state is saved *before* the result is
//! published; a failed save is retried on its own timer, apart from the
//! phases. While nothing else is due, a shared store is looked at (every
//! second, or when it announces a change): a newer token is adopted, a
//! store found behind is written back. `invalid_grant` reads the store once
//! more, and a refresh token rotated meanwhile by another process is tried
//! at once instead of stopping. `Shutdown` is answered once the
//! fetch under way (if any) and its save are done; when that save failed,
//! requests get `Closed` while the save is retried, and every later
//! `Shutdown` tries it at once and hears whether it worked.

use std::sync::{atomic::Ordering, Arc, Weak};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;

use super::{
    census,
    expiry::{self, Expiry},
    protocol::{Before, Protocol, Wrote, AUDIT},
    Message, Parked, RefreshPolicy, Shared, Slot,
};
use crate::{
    clock::{self, Instant},
    metrics::{self, Outcome},
    store::{StoreKey, TokenState, TokenStore},
    token::expose,
    Error, ErrorKind, Token, TokenSource,
};
use secrecy::SecretString;

/// The token being handed out, with the two moments that matter to it.
struct Live {
    token: Token,
    /// When to ask for the next token.
    refresh_at: Instant,
    /// The announced expiry: handed out until then, never after.
    expires_at: Instant,
    /// How often it was found unused at its refresh point, when the policy
    /// refreshes only used tokens. After the second look it is served until
    /// it expires, then the cache idles.
    unused_looks: u8,
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

/// A token rejected this soon after it was issued says the API refuses
/// new tokens (a stale key set, a wrong audience): the next one waits with
/// backoff. One rejected later is replaced at once.
const REJECTED_SOON: std::time::Duration = std::time::Duration::from_secs(30);

/// Looks at a token's use (at its refresh point, then halfway to its
/// expiry) before an unused one is left to expire.
const LOOKS: u8 = 2;

/// What the task does next.
enum Next {
    Fetch,
    /// Retry a save that failed.
    Save,
    /// Load the store again: it could not be read at start.
    Load,
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

/// The first load failed in a way that may pass (I/O, a timeout, Redis not
/// up yet): it is tried again with backoff.
struct Loading {
    /// The source would send a refresh token: it waits for the load.
    blocks: bool,
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
    store: Option<Protocol<T>>,
    /// The store has not been read yet (a credential that needs it waits).
    loading: Option<Loading>,
    /// Tokens rejected one after the other, each soon after it was issued.
    rejections: u32,
    /// `Shutdown` was asked: answer here once the fetch under way is done.
    /// Every caller waiting for the answer: two may ask at once.
    closing: Vec<oneshot::Sender<Result<(), Error>>>,
    /// A `closing` caller asked for the grant to be revoked too.
    revoking: bool,
    /// `refresh_now` callers, answered by the next token or failure.
    refreshing: Vec<oneshot::Sender<Result<Token, Error>>>,
    /// The last token the server rejected: a shared store may still hold
    /// it, and adopting it back would serve it again.
    rejected: Option<Token>,
    /// The `cache` label of the metrics.
    metrics: metrics::Name,
    /// Where the task runs, and runs again after it parks.
    runtime: tokio::runtime::Handle,
    /// The store has been read (once, when the task first runs).
    restored: bool,
}

/// The task, parked before its first run: started by the first message
/// (or at once, by `build`, for a cache with a store).
pub(super) fn start<S: TokenSource, T: TokenStore>(
    runtime: tokio::runtime::Handle,
    source: S,
    policy: RefreshPolicy,
    store: Option<(T, StoreKey)>,
    shared: Weak<Shared>,
    inbox: mpsc::UnboundedReceiver<Message>,
    metrics: metrics::Name,
) -> Parked {
    let task = Refresher {
        policy: policy.clone(),
        shared,
        phase: Phase::Idle,
        round_trips: RoundTrips::default(),
        store: store.map(|(store, key)| Protocol::new(store, key, &policy)),
        loading: None,
        rejections: 0,
        closing: Vec::new(),
        revoking: false,
        refreshing: Vec::new(),
        rejected: None,
        metrics,
        runtime,
        restored: false,
    };
    task.parked(source, inbox)
}

impl<T: TokenStore> Refresher<T> {
    /// Runs the task again from where it parked.
    fn parked<S: TokenSource>(self, source: S, inbox: mpsc::UnboundedReceiver<Message>) -> Parked {
        Box::new(move || {
            let runtime = self.runtime.clone();
            runtime.spawn(run(source, self, inbox));
        })
    }
}

/// Stops the task that withdraws expired tokens when this one stops.
struct Withdrawing(tokio::task::AbortHandle);

impl Drop for Withdrawing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn run<S: TokenSource, T: TokenStore>(
    mut source: S,
    mut task: Refresher<T>,
    mut inbox: mpsc::UnboundedReceiver<Message>,
) {
    let _running = census::task();
    let _withdrawing = match task.shared.upgrade() {
        Some(shared) => Withdrawing(
            tokio::spawn(expiry::run(task.shared.clone(), shared.expiry.subscribe()))
                .abort_handle(),
        ),
        None => return,
    };
    if !task.restored {
        task.restored = true;
        task.restore(&mut source).await;
    }
    loop {
        if !task.closing.is_empty() {
            let mut flushed = task.flush().await;
            if flushed.is_ok() && std::mem::take(&mut task.revoking) {
                flushed = task.revoke(&mut source).await;
            }
            let saved = task
                .store
                .as_ref()
                .and_then(Protocol::unsaved_error)
                .is_none();
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
            Next::Fetch if task.unused() => continue,
            Next::Fetch => {
                if task.fetch(&mut source, &mut inbox).await.is_break() {
                    task.save_until_saved(None).await;
                    return;
                }
                continue;
            }
            Next::Save => {
                task.retry_save(&mut source).await;
                continue;
            }
            Next::Load => {
                task.restore(&mut source).await;
                continue;
            }
            Next::Until(deadline) => Some(deadline),
            Next::Message if task.may_park() => {
                // Nothing to do until a request asks: no task, no timer.
                let Some(shared) = task.shared.upgrade() else {
                    return;
                };
                let mut parked = shared.parked();
                match inbox.try_recv() {
                    Ok(message) => {
                        drop(parked);
                        task.on_message(message, false);
                        continue;
                    }
                    // Never closed here: `shared` holds the sender.
                    Err(_) => {
                        *parked = Some(task.parked(source, inbox));
                        return;
                    }
                }
            }
            Next::Message => None,
        };
        // A shared store is looked at while nothing else is due: another
        // replica's token is adopted the moment it appears, and a store that
        // came back older than this task's state is repaired.
        let audit = task
            .store
            .as_ref()
            .filter(|p| p.shared())
            .map(|p| p.changed(AUDIT));
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
            () = async { audit.unwrap().await }, if audit.is_some() => task.audit(&mut source).await,
        }
    }
}

impl<T: TokenStore> Refresher<T> {
    fn next(&self, now: Instant) -> Next {
        let next = match &self.loading {
            Some(loading) if loading.retry_at <= now => return Next::Load,
            // A credential that sends a refresh token waits for the store:
            // the newest one may be there.
            Some(loading) if loading.blocks => return Next::Until(loading.retry_at),
            Some(loading) => match self.next_for_phase(now) {
                Next::Until(deadline) => Next::Until(deadline.min(loading.retry_at)),
                Next::Message => Next::Until(loading.retry_at),
                next => next,
            },
            None => self.next_for_phase(now),
        };
        let Some(retry_at) = self.store.as_ref().and_then(Protocol::retry_at) else {
            return next;
        };
        match next {
            _ if retry_at <= now => Next::Save,
            Next::Until(deadline) => Next::Until(deadline.min(retry_at)),
            Next::Message => Next::Until(retry_at),
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
                let Some(token) = self
                    .live()
                    .filter(|live| live.token.id() == id)
                    .map(|live| live.token.clone())
                else {
                    return;
                };
                tracing::debug!(target: "tower_oauth2", "token rejected by the server");
                let now = clock::now();
                let age = now.saturating_duration_since(token.issued_at());
                let soon = REJECTED_SOON.min(self.policy.lifetime(token.expires_in()) / 2);
                self.rejections = if age < soon { self.rejections + 1 } else { 1 };
                self.rejected = Some(token);
                let serving = matches!(self.phase, Phase::Serving(_));
                self.drop_live(fetching);
                // The first rejection is replaced at once; new tokens
                // rejected one after the other wait with backoff, so an API
                // that refuses every token costs token requests that grow
                // with time, not with the request rate.
                if serving && !fetching && self.rejections > 1 {
                    let failures = self.rejections - 1;
                    let retry_at = now + self.policy.backoff(failures, true, None, rand::random());
                    let error = Error::token_rejected().with_next_attempt(Some(retry_at));
                    self.publish(Slot::Failed(error.clone()));
                    self.phase = Phase::Failing {
                        live: None,
                        error,
                        failures,
                        retry_at,
                        wanted: true,
                    };
                }
            }
            Message::Expired(id) => {
                if self.live().is_some_and(|live| live.token.id() == id) {
                    tracing::debug!(target: "tower_oauth2", "token expired by the wall clock");
                    self.drop_expired(fetching);
                }
            }
            Message::Shutdown(done) => self.closing.push(done),
            Message::Revoke(done) => {
                self.revoking = true;
                self.closing.push(done);
            }
            Message::RefreshNow(done) => {
                let now = clock::now();
                match &mut self.phase {
                    Phase::Stopped { error, .. } => {
                        let _ = done.send(Err(error.clone()));
                        return;
                    }
                    // The fetch under way answers it.
                    _ if fetching => {}
                    Phase::Idle => self.phase = Phase::Wanted,
                    Phase::Wanted => {}
                    Phase::Serving(live) => live.refresh_at = now,
                    Phase::Failing {
                        live,
                        error,
                        retry_at,
                        wanted,
                        ..
                    } => {
                        *retry_at = now;
                        *wanted = true;
                        // Requests wait for this attempt instead of failing.
                        if live.is_none() {
                            let slot = Slot::Failed(error.clone().with_next_attempt(Some(now)));
                            publish(&self.shared, slot);
                        }
                    }
                }
                self.refreshing.push(done);
            }
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
            self.drop_expired(fetching);
        }
    }

    /// [`drop_live`](Self::drop_live) for a token that expired: one left
    /// unused is not replaced until a request asks.
    fn drop_expired(&mut self, fetching: bool) {
        let unused = matches!(&self.phase, Phase::Serving(live) if live.unused_looks >= LOOKS);
        self.drop_live(fetching);
        if unused {
            self.phase = Phase::Idle;
        }
    }

    /// At the refresh point, with [`RefreshPolicy::refresh_unused`] off:
    /// whether the token went unused since the last look. It is looked at
    /// once more halfway to its expiry (a caller back meanwhile gets a
    /// refresh before it), then served until it expires, and not refreshed.
    fn unused(&mut self) -> bool {
        if self.policy.refreshes_unused() {
            return false;
        }
        let Phase::Serving(live) = &mut self.phase else {
            return false;
        };
        if live.unused_looks >= LOOKS {
            return false;
        }
        let used = self
            .shared
            .upgrade()
            .is_some_and(|shared| shared.used.swap(false, Ordering::Relaxed));
        if used {
            return false;
        }
        live.unused_looks += 1;
        live.refresh_at = if live.unused_looks < LOOKS {
            let now = clock::now();
            now + live.expires_at.saturating_duration_since(now) / 2
        } else {
            tracing::debug!(target: "tower_oauth2", "token unused: left to expire");
            live.expires_at
        };
        true
    }

    /// Whether the task may stop until the next message: nothing is due,
    /// nobody waits for an answer, and no shared store needs watching.
    fn may_park(&self) -> bool {
        self.closing.is_empty()
            && self.refreshing.is_empty()
            && self.store.as_ref().is_none_or(|p| !p.shared())
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
        let asked = clock::now();
        let before = match &mut self.store {
            Some(protocol) => {
                let leases = protocol.leases;
                let before = protocol
                    .before_fetch(source.refresh_token().is_some())
                    .await;
                let taken = protocol.leases - leases;
                let waited = matches!(before, Before::Wait(_))
                    .then(|| clock::now().saturating_duration_since(asked));
                metrics::leases(&self.metrics, taken, waited);
                if let Some(shared) = self.shared.upgrade() {
                    saved_meanwhile(&shared, protocol);
                    let counters = &shared.counters;
                    counters.leases.fetch_add(taken, Ordering::Relaxed);
                    if let Some(waited) = waited {
                        let ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX);
                        counters.lease_wait_ms.fetch_add(ms, Ordering::Relaxed);
                    }
                }
                before
            }
            None => Before::Fetch(None),
        };
        match before {
            Before::Fetch(newer) => {
                if newer.is_some_and(|state| self.take_state(state, source)) {
                    self.release().await;
                    return std::ops::ControlFlow::Continue(());
                }
            }
            Before::Wait(Some(state)) => {
                self.take_state(state, source);
                return std::ops::ControlFlow::Continue(());
            }
            Before::NoLease(error, newer) => {
                // Read before the store went away: the source must not keep
                // the refresh token it replaces (a chaos seed saw a replica
                // send one spent 14 s before).
                if newer.is_some_and(|state| self.take_state(state, source)) {
                    self.release().await;
                    return std::ops::ControlFlow::Continue(());
                }
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
            Before::Wait(_) => loop {
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
            let _armed = census::timer();
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
        let sent_now = source.refresh_token().cloned();
        self.persist(
            source,
            sent.as_ref(),
            sent_now.as_ref(),
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
                if let Some(protocol) = &mut self.store {
                    protocol.succeeded();
                }
                self.publish(Slot::Ready(next.token.clone()));
                self.answer_refresh(Ok(next.token.clone()));
                self.phase = Phase::Serving(next);
                self.tell(Ok(false));
            }
            Err(error)
                if error.is_reauthorization_required()
                    && self.reread(source, sent.as_ref()).await =>
            {
                metrics::token_request(&self.metrics, Outcome::Transient, took);
                if let Some(shared) = self.shared.upgrade() {
                    shared.counters.failures.fetch_add(1, Ordering::Relaxed);
                }
                // The stored state came with a valid access token (another
                // process exchanged a code, or refreshed): serving it.
                if !matches!(self.phase, Phase::Serving(_)) {
                    // Another process rotated the refresh token: try it at once.
                    span.in_scope(|| {
                        tracing::info!(target: "tower_oauth2", "refresh token rejected; the store holds a newer one")
                    });
                    // Tried again at once: not a stop.
                    self.phase = Phase::Failing {
                        live,
                        error,
                        failures: 0,
                        retry_at: now,
                        wanted: true,
                    };
                }
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
            self.tell(Ok(true));
            self.answer_refresh(Err(error.clone()));
            self.phase = Phase::Stopped { live, error };
            return;
        }
        let mut delay = self.policy.backoff(
            failures,
            error.is_transient(),
            error.retry_after(),
            rand::random(),
        );
        // Waiting for a shared store costs a store call, not a token
        // request: look again soon, or the fleet comes back from a Redis
        // outage only at the end of each replica's backoff.
        if matches!(error.kind(), ErrorKind::Store(_)) {
            delay = delay.min(AUDIT);
        }
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
        self.answer_refresh(Err(error.clone()));
        self.phase = Phase::Failing {
            live,
            error,
            failures,
            retry_at,
            wanted: false,
        };
    }

    /// Answers every `refresh_now` caller waiting.
    fn answer_refresh(&mut self, result: Result<Token, Error>) {
        for done in self.refreshing.drain(..) {
            let _ = done.send(result.clone());
        }
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
            unused_looks: 0,
        })
    }
}

/// The store's part: the protocol answers, this task publishes.
impl<T: TokenStore> Refresher<T> {
    /// Loads what an earlier run stored, before anything else happens. A
    /// load that may pass is tried again with backoff; meanwhile a source
    /// that sends no refresh token (client credentials) serves without it.
    async fn restore<S: TokenSource>(&mut self, source: &mut S) {
        let Some(protocol) = &mut self.store else {
            self.tell(Ok(source.needs_authorization()));
            return;
        };
        let state = match protocol.start().await {
            Ok(state) => {
                if self.loading.take().is_some() {
                    tracing::info!(target: "tower_oauth2", key = %protocol.key(), "token store read");
                }
                state
            }
            Err(error) if !permanent(&error) => {
                let failures = self.loading.as_ref().map_or(0, |l| l.failures) + 1;
                let delay = self.policy.backoff(failures, true, None, rand::random());
                let blocks = source.refresh_token().is_some();
                tracing::warn!(target: "tower_oauth2", %error, key = %protocol.key(), retry_in = ?delay, "cannot load the token store; trying again");
                let retry_at = clock::now() + delay;
                let error = error.with_next_attempt(Some(retry_at));
                if blocks && self.live().is_none() {
                    self.publish(Slot::Failed(error.clone()));
                }
                self.tell(Err(error.clone()));
                self.loading = Some(Loading {
                    blocks,
                    failures,
                    retry_at,
                });
                return;
            }
            Err(error) => {
                // Nothing is fetched, so nothing is written over the store
                // until a person has looked at it.
                tracing::error!(target: "tower_oauth2", %error, key = %protocol.key(), "cannot use the token store; the cache is stopped");
                self.loading = None;
                self.tell(Err(error.clone()));
                self.publish(Slot::Failed(error.clone()));
                self.phase = Phase::Stopped { live: None, error };
                return;
            }
        };
        if let Some(state) = state {
            if self.take_state(state, source) {
                tracing::debug!(target: "tower_oauth2", "token loaded from the store");
            }
        }
        self.tell(Ok(source.needs_authorization()));
        // A request that waited for the load now waits for a fetch.
        if matches!(self.phase, Phase::Idle)
            && self
                .shared
                .upgrade()
                .is_some_and(|s| s.wanted.load(Ordering::Acquire))
        {
            self.phase = Phase::Wanted;
        }
    }

    /// Continues from `state`, read from the store and newer than anything
    /// this task had: its refresh token goes to the source; its access token
    /// is served when it is valid, newer than the current one and not the
    /// one the server rejected. Whether it serves that token.
    fn take_state<S: TokenSource>(&mut self, state: TokenState, source: &mut S) -> bool {
        // A code not exchanged yet, of another authorization than the one
        // the store's refresh token descends from: the code is the newer
        // authorization (the stored token may be dead), so it wins.
        let origin = source.origin();
        if source.refresh_token().is_none()
            && !source.needs_authorization()
            && origin.is_some()
            && state.origin().is_some()
            && state.origin() != origin.as_deref()
        {
            tracing::info!(target: "tower_oauth2", "the grant has a new authorization; the stored state of an older one is not resumed");
            return false;
        }
        if let Some(stored) = state.refresh_token() {
            if source.refresh_token().map(expose) != Some(expose(stored)) {
                source.resume(stored.clone());
            }
        }
        let same = |a: &Token, b: &Token| expose(a.access_token()) == expose(b.access_token());
        let token = state
            .access_token(self.policy.lifetime(None))
            .filter(|token| {
                self.live().is_none_or(|live| {
                    !same(token, &live.token) && token.issued_at() > live.token.issued_at()
                }) && self
                    .rejected
                    .as_ref()
                    .is_none_or(|rejected| !same(token, rejected))
            });
        let now = clock::now();
        let Some(live) = token.and_then(|token| self.schedule(token, now).ok()) else {
            return false;
        };
        if let Some(shared) = self.shared.upgrade() {
            shared.counters.adopted.fetch_add(1, Ordering::Relaxed);
        }
        metrics::adopted(&self.metrics);
        self.published(&live, now);
        self.publish(Slot::Ready(live.token.clone()));
        self.answer_refresh(Ok(live.token.clone()));
        // A token from the store is not the answer to a request: a failure
        // count or a stop is over.
        self.phase = Phase::Serving(live);
        self.tell(Ok(false));
        true
    }

    /// Answers [`TokenCache::authorization_required`](super::TokenCache::authorization_required).
    fn tell(&self, answer: Result<bool, Error>) {
        if let Some(shared) = self.shared.upgrade() {
            shared.authorization.send_replace(Some(answer));
        }
    }

    /// Between fetches, with a shared store: adopts what another replica
    /// stored, repairs a store found behind.
    async fn audit<S: TokenSource>(&mut self, source: &mut S) {
        let Some(protocol) = &mut self.store else {
            return;
        };
        let newer = protocol.audit().await;
        if let Some(shared) = self.shared.upgrade() {
            saved_meanwhile(&shared, protocol);
        }
        if let Some(state) = newer {
            if self.take_state(state, source) {
                tracing::debug!(target: "tower_oauth2", "token adopted from the shared store");
                self.release().await;
            }
        }
    }

    /// Saves the state after a fetch: after a success, or after a failure
    /// whose answer still rotated the refresh token (`sent` is the one the
    /// fetch started with). A failure that changed nothing saves nothing: the
    /// store may hold a newer state from another process.
    async fn persist<S: TokenSource>(
        &mut self,
        source: &mut S,
        sent: Option<&SecretString>,
        refresh_token: Option<&SecretString>,
        new: Option<&Token>,
        current: Option<&Token>,
    ) {
        let Some(protocol) = &mut self.store else {
            return;
        };
        let rotated = refresh_token.map(expose) != sent.map(expose);
        if new.is_none() && !rotated {
            return;
        }
        let wrote = protocol
            .save(TokenState::of(new.or(current), refresh_token).with_origin(source.origin()))
            .await;
        self.record(wrote, source);
    }

    async fn retry_save<S: TokenSource>(&mut self, source: &mut S) {
        let Some(protocol) = &mut self.store else {
            return;
        };
        if let Some(wrote) = protocol.retry_save().await {
            self.record(wrote, source);
        }
        // Kept while the state was unsaved; a no-op otherwise.
        self.release().await;
    }

    /// Counts a save and acts on what it found.
    fn record<S: TokenSource>(&mut self, wrote: Wrote, source: &mut S) {
        let shared = self.shared.upgrade();
        match wrote {
            Wrote::Saved => {
                if let Some(shared) = &shared {
                    shared.counters.saves.fetch_add(1, Ordering::Relaxed);
                    *shared.store_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                metrics::saved(&self.metrics);
            }
            Wrote::Failed(error) => {
                if let Some(shared) = &shared {
                    shared
                        .counters
                        .save_failures
                        .fetch_add(1, Ordering::Relaxed);
                    *shared.store_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                }
                metrics::save_failed(&self.metrics);
            }
            // Another writer's state is newer: its refresh token is the one
            // to send next. The token just fetched still serves.
            Wrote::Superseded(state) => {
                if let Some(shared) = &shared {
                    *shared.store_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                }
                if let Some(stored) = state.refresh_token() {
                    source.resume(stored.clone());
                }
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
        while let Some(retry_at) = self.store.as_ref().and_then(Protocol::retry_at) {
            let message = async {
                match inbox.as_mut() {
                    Some(inbox) => inbox.recv().await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                biased;
                message = message => message,
                () = census::sleep_until(retry_at) => {
                    if let Some(protocol) = &mut self.store {
                        if let Some(wrote) = protocol.retry_save().await {
                            self.count_only(wrote);
                        }
                    }
                    continue;
                }
            };
            match message {
                Some(Message::Shutdown(done)) => {
                    let _ = done.send(self.flush().await);
                }
                // Closed: a revocation waits for a state saved first.
                Some(Message::Revoke(done)) => {
                    let _ = done.send(Err(Error::closed()));
                }
                // The cache is closed: nothing else is served.
                Some(Message::Wanted | Message::Rejected(_) | Message::Expired(_)) => {}
                // Closed: the sender hears it by the dropped reply.
                Some(Message::RefreshNow(_)) => {}
                None => inbox = None,
            }
        }
        self.release().await;
        if let Some(inbox) = inbox {
            answer_the_rest(inbox);
        }
    }

    /// [`record`](Self::record) without a source (the task is ending).
    fn count_only(&mut self, wrote: Wrote) {
        let mut none = NoSource;
        self.record(wrote, &mut none);
    }

    /// Before the task ends on `shutdown`: one more try at a save that
    /// failed (bounded by the store's deadline); the caller hears whether it
    /// worked, and what was not saved.
    async fn flush(&mut self) -> Result<(), Error> {
        if let Some(protocol) = &mut self.store {
            if let Some(wrote) = protocol.retry_save().await {
                self.count_only(wrote);
            }
        }
        self.release().await;
        match self.store.as_ref().and_then(Protocol::unsaved_error) {
            None => Ok(()),
            Some(error) => Err(Error::store(
                crate::StoreErrorKind::WriteFailed,
                "the newest token state (with the newest refresh token) is not in the store yet; it is kept in memory and the save is retried",
            )
            .with_source(error)),
        }
    }

    /// Gives the grant back to the server, then clears it from the store
    /// (`shutdown_and_revoke`). In a fleet, under the lease and with the
    /// newest refresh token, like a refresh.
    async fn revoke<S: TokenSource>(&mut self, source: &mut S) -> Result<(), Error> {
        if let Some(protocol) = &mut self.store {
            match protocol
                .before_fetch(source.refresh_token().is_some())
                .await
            {
                Before::Fetch(newer) => {
                    if let Some(state) = newer {
                        self.take_state(state, source);
                    }
                }
                Before::Wait(_) => {
                    return Err(Error::store(
                        crate::StoreErrorKind::Unavailable,
                        "another replica is asking the token endpoint: the grant was not revoked",
                    ))
                }
                Before::NoLease(error, _) => return Err(error),
            }
        }
        let access_token = self.live().map(|live| live.token.clone());
        let timeout = self.policy.timeout();
        let revoked = tokio::time::timeout(timeout, source.revoke(access_token.as_ref()))
            .await
            .unwrap_or_else(|_| Err(Error::timeout(timeout)));
        if let Err(error) = revoked {
            self.release().await;
            return Err(error);
        }
        tracing::info!(target: "tower_oauth2", "grant revoked");
        self.tell(Ok(source.needs_authorization()));
        let Some(protocol) = &mut self.store else {
            return Ok(());
        };
        // Nothing left to resume: no restart or replica sends it again.
        let wrote = protocol.save(TokenState::of(None, None)).await;
        self.count_only(wrote);
        self.release().await;
        match self.store.as_ref().and_then(Protocol::unsaved_error) {
            None => Ok(()),
            Some(error) => Err(Error::store(
                crate::StoreErrorKind::WriteFailed,
                "the grant is revoked, but the store still holds it; clearing it is retried",
            )
            .with_source(error)),
        }
    }

    /// Gives the fleet's lease back, unless a state is still unsaved.
    async fn release(&mut self) {
        if let Some(protocol) = &mut self.store {
            protocol.release().await;
        }
    }

    /// After `invalid_grant` for `sent` (or no refresh token at all):
    /// whether the store holds a refresh token other than the one just
    /// refused, now handed to the source. Its access token, when still
    /// good, is served at once (the phase is then `Serving`): a process
    /// that has just exchanged a code stored both, and refreshing would
    /// cost a token request and a rotation for nothing.
    async fn reread<S: TokenSource>(
        &mut self,
        source: &mut S,
        sent: Option<&SecretString>,
    ) -> bool {
        let Some(protocol) = &mut self.store else {
            return false;
        };
        match protocol.reread(sent).await {
            Some(state) => {
                if let Some(refresh_token) = state.refresh_token() {
                    source.resume(refresh_token.clone());
                }
                self.take_state(state, source);
                true
            }
            None => false,
        }
    }
}

/// The protocol wrote an unsaved state back while it looked at the store
/// (it found the store behind): the save error is over.
fn saved_meanwhile<T: TokenStore>(shared: &Shared, protocol: &Protocol<T>) {
    if protocol.retry_at().is_some() {
        return;
    }
    let mut error = shared.store_error.lock().unwrap_or_else(|e| e.into_inner());
    if error.take().is_some() {
        shared.counters.saves.fetch_add(1, Ordering::Relaxed);
    }
}

/// Store errors a retry cannot mend: the store holds something the cache
/// must not write over until a person has looked.
fn permanent(error: &Error) -> bool {
    use crate::{ErrorKind, StoreErrorKind};
    matches!(
        error.kind(),
        ErrorKind::Store(
            StoreErrorKind::Corrupt
                | StoreErrorKind::UnsupportedVersion
                | StoreErrorKind::OtherCredential
                | StoreErrorKind::Unwritable
        ) | ErrorKind::Config
    )
}

/// The source of a task that is ending: nothing resumes from it.
struct NoSource;

impl TokenSource for NoSource {
    async fn fetch(&mut self) -> Result<Token, Error> {
        Err(Error::closed())
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
        if let Some(shared) = self.shared.upgrade() {
            shared.authorization.send_if_modified(|answer| {
                answer.is_none() && {
                    *answer = Some(Err(Error::closed()));
                    true
                }
            });
        }
        publish(&self.shared, Slot::Failed(Error::closed()));
    }
}

fn publish(shared: &Weak<Shared>, slot: Slot) {
    let Some(strong) = shared.upgrade() else {
        return;
    };
    let ready = match &slot {
        Slot::Ready(token) => token.expires_at().map(|at| (at, token.id())),
        Slot::Empty | Slot::Failed(_) => None,
    };
    if matches!(slot, Slot::Ready(_)) {
        // A new token: what counts is whether a request takes this one
        // (the requests that waited for it do not count).
        strong.used.store(false, Ordering::Relaxed);
    }
    let slot = Arc::new(slot);
    strong.slot.store(slot.clone());
    strong.changed.notify_waiters();
    strong
        .expiry
        .send_replace(ready.map(|(at, id)| Expiry::new(at, id, &slot)));
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => census::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
