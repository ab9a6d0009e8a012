//! The cache's side of the store protocol: generations, the fleet's lease,
//! and fenced saves.
//!
//! The refresher asks, this module talks to the [`TokenStore`] and answers
//! what happened: a newer state was found, the state was saved, another
//! writer got there first, the store is behind and was repaired. It never
//! publishes or schedules a token: that stays with the refresher.
//!
//! The rules, each against a fault production has:
//! - **Generations.** Every state written carries a generation above every
//!   one this task has seen. A state read with a higher generation is newer
//!   and is adopted; one with a lower generation (Redis restarted empty or
//!   from an older snapshot, a failover that lost the last write) is
//!   *behind*: its refresh token is never adopted nor sent, and the newest
//!   state this task holds is written back (with its own generation, so that
//!   a lease holder saving on top of it is not refused).
//! - **Fenced saves.** A save names the generation it read and, under a
//!   lease, its owner; the store refuses it when either changed (a holder
//!   that paused past its lease, a late save). An answer lost to a timeout
//!   is recognised on the retry: the store then holds this very state.
//! - **A short lease, renewed while held.** A keeper task renews it every
//!   third of its time to live for as long as it is held, through a slow
//!   token request and through failed saves, so it neither lapses under a
//!   live holder nor outlives a dead one by more than its time to live. The
//!   holder sends a refresh token only with at least half of it left.
//! - **Quiet after a loss.** A process that has just started cannot tell
//!   an empty or old store from a new one, and one that finds the store
//!   behind cannot tell whether another replica holds a still newer state
//!   than its own (a holder whose save of a rotated refresh token failed
//!   while Redis was away). Before it sends a refresh token, it lets
//!   [`VOUCH`] pass since its start or since it found the store behind, so
//!   the others (woken when it takes the lease, and looking anyway every
//!   [`AUDIT`]; a holder with an unsaved state retries at least that often)
//!   can write back anything newer, and reads the store again. The same
//!   after a gap in what it has seen of the store (the process was
//!   stopped) and after any store call failed (the store may have
//!   restarted in between, however briefly): a store rolled back meanwhile
//!   can still be as new as, or newer than, what it last saw, and only the
//!   replicas that kept watching, or that hold a newer state they could
//!   not save, can tell.
//! - **Generations fence writes, the lease fences sends.** A holder whose
//!   lease lapsed (it paused, or Redis lost the lease with its data) still
//!   writes its state when the store holds exactly the generation it read:
//!   nobody wrote since, so its state is the newest there is, and it may
//!   hold the only copy of a rotated refresh token. Refusing it there would
//!   leave the next holder to send the spent one.
//! - **Bounded calls.** Every store call has a deadline; a call that misses
//!   it is a transient `Store(TimedOut)` error.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use secrecy::SecretString;

use crate::{
    clock::{self, Instant},
    store::{Expect, Lease, Saved, StoreKey, TokenState, TokenStore},
    token::expose,
    Error, RefreshPolicy, StoreErrorKind,
};

/// How often a replica of a shared store looks at it while it waits for
/// nothing else: to adopt what another replica stored, and to repair a
/// store that came back older than what it holds. A store that announces
/// changes ([`TokenStore::changed`]) wakes it sooner.
pub(super) const AUDIT: Duration = Duration::from_secs(1);

/// How long a freshly started process gives the others to write back a
/// newer state before it first sends a refresh token.
pub(super) const VOUCH: Duration = Duration::from_millis(1_500);

/// A replica that has not read a shared store for this long (it looks every
/// [`AUDIT`] while idle) may have missed a rollback: it keeps quiet for
/// [`VOUCH`] once it reads it again.
const GAP: Duration = Duration::from_secs(3);

/// The longest a replica waits, while another one holds the lease, before
/// it looks at the store again (a store that announces changes wakes it
/// sooner).
pub(super) const PEER_POLL: Duration = Duration::from_millis(50);

/// What the fleet says before a fetch.
pub(super) enum Before {
    /// Ask the token endpoint. With a state another replica stored, newer
    /// than this task's: continue from its refresh token, and take its
    /// access token instead of fetching when it is good (then
    /// [`Protocol::release`]).
    Fetch(Option<TokenState>),
    /// Another replica holds the lease. With the newer state it stored
    /// meanwhile (adopt it), or nothing yet (look again).
    Wait(Option<TokenState>),
    /// The store cannot be reached or read and a refresh token would be
    /// sent: not without the lease and the newest state. A failed attempt,
    /// with the newer state read before the store went away (to adopt all
    /// the same: it is the newest the fleet has).
    NoLease(Error, Option<TokenState>),
}

/// What became of a save.
pub(super) enum Wrote {
    /// Stored, or nothing to store.
    Saved,
    /// Not stored: kept, and tried again at [`Protocol::retry_at`].
    Failed(Error),
    /// Another writer stored a newer state meanwhile: it is the one to
    /// continue from (its refresh token is the newest).
    Superseded(TokenState),
}

/// A state waiting to be written (a failed save, or a store found behind).
struct Unsaved {
    failures: u32,
    retry_at: Instant,
    error: Error,
}

/// The lease as its keeper last renewed it.
struct LeaseClock {
    valid_until: Mutex<Instant>,
    lost: AtomicBool,
}

/// A held lease: dropping it stops the keeper.
struct Held {
    clock: Arc<LeaseClock>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

pub(super) struct Protocol<T> {
    store: Arc<T>,
    key: StoreKey,
    /// This task's name in the lease.
    owner: Arc<str>,
    deadline: Duration,
    lease_ttl: Duration,
    backoff: RefreshPolicy,
    /// The newest state this task has read or made; its generation is the
    /// highest it has seen. Not in the store while `unsaved` is set.
    newest: TokenState,
    /// The generation the store held when last looked at.
    stored: u64,
    unsaved: Option<Unsaved>,
    lease: Option<Held>,
    /// The store answered with a lease once: it is shared by a fleet.
    shared: bool,
    /// No refresh token is sent before this moment: [`VOUCH`] after this
    /// task started, or after it last found the store behind.
    quiet_until: Instant,
    /// `invalid_grant` made the task read the store again since the last
    /// success: once is enough.
    reread: bool,
    /// Leases taken so far (for the cache's stats).
    pub(super) leases: u64,
    /// When this task last read the store.
    seen_at: Option<Instant>,
    /// A store call failed since the last read: the store may have
    /// restarted meanwhile, from an older copy.
    missed: AtomicBool,
}

impl<T: TokenStore> Protocol<T> {
    pub(super) fn new(store: T, key: StoreKey, policy: &RefreshPolicy) -> Self {
        Self {
            store: Arc::new(store),
            key,
            owner: format!("{:032x}", rand::random::<u128>()).into(),
            deadline: policy.store_deadline(),
            lease_ttl: policy.lease(),
            backoff: policy.clone(),
            newest: TokenState::default(),
            stored: 0,
            unsaved: None,
            lease: None,
            shared: false,
            quiet_until: clock::now() + VOUCH,
            reread: false,
            leases: 0,
            seen_at: None,
            missed: AtomicBool::new(false),
        }
    }

    pub(super) fn key(&self) -> &StoreKey {
        &self.key
    }

    /// Whether other processes share the store (it has answered with a lease).
    pub(super) fn shared(&self) -> bool {
        self.shared
    }

    /// When a state that could not be saved is tried again.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.unsaved.as_ref().map(|u| u.retry_at)
    }

    /// The newest state, not in the store: the error of its last save.
    pub(super) fn unsaved_error(&self) -> Option<Error> {
        self.unsaved.as_ref().map(|u| u.error.clone())
    }

    /// One store call, bounded by the deadline.
    async fn bounded<X>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<X, Error>>,
    ) -> Result<X, Error> {
        let _armed = super::census::timer();
        let result = match tokio::time::timeout(self.deadline, call).await {
            Ok(result) => result,
            Err(_) => Err(Error::store(
                StoreErrorKind::TimedOut,
                format!(
                    "the token store did not answer a {what} within {:?}",
                    self.deadline
                ),
            )),
        };
        if result.is_err() {
            self.missed.store(true, Ordering::Relaxed);
        }
        result
    }

    /// Reads the store. After a gap in what this task has seen of it (the
    /// process was stopped), or after any store call failed (the store
    /// may have restarted, from an older copy), a quiet period starts: what
    /// it reads now may be a store rolled back meanwhile, still newer than
    /// what this task last saw, and the replicas that kept watching, or that
    /// hold a newer state they could not save, need their chance to write
    /// back the newest state.
    async fn load(&mut self) -> Result<Option<TokenState>, Error> {
        let state = self.bounded("load", self.store.load(&self.key)).await?;
        let now = clock::now();
        let missed = self.missed.swap(false, Ordering::Relaxed);
        if missed
            || self
                .seen_at
                .is_none_or(|at| now.saturating_duration_since(at) > GAP)
        {
            self.quiet_until = self.quiet_until.max(now + VOUCH);
        }
        self.seen_at = Some(now);
        Ok(state)
    }

    /// The first load, before anything else: the state to start from.
    pub(super) async fn start(&mut self) -> Result<Option<TokenState>, Error> {
        let state = self.load().await?;
        if let Some(state) = &state {
            self.stored = state.generation();
            self.newest = state.clone();
        }
        Ok(state)
    }

    /// Compares what the store holds with the newest state seen: a newer
    /// state is returned; a store that is behind is repaired.
    async fn compare(&mut self, state: Option<TokenState>) -> Option<TokenState> {
        let generation = state.as_ref().map_or(0, TokenState::generation);
        self.stored = generation;
        if generation > self.newest.generation() {
            let state = state?;
            self.newest = state.clone();
            return Some(state);
        }
        if generation >= self.newest.generation() {
            return None;
        }
        tracing::warn!(
            target: "tower_oauth2",
            key = %self.key,
            stored = generation,
            newest = self.newest.generation(),
            "the token store is behind (restarted empty or from an older copy?); writing the newest state back"
        );
        let newest = self.newest.clone();
        let wrote = match self.unsaved.as_ref().map(|u| u.failures) {
            // This task holds the newest state, unsaved: it is the one the
            // others wait for, so it writes it now (and waits for nobody).
            Some(failures) => self.write(newest, Some(failures)).await,
            None => {
                // Another replica may hold a newer state still: give it the
                // time to write it back before any refresh token is sent.
                self.quiet_until = self.quiet_until.max(clock::now() + VOUCH);
                // Written back as it was, same generation: a holder saving
                // on top of it is not refused for it.
                self.write(newest, None).await
            }
        };
        if let Wrote::Superseded(state) = wrote {
            return Some(state);
        }
        None
    }

    /// Before a fetch: takes the fleet's lease (with a shared store) and
    /// reads what the others stored meanwhile.
    pub(super) async fn before_fetch(&mut self, sends_refresh_token: bool) -> Before {
        if self.lease.is_none() {
            let acquired = self
                .bounded(
                    "lease",
                    self.store.acquire(&self.key, &self.owner, self.lease_ttl),
                )
                .await;
            match acquired {
                Ok(Lease::Unshared) => return Before::Fetch(None),
                Ok(Lease::Acquired) => {
                    self.shared = true;
                    self.leases += 1;
                    self.hold(clock::now());
                }
                Ok(Lease::Busy) => {
                    self.shared = true;
                    // Woken as soon as the holder has saved, or after the
                    // poll interval; then the store may hold its token.
                    self.changed(PEER_POLL).await;
                    return match self.load().await {
                        Ok(state) => Before::Wait(self.compare(state).await),
                        Err(_) => Before::Wait(None),
                    };
                }
                // Another replica may hold a copy of this refresh token and
                // be sending it now; two senders get the family revoked by a
                // server that detects reuse.
                Err(error) if sends_refresh_token => {
                    tracing::warn!(target: "tower_oauth2", %error, key = %self.key, "the shared store is unreachable; the refresh token is not sent without the fleet's lease");
                    return Before::NoLease(
                        unavailable(
                            "the shared store is unreachable: the refresh token is sent only under the fleet's lease",
                            error,
                        ),
                        None,
                    );
                }
                // Nothing that another replica could be sending too.
                Err(error) => {
                    tracing::warn!(target: "tower_oauth2", %error, key = %self.key, "the shared store is unreachable; fetching without the fleet's lease");
                    return Before::Fetch(None);
                }
            }
        }
        let mut newer = None;
        loop {
            if sends_refresh_token {
                while clock::now() < self.quiet_until {
                    self.changed(self.quiet_until - clock::now()).await;
                }
            }
            match self.load().await {
                Ok(state) => {
                    if let Some(state) = self.compare(state).await {
                        newer = Some(state);
                    }
                }
                // The lease is ours, but the newest refresh token may be in
                // the store we cannot read: the one in memory may be spent.
                Err(error) if sends_refresh_token => {
                    self.release().await;
                    return Before::NoLease(
                        unavailable(
                            "the shared store cannot be read: the refresh token is sent only after reading the newest one",
                            error,
                        ),
                        newer,
                    );
                }
                Err(_) => {}
            }
            // Found behind just now: another replica may hold a still newer
            // state; give it its time, then look again.
            if !sends_refresh_token || clock::now() >= self.quiet_until {
                if sends_refresh_token && self.shared && self.lease.is_none() {
                    // The lease went while the state was written back (the
                    // store restarted empty): taken again, the store is read
                    // once more; taken by another, that one sends.
                    let acquired = self
                        .bounded(
                            "lease",
                            self.store.acquire(&self.key, &self.owner, self.lease_ttl),
                        )
                        .await;
                    if let Ok(Lease::Acquired) = acquired {
                        self.leases += 1;
                        self.hold(clock::now());
                        continue;
                    }
                    return Before::Wait(newer);
                }
                break;
            }
        }
        if sends_refresh_token && !self.lease_left() {
            self.release().await;
            return Before::Wait(newer);
        }
        Before::Fetch(newer)
    }

    /// The lease is held with at least half of it left, or not needed (a
    /// store of one process). With a shared store, a lease found taken by
    /// another while this task wrote its state back is gone: that one sends.
    fn lease_left(&self) -> bool {
        match &self.lease {
            None => !self.shared,
            Some(held) => {
                let valid_until = *held
                    .clock
                    .valid_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                !held.clock.lost.load(Ordering::Acquire)
                    && valid_until.saturating_duration_since(clock::now()) >= self.lease_ttl / 2
            }
        }
    }

    /// Starts the keeper of a lease taken at `taken`.
    fn hold(&mut self, taken: Instant) {
        let clock = Arc::new(LeaseClock {
            valid_until: Mutex::new(taken + self.lease_ttl),
            lost: AtomicBool::new(false),
        });
        let keeper = tokio::spawn(keep(
            self.store.clone(),
            self.key.clone(),
            self.owner.clone(),
            self.lease_ttl,
            self.deadline,
            clock.clone(),
        ));
        self.lease = Some(Held { clock, keeper });
    }

    /// Waits until the store says it changed, or `within`.
    pub(super) fn changed(&self, within: Duration) -> impl Future<Output = ()> + Send + 'static {
        let (store, key) = (self.store.clone(), self.key.clone());
        async move { store.changed(&key, within).await }
    }

    /// Between fetches, with a shared store: what another replica stored
    /// that is newer than this task's (to adopt); repairs a store found
    /// behind.
    pub(super) async fn audit(&mut self) -> Option<TokenState> {
        match self.load().await {
            Ok(state) => self.compare(state).await,
            Err(error) => {
                tracing::debug!(target: "tower_oauth2", %error, key = %self.key, "cannot read the shared store");
                None
            }
        }
    }

    /// Saves `state`, the task's newest, above every generation seen. Its
    /// refresh token continues the newest state's authorization unless the
    /// source named another.
    pub(super) async fn save(&mut self, state: TokenState) -> Wrote {
        let state = match state.origin() {
            Some(_) => state,
            None => state.with_origin(self.newest.origin().map(str::to_owned)),
        };
        let generation = self.newest.generation().max(self.stored) + 1;
        self.write(state.with_generation(generation), None).await
    }

    /// Tries a save that failed again; `None` when nothing waits.
    pub(super) async fn retry_save(&mut self) -> Option<Wrote> {
        self.unsaved.as_ref()?;
        let newest = self.newest.clone();
        let failures = self.unsaved.as_ref().map(|u| u.failures);
        Some(self.write(newest, failures).await)
    }

    /// Writes `state` (with its generation) over what the store holds; on
    /// a conflict with an older state, over that one.
    async fn write(&mut self, state: TokenState, failures: Option<u32>) -> Wrote {
        self.newest = state.clone();
        // A conflict with an older state is retried at once: a few rounds
        // settle any race between replicas writing back the same state.
        for _ in 0..4 {
            let owner = self.lease.as_ref().map(|_| &*self.owner);
            let expect = Expect::new(self.stored, owner);
            let saved = self
                .bounded("save", self.store.save(&self.key, &state, expect))
                .await;
            match saved {
                Ok(Saved::Written) => return self.written(),
                Ok(Saved::Conflict(current)) => {
                    let generation = current.as_ref().map_or(0, TokenState::generation);
                    match current {
                        // An earlier attempt was applied; its answer was lost.
                        Some(current)
                            if generation == state.generation() && current.same_as(&state) =>
                        {
                            self.stored = generation;
                            return self.written();
                        }
                        // Someone else's, newer than anything seen here.
                        Some(current) if generation >= state.generation() => {
                            tracing::info!(target: "tower_oauth2", key = %self.key, "another writer stored a newer token state; continuing from it");
                            self.stored = generation;
                            self.newest = current.clone();
                            self.unsaved = None;
                            return Wrote::Superseded(current);
                        }
                        // Older (a store behind, or our own older state).
                        _ => self.stored = generation,
                    }
                }
                Ok(Saved::NotLeaseHolder) => {
                    // Lapsed while this task could not renew it. The store
                    // holds the generation this task read, so nobody wrote
                    // since: the state is the newest there is, and is
                    // written on the generation alone (see the module docs).
                    tracing::warn!(target: "tower_oauth2", key = %self.key, "the fleet's lease lapsed before the save; saving on the generation read");
                    self.lease = None;
                }
                Err(error) => return self.failed(error, failures),
            }
        }
        self.failed(
            Error::store(
                StoreErrorKind::WriteFailed,
                "the token store kept changing under the save",
            ),
            failures,
        )
    }

    fn written(&mut self) -> Wrote {
        self.stored = self.newest.generation();
        self.unsaved = None;
        Wrote::Saved
    }

    fn failed(&mut self, error: Error, failures: Option<u32>) -> Wrote {
        let failures = failures.unwrap_or(0) + 1;
        let mut delay = self.backoff.backoff(failures, true, None, rand::random());
        // A store that was unreachable is tried again soon: this state may
        // hold the only copy of a rotated refresh token, and the others
        // wait [`VOUCH`] for it after they find the store behind.
        if error.is_transient() {
            delay = delay.min(AUDIT);
        }
        tracing::error!(
            target: "tower_oauth2",
            %error,
            key = %self.key,
            retry_in = ?delay,
            "cannot save the token state; the token stays in use and the save is retried"
        );
        self.unsaved = Some(Unsaved {
            failures,
            retry_at: clock::now() + delay,
            error: error.clone(),
        });
        Wrote::Failed(error)
    }

    /// Gives the fleet's lease back, unless a state is still unsaved: the
    /// next holder would read the older state and send a refresh token this
    /// replica has already spent. Kept (and renewed), the lease goes back
    /// after the save that succeeds.
    pub(super) async fn release(&mut self) {
        if self.unsaved.is_some() {
            return;
        }
        if self.lease.take().is_some() {
            let released = self
                .bounded("release", self.store.release(&self.key, &self.owner))
                .await;
            if let Err(error) = released {
                // It expires by itself.
                tracing::warn!(target: "tower_oauth2", %error, "cannot release the fleet's lease");
            }
        }
    }

    /// After `invalid_grant` for `sent`: a stored state with another refresh
    /// token, no older than the newest seen, to try at once.
    pub(super) async fn reread(&mut self, sent: Option<&SecretString>) -> Option<TokenState> {
        // A state of ours not saved yet is newer than anything stored.
        if self.unsaved.is_some() || std::mem::replace(&mut self.reread, true) {
            return None;
        }
        let state = self.load().await.ok()??;
        if state.generation() < self.newest.generation() {
            return None;
        }
        let other = match (state.refresh_token(), sent) {
            (Some(stored), Some(sent)) => expose(stored) != expose(sent),
            (Some(_), None) => true,
            (None, _) => false,
        };
        self.stored = state.generation();
        if other {
            self.newest = state.clone();
            Some(state)
        } else {
            None
        }
    }

    /// A fetch succeeded: `invalid_grant` may read the store again.
    pub(super) fn succeeded(&mut self) {
        self.reread = false;
    }
}

fn unavailable(message: &'static str, error: Error) -> Error {
    Error::store(StoreErrorKind::Unavailable, message).with_source(error)
}

/// Renews the lease every third of its time to live while it is held (the
/// handle aborts this task when it is released). A renewal that fails
/// leaves the last good expiry in place; another owner holding it marks it
/// lost.
async fn keep<T: TokenStore>(
    store: Arc<T>,
    key: StoreKey,
    owner: Arc<str>,
    ttl: Duration,
    deadline: Duration,
    clock: Arc<LeaseClock>,
) {
    let _running = super::census::task();
    let _armed = super::census::timer();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let started = clock::now();
        match tokio::time::timeout(deadline, store.acquire(&key, &owner, ttl)).await {
            Ok(Ok(Lease::Acquired)) => {
                *clock.valid_until.lock().unwrap_or_else(|e| e.into_inner()) = started + ttl;
            }
            Ok(Ok(Lease::Busy)) => {
                clock.lost.store(true, Ordering::Release);
                return;
            }
            Ok(Ok(Lease::Unshared)) => return,
            Ok(Err(_)) | Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Token;
    use std::collections::HashMap;

    /// A shared store in memory that keeps the contract, with a switch to
    /// lose its data (a restart without persistence) or roll back to a copy.
    #[derive(Default)]
    struct Memory {
        state: Mutex<Option<TokenState>>,
        lease: Mutex<HashMap<String, (String, Instant)>>,
        saves: std::sync::atomic::AtomicUsize,
        /// Every call fails, as with Redis down.
        down: AtomicBool,
    }

    impl Memory {
        fn up(&self) -> Result<(), Error> {
            match self.down.load(Ordering::SeqCst) {
                true => Err(Error::store(StoreErrorKind::Unavailable, "down")),
                false => Ok(()),
            }
        }

        /// Restarted without its data.
        fn lose_everything(&self) {
            *self.state.lock().unwrap() = None;
            self.lease.lock().unwrap().clear();
        }
    }

    impl TokenStore for Memory {
        async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
            self.up()?;
            Ok(self.state.lock().unwrap().clone())
        }

        async fn save(
            &self,
            _: &StoreKey,
            state: &TokenState,
            expect: Expect<'_>,
        ) -> Result<Saved, Error> {
            self.up()?;
            let mut current = self.state.lock().unwrap();
            let held = current.as_ref().map_or(0, TokenState::generation);
            if held != expect.generation {
                return Ok(Saved::Conflict(current.clone()));
            }
            if let Some(owner) = expect.owner {
                let lease = self.lease.lock().unwrap();
                if !lease
                    .get("lease")
                    .is_some_and(|(o, until)| o == owner && *until > clock::now())
                {
                    return Ok(Saved::NotLeaseHolder);
                }
            }
            self.saves.fetch_add(1, Ordering::Relaxed);
            *current = Some(state.clone());
            Ok(Saved::Written)
        }

        async fn acquire(&self, _: &StoreKey, owner: &str, ttl: Duration) -> Result<Lease, Error> {
            self.up()?;
            let mut lease = self.lease.lock().unwrap();
            let now = clock::now();
            match lease.get("lease") {
                Some((o, until)) if o != owner && *until > now => Ok(Lease::Busy),
                _ => {
                    lease.insert("lease".into(), (owner.to_owned(), now + ttl));
                    Ok(Lease::Acquired)
                }
            }
        }

        async fn release(&self, _: &StoreKey, owner: &str) -> Result<(), Error> {
            let mut lease = self.lease.lock().unwrap();
            if lease.get("lease").is_some_and(|(o, _)| o == owner) {
                lease.remove("lease");
            }
            Ok(())
        }
    }

    impl TokenStore for Arc<Memory> {
        async fn load(&self, key: &StoreKey) -> Result<Option<TokenState>, Error> {
            (**self).load(key).await
        }
        async fn save(
            &self,
            key: &StoreKey,
            state: &TokenState,
            expect: Expect<'_>,
        ) -> Result<Saved, Error> {
            (**self).save(key, state, expect).await
        }
        async fn acquire(
            &self,
            key: &StoreKey,
            owner: &str,
            ttl: Duration,
        ) -> Result<Lease, Error> {
            (**self).acquire(key, owner, ttl).await
        }
        async fn release(&self, key: &StoreKey, owner: &str) -> Result<(), Error> {
            (**self).release(key, owner).await
        }
    }

    fn key() -> StoreKey {
        StoreKey::new("refresh_token", "app", "https://a.example/token", &[])
    }

    fn state(refresh_token: &str) -> TokenState {
        let token = Token::builder("access")
            .expires_in(Duration::from_secs(60))
            .build()
            .unwrap();
        TokenState::of(Some(&token), Some(&SecretString::from(refresh_token)))
    }

    fn rt(state: &TokenState) -> &str {
        expose(state.refresh_token().unwrap())
    }

    fn protocol(store: &Arc<Memory>) -> Protocol<Arc<Memory>> {
        Protocol::new(store.clone(), key(), &RefreshPolicy::default())
    }

    /// Two replicas that both saw `rt-1`, saved by `x`.
    async fn both_saw_rt_1(store: &Arc<Memory>) -> (Protocol<Arc<Memory>>, Protocol<Arc<Memory>>) {
        let (mut x, mut y) = (protocol(store), protocol(store));
        x.start().await.unwrap();
        y.start().await.unwrap();
        tokio::time::sleep(VOUCH).await;
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        assert!(matches!(x.save(state("rt-1")).await, Wrote::Saved));
        x.release().await;
        assert!(y.audit().await.is_some(), "y saw rt-1");
        (x, y)
    }

    #[tokio::test(start_paused = true)]
    async fn generations_grow_and_a_store_found_behind_is_written_back() {
        let store = Arc::new(Memory::default());
        let mut a = protocol(&store);
        assert!(a.start().await.unwrap().is_none());
        assert!(matches!(a.before_fetch(true).await, Before::Fetch(None)));
        assert!(matches!(a.save(state("rt-1")).await, Wrote::Saved));
        a.release().await;
        assert!(matches!(a.before_fetch(true).await, Before::Fetch(None)));
        assert!(matches!(a.save(state("rt-2")).await, Wrote::Saved));
        a.release().await;
        let saved = store.state.lock().unwrap().clone().unwrap();
        assert_eq!((saved.generation(), rt(&saved)), (2, "rt-2"));

        // Redis restarted from the snapshot of generation 1.
        let old = state("rt-1").with_generation(1);
        *store.state.lock().unwrap() = Some(old);
        assert!(a.audit().await.is_none(), "an older state is never adopted");
        let repaired = store.state.lock().unwrap().clone().unwrap();
        assert_eq!((repaired.generation(), rt(&repaired)), (2, "rt-2"));

        // And restarted empty.
        *store.state.lock().unwrap() = None;
        assert!(a.audit().await.is_none());
        let repaired = store.state.lock().unwrap().clone().unwrap();
        assert_eq!((repaired.generation(), rt(&repaired)), (2, "rt-2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_process_waits_for_the_newest_state_before_it_sends() {
        let store = Arc::new(Memory::default());
        let mut old = protocol(&store);
        old.start().await.unwrap();
        assert!(matches!(old.before_fetch(true).await, Before::Fetch(None)));
        old.save(state("rt-5")).await;
        old.release().await;
        // Redis loses everything; a new replica starts with the configured token.
        *store.state.lock().unwrap() = None;
        let mut fresh = protocol(&store);
        assert!(fresh.start().await.unwrap().is_none());
        let before = tokio::spawn(async move {
            let before = fresh.before_fetch(true).await;
            (fresh, before)
        });
        // The old replica looks at the store meanwhile and writes it back.
        tokio::time::sleep(VOUCH / 2).await;
        assert!(old.audit().await.is_none());
        let (_fresh, before) = before.await.unwrap();
        match before {
            Before::Fetch(Some(newer)) => assert_eq!(rt(&newer), "rt-5"),
            _ => panic!("the fresh replica must continue from the newest state"),
        }
    }

    /// Redis restarts empty while the lease holder holds the only copy of a
    /// rotated refresh token (its save failed): a replica that finds the
    /// store behind writes back its own, older state, and sends nothing
    /// until the holder has written the newest one; it continues from that.
    #[tokio::test(start_paused = true)]
    async fn after_a_loss_nobody_sends_before_the_newest_state_is_written_back() {
        // y finds the store behind while it looks between fetches, or as it
        // is about to fetch.
        for audit_first in [true, false] {
            after_a_loss(audit_first).await;
        }
    }

    async fn after_a_loss(audit_first: bool) {
        let store = Arc::new(Memory::default());
        let (mut x, mut y) = (protocol(&store), protocol(&store));
        x.start().await.unwrap();
        tokio::time::sleep(VOUCH).await;
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        assert!(matches!(x.save(state("rt-1")).await, Wrote::Saved));
        x.release().await;
        y.start().await.unwrap();
        tokio::time::sleep(VOUCH).await;

        // x sends rt-1 and gets rt-2; Redis goes away before the save.
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        store.down.store(true, Ordering::SeqCst);
        assert!(matches!(x.save(state("rt-2")).await, Wrote::Failed(_)));
        // It comes back empty; y looks first and writes back rt-1.
        store.lose_everything();
        store.down.store(false, Ordering::SeqCst);
        if audit_first {
            assert!(y.audit().await.is_none());
            assert_eq!(rt(&store.state.lock().unwrap().clone().unwrap()), "rt-1");
        }
        let before = tokio::spawn(async move {
            let before = y.before_fetch(true).await;
            (y, before)
        });
        // x retries within the audit interval, lease or no lease.
        tokio::time::sleep(x.retry_at().unwrap() - clock::now()).await;
        assert!(matches!(x.retry_save().await, Some(Wrote::Saved)));
        let (_y, before) = before.await.unwrap();
        match before {
            Before::Fetch(Some(newer)) => assert_eq!(rt(&newer), "rt-2"),
            _ => panic!("y would have sent the spent rt-1 (audit first: {audit_first})"),
        }
    }

    /// A replica away longer than [`GAP`] (stopped) comes back to a store
    /// rolled back meanwhile to a state older than the fleet's newest but
    /// newer than its own: it sends nothing until a replica that kept
    /// watching has written the newest back, and continues from that one.
    #[tokio::test(start_paused = true)]
    async fn a_replica_back_from_a_gap_waits_for_the_newest_state() {
        let store = Arc::new(Memory::default());
        let (mut x, mut y) = both_saw_rt_1(&store).await;
        let snapshot = store.state.lock().unwrap().clone();
        // y is stopped; x refreshes twice meanwhile.
        for rt in ["rt-2", "rt-3"] {
            tokio::time::sleep(GAP).await;
            assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
            x.save(state(rt)).await;
            x.release().await;
        }
        // The store rolls back to an older copy: generation 2, rt-2, spent
        // by x already, yet newer than anything y saw.
        let mut rolled = state("rt-2").with_generation(2);
        if let Some(old) = snapshot {
            assert_eq!(old.generation(), 1);
            rolled = rolled.with_origin(old.origin().map(str::to_owned));
        }
        *store.state.lock().unwrap() = Some(rolled);
        let before = tokio::spawn(async move {
            let before = y.before_fetch(true).await;
            (y, before)
        });
        tokio::time::sleep(AUDIT).await;
        assert!(x.audit().await.is_none(), "x writes rt-3 back");
        let (_y, before) = before.await.unwrap();
        match before {
            Before::Fetch(Some(newer)) => assert_eq!(rt(&newer), "rt-3"),
            _ => panic!("y would have sent rt-2, spent already"),
        }
    }

    /// Redis restarts from a snapshot that holds exactly the state another
    /// replica last saw, while the holder of the next one could not save
    /// it: the store is not behind for that replica, and it was away for
    /// less than [`GAP`], but it met a store error. It sends nothing until
    /// the holder has written its state back (random chaos seed
    /// 11368863411116281348: the replica sent the spent refresh token 0.26 s
    /// after the restart).
    #[tokio::test(start_paused = true)]
    async fn a_replica_that_met_a_store_error_waits_for_the_newest_state() {
        let store = Arc::new(Memory::default());
        let (mut x, mut y) = both_saw_rt_1(&store).await;
        let snapshot = store.state.lock().unwrap().clone();

        // x sends rt-1 and gets rt-2; Redis is killed before the save, and
        // y's next look fails.
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        store.down.store(true, Ordering::SeqCst);
        assert!(matches!(x.save(state("rt-2")).await, Wrote::Failed(_)));
        assert!(y.audit().await.is_none());
        // Back from the snapshot: rt-1, the lease gone.
        *store.state.lock().unwrap() = snapshot;
        store.lease.lock().unwrap().clear();
        store.down.store(false, Ordering::SeqCst);
        let before = tokio::spawn(async move {
            let before = y.before_fetch(true).await;
            (y, before)
        });
        tokio::time::sleep(x.retry_at().unwrap() - clock::now()).await;
        assert!(matches!(x.retry_save().await, Some(Wrote::Saved)));
        let (_y, before) = before.await.unwrap();
        match before {
            Before::Fetch(Some(newer)) => assert_eq!(rt(&newer), "rt-2"),
            _ => panic!("y would have sent rt-1, spent already"),
        }
    }

    /// x refreshed (rt-1 to rt-2) under the lease; the store went down
    /// before x could save, and came back empty, and y took the lease. x,
    /// still holding its lease as far as it knew, writes rt-2 back: the
    /// store says x no longer holds the lease, and x writes on the
    /// generation alone (nobody wrote since). x must not then send rt-2
    /// itself: y holds the lease and reads rt-2 (random chaos seed 2: both
    /// sent rt-23, 5 ms apart).
    #[tokio::test(start_paused = true)]
    async fn a_holder_whose_lease_was_taken_meanwhile_writes_back_and_sends_nothing() {
        let store = Arc::new(Memory::default());
        let (mut x, mut y) = both_saw_rt_1(&store).await;
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        store.down.store(true, Ordering::SeqCst);
        assert!(matches!(x.save(state("rt-2")).await, Wrote::Failed(_)));
        store.lose_everything();
        store.down.store(false, Ordering::SeqCst);
        assert_eq!(
            store.acquire(&key(), &y.owner, y.lease_ttl).await.unwrap(),
            Lease::Acquired
        );
        y.shared = true;
        y.leases += 1;
        y.hold(clock::now());

        let sent = x.before_fetch(true).await;
        assert!(
            !matches!(sent, Before::Fetch(_)),
            "x would send rt-2 while y holds the lease"
        );
        // What x wrote back is what y, the holder, sends.
        match y.before_fetch(true).await {
            Before::Fetch(Some(newer)) => assert_eq!(rt(&newer), "rt-2"),
            other => panic!("y: {}", matches!(other, Before::Wait(_))),
        }
    }

    /// A replica back from a gap reads a newer state, then loses the store
    /// during its quiet period: it sends nothing, and the newer state comes
    /// with the failure, so its source does not keep the spent refresh
    /// token (random chaos seed 11368863411116281348: a replica stopped
    /// 15 s sent one, two Redis restarts later).
    #[tokio::test(start_paused = true)]
    async fn a_newer_state_read_before_the_store_went_away_is_handed_over() {
        let store = Arc::new(Memory::default());
        let (mut x, mut y) = both_saw_rt_1(&store).await;
        // y is stopped; x refreshes meanwhile.
        tokio::time::sleep(GAP * 2).await;
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        x.save(state("rt-2")).await;
        x.release().await;
        let before = tokio::spawn(async move { y.before_fetch(true).await });
        tokio::time::sleep(VOUCH / 2).await;
        store.down.store(true, Ordering::SeqCst);
        match before.await.unwrap() {
            Before::NoLease(_, Some(newer)) => assert_eq!(rt(&newer), "rt-2"),
            Before::NoLease(_, None) => {
                panic!("rt-2, read before the store went away, was dropped")
            }
            _ => panic!("y sent without reading the store"),
        }
    }

    /// The holder whose save failed finds the store behind (Redis came back
    /// empty) as it is about to refresh: it holds the newest state, so it
    /// writes it back at once rather than wait for someone to (a chaos seed
    /// found it waiting for itself, for ever).
    #[tokio::test(start_paused = true)]
    async fn the_holder_of_the_newest_unsaved_state_writes_it_back_itself() {
        let store = Arc::new(Memory::default());
        let mut x = protocol(&store);
        x.start().await.unwrap();
        tokio::time::sleep(VOUCH).await;
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        assert!(matches!(x.save(state("rt-1")).await, Wrote::Saved));
        x.release().await;
        assert!(matches!(x.before_fetch(true).await, Before::Fetch(None)));
        store.down.store(true, Ordering::SeqCst);
        assert!(matches!(x.save(state("rt-2")).await, Wrote::Failed(_)));
        store.lose_everything();
        store.down.store(false, Ordering::SeqCst);
        let before = tokio::time::timeout(Duration::from_secs(60), x.before_fetch(true)).await;
        assert!(
            matches!(before, Ok(Before::Fetch(None))),
            "the holder waited for itself"
        );
        assert!(x.retry_at().is_none(), "saved");
        let stored = store.state.lock().unwrap().clone().unwrap();
        assert_eq!((stored.generation(), rt(&stored)), (2, "rt-2"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_save_of_a_holder_that_lost_its_lease_is_refused() {
        let store = Arc::new(Memory::default());
        let mut paused = protocol(&store);
        paused.start().await.unwrap();
        assert!(matches!(
            paused.before_fetch(true).await,
            Before::Fetch(None)
        ));
        // It stops (SIGSTOP): its keeper stops with it, the lease lapses.
        paused.lease.as_ref().unwrap().keeper.abort();
        tokio::time::sleep(RefreshPolicy::default().lease() * 2).await;
        let mut next = protocol(&store);
        next.start().await.unwrap();
        assert!(matches!(next.before_fetch(true).await, Before::Fetch(None)));
        assert!(matches!(next.save(state("rt-next")).await, Wrote::Saved));
        // The paused holder wakes with an answer of its own: refused, and it
        // continues from the newer state instead.
        match paused.save(state("rt-late")).await {
            Wrote::Superseded(current) => assert_eq!(rt(&current), "rt-next"),
            _ => panic!("a late save must not overwrite a newer state"),
        }
        assert_eq!(rt(&store.state.lock().unwrap().clone().unwrap()), "rt-next");
    }

    #[tokio::test(start_paused = true)]
    async fn a_save_whose_answer_was_lost_is_recognised() {
        let store = Arc::new(Memory::default());
        let mut a = protocol(&store);
        a.start().await.unwrap();
        // The store applied generation 1 but the answer never came.
        let applied = state("rt-1").with_generation(1);
        *store.state.lock().unwrap() = Some(applied.clone());
        a.newest = applied;
        a.unsaved = Some(Unsaved {
            failures: 1,
            retry_at: clock::now(),
            error: Error::store(StoreErrorKind::TimedOut, "lost"),
        });
        assert!(matches!(a.retry_save().await, Some(Wrote::Saved)));
        assert_eq!(a.stored, 1);
        assert_eq!(store.saves.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_is_renewed_while_held() {
        let store = Arc::new(Memory::default());
        let mut a = protocol(&store);
        a.start().await.unwrap();
        assert!(matches!(a.before_fetch(true).await, Before::Fetch(None)));
        // Held for ten times its time to live (a slow fetch, failing saves).
        tokio::time::sleep(RefreshPolicy::default().lease() * 10).await;
        assert!(a.lease_left());
        let mut b = protocol(&store);
        b.start().await.unwrap();
        assert!(matches!(b.before_fetch(true).await, Before::Wait(None)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_store_call_ends_at_its_deadline() {
        struct Hung;
        impl TokenStore for Hung {
            async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
                std::future::pending().await
            }
            async fn save(
                &self,
                _: &StoreKey,
                _: &TokenState,
                _: Expect<'_>,
            ) -> Result<Saved, Error> {
                std::future::pending().await
            }
        }
        let mut p = Protocol::new(Hung, key(), &RefreshPolicy::default());
        let error = p.start().await.unwrap_err();
        assert_eq!(
            error.kind(),
            &crate::ErrorKind::Store(StoreErrorKind::TimedOut)
        );
        assert!(error.is_transient());
        assert!(matches!(p.save(state("rt-1")).await, Wrote::Failed(_)));
        assert!(p.retry_at().is_some());
    }
}
