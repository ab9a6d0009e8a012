//! Heap allocations per request for each way of adding the token, counted by
//! an instrumented global allocator. `cargo bench --bench allocations`.

mod common;

use std::alloc::System;

use common::*;
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
}
