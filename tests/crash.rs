//! Crash tests: a real child process refreshes a rotating refresh token with
//! the file store against a loopback server that revokes the whole family on
//! reuse. The parent kills it (SIGKILL) or stops it (SIGTERM, answered with
//! `TokenCache::shutdown`) at random moments and starts it again, over and
//! over, then counts the restarts that would have needed a person.
//!
//! The child is this test binary again, running the ignored test
//! `child_process` with its settings in the environment.

mod support;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use secrecy::ExposeSecret;
use support::rotating::Rotating;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Child,
};
use tower_oauth2::{FileStore, RefreshToken, StoreKey, TokenCache, TokenState, TokenStore};

/// The child's refresh rhythm: one refresh, then this long idle.
const PACE: Duration = Duration::from_millis(100);

fn grant(url: &str, refresh_token: &str) -> RefreshToken {
    RefreshToken::builder()
        .token_url(url)
        .client_id("crash-app")
        .client_secret("secret")
        .refresh_token(refresh_token)
        .build()
        .unwrap()
}

/// A policy whose backoff after a token rejected soon after it was issued
/// stays within the wait a request gives the next attempt: these tests
/// invalidate every token at once to force refreshes.
fn quick_rejections() -> tower_oauth2::RefreshPolicy {
    tower_oauth2::RefreshPolicy::new().max_backoff(Duration::from_millis(1))
}

/// The child: refreshes every `PACE` until killed; on SIGTERM shuts the cache
/// down cleanly and exits.
#[tokio::test]
#[ignore = "the child process of the crash tests, started by them"]
async fn child_process() {
    let env = |name: &str| std::env::var(name).expect(name);
    let (url, file) = (env("CRASH_URL"), env("CRASH_FILE"));
    // Each round invalidates the token it just got: rejections one after
    // the other back off, so keep that backoff short here.
    let cache = TokenCache::builder(grant(&url, &env("CRASH_REFRESH_TOKEN")))
        .policy(quick_rejections())
        .store(FileStore::new(file))
        .build();
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    let token = cache.token().await.expect("first token");
    println!("READY");
    let mut token = token;
    loop {
        cache.invalidate(&token);
        tokio::select! {
            result = cache.token() => token = result.expect("refresh"),
            _ = term.recv() => break,
        }
        tokio::select! {
            () = tokio::time::sleep(PACE) => {}
            _ = term.recv() => break,
        }
    }
    cache.shutdown().await.expect("clean shutdown");
    println!("STOPPED");
}

async fn spawn_child(url: &str, file: &Path, refresh_token: &str) -> Child {
    let mut child = support::child::spawn(
        "child_process",
        [
            ("CRASH_URL", url.as_ref()),
            ("CRASH_FILE", file.as_os_str()),
            ("CRASH_REFRESH_TOKEN", refresh_token.as_ref()),
        ],
    );
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.trim() == "READY" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the child did not start");
    // Keep draining its stdout, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

async fn stored(store: &FileStore, key: &StoreKey) -> Option<String> {
    let state: Option<TokenState> = store.load(key).await.expect("the file is always readable");
    state.and_then(|s| s.refresh_token().map(|t| t.expose_secret().to_owned()))
}

struct Outcome {
    restarts: usize,
    /// Kills that landed after the server rotated and before the file held
    /// the new refresh token: the unavoidable window.
    in_window: usize,
    /// Restarts whose first refresh was refused: a person must authorize.
    reauthorizations: usize,
    refreshes: u64,
}

/// `rounds` starts of the child, each stopped with `signal` (`KILL`, `TERM`).
async fn run(rounds: usize, signal: &str) -> Outcome {
    let server = Rotating::start(Some("rt-0"), None).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let store = FileStore::new(&file);
    let key = StoreKey::new("refresh_token", "crash-app", &server.url, &[]);
    let mut configured = "rt-0".to_owned();
    let mut outcome = Outcome {
        restarts: 0,
        in_window: 0,
        reauthorizations: 0,
        refreshes: 0,
    };
    for round in 0..rounds {
        let mut child = spawn_child(&server.url, &file, &configured).await;
        tokio::time::sleep(Duration::from_millis(rand::random_range(30..400))).await;
        let sent = std::process::Command::new("kill")
            .args([format!("-{signal}"), child.id().unwrap().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
        child.wait().await.unwrap();
        if server.revoked() {
            // This start sent a refresh token the server had replaced: the
            // previous stop fell inside the window. A person authorizes again.
            outcome.reauthorizations += 1;
            configured = format!("reauthorized-{round}");
            server.reauthorize(&configured);
            std::fs::remove_file(&file).unwrap();
            continue;
        }
        outcome.restarts += 1;
        let current = server.current().expect("not revoked");
        let saved = stored(&store, &key).await;
        if saved.as_deref() != Some(current.as_str()) {
            // Only ever one rotation behind: the answer that was in flight.
            let n: u64 = current["rt-".len()..].parse().unwrap();
            assert_eq!(
                saved,
                Some(format!("rt-{}", n - 1)),
                "round {round}: the file lost more than the answer in flight"
            );
            outcome.in_window += 1;
        }
    }
    outcome.refreshes = server.issued();
    assert_eq!(server.reuses() as usize, outcome.reauthorizations);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_refresh_token_outside_the_answer_in_flight() {
    let outcome = run(50, "KILL").await;
    println!(
        "SIGKILL: {} kills over {} refreshes; {} landed between the server's rotation and the \
         file's fsync; {} restarts needed a person",
        outcome.restarts, outcome.refreshes, outcome.in_window, outcome.reauthorizations
    );
    // Only a start after a kill in the window needs a person (the last
    // round's kill has no start after it).
    assert_eq!(outcome.restarts + outcome.reauthorizations, 50);
    assert!(outcome.reauthorizations <= outcome.in_window);
    assert!(outcome.in_window <= outcome.reauthorizations + 1);
    assert!(outcome.refreshes > 100, "{} refreshes", outcome.refreshes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_clean_shutdown_never_needs_a_person() {
    let outcome = run(20, "TERM").await;
    println!(
        "SIGTERM: {} clean shutdowns over {} refreshes",
        outcome.restarts, outcome.refreshes
    );
    assert_eq!(outcome.in_window, 0);
    assert_eq!(outcome.reauthorizations, 0);
    assert_eq!(outcome.restarts, 20);
}

/// How wide the unavoidable window is here: from the server's rotation to
/// the end of the file's save, for refreshes in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_between_rotation_and_fsync_is_measured() {
    #[derive(Clone)]
    struct Timed(FileStore, std::sync::Arc<std::sync::Mutex<Vec<Instant>>>);
    impl TokenStore for Timed {
        async fn load(&self, key: &StoreKey) -> Result<Option<TokenState>, tower_oauth2::Error> {
            self.0.load(key).await
        }
        async fn save(
            &self,
            key: &StoreKey,
            state: &TokenState,
            expect: tower_oauth2::Expect<'_>,
        ) -> Result<tower_oauth2::Saved, tower_oauth2::Error> {
            let saved = self.0.save(key, state, expect).await?;
            self.1.lock().unwrap().push(Instant::now());
            Ok(saved)
        }
    }
    let server = Rotating::start(Some("rt-0"), None).await;
    let dir = tempfile::tempdir().unwrap();
    let saved = std::sync::Arc::default();
    let store = Timed(FileStore::new(dir.path().join("state.json")), saved);
    let cache = TokenCache::builder(grant(&server.url, "rt-0"))
        .policy(quick_rejections())
        .store(store.clone())
        .build();
    let mut token = cache.token().await.unwrap();
    for _ in 0..50 {
        cache.invalidate(&token);
        token = cache.token().await.unwrap();
    }
    cache.shutdown().await.unwrap();
    let saved = store.1.lock().unwrap().clone();
    let mut windows: Vec<Duration> = (1..=51)
        .map(|n| saved[n as usize - 1] - server.rotated_at(n).unwrap())
        .collect();
    windows.sort();
    println!(
        "rotation to fsync: median {:?}, max {:?} over {} refreshes",
        windows[windows.len() / 2],
        windows[windows.len() - 1],
        windows.len()
    );
    assert_eq!(server.reuses(), 0);
}
