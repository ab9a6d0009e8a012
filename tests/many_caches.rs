//! Many credentials in one process: what a cache costs by its use. Built and
//! not asked, it holds no task and no timer; it runs while it serves; with
//! `refresh_unused(false)` it lets an unused token expire and stops again;
//! a `CacheMap` bounds how many are kept. Counted with `cache::census`,
//! which is process-wide: the tests here take turns.

mod support;

use std::{
    sync::{Mutex, PoisonError},
    time::Duration,
};

use support::scripted::Scripted;
use tokio::time::advance;
use tower::{Layer, Service, ServiceExt};
use tower_oauth2::{
    cache::{census, Census},
    BearerAuthLayer, CacheMap, RefreshPolicy, TokenCache,
};

static SERIAL: Mutex<()> = Mutex::new(());

/// Runs `test` on paused time, alone: its runtime (and every task on it)
/// is gone before the next test counts anything.
fn alone(test: impl std::future::Future<Output = ()>) {
    let _turn = SERIAL.lock().unwrap_or_else(PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(test);
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Lets the background tasks run whatever is due now.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// Lets `n` seconds pass, a second at a time.
async fn run_for(n: u64) {
    for _ in 0..n {
        advance(secs(1)).await;
        settle().await;
    }
}

fn quiet() -> RefreshPolicy {
    RefreshPolicy::new().jitter(0.0).refresh_unused(false)
}

/// What changed since `before`, as (caches, tasks, timers).
fn since(before: Census) -> (isize, isize, isize) {
    let now = census();
    let d = |a: usize, b: usize| a as isize - b as isize;
    (
        d(now.caches, before.caches),
        d(now.tasks, before.tasks),
        d(now.timers, before.timers),
    )
}

#[test]
fn caches_built_and_not_asked_hold_no_task_and_no_timer() {
    alone(async {
        let before = census();
        let script = Scripted::tokens(secs(3600));
        let caches: Vec<TokenCache> = (0..1000)
            .map(|_| TokenCache::new(script.source()))
            .collect();
        let layers: Vec<BearerAuthLayer> = caches
            .iter()
            .map(|c| BearerAuthLayer::new(c.clone()))
            .collect();
        settle().await;
        assert_eq!(since(before), (1000, 0, 0));
        assert_eq!(script.calls(), 0);

        // One asked: its two tasks run (refresher, expiry) with their timers.
        caches[7].token().await.unwrap();
        let (_, tasks, timers) = since(before);
        assert_eq!(tasks, 2);
        assert!(
            timers >= 2,
            "{timers} timers: a refresh point and an expiry"
        );
        assert_eq!(script.calls(), 1);

        drop(layers);
        drop(caches);
        settle().await;
        assert_eq!(since(before), (0, 0, 0));
    });
}

#[test]
fn an_unused_token_is_left_to_expire_and_the_cache_stops() {
    alone(async {
        let before = census();
        let script = Scripted::tokens(secs(100));
        let cache = TokenCache::with_policy(script.source(), quiet());
        let first = cache.token().await.unwrap();
        assert_eq!(since(before).1, 2);

        // Refresh point (80 s), the second look (90 s), expiry (100 s): never used.
        run_for(110).await;
        assert_eq!(script.calls(), 1, "an unused token was refreshed");
        assert_eq!(
            since(before),
            (1, 0, 0),
            "an idle cache holds a task or a timer"
        );

        // The next request waits for a new token; the cache runs again.
        let second = cache.token().await.unwrap();
        assert!(!second.same_as(&first));
        assert_eq!(script.calls(), 2);
        assert_eq!(cache.stats().waits, 2);
        assert_eq!(since(before).1, 2);
    });
}

#[test]
fn a_token_used_before_either_look_is_refreshed_ahead() {
    alone(async {
        let script = Scripted::tokens(secs(100));
        let cache = TokenCache::with_policy(script.source(), quiet());
        // A 100 s token's refresh point, and the second look halfway from
        // there to its expiry.
        let refresh = quiet().refresh_after(secs(100)).as_secs();
        let look = refresh + (100 - refresh) / 2;
        cache.token().await.unwrap();
        // Used before the refresh point: refreshed there.
        run_for(refresh / 2).await;
        cache.token().await.unwrap();
        run_for(refresh - refresh / 2 + 1).await;
        assert_eq!(script.calls(), 2);

        // The new token (issued at `refresh`) is used only after its
        // refresh point, before the second look: refreshed at the look.
        run_for(refresh + 1).await;
        assert_eq!(script.calls(), 2);
        cache.token().await.unwrap();
        run_for(look - refresh).await;
        assert_eq!(script.calls(), 3, "used between the looks, not refreshed");
        assert_eq!(cache.stats().waits, 1, "a request waited for a token");
    });
}

#[test]
fn by_default_a_token_is_refreshed_used_or_not() {
    alone(async {
        let script = Scripted::tokens(secs(100));
        let cache = TokenCache::with_policy(script.source(), RefreshPolicy::new().jitter(0.0));
        cache.token().await.unwrap();
        run_for(250).await;
        assert!(script.calls() >= 3, "{} token requests", script.calls());
        assert_eq!(cache.stats().waits, 1);
    });
}

#[test]
fn a_request_through_a_layer_wakes_a_parked_cache() {
    alone(async {
        let before = census();
        let script = Scripted::tokens(secs(60));
        let cache = TokenCache::with_policy(script.source(), quiet());
        let mut service = BearerAuthLayer::new(cache.clone()).layer(tower::service_fn(
            |request: http::Request<()>| async move {
                let sent = request.headers().contains_key("authorization");
                Ok::<_, std::convert::Infallible>(http::Response::new(sent))
            },
        ));
        let response = service
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await;
        assert!(response.unwrap().into_body());
        run_for(70).await;
        assert_eq!(since(before).1, 0, "the cache did not stop");
        let response = service
            .ready()
            .await
            .unwrap()
            .call(http::Request::new(()))
            .await;
        assert!(response.unwrap().into_body());
        assert_eq!(script.calls(), 2);
    });
}

#[test]
fn shutdown_and_refresh_now_reach_a_cache_that_never_ran() {
    alone(async {
        let before = census();
        let script = Scripted::tokens(secs(60));
        let cache = TokenCache::new(script.source());
        cache.shutdown().await.unwrap();
        settle().await;
        assert_eq!(since(before), (1, 0, 0));
        assert_eq!(
            cache.token().await.unwrap_err().kind(),
            &tower_oauth2::ErrorKind::Closed
        );

        let other = TokenCache::new(script.source());
        other.refresh_now().await.unwrap();
        assert_eq!(script.calls(), 1);
    });
}

#[test]
fn a_full_cache_map_drops_the_oldest_and_its_tasks_end() {
    alone(async {
        let before = census();
        let script = Scripted::tokens(secs(3600));
        let map = CacheMap::new(10);
        for caller in 0..25u32 {
            let cache = map.get_or_insert_with(&caller, || TokenCache::new(script.source()));
            cache.token().await.unwrap();
            advance(Duration::from_millis(1100)).await;
        }
        settle().await;
        assert_eq!(map.len(), 10);
        assert_eq!(since(before), (10, 20, since(before).2));
        // The newest ten are the ones kept.
        for caller in 15..25u32 {
            assert!(map.get(&caller).is_some(), "caller {caller} was dropped");
        }
        drop(map);
        settle().await;
        assert_eq!(since(before), (0, 0, 0));
    });
}
