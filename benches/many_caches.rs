//! One cache per caller, as a token-exchange proxy holds them: what a cache
//! costs with 100,000 of them in the process, against 1,000 in the same run.
//! `cargo bench --bench many_caches`.
//!
//! Each cache is a real `TokenExchange` grant (its own subject token) in a
//! `CacheMap`, with `refresh_unused(false)`. Token requests go to an
//! in-process token endpoint (a tower service given as the grant's
//! transport), so the first request measures the crate's own work: starting
//! the cache's task, the exchange request and its answer parsed, the token
//! published, the header added. Reported per size:
//!
//! - bytes per cache: heap growth of building the map, divided by its size;
//! - tasks and timers alive once built, once 1,000 of them served a first
//!   request, and once those tokens expired unused;
//! - building a `BearerAuthLayer` over a cache (the first build enters it
//!   in the layer's registry), mean of 1,000;
//! - a first request through that layer, mean and median of 1,000 caches.

use std::{alloc::System, convert::Infallible, hint::black_box, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use stats_alloc::{Region, StatsAlloc, INSTRUMENTED_SYSTEM};
use tower::{Layer, Service, ServiceExt};
use tower_oauth2::{
    cache::census, secrecy::SecretString, token_types, BearerAuthLayer, CacheMap, OAuthClient,
    RefreshPolicy, TokenCache,
};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SAMPLE: usize = 1_000;
const LIFETIME: u64 = 300;

/// The token endpoint, in process: every exchange succeeds.
async fn endpoint(_: http::Request<String>) -> Result<http::Response<Full<Bytes>>, Infallible> {
    let body = format!(
        r#"{{"access_token":"exchanged","issued_token_type":"{}","token_type":"Bearer","expires_in":{LIFETIME}}}"#,
        token_types::ACCESS_TOKEN
    );
    Ok(http::Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid response"))
}

/// The API behind the layer: answers at once.
async fn api(request: http::Request<()>) -> Result<http::Response<bool>, Infallible> {
    let sent = request.headers().contains_key(http::header::AUTHORIZATION);
    Ok(http::Response::new(sent))
}

struct Row {
    caches: usize,
    bytes_per_cache: f64,
    built: (usize, usize),
    serving: (usize, usize),
    expired: (usize, usize),
    runtime_tasks: usize,
    layer_first_ns: f64,
    layer_again_ns: f64,
    first_request_mean_us: f64,
    first_request_median_us: f64,
    /// Minor page faults per first request: the heap growing into fresh
    /// pages, which a process with a bigger heap meets more often.
    faults_per_request: f64,
}

/// Minor page faults of this process so far (Linux; 0 elsewhere).
fn minor_faults() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0;
    };
    // The fields after the command name, which is in parentheses.
    let after = stat.rsplit(')').next().unwrap_or_default();
    after
        .split_whitespace()
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0)
}

async fn measure(size: usize) -> Row {
    let client = OAuthClient::builder()
        .token_url("https://auth.example.com/token")
        .client_id("proxy")
        .client_secret("proxy-secret")
        .transport(tower::service_fn(endpoint))
        .build()
        .expect("client settings");
    let quiet = RefreshPolicy::new().refresh_unused(false);
    let map = CacheMap::builder().max_caches(size).build();
    let keys: Vec<[u8; 32]> = (0..size)
        .map(|i| CacheMap::digest(&format!("caller-{i}")))
        .collect();

    let base = census();
    let region = Region::new(GLOBAL);
    for (i, key) in keys.iter().enumerate() {
        map.get_or_insert_with(key, || {
            let grant = client
                .token_exchange(
                    SecretString::from(format!("caller-{i}")),
                    token_types::ACCESS_TOKEN,
                )
                .audience("orders");
            TokenCache::with_policy(grant, quiet.clone())
        });
    }
    let change = region.change();
    let grown = change.bytes_allocated as f64 - change.bytes_deallocated as f64;
    let after = census();
    let built = (after.tasks - base.tasks, after.timers - base.timers);

    // Spread over the whole map: the last ones inserted and the first alike.
    let step = size / SAMPLE;
    let sample: Vec<TokenCache> = (0..SAMPLE)
        .map(|i| map.get(&keys[i * step]).expect("in the map"))
        .collect();
    let started = std::time::Instant::now();
    let layers: Vec<BearerAuthLayer> = sample
        .iter()
        .map(|cache| BearerAuthLayer::new(cache.clone()))
        .collect();
    let layer_first_ns = started.elapsed().as_nanos() as f64 / SAMPLE as f64;
    let started = std::time::Instant::now();
    for cache in &sample {
        black_box(BearerAuthLayer::new(cache.clone()));
    }
    let layer_again_ns = started.elapsed().as_nanos() as f64 / SAMPLE as f64;

    let mut took = Vec::with_capacity(SAMPLE);
    let faults = minor_faults();
    for layer in &layers {
        let mut service = layer.layer(tower::service_fn(api));
        let started = std::time::Instant::now();
        let sent = service
            .ready()
            .await
            .expect("ready")
            .call(http::Request::new(()))
            .await
            .expect("a response");
        took.push(started.elapsed());
        assert!(sent.into_body(), "the request left without a token");
    }
    let faults_per_request = (minor_faults() - faults) as f64 / SAMPLE as f64;
    let now = census();
    let serving = (now.tasks - base.tasks, now.timers - base.timers);
    let runtime_tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    // Past the tokens' expiry, unused: each cache stops again.
    drop(layers);
    drop(sample);
    tokio::time::sleep(Duration::from_secs(LIFETIME + 1)).await;
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    let now = census();
    let expired = (now.tasks - base.tasks, now.timers - base.timers);

    took.sort();
    let mean = took.iter().sum::<Duration>() / SAMPLE as u32;
    Row {
        caches: size,
        bytes_per_cache: grown / size as f64,
        built,
        serving,
        expired,
        runtime_tasks,
        layer_first_ns,
        layer_again_ns,
        first_request_mean_us: mean.as_secs_f64() * 1e6,
        first_request_median_us: took[SAMPLE / 2].as_secs_f64() * 1e6,
        faults_per_request,
    }
}

fn main() {
    let sizes: Vec<usize> = match std::env::var("SIZES") {
        Ok(sizes) => sizes
            .split(',')
            .map(|s| s.trim().parse().expect("SIZES: numbers"))
            .collect(),
        Err(_) => vec![1_000, 100_000],
    };
    let rounds: usize = std::env::var("ROUNDS").map_or(3, |r| r.parse().expect("ROUNDS: a number"));
    let mut rows = Vec::new();
    // Interleaved, so a machine busier in one part of the run weighs on both sizes.
    for _ in 0..rounds {
        for &size in &sizes {
            // Its own runtime each, on paused time: the tokens expire without a wait.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .expect("a runtime");
            rows.push(runtime.block_on(measure(size.max(SAMPLE))));
        }
    }
    println!(
        "| caches | bytes/cache | tasks, timers built | serving {SAMPLE} | expired | runtime tasks | layer (first) | layer (again) | first request mean | median | page faults/request |"
    );
    println!("|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {}, {} | {}, {} | {}, {} | {} | {:.0} ns | {:.0} ns | {:.1} µs | {:.1} µs | {:.2} |",
            r.caches,
            r.bytes_per_cache,
            r.built.0,
            r.built.1,
            r.serving.0,
            r.serving.1,
            r.expired.0,
            r.expired.1,
            r.runtime_tasks,
            r.layer_first_ns,
            r.layer_again_ns,
            r.first_request_mean_us,
            r.first_request_median_us,
            r.faults_per_request,
        );
    }
    println!();
    println!("medians over {rounds} rounds");
    println!("| caches | bytes/cache | layer (first) | layer (again) | first request (median) |");
    println!("|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        let of = |f: fn(&Row) -> f64| {
            let mut v: Vec<f64> = rows
                .iter()
                .filter(|r| r.caches == size.max(SAMPLE))
                .map(f)
                .collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "| {} | {:.0} | {:.0} ns | {:.0} ns | {:.1} µs |",
            size.max(SAMPLE),
            of(|r| r.bytes_per_cache),
            of(|r| r.layer_first_ns),
            of(|r| r.layer_again_ns),
            of(|r| r.first_request_median_us),
        );
    }
}
