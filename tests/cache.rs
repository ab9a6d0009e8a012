//! TokenCache behaviour on paused time with a scripted token source.

mod support;

use std::{sync::atomic::Ordering, time::Duration};

use support::{
    retry::RetryOnError,
    scripted::{Reply, Scripted},
};
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
    // 3600 s lifetime, deterministic policy: to be replaced by 3595 s (5 s
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
    // fetches in 10 lifetimes); a short token is to be replaced by its lifetime less
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
async fn a_token_is_served_until_its_expiry_and_never_after_when_refresh_fails() {
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
                // Retired by the task's timer at the instant of expiry; a
                // request woken at that same instant may still see it.
                assert!(Instant::now() <= expires_at);
                served += 1;
            }
            Err(error) => {
                assert!(error.is_transient(), "{error}");
                assert!(Instant::now() >= expires_at, "failed before expiry");
                assert!(error.next_attempt_at().is_some());
                failed += 1;
            }
        }
        sleep(Duration::from_millis(100)).await;
    }
    // 60 s of 120 s served, the margin (5 s) included; the request at the
    // instant of expiry may go either way.
    assert!(
        (600..=601).contains(&served) && served + failed == 1200,
        "served {served}, failed {failed}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_outage_at_the_end_of_a_tokens_life_fails_no_request_while_it_is_valid() {
    // 6 s tokens; from right after the first one the endpoint answers 503
    // with Retry-After: 1, then 500s, for 5.5 s; then it recovers. The
    // expiry margin (1 s) falls inside the outage.
    let start = Instant::now();
    let script = Scripted::new(move |n| {
        let t = Instant::now() - start;
        match n {
            1 => Reply::Token(Some(secs(6))),
            2 => Reply::Fail(transient().with_retry_after(secs(1))),
            _ if t < Duration::from_millis(5500) => Reply::Fail(transient()),
            _ => Reply::Token(Some(secs(6))),
        }
    });
    let cache = cache(&script, deterministic());
    let first = cache.token().await.unwrap();
    let (mut failed_while_valid, mut failed_after, mut served) = (0, 0, 0);
    let mut first_success_after_recovery = None;
    // A request every millisecond for 8 s.
    while Instant::now() - start < secs(8) {
        let now = Instant::now();
        match cache.token().await {
            Ok(token) => {
                served += 1;
                assert!(Instant::now() <= token.expires_at().unwrap());
                if !token.same_as(&first) && first_success_after_recovery.is_none() {
                    first_success_after_recovery = Some(Instant::now() - start);
                }
            }
            Err(_) if now < first.expires_at().unwrap() => failed_while_valid += 1,
            Err(_) => failed_after += 1,
        }
        sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        failed_while_valid, 0,
        "a request failed while the token was valid"
    );
    assert!(served > 7000, "{served}");
    // The first token, then the refresh point at 3.75 s: failed attempts at
    // 3.75 (Retry-After 1 s), 4.75, 4.95 and 5.35 s, and the one at 6.15 s
    // that succeeds. Six in all during 8000 requests.
    assert_eq!(
        script.calls(),
        6,
        "attempts follow the backoff, not the requests"
    );
    // The endpoint recovered at 5.5 s; the token expired at 6 s. The retry at
    // 6.15 s is due within `wait_for_retry`, so requests wait for it instead
    // of failing.
    assert_eq!(failed_after, 0);
    let recovered = first_success_after_recovery.expect("a new token after the outage");
    assert!(
        recovered <= Duration::from_millis(6200),
        "back within a backoff period of the recovery: {recovered:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cold_start_that_meets_one_transient_failure_fails_no_request() {
    // The first token request fails as a 503 would; the next one succeeds.
    // 1000 requests wait behind a caller-side retry (2 retries, 100 ms
    // apart) outside the layer.
    let script = Scripted::exactly(vec![Reply::Fail(transient()), Reply::Token(Some(HOUR))])
        .latency(Duration::from_millis(20));
    let cache = cache(&script, RefreshPolicy::new());
    let client = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(RetryOnError::new(
            2,
            Duration::from_millis(100),
        )))
        .layer(tower_oauth2::BearerAuthLayer::new(cache.clone()))
        .service(tower::service_fn(|request: http::Request<()>| async move {
            assert!(request.headers().contains_key(http::header::AUTHORIZATION));
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(
                async move { tower::ServiceExt::oneshot(client, http::Request::new(())).await },
            )
        })
        .collect();
    let mut ok = 0;
    for request in requests {
        if request.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    assert_eq!(script.calls(), 2);
    assert_eq!(cache.stats().failures, 1);
}

/// Without the wait, the same cold start: requests get the error at once,
/// and it says when the next attempt is due.
#[tokio::test(start_paused = true)]
async fn an_error_says_when_the_next_attempt_is_due() {
    let script = Scripted::exactly(vec![Reply::Fail(transient()), Reply::Token(Some(HOUR))]);
    let cache = cache(&script, deterministic().wait_for_retry(Duration::ZERO));
    let failed_at = Instant::now();
    let error = cache.token().await.unwrap_err();
    let next = error
        .next_attempt_at()
        .expect("a transient error is retried");
    assert_eq!(next - failed_at, Duration::from_millis(100));
    // Before then, at once and without a new attempt; at that moment, a token.
    assert!(cache.token().await.is_err());
    tokio::time::sleep_until(next).await;
    assert!(cache.token().await.is_ok());
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_slow_endpoint_makes_no_request_wait_after_the_first_token() {
    // 2 s tokens from an endpoint that takes 400 ms: the refresh is moved
    // early enough that the new token arrives before the old one's planned
    // end, for ten lifetimes of traffic.
    let script = Scripted::tokens(secs(2)).latency(Duration::from_millis(400));
    let cache = cache(&script, RefreshPolicy::new());
    let mut handed_late = 0;
    let end = Instant::now() + secs(20);
    while Instant::now() < end {
        let token = cache.token().await.unwrap();
        // Past `replace_by` (lifetime less the 1 s margin) means the refresh
        // came late.
        if Instant::now() >= token.issued_at() + secs(1) {
            handed_late += 1;
        }
        sleep(Duration::from_millis(5)).await;
    }
    let stats = cache.stats();
    assert_eq!(stats.waits, 1, "{stats:?}");
    assert_eq!(handed_late, 0, "{stats:?}");
    // Every 0.5 s (half the planned lifetime) rather than every 0.75 s.
    assert!((40..=42).contains(&stats.token_requests), "{stats:?}");
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
    // Backoff 0.1, 0.2, 0.4, ... 204.8 s fits 12 failures in 400 s
    // (2995 s + 0.1 s × (2^11 - 1) = 3199.7 s; the next at 3404.5 s succeeds).
    assert_eq!(
        stats.failures, 12,
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
    // 0.1 s × (2^10 - 1) = 102.3 s for the first 11 attempts, then one a
    // minute: 8 more in 10 minutes.
    let calls = script.calls();
    assert!((18..=20).contains(&calls), "{calls} attempts in 10 minutes");
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
    // Permanent errors follow their own schedule, 30 s first (it was
    // `max_backoff`, 5 min: one refusal during a key rollout locked the
    // credential out for that long).
    let cache = cache(&script, deterministic().max_backoff(secs(300)));
    for _ in 0..29 {
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
    // 100 s default: replaced by 95 s, refreshed 19 s (20 %) before, at 76 s.
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

/// `refresh_now` is the operator's "try again now": a cache locked out by a
/// permanent error (an `invalid_client` during a key rollout) asks at once
/// instead of after its backoff; a cache serving a token gets a new one;
/// callers asking together share one token request; after the server
/// refused the grant for good, it says so without asking.
#[tokio::test(start_paused = true)]
async fn refresh_now_asks_at_once_whatever_the_backoff() {
    let script = Scripted::exactly(vec![
        Reply::Fail(Error::custom("invalid_client", false)),
        Reply::Token(Some(HOUR)),
        Reply::Token(Some(HOUR)),
        Reply::Fail(Error::reauthorization_required("revoked")),
    ])
    .latency(secs(1));
    let cache = cache(&script, deterministic().max_backoff(secs(300)));
    assert!(cache.token().await.is_err());
    // Locked out for 300 s; the key is fixed, the operator asks again.
    let fresh = cache.refresh_now().await.unwrap();
    assert_eq!(script.calls(), 2, "asked at once");
    assert!(cache.token().await.unwrap().same_as(&fresh));

    // Serving: ten callers at once, one new token for all of them.
    let asks: Vec<_> = (0..10)
        .map(|_| {
            let cache = cache.clone();
            tokio::spawn(async move { cache.refresh_now().await })
        })
        .collect();
    let mut tokens = Vec::new();
    for ask in asks {
        tokens.push(ask.await.unwrap().unwrap());
    }
    assert_eq!(script.calls(), 3, "one token request for ten callers");
    assert!(tokens.iter().all(|t| t.same_as(&tokens[0])));
    assert!(!tokens[0].same_as(&fresh));

    // The grant is gone: the error, and no more token requests after it.
    let error = cache.refresh_now().await.unwrap_err();
    assert!(error.is_reauthorization_required(), "{error}");
    let again = cache.refresh_now().await.unwrap_err();
    assert!(again.is_reauthorization_required(), "{again}");
    assert_eq!(script.calls(), 4);
}
