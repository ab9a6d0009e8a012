//! Heap allocations per DPoP-bound request through `BearerAuth` (the proof
//! made, signed and inserted), next to a bearer request, counted by an
//! instrumented global allocator (allocations of the signing backend's C
//! code, aws-lc's, are not seen). `cargo bench --bench dpop_allocations`.

mod common;
mod dpop_common;

use std::alloc::System;

use common::{bearer, serve, warm};
use dpop_common::{dpop_cache, key, Answer, URL};
use http::{Request, Uri};
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Layer, Service};
use tower_oauth2::{BearerAuthLayer, DpopKey};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const REQUESTS: usize = 10_000;

/// (allocations, bytes) per request to `uri`, after a warm-up request; the
/// request's own URI clone and header map included.
fn per_request<S: Service<Request<()>>>(mut service: S, uri: &Uri) -> (f64, f64) {
    let one = |service: &mut S| {
        let mut request = Request::new(());
        *request.uri_mut() = uri.clone();
        serve(service, request);
    };
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
    let (runtime, cache) = warm();
    let dpop = dpop_cache(&runtime, DpopKey::from_private_key(key()).unwrap());
    let uri: Uri = URL.parse().unwrap();
    println!("allocations per request ({REQUESTS} requests each)");
    println!("{:<32} {:>8} {:>10}", "variant", "allocs", "bytes");
    for (name, (allocs, bytes)) in [
        (
            "BearerAuth, bearer token",
            per_request(bearer(&cache), &uri),
        ),
        (
            "BearerAuth, DPoP-bound token",
            per_request(BearerAuthLayer::new(dpop).layer(Answer), &uri),
        ),
    ] {
        println!("{name:<32} {allocs:>8.2} {bytes:>10.1}");
    }
}
