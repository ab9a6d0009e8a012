//! Durable token state: the file store, and a cache that loads it at start,
//! saves before use, survives a failing store, re-reads it on
//! `invalid_grant`, shuts down cleanly, and runs Orange Logic's 24 h / 30 day
//! tokens for a simulated month of restarts.

mod support;

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use secrecy::ExposeSecret;
use support::{
    recorder::{Recorder, Reply as Http},
    rotating::{InProcess, Rotating},
    scripted::{Reply, Scripted},
};
use tokio::{sync::Notify, time::Instant};
use tower_oauth2::{
    Error, ErrorKind, Expect, FileStore, RefreshPolicy, RefreshToken, Saved, StoreErrorKind,
    StoreKey, TokenCache, TokenSource as _, TokenState, TokenStore,
};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn custom_key() -> StoreKey {
    // The key the scripted source names.
    StoreKey::new("custom", "", "", &[])
}

/// Lets the background task and the blocking pool finish what is due now.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn refresh_grant(url: &str, refresh_token: &str) -> RefreshToken {
    RefreshToken::builder()
        .token_url(url)
        .client_id("app")
        .client_secret("secret")
        .refresh_token(refresh_token)
        .build()
        .unwrap()
}

async fn stored_refresh_token(store: &FileStore, key: &StoreKey) -> Option<String> {
    store
        .load(key)
        .await
        .unwrap()
        .and_then(|state| state.refresh_token().map(|t| t.expose_secret().to_owned()))
}

#[tokio::test]
async fn a_store_that_cannot_be_read_stops_the_cache_and_is_not_overwritten() {
    // 34
    let dir = tempfile::tempdir().unwrap();
    let good = TokenState::default().encode(&custom_key());
    let good = good.expose_secret();
    let other = TokenState::default().encode(&StoreKey::new("custom", "other-app", "", &[]));
    let cases: Vec<(&str, Vec<u8>, StoreErrorKind)> = vec![
        ("empty", Vec::new(), StoreErrorKind::Corrupt),
        (
            "truncated",
            good.as_bytes()[..good.len() / 2].to_vec(),
            StoreErrorKind::Corrupt,
        ),
        ("not utf-8", vec![0xff, 0xfe, b'{'], StoreErrorKind::Corrupt),
        (
            "version 9",
            good.replace("\"version\":2", "\"version\":9").into_bytes(),
            StoreErrorKind::UnsupportedVersion,
        ),
        (
            "another credential",
            other.expose_secret().as_bytes().to_vec(),
            StoreErrorKind::OtherCredential,
        ),
    ];
    for (name, bytes, kind) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes).unwrap();
        let script = Scripted::exactly(vec![]);
        let cache = TokenCache::builder(script.source())
            .store(FileStore::new(&path))
            .build();
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Store(kind), "{name}: {error}");
        assert!(!error.is_transient());
        settle().await;
        assert_eq!(script.calls(), 0, "{name}: no token request");
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{name}: overwritten");
    }
    // A path that cannot be read as a file: typed, and retried (it may be
    // a volume not mounted yet) rather than a stop; a credential that
    // sends a refresh token waits for it and sends nothing meanwhile.
    let cache = TokenCache::builder(refresh_grant("http://127.0.0.1:9/token", "rt-0"))
        .store(FileStore::new(dir.path()))
        .build();
    let error = cache.token().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(StoreErrorKind::Unreadable),
        "{error}"
    );
    assert!(error.next_attempt_at().is_some(), "tried again");
}

/// A store whose first `failing` loads fail (Redis not up yet when the pod
/// starts, one timeout, EIO on a file), and which works after that.
#[derive(Clone, Default)]
struct LateStore {
    failing: Arc<AtomicUsize>,
    loads: Arc<AtomicUsize>,
    saved: Arc<Mutex<Option<TokenState>>>,
}

impl TokenStore for LateStore {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        if self.failing.load(Ordering::SeqCst) > 0 {
            self.failing.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::store(
                StoreErrorKind::Unavailable,
                "connection refused",
            ));
        }
        Ok(self.saved.lock().unwrap().clone())
    }

    async fn save(&self, _: &StoreKey, state: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        *self.saved.lock().unwrap() = Some(state.clone());
        Ok(Saved::Written)
    }
}

/// A first load that fails is tried again with backoff and never stops the
/// cache for good: a credential without a refresh token serves at once
/// without the store, one with a refresh token once the store answers (it
/// may hold a newer refresh token than the configured one).
#[tokio::test(start_paused = true)]
async fn a_failed_first_load_is_retried_and_never_stops_the_cache() {
    // Client credentials (no refresh token): served without the store.
    let store = LateStore::default();
    store.failing.store(5, Ordering::SeqCst);
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::builder(script.source())
        .store(store.clone())
        .build();
    cache.token().await.unwrap();
    assert_eq!(script.calls(), 1);
    // The loads go on with backoff until one succeeds.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(store.loads.load(Ordering::SeqCst), 6);

    // A refresh token: the stored one is newer than the configured one, and
    // it is the one sent, once the store answers.
    let server = Rotating::start(Some("rt-1"), None).await;
    let store = LateStore::default();
    *store.saved.lock().unwrap() = Some(
        TokenState::default()
            .with_refresh_token("rt-1")
            .with_generation(1),
    );
    store.failing.store(3, Ordering::SeqCst);
    let cache = TokenCache::builder(refresh_grant(&server.url, "rt-0"))
        .policy(RefreshPolicy::new().wait_for_retry(Duration::from_secs(10)))
        .store(store.clone())
        .build();
    cache.token().await.unwrap();
    assert_eq!(store.loads.load(Ordering::SeqCst), 4);
    assert_eq!(server.reuses(), 0);
}

#[tokio::test]
async fn the_file_is_private_and_replaced_whole() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::builder(script.source())
        .store(FileStore::new(&path))
        .build();
    let first = cache.token().await.unwrap();
    cache.invalidate(&first);
    let second = cache.token().await.unwrap();
    cache.shutdown().await.unwrap();
    assert_eq!(cache.stats().saves, 2);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
    // Only the file itself: no temporary file left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state.json"]);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(second.access_token().expose_secret()));
    assert!(!text.contains(first.access_token().expose_secret()));
}

#[tokio::test(start_paused = true)]
async fn a_restart_with_a_valid_stored_token_makes_no_token_request() {
    // 35
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let first_run = Scripted::exactly(vec![Reply::Token(Some(HOUR))]);
    let cache = TokenCache::builder(first_run.source())
        .store(FileStore::new(&path))
        .build();
    let token = cache.token().await.unwrap();
    cache.shutdown().await.unwrap();

    tokio::time::advance(Duration::from_secs(600)).await;
    // The second run's source panics if it is asked for anything.
    let second_run = Scripted::exactly(vec![]);
    let cache = TokenCache::builder(second_run.source())
        .store(FileStore::new(&path))
        .build();
    let restored = cache.token().await.unwrap();
    assert_eq!(
        restored.access_token().expose_secret(),
        token.access_token().expose_secret()
    );
    // Stored as wall-clock seconds: equal to well under a millisecond.
    let (a, b) = (restored.expires_at().unwrap(), token.expires_at().unwrap());
    assert!(
        a.max(b) - a.min(b) < Duration::from_millis(1),
        "{a:?} {b:?}"
    );
    assert_eq!(second_run.calls(), 0);
    assert_eq!(cache.stats().token_requests, 0);
}

#[tokio::test]
async fn a_restart_refreshes_with_the_stored_refresh_token_not_the_configured_one() {
    let server = Rotating::start(Some("rt-0"), None).await;
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("state.json"));
    let cache = TokenCache::builder(refresh_grant(&server.url, "rt-0"))
        .store(store.clone())
        .build();
    cache.token().await.unwrap();
    cache.shutdown().await.unwrap();
    // Started again from the same configuration (rt-0, long dead).
    let cache = TokenCache::builder(refresh_grant(&server.url, "rt-0"))
        .store(store.clone())
        .build();
    let token = cache.token().await.unwrap();
    assert_eq!(cache.stats().token_requests, 0, "the stored token is valid");
    cache.invalidate(&token);
    cache.token().await.unwrap();
    cache.shutdown().await.unwrap();
    assert_eq!(server.received(), ["rt-0", "rt-1"]);
    assert_eq!(server.reuses(), 0);
    let key = StoreKey::new("refresh_token", "app", &server.url, &[]);
    assert_eq!(
        stored_refresh_token(&store, &key).await.as_deref(),
        Some("rt-2")
    );
}

/// A store whose saves wait at a gate, and record what they saved.
#[derive(Clone, Default)]
struct Gated {
    gate: Arc<Notify>,
    saving: Arc<AtomicBool>,
    saved: Arc<Mutex<Vec<TokenState>>>,
}

impl TokenStore for Gated {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        Ok(None)
    }

    async fn save(&self, _: &StoreKey, state: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        self.saving.store(true, Ordering::SeqCst);
        self.gate.notified().await;
        self.saved.lock().unwrap().push(state.clone());
        self.saving.store(false, Ordering::SeqCst);
        Ok(Saved::Written)
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_token_is_saved_before_any_request_gets_it() {
    let store = Gated::default();
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::builder(script.source())
        .store(store.clone())
        .build();
    let waiting = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    while !store.saving.load(Ordering::SeqCst) {
        settle().await;
    }
    // The token has arrived and is being saved: nobody has it yet.
    assert_eq!(script.calls(), 1);
    // Within the store's deadline (2 s by default).
    tokio::time::advance(Duration::from_secs(1)).await;
    settle().await;
    assert!(
        !waiting.is_finished(),
        "a request got the token before its save"
    );
    store.gate.notify_one();
    let token = waiting.await.unwrap().unwrap();
    let saved = store.saved.lock().unwrap().clone();
    assert_eq!(saved.len(), 1);
    assert_eq!(
        saved[0].expires_at().is_some(),
        token.expires_at().is_some()
    );

    // The same for a refresh: the old token serves while the new one is saved.
    tokio::time::advance(Duration::from_secs(3000)).await;
    while !store.saving.load(Ordering::SeqCst) {
        settle().await;
    }
    assert_eq!(script.calls(), 2);
    assert!(
        cache.token().await.unwrap().same_as(&token),
        "the new token is not saved yet"
    );
    store.gate.notify_one();
    while store.saving.load(Ordering::SeqCst) {
        settle().await;
    }
    settle().await;
    assert!(!cache.token().await.unwrap().same_as(&token));
}

/// A store call that never returns (a hard-mounted NFS, a custom store
/// that hangs) is cut off at the policy's store deadline: the cold start
/// gets its token (kept in memory, the save retried), and `shutdown`
/// returns within the deadline, saying the newest state is not saved.
#[tokio::test(start_paused = true)]
async fn a_hung_store_is_cut_off_at_its_deadline() {
    let store = Gated::default();
    let script = Scripted::tokens(HOUR);
    let deadline = Duration::from_secs(2);
    let cache = TokenCache::builder(script.source())
        .policy(RefreshPolicy::new().store_timeout(deadline))
        .store(store.clone())
        .build();
    let started = Instant::now();
    let token = cache.token().await.unwrap();
    assert_eq!(
        started.elapsed(),
        deadline,
        "served once the save timed out"
    );
    assert!(store.saved.lock().unwrap().is_empty());
    let error = cache.store_error().expect("the save is reported");
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(StoreErrorKind::TimedOut),
        "{error}"
    );
    assert!(error.is_transient());
    assert!(cache.token().await.unwrap().same_as(&token));

    let started = Instant::now();
    let error = cache.shutdown().await.unwrap_err();
    assert!(started.elapsed() <= deadline, "{:?}", started.elapsed());
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(StoreErrorKind::WriteFailed),
        "{error}"
    );
    assert!(error.to_string().contains("not in the store"), "{error}");
}

/// A store whose saves fail until `healthy` is set.
#[derive(Clone, Default)]
struct Flaky {
    healthy: Arc<AtomicBool>,
    attempts: Arc<AtomicUsize>,
}

impl TokenStore for Flaky {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        Ok(None)
    }

    async fn save(&self, _: &StoreKey, _: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.healthy.load(Ordering::SeqCst) {
            Ok(Saved::Written)
        } else {
            Err(Error::store(StoreErrorKind::WriteFailed, "disk full"))
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_keeps_the_service_running_and_says_so() {
    let store = Flaky::default();
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::builder(script.source())
        .policy(RefreshPolicy::new().jitter(0.0))
        .store(store.clone())
        .build();
    // 1000 requests a second for 10 s while every save fails.
    for _ in 0..10_000 {
        cache
            .token()
            .await
            .expect("the token is served although unsaved");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stats = cache.stats();
    // At 0 s, then retried with backoff at 0.1, 0.3, 0.7, 1.5, 3.1 and 6.3 s
    // (the next at 12.7 s): not once per request.
    assert_eq!(stats.save_failures, 7, "{stats:?}");
    assert_eq!(stats.token_requests, 1);
    let error = cache.store_error().expect("the failure is visible");
    assert_eq!(error.kind(), &ErrorKind::Store(StoreErrorKind::WriteFailed));
    store.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(cache.store_error().is_none());
    assert_eq!(cache.stats().saves, 1);
    assert_eq!(store.attempts.load(Ordering::SeqCst), 8);
}

/// A cache with one token whose save failed, stopped by `shutdown`.
async fn shut_down_unsaved(store: &Flaky) -> TokenCache {
    let cache = TokenCache::builder(Scripted::tokens(HOUR).source())
        .policy(RefreshPolicy::new().jitter(0.0))
        .store(store.clone())
        .build();
    cache.token().await.unwrap();
    let error = cache.shutdown().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Store(StoreErrorKind::WriteFailed));
    assert_eq!(cache.token().await.unwrap_err().kind(), &ErrorKind::Closed);
    cache
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_an_unsaved_state_until_it_is_saved() {
    let store = Flaky::default();
    let cache = shut_down_unsaved(&store).await;
    let attempts = store.attempts.load(Ordering::SeqCst);
    assert!(cache.shutdown().await.is_err(), "still unsaved");
    assert_eq!(
        store.attempts.load(Ordering::SeqCst),
        attempts + 1,
        "tried at once"
    );
    store.healthy.store(true, Ordering::SeqCst);
    cache.shutdown().await.expect("saved now");
    assert_eq!(store.attempts.load(Ordering::SeqCst), attempts + 2);
    assert_eq!(cache.stats().saves, 1);
    assert!(cache.store_error().is_none());
}

#[tokio::test(start_paused = true)]
async fn two_shutdowns_during_a_fetch_both_hear_how_its_save_went() {
    for healthy in [false, true] {
        let store = Flaky::default();
        store.healthy.store(healthy, Ordering::SeqCst);
        let script = Scripted::tokens(HOUR).latency(Duration::from_secs(1));
        let cache = TokenCache::builder(script.source())
            .store(store.clone())
            .build();
        let waiting = tokio::spawn({
            let cache = cache.clone();
            async move { cache.token().await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(script.calls(), 1, "the fetch is under way");
        // Both arrive while the fetch runs; both wait for it and its save.
        let (first, second) = tokio::join!(cache.shutdown(), cache.shutdown());
        assert_eq!(first.is_ok(), healthy, "{first:?}");
        assert_eq!(second.is_ok(), healthy, "{second:?}");
        // The waiting request is answered either way (a token or `Closed`).
        waiting.await.unwrap().ok();
        assert_eq!(cache.stats().saves, u64::from(healthy));
    }
}

#[tokio::test(start_paused = true)]
async fn after_a_failed_shutdown_the_save_is_still_retried() {
    let store = Flaky::default();
    let cache = shut_down_unsaved(&store).await;
    store.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(cache.stats().saves, 1, "saved by the task's own backoff");
    assert!(cache.store_error().is_none());
    let attempts = store.attempts.load(Ordering::SeqCst);
    cache.shutdown().await.expect("nothing left to save");
    assert_eq!(store.attempts.load(Ordering::SeqCst), attempts);
    assert_eq!(cache.token().await.unwrap_err().kind(), &ErrorKind::Closed);
}

#[tokio::test]
async fn invalid_grant_reads_the_store_again_before_giving_up() {
    // 38: another process rotated the refresh token meanwhile.
    let server = Recorder::start().await;
    let refreshed = |rt: &str| {
        Http::json(
            200,
            &format!(
                r#"{{"access_token":"at-{rt}","token_type":"Bearer","expires_in":3600,"refresh_token":"{rt}"}}"#
            ),
        )
    };
    server.reply([
        refreshed("rt-1"),
        Http::json(400, r#"{"error":"invalid_grant"}"#),
        refreshed("rt-2"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("state.json"));
    let url = server.url("/token");
    // Both start from the configured rt-0; the second has not fetched yet.
    let stale = TokenCache::builder(refresh_grant(&url, "rt-0"))
        .store(store.clone())
        .build();
    let other = TokenCache::builder(refresh_grant(&url, "rt-0"))
        .store(store.clone())
        .build();
    other.token().await.unwrap();
    other.shutdown().await.unwrap();
    // The store holds the other process's rotated refresh token and its
    // access token, still good: that token serves, with no further request.
    let token = stale.token().await.expect("recovered from the store");
    assert_eq!(token.access_token().expose_secret(), "at-rt-1");
    let sent: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.param("refresh_token"))
        .collect();
    assert_eq!(sent, ["rt-0", "rt-0"]);
    // Its next refresh continues from the stored refresh token.
    stale.refresh_now().await.unwrap();
    let sent: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.param("refresh_token"))
        .collect();
    assert_eq!(sent, ["rt-0", "rt-0", "rt-1"]);
    stale.shutdown().await.unwrap();
    let key = StoreKey::new("refresh_token", "app", &url, &[]);
    assert_eq!(
        stored_refresh_token(&store, &key).await.as_deref(),
        Some("rt-2")
    );
}

/// A cache with a file store whose first refresh the server has answered
/// (rotated) but whose answer is still `latency` away.
struct InFlight {
    server: Rotating,
    _dir: tempfile::TempDir,
    store: FileStore,
    key: StoreKey,
    cache: TokenCache,
    request: tokio::task::JoinHandle<Result<tower_oauth2::Token, Error>>,
}

async fn refresh_in_flight(latency: Duration) -> InFlight {
    let server = Rotating::start(Some("rt-0"), None).await;
    server.latency(latency);
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("state.json"));
    let key = StoreKey::new("refresh_token", "app", &server.url, &[]);
    let cache = TokenCache::builder(refresh_grant(&server.url, "rt-0"))
        .store(store.clone())
        .build();
    let request = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    while server.received().is_empty() {
        tokio::task::yield_now().await;
    }
    assert_eq!(server.current().as_deref(), Some("rt-1"));
    InFlight {
        server,
        _dir: dir,
        store,
        key,
        cache,
        request,
    }
}

#[tokio::test]
async fn shutdown_waits_for_the_refresh_under_way_and_its_save() {
    // 33
    let InFlight {
        server,
        _dir,
        store,
        key,
        cache,
        request,
    } = refresh_in_flight(Duration::from_millis(300)).await;
    cache.shutdown().await.unwrap();
    assert_eq!(
        stored_refresh_token(&store, &key).await.as_deref(),
        Some("rt-1")
    );
    // The waiting request is not left hanging: it got the token, or the
    // cache's `Closed` if the shutdown came first.
    match request.await.unwrap() {
        Ok(token) => assert_eq!(token.access_token().expose_secret(), "at-1"),
        Err(error) => assert_eq!(error.kind(), &ErrorKind::Closed),
    }
    // The next start carries on from it.
    server.latency(Duration::ZERO);
    let cache = TokenCache::builder(refresh_grant(&server.url, "rt-0"))
        .store(store.clone())
        .build();
    let token = cache.token().await.unwrap();
    cache.invalidate(&token);
    cache.token().await.unwrap();
    assert_eq!(server.received(), ["rt-0", "rt-1"]);
    assert_eq!(server.reuses(), 0);
}

#[tokio::test]
async fn a_refresh_answered_after_every_handle_is_gone_is_still_saved() {
    let InFlight {
        _dir,
        store,
        key,
        cache,
        request,
        ..
    } = refresh_in_flight(Duration::from_millis(200)).await;
    request.abort();
    drop(cache);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_refresh_token(&store, &key).await.as_deref() != Some("rt-1") {
        assert!(
            Instant::now() < deadline,
            "the rotated refresh token was not saved"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn orange_logic_runs_thirty_days_with_restarts_and_no_person() {
    // 24 h access tokens, refresh tokens that rotate on every use and die
    // after 30 days unused; a restart every 3 days; a request every 10 minutes.
    let server = InProcess::new("rt-0", DAY, 30 * DAY);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("orange-logic.json");
    let start = Instant::now();
    let (mut requests, mut restarts) = (0, 0);
    while Instant::now() - start < 30 * DAY {
        // Every start is built from the same configuration: the first
        // refresh token, long dead after the first day.
        let cache = TokenCache::builder(server.client("rt-0"))
            .store(FileStore::new(&path))
            .build();
        let run_until = Instant::now() + 3 * DAY;
        while Instant::now() < run_until {
            let token = cache.token().await.expect("no request fails");
            assert!(Instant::now() <= token.expires_at().unwrap());
            requests += 1;
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        cache.shutdown().await.unwrap();
        restarts += 1;
    }
    assert_eq!(server.reuses(), 0);
    assert!(!server.revoked(), "a person would have to authorize again");
    assert_eq!(restarts, 10);
    assert_eq!(requests, 30 * 24 * 6);
    // One refresh a day or so (each 10–12 minutes early), never one per restart.
    let issued = server.issued();
    assert!((30..=32).contains(&issued), "{issued} refreshes in 30 days");
}

#[tokio::test(start_paused = true)]
async fn an_unsaved_state_is_still_saved_after_every_handle_is_gone() {
    let store = Flaky::default();
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::builder(script.source())
        .store(store.clone())
        .build();
    cache.token().await.unwrap();
    drop(cache);
    // Nobody is left to ask, but the task keeps retrying the save.
    tokio::time::sleep(Duration::from_secs(600)).await;
    let tried = store.attempts.load(Ordering::SeqCst);
    assert!(tried > 5, "{tried} attempts");
    assert!(
        !script.dropped.load(Ordering::SeqCst),
        "gave up on the state"
    );
    store.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        store.attempts.load(Ordering::SeqCst),
        tried + 1,
        "saved once more, then stopped"
    );
    assert!(
        script.dropped.load(Ordering::SeqCst),
        "the task ended once saved"
    );
}

/// A shared store in memory, with the lease of a fleet (no expiry: the test
/// runs well within any lease's life), whose first `failing` saves fail,
/// and whose reads fail while `unreadable`.
#[derive(Clone, Default)]
struct SharedInMemory {
    state: Arc<Mutex<Option<TokenState>>>,
    lease: Arc<Mutex<Option<String>>>,
    failing: Arc<AtomicUsize>,
    unreadable: Arc<AtomicBool>,
}

impl TokenStore for SharedInMemory {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        if self.unreadable.load(Ordering::SeqCst) {
            return Err(Error::store(StoreErrorKind::Corrupt, "unknown format"));
        }
        Ok(self.state.lock().unwrap().clone())
    }

    async fn save(&self, _: &StoreKey, state: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        let failing = &self.failing;
        if failing.load(Ordering::SeqCst) > 0 {
            failing.fetch_sub(1, Ordering::SeqCst);
            return Err(Error::store(StoreErrorKind::WriteFailed, "write refused"));
        }
        *self.state.lock().unwrap() = Some(state.clone());
        Ok(Saved::Written)
    }

    async fn acquire(
        &self,
        _: &StoreKey,
        owner: &str,
        _: Duration,
    ) -> Result<tower_oauth2::Lease, Error> {
        let mut lease = self.lease.lock().unwrap();
        Ok(match &*lease {
            Some(holder) if holder == owner => tower_oauth2::Lease::Acquired,
            Some(_) => tower_oauth2::Lease::Busy,
            None => {
                *lease = Some(owner.to_owned());
                tower_oauth2::Lease::Acquired
            }
        })
    }

    async fn release(&self, _: &StoreKey, owner: &str) -> Result<(), Error> {
        let mut lease = self.lease.lock().unwrap();
        if lease.as_deref() == Some(owner) {
            *lease = None;
        }
        Ok(())
    }
}

/// A lease holder whose save failed keeps the lease until the save
/// succeeds: a second replica that took it at once would read the older
/// state and send the refresh token the holder has already spent.
#[tokio::test(start_paused = true)]
async fn a_holder_whose_save_failed_keeps_the_lease_until_it_is_saved() {
    let server = InProcess::new("rt-0", HOUR, 30 * DAY);
    let store = SharedInMemory::default();
    store.failing.store(1, Ordering::SeqCst);
    let first = TokenCache::builder(server.client("rt-0"))
        .store(store.clone())
        .build();
    first.token().await.unwrap();
    // rt-0 is spent, rt-1 is in memory only: the save failed.
    assert_eq!(first.stats().save_failures, 1);
    assert!(store.state.lock().unwrap().is_none());

    // Another replica, configured with rt-0 like every replica.
    let second = TokenCache::builder(server.client("rt-0"))
        .store(store.clone())
        .build();
    let token = second.token().await.unwrap();
    assert_eq!(server.reuses(), 0, "a spent refresh token was sent again");
    assert!(!server.revoked());
    assert_eq!(
        server.issued(),
        1,
        "the second replica adopted the first's token"
    );
    let first_token = first.token().await.unwrap();
    assert_eq!(
        token.access_token().expose_secret(),
        first_token.access_token().expose_secret()
    );
    assert!(store.lease.lock().unwrap().is_none(), "released once saved");
    // What each replica's stats say of the fleet's lease.
    assert_eq!(first.stats().leases, 1);
    assert_eq!(second.stats().leases, 0, "it never took the lease");
    assert!(
        second.stats().lease_wait > Duration::ZERO,
        "it waited for the first's lease: {:?}",
        second.stats()
    );
}

/// A lease holder that cannot read the store does not send the refresh
/// token it has in memory: another replica may have spent it since.
#[tokio::test(start_paused = true)]
async fn a_lease_holder_that_cannot_read_the_store_sends_no_refresh_token() {
    let server = InProcess::new("rt-0", HOUR, 30 * DAY);
    let store = SharedInMemory::default();
    let first = TokenCache::builder(server.client("rt-0"))
        .store(store.clone())
        .build();
    let second = TokenCache::builder(server.client("rt-0"))
        .store(store.clone())
        .build();
    let token = first.token().await.unwrap();
    second.token().await.unwrap(); // adopted from the store, with rt-1
    assert_eq!(server.issued(), 1);
    // The first replica refreshes: rt-1 is spent, rt-2 is stored.
    first.invalidate(&token);
    first.token().await.unwrap();
    assert_eq!(server.issued(), 2);
    // Now the second replica needs a token and cannot read the store.
    store.unreadable.store(true, Ordering::SeqCst);
    let theirs = second.token().await.unwrap();
    second.invalidate(&theirs);
    let error = second.token().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Store(StoreErrorKind::Unavailable));
    assert_eq!(server.reuses(), 0, "the spent rt-1 was sent");
    assert!(!server.revoked());
    assert!(
        store.lease.lock().unwrap().is_none(),
        "the lease is given back"
    );
}

fn code_grant(url: &str, code: &str) -> tower_oauth2::AuthorizationCode {
    tower_oauth2::AuthorizationCode::builder()
        .token_url(url)
        .client_id("app")
        .client_secret("secret")
        .code(code)
        .build()
        .unwrap()
}

/// The store holds the refresh token of an older authorization, now dead,
/// and the application is given a fresh authorization code: the code is
/// exchanged (it used to be dropped for the dead refresh token, which a
/// person then had to replace again and again). A restart with the code
/// already exchanged does not send it again.
#[tokio::test]
async fn a_fresh_authorization_code_wins_over_an_older_stored_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let server = Rotating::start(None, Some("code-1")).await;
    let first = TokenCache::builder(code_grant(&server.url, "code-1"))
        .store(FileStore::new(&path))
        .build();
    first.token().await.unwrap();
    first.shutdown().await.unwrap();
    // The same code at the next start: exchanged already, not sent again.
    let again = TokenCache::builder(code_grant(&server.url, "code-1"))
        .store(FileStore::new(&path))
        .build();
    again.token().await.unwrap();
    again.shutdown().await.unwrap();
    assert_eq!(
        server.issued(),
        1,
        "the stored token served; no second exchange"
    );

    // The grant dies; a person authorizes again.
    server.new_authorization("code-2");
    let fresh = TokenCache::builder(code_grant(&server.url, "code-2"))
        .store(FileStore::new(&path))
        .build();
    let token = fresh.token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "at-2");
    fresh.shutdown().await.unwrap();
    assert_eq!(
        stored_refresh_token(
            &FileStore::new(&path),
            &code_grant(&server.url, "x").store_key().unwrap()
        )
        .await
        .as_deref(),
        Some("rt-2")
    );
    assert_eq!(server.reuses(), 0);
}

/// An application asks the cache whether a person must authorize, instead
/// of checking for the store's file: yes with nothing stored, no once a
/// grant is stored, yes again once the server refused it.
#[tokio::test]
async fn the_cache_says_whether_a_person_must_authorize() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let server = Rotating::start(None, Some("code-1")).await;
    let from_store = |url: &str| {
        RefreshToken::builder()
            .token_url(url)
            .client_id("app")
            .client_secret("secret")
            .build()
            .unwrap()
    };
    let cache = TokenCache::builder(from_store(&server.url))
        .store(FileStore::new(&path))
        .build();
    assert!(cache.authorization_required().await.unwrap());
    cache.shutdown().await.unwrap();

    let first = TokenCache::builder(code_grant(&server.url, "code-1"))
        .store(FileStore::new(&path))
        .build();
    assert!(!first.authorization_required().await.unwrap());
    first.token().await.unwrap();
    first.shutdown().await.unwrap();

    let cache = TokenCache::builder(from_store(&server.url))
        .store(FileStore::new(&path))
        .build();
    assert!(!cache.authorization_required().await.unwrap());
    // The grant is revoked: the next refresh is refused.
    server.new_authorization("code-2");
    cache.invalidate(&cache.token().await.unwrap());
    let error = cache.token().await.unwrap_err();
    assert!(error.is_reauthorization_required(), "{error}");
    assert!(cache.authorization_required().await.unwrap());
}
