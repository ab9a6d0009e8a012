//! Heap allocations per request for each way of adding the token, counted by
//! an instrumented global allocator. `cargo bench --bench allocations`.

mod common;
#[path = "common/paths.rs"]
mod paths;

use std::alloc::System;

use common::*;
use paths::{bearer_client, now, replay_client, request, send, static_client};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::Service;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 10_000;

/// (allocations, bytes) per request, after a warm-up request.
fn per_request<S: Service<http::Request<()>>>(service: S) -> (f64, f64) {
    count(service, one)
}

/// The same with an empty `String` body, for the retry variants.
fn per_request_string<S: Service<http::Request<String>>>(service: S) -> (f64, f64) {
    count(service, one_string)
}

fn count<S>(mut service: S, one: fn(&mut S)) -> (f64, f64) {
    one(&mut service);
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        one(&mut service);
    }
    let change = region.change();
    (
        change.allocations as f64 / REQUESTS as f64,
        change.bytes_allocated as f64 / REQUESTS as f64,
    )
}

fn main() {
    let (_runtime, cache) = warm();
    let (base_allocs, base_bytes) = per_request(static_header());
    println!(
        "allocations per request ({REQUESTS} requests each; the request's own header map included)"
    );
    println!(
        "{:<40} {:>8} {:>10} {:>14}",
        "variant", "allocs", "bytes", "vs static hdr"
    );
    let rows: Vec<(&str, (f64, f64))> = vec![
        ("a no layer", per_request(Inner)),
        (
            "b static header (AddAuthorization)",
            (base_allocs, base_bytes),
        ),
        ("BearerAuth (default)", per_request(bearer(&cache))),
        ("c Mutex cache", per_request(mutex_cache())),
        ("d tokio RwLock cache", per_request(rwlock_cache())),
        ("e watch + new HeaderValue", per_request(watched())),
        (
            "f retry(cloning) + static header",
            per_request_string(static_with_cloning_retry()),
        ),
        (
            "retry(cloning) + BearerAuth",
            per_request_string(bearer_with_cloning_retry(&cache)),
        ),
        (
            "retry(Replay) + BearerAuth",
            per_request_string(bearer_with_replay(&cache)),
        ),
    ];
    for (name, (allocs, bytes)) in rows {
        println!(
            "{name:<40} {allocs:>8.2} {bytes:>10.1} {:>+14.2}",
            allocs - base_allocs
        );
    }
    request_paths(&cache);
}

/// The same for a reqwest-middleware chain ending in `paths::Answer`.
fn per_middleware_request(client: reqwest_middleware::ClientWithMiddleware) -> (f64, f64) {
    let url = reqwest::Url::parse(paths::URL).unwrap();
    let mut requests = Vec::with_capacity(REQUESTS + 1);
    requests.extend((0..=REQUESTS).map(|_| request(&url)));
    let mut requests = requests.into_iter();
    send(&client, requests.next().unwrap());
    // The requests are built above, off the count.
    let region = Region::new(GLOBAL);
    for request in requests {
        send(&client, request);
    }
    let change = region.change();
    (
        change.allocations as f64 / REQUESTS as f64,
        change.bytes_allocated as f64 / REQUESTS as f64,
    )
}

/// The same for `TokenCache::token()` with a token ready.
fn per_token(cache: &tower_oauth2::TokenCache) -> (f64, f64) {
    drop(now(cache.token()));
    let region = Region::new(GLOBAL);
    for _ in 0..REQUESTS {
        drop(now(cache.token()));
    }
    let change = region.change();
    (
        change.allocations as f64 / REQUESTS as f64,
        change.bytes_allocated as f64 / REQUESTS as f64,
    )
}

fn request_paths(cache: &tower_oauth2::TokenCache) {
    let (base_allocs, base_bytes) = per_middleware_request(static_client());
    println!(
        "\nreqwest-middleware, then a middleware answering at once (requests built off the count)"
    );
    println!(
        "{:<40} {:>8} {:>10} {:>14}",
        "variant", "allocs", "bytes", "vs static mw"
    );
    let rows: Vec<(&str, (f64, f64))> = vec![
        ("static-header middleware", (base_allocs, base_bytes)),
        (
            "BearerAuthMiddleware",
            per_middleware_request(bearer_client(cache)),
        ),
        (
            "BearerAuthMiddleware, replay(true)",
            per_middleware_request(replay_client(cache)),
        ),
    ];
    for (name, (allocs, bytes)) in rows {
        println!(
            "{name:<40} {allocs:>8.2} {bytes:>10.1} {:>+14.2}",
            allocs - base_allocs
        );
    }
    let (allocs, bytes) = per_token(cache);
    println!(
        "{:<40} {allocs:>8.2} {bytes:>10.1}",
        "TokenCache::token(), token ready"
    );
}
