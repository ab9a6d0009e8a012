//! TokenCache behaviour on paused time with a scripted token source.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use support::scripted::{Reply, Scripted};
use tokio::time::{advance, sleep, Instant};
use tower_oauth2::{Error, ErrorKind, RefreshPolicy, TokenCache};

const HOUR: Duration = Duration::from_secs(3600);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn deterministic() -> RefreshPolicy {
    RefreshPolicy::new().jitter(0.0)
}

fn cache(script: &Scripted, policy: RefreshPolicy) -> TokenCache {
    TokenCache::with_policy(script.source(), policy)
}

fn transient() -> Error {
    Error::custom("endpoint unavailable", true)
}

/// Lets the background task run whatever is due now.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Asks for a token every `every` for `total`, asserting none is expired
/// when handed out. Returns how many requests were made.
async fn steady_traffic(cache: &TokenCache, every: Duration, total: Duration) -> usize {
    let end = Instant::now() + total;
    let mut requests = 0;
    while Instant::now() < end {
        let token = cache
            .token()
            .await
            .expect("token while the endpoint is healthy");
        let expires_at = token.expires_at().expect("scripted tokens expire");
        assert!(
            Instant::now() < expires_at,
            "request {requests} got a token that expired {:?} ago",
            Instant::now() - expires_at
        );
        requests += 1;
        sleep(every).await;
    }
    requests
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_cold_callers_cause_one_fetch() {
    let script =
        Scripted::exactly(vec![Reply::Token(Some(HOUR))]).latency(Duration::from_millis(100));
    let cache = cache(&script, deterministic());
    let callers: Vec<_> = (0..10_000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    let first = cache.token().await.unwrap();
    for caller in callers {
        let token = caller.await.unwrap().unwrap();
        assert!(token.same_as(&first));
    }
    assert_eq!(script.calls(), 1);
    let stats = cache.stats();
    assert_eq!(stats.token_requests, 1);
    assert!(stats.waits >= 1 && stats.waits <= 10_001, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn all_waiters_share_one_failure() {
    let script = Scripted::exactly(vec![Reply::Fail(Error::custom("invalid_scope", false))])
        .latency(Duration::from_millis(50));
    let cache = cache(&script, deterministic());
    let callers: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for caller in callers {
        let error = caller.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Source);
        assert!(!error.is_transient());
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn nothing_is_fetched_before_the_first_request() {
    let script = Scripted::exactly(vec![]);
    let _cache = cache(&script, deterministic());
    advance(HOUR).await;
    settle().await;
    assert_eq!(script.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn no_refresh_before_the_refresh_point_and_one_by_then() {
    // 3600 s lifetime, deterministic policy: usable until 3595 s (5 s
    // margin), refreshed 10 min before that, at 2995 s.
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script, deterministic());
    let first = cache.token().await.unwrap();
    advance(secs(2994)).await;
    settle().await;
    assert_eq!(
        script.calls(),
        1,
        "refreshed before the policy's refresh point"
    );
    assert!(cache.token().await.unwrap().same_as(&first));
    advance(secs(2)).await;
    settle().await;
    assert_eq!(script.calls(), 2, "not refreshed by the refresh point");
    let second = cache.token().await.unwrap();
    assert!(!second.same_as(&first));
    assert_eq!(cache.stats().refreshes_ahead, 1);
}

#[tokio::test(start_paused = true)]
async fn continuous_traffic_over_ten_lifetimes() {
    // The default policy refreshes 10-12 min ahead for an hour (12-13
    // fetches in 10 lifetimes); a short token is usable for its lifetime less
    // a margin of 1 s or half of it (servers round expiry to whole seconds),
    // and refreshed when a quarter of that is left: every 0.75 s for a 2 s
    // token, every 0.375 s for a 1 s one.
    for (lifetime, every, fetches) in [
        (HOUR, secs(10), 12..=15),
        (secs(2), Duration::from_millis(20), 26..=29),
        (secs(1), Duration::from_millis(10), 26..=29),
    ] {
        let script = Scripted::tokens(lifetime).latency(Duration::from_millis(5));
        let cache = cache(&script, RefreshPolicy::new());
        let requests = steady_traffic(&cache, every, lifetime * 10).await;
        let stats = cache.stats();
        assert!(
            fetches.contains(&stats.token_requests),
            "{lifetime:?}: {stats:?} for {requests} requests"
        );
        assert_eq!(
            stats.waits, 1,
            "{lifetime:?}: only the first request waits: {stats:?}"
        );
        assert_eq!(stats.refreshes_ahead, stats.token_requests - 1, "{stats:?}");
        assert_eq!(stats.failures, 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_is_never_handed_out_past_its_expiry_even_when_refresh_fails() {
    // First token, then the endpoint is down for good.
    let script = Scripted::new(|n| match n {
        1 => Reply::Token(Some(secs(60))),
        _ => Reply::Fail(transient()),
    });
    let cache = cache(&script, deterministic());
    let first = cache.token().await.unwrap();
    let expires_at = first.expires_at().unwrap();
    let mut served = 0;
    let mut failed = 0;
    for _ in 0..1200 {
        match cache.token().await {
            Ok(token) => {
                assert!(
                    token.same_as(&first),
                    "the endpoint never gave a second token"
                );
                assert!(Instant::now() < expires_at);
                served += 1;
            }
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                assert!(Instant::now() >= expires_at - secs(6));
                failed += 1;
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(
        served > 500 && failed > 500,
        "served {served}, failed {failed}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_while_the_token_is_valid_costs_requests_nothing() {
    // Healthy, then down for 400 s from just before the refresh point
    // (2995 s), then healthy again.
    let start = Instant::now();
    let script = Scripted::new(move |_| {
        let t = Instant::now() - start;
        if t >= secs(2990) && t < secs(3390) {
            Reply::Fail(transient())
        } else {
            Reply::Token(Some(HOUR))
        }
    });
    let cache = cache(&script, deterministic());
    // 100 requests a second for 1.2 lifetimes: the request rate must not drive attempts.
    let requests = steady_traffic(&cache, Duration::from_millis(10), secs(4300)).await;
    let stats = cache.stats();
    assert!(requests > 400_000);
    // Backoff 1, 2, 4, ... 256 s fits 9 failures in 400 s; then success.
    assert!(
        (9..=10).contains(&stats.failures),
        "attempts should follow the backoff, not the request rate: {stats:?}"
    );
    assert_eq!(stats.waits, 1, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn during_an_outage_attempts_grow_with_time_not_with_requests() {
    let script = Scripted::new(|_| Reply::Fail(transient()));
    let cache = cache(&script, deterministic().max_backoff(secs(60)));
    let mut errors = 0;
    // 1000 requests a second for 10 minutes, no token ever.
    for _ in 0..600_000 {
        if cache.token().await.is_err() {
            errors += 1;
        }
        sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(errors, 600_000);
    // 1+2+4+8+16+32 = 63 s for the first 7 attempts, then one a minute.
    let calls = script.calls();
    assert!((14..=18).contains(&calls), "{calls} attempts in 10 minutes");
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let script = Scripted::exactly(vec![
        Reply::Fail(transient().with_retry_after(secs(120))),
        Reply::Token(Some(HOUR)),
    ]);
    let cache = cache(&script, deterministic());
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.retry_after(), Some(secs(120)));
    for _ in 0..119 {
        advance(secs(1)).await;
        assert!(
            cache.token().await.is_err(),
            "no attempt before Retry-After"
        );
    }
    assert_eq!(script.calls(), 1);
    advance(secs(2)).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_not_retried_hot() {
    let script = Scripted::exactly(vec![
        Reply::Fail(Error::custom("invalid_client", false)),
        Reply::Token(Some(HOUR)),
    ]);
    let cache = cache(&script, deterministic().max_backoff(secs(300)));
    for _ in 0..299 {
        assert!(!cache.token().await.unwrap_err().is_transient());
        advance(secs(1)).await;
    }
    assert_eq!(script.calls(), 1);
    advance(secs(2)).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn reauthorization_required_stops_fetching_for_good() {
    let script = Scripted::exactly(vec![
        Reply::Token(Some(secs(60))),
        Reply::Fail(Error::reauthorization_required("refresh token revoked")),
    ]);
    let cache = cache(&script, deterministic());
    cache.token().await.unwrap();
    advance(secs(24 * 3600)).await;
    settle().await;
    for _ in 0..100 {
        let error = cache.token().await.unwrap_err();
        assert!(error.is_reauthorization_required(), "{error}");
        advance(secs(600)).await;
    }
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiters_do_not_cancel_the_fetch() {
    let script = Scripted::exactly(vec![Reply::Token(Some(HOUR))]).latency(secs(5));
    let cache = cache(&script, deterministic());
    let waiters: Vec<_> = (0..100)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { tokio::time::timeout(secs(1), cache.token()).await })
        })
        .collect();
    for waiter in waiters {
        assert!(
            waiter.await.unwrap().is_err(),
            "every waiter gives up after 1 s"
        );
    }
    assert_eq!(script.completed.load(Ordering::SeqCst), 0);
    advance(secs(5)).await;
    settle().await;
    assert_eq!(
        script.completed.load(Ordering::SeqCst),
        1,
        "the fetch finished"
    );
    // The next request gets that token at once, without a second fetch.
    let token = tokio::time::timeout(Duration::from_millis(1), cache.token())
        .await
        .expect("no wait")
        .unwrap();
    assert_eq!(token.access_token().expose_secret_for_test(), "token-1");
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn concurrent_invalidations_of_one_token_cause_one_refresh() {
    let script = Scripted::tokens(HOUR).latency(Duration::from_millis(50));
    let cache = cache(&script, deterministic());
    let old = cache.token().await.unwrap();
    let tasks: Vec<_> = (0..500)
        .map(|_| {
            let (cache, old) = (cache.clone(), old.clone());
            tokio::spawn(async move {
                cache.invalidate(&old);
                cache.token().await.unwrap()
            })
        })
        .collect();
    let mut fresh = Vec::new();
    for task in tasks {
        fresh.push(task.await.unwrap());
    }
    assert!(fresh
        .iter()
        .all(|t| !t.same_as(&old) && t.same_as(&fresh[0])));
    assert_eq!(script.calls(), 2);
    assert_eq!(cache.stats().invalidations, 1);
    // A late invalidation of the old token leaves the new one in place.
    cache.invalidate(&old);
    settle().await;
    assert!(cache.token().await.unwrap().same_as(&fresh[0]));
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn missing_expires_in_uses_the_default_lifetime() {
    let script = Scripted::new(|_| Reply::Token(None));
    let cache = cache(&script, deterministic().default_lifetime(secs(100)));
    cache.token().await.unwrap();
    // 100 s default: usable 95 s, refreshed 19 s (20 %) before, at 76 s.
    advance(secs(75)).await;
    settle().await;
    assert_eq!(script.calls(), 1);
    advance(secs(2)).await;
    settle().await;
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_that_expires_on_arrival_is_an_error_not_a_loop() {
    let script = Scripted::new(|_| Reply::Token(Some(Duration::ZERO)));
    let cache = cache(&script, deterministic().max_backoff(secs(60)));
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidResponse);
    for _ in 0..100 {
        let _ = cache.token().await;
        advance(Duration::from_millis(100)).await;
    }
    assert_eq!(script.calls(), 1, "no hot loop on zero-lifetime tokens");
}

#[tokio::test(start_paused = true)]
async fn the_background_task_ends_with_the_last_handle() {
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script, deterministic());
    let clone = cache.clone();
    cache.token().await.unwrap();
    drop(cache);
    settle().await;
    assert!(
        !script.dropped.load(Ordering::SeqCst),
        "a handle is still alive"
    );
    drop(clone);
    settle().await;
    assert!(
        script.dropped.load(Ordering::SeqCst),
        "the task still owns the source"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_source_fails_waiters_instead_of_hanging_them() {
    let script = Scripted::exactly(vec![]).latency(Duration::from_millis(10));
    let cache = cache(&script, deterministic());
    let waiters: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.token().await })
        })
        .collect();
    for waiter in waiters {
        let error = waiter.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Closed);
    }
    assert_eq!(cache.token().await.unwrap_err().kind(), &ErrorKind::Closed);
}

#[tokio::test(start_paused = true)]
async fn fetches_are_bounded_by_the_request_timeout() {
    let script = Scripted::exactly(vec![Reply::Token(Some(HOUR)), Reply::Token(Some(HOUR))])
        .latency(secs(3600));
    let cache = cache(&script, deterministic().request_timeout(secs(10)));
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Timeout);
    assert!(error.is_transient());
}

/// `ExposeSecret` under a name that says why a test reads a secret.
trait ExposeForTest {
    fn expose_secret_for_test(&self) -> &str;
}

impl ExposeForTest for secrecy::SecretString {
    fn expose_secret_for_test(&self) -> &str {
        secrecy::ExposeSecret::expose_secret(self)
    }
}
