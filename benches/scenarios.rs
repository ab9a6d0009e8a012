//! Whole-system figures on loopback: stampede, refresh under load, a slow
//! endpoint, an outage at the end of a token's life. (End to end through a
//! real HTTP client: `benches/end_to_end.rs`.)
//! `cargo bench --bench scenarios` prints one table each.

mod common;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, http::StatusCode, response::IntoResponse, routing::post, Router};
use http::Request;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_oauth2::{BearerAuthLayer, ClientCredentials, RefreshPolicy, TokenCache};

/// How the endpoint answers.
const HEALTHY: u8 = 0;
/// Down: the next answer is a 503 with `Retry-After: 1`, then 500 pages.
const DOWN_RETRY_AFTER: u8 = 1;
const DOWN_HTML: u8 = 2;

/// A token endpoint on loopback: `latency` per answer, tokens of `lifetime`
/// seconds, failing while `fault` says so; counts and timestamps every request.
#[derive(Clone)]
struct Endpoint {
    latency: Duration,
    lifetime: u64,
    fault: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    times: Arc<Mutex<Vec<Instant>>>,
}

async fn token(State(e): State<Endpoint>) -> axum::response::Response {
    let n = e.requests.fetch_add(1, Ordering::SeqCst);
    e.times.lock().unwrap().push(Instant::now());
    tokio::time::sleep(e.latency).await;
    let fault = e
        .fault
        .compare_exchange(
            DOWN_RETRY_AFTER,
            DOWN_HTML,
            Ordering::SeqCst,
            Ordering::SeqCst,
        )
        .unwrap_or_else(|now| now);
    match fault {
        DOWN_RETRY_AFTER => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("retry-after", "1")],
            r#"{"error":"temporarily_unavailable"}"#,
        )
            .into_response(),
        DOWN_HTML => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [("content-type", "text/html")],
            "<html><body>Internal Server Error</body></html>",
        )
            .into_response(),
        _ => (
            StatusCode::OK,
            [("content-type", "application/json")],
            format!(
                r#"{{"access_token":"t{n}","token_type":"Bearer","expires_in":{}}}"#,
                e.lifetime
            ),
        )
            .into_response(),
    }
}

async fn endpoint(latency: Duration, lifetime: u64) -> (Endpoint, String) {
    let e = Endpoint {
        latency,
        lifetime,
        fault: Arc::default(),
        requests: Arc::default(),
        times: Arc::default(),
    };
    let app = Router::new()
        .route("/token", post(token))
        .with_state(e.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (e, url)
}

fn cache(url: &str, policy: RefreshPolicy) -> TokenCache {
    let grant = ClientCredentials::builder()
        .token_url(url)
        .client_id("bench")
        .client_secret("secret")
        .build()
        .unwrap();
    TokenCache::with_policy(grant, policy)
}

/// An inner service that yields once, like a real client would.
fn inner(
) -> impl Service<Request<()>, Response = http::Response<()>, Error = Infallible, Future: Send>
       + Clone
       + Send {
    service_fn(|_: Request<()>| async {
        tokio::task::yield_now().await;
        Ok::<_, Infallible>(http::Response::new(()))
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p) as usize]
}

async fn stampede() {
    println!("\n## Stampede: concurrent requests on a cold cache, token endpoint latency 100 ms");
    println!(
        "{:>10} {:>15} {:>14} {:>10}",
        "requests", "token requests", "wall time", "waits"
    );
    for n in [1_000, 10_000, 100_000] {
        let (e, url) = endpoint(Duration::from_millis(100), 3600).await;
        let cache = cache(&url, RefreshPolicy::new());
        let client = BearerAuthLayer::new(cache.clone()).layer(inner());
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|_| tokio::spawn(client.clone().oneshot(Request::new(()))))
            .collect();
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        let wall = start.elapsed();
        println!(
            "{n:>10} {:>15} {:>14.1?} {:>10}",
            e.requests.load(Ordering::SeqCst),
            wall,
            cache.stats().waits
        );
    }
}

async fn refresh_under_load() {
    let lifetime = 2;
    let run = Duration::from_secs(10);
    println!("\n## Refresh under load: {lifetime} s tokens, 8 workers for {run:?}, default policy");
    let (e, url) = endpoint(Duration::from_millis(2), lifetime).await;
    let cache = cache(&url, RefreshPolicy::new());
    let client = BearerAuthLayer::new(cache.clone()).layer(inner());
    let samples = traffic(client, 8, run).await;
    // Read before the analysis below: the cache keeps refreshing meanwhile.
    let stats = cache.stats();
    let refreshes = e.times.lock().unwrap().clone();
    // Requests that started within 10 ms after a token request was sent.
    let (mut boundary, mut steady): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (begun, took, _) in &samples {
        let near = refreshes
            .iter()
            .any(|t| *begun >= *t && begun.duration_since(*t) < Duration::from_millis(10));
        if near {
            boundary.push(*took)
        } else {
            steady.push(*took)
        }
    }
    boundary.sort();
    steady.sort();
    let lifetimes = run.as_secs_f64() / lifetime as f64;
    println!(
        "requests {}, token requests {} over {lifetimes:.0} lifetimes = {:.2} per lifetime, waits {}, refreshes ahead {}, failures {}",
        samples.len(),
        stats.token_requests,
        stats.token_requests as f64 / lifetimes,
        stats.waits,
        stats.refreshes_ahead,
        stats.failures
    );
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>10}",
        "requests", "count", "p50", "p99", "max"
    );
    for (name, set) in [
        ("at a refresh (10 ms)", &boundary),
        ("steady state", &steady),
    ] {
        if set.is_empty() {
            continue;
        }
        println!(
            "{name:<24} {:>8} {:>10.2?} {:>10.2?} {:>10.2?}",
            set.len(),
            percentile(set, 0.5),
            percentile(set, 0.99),
            set[set.len() - 1]
        );
    }
}

/// Steady traffic from `workers` for `run`; returns when each request
/// started, how long it took, and whether it succeeded.
async fn traffic<S>(client: S, workers: usize, run: Duration) -> Vec<(Instant, Duration, bool)>
where
    S: Service<Request<()>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send,
    S::Response: Send,
{
    let start = Instant::now();
    let workers: Vec<_> = (0..workers)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while start.elapsed() < run {
                    let begun = Instant::now();
                    let ok = match client.ready().await {
                        Ok(ready) => ready.call(Request::new(())).await.is_ok(),
                        Err(_) => false,
                    };
                    samples.push((begun, begun.elapsed(), ok));
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.unwrap());
    }
    samples
}

async fn slow_endpoint() {
    let (lifetime, latency, run) = (2, Duration::from_millis(400), Duration::from_secs(10));
    println!(
        "\n## Slow endpoint: {lifetime} s tokens from an endpoint that takes {latency:?}, 4 workers for {run:?}, default policy"
    );
    let (e, url) = endpoint(latency, lifetime).await;
    let cache = cache(&url, RefreshPolicy::new());
    cache.token().await.unwrap();
    let first = cache.stats();
    let client = BearerAuthLayer::new(cache.clone()).layer(inner());
    let samples = traffic(client, 4, run).await;
    let stats = cache.stats();
    let mut took: Vec<_> = samples.iter().map(|(_, took, _)| *took).collect();
    took.sort();
    let lifetimes = run.as_secs_f64() / lifetime as f64;
    println!(
        "requests {} ({} failed); requests that waited for a token after the first: {}; \
         token requests {} over {lifetimes:.0} lifetimes = {:.1} per lifetime; latency p50 {:.2?}, p99 {:.2?}, max {:.2?}",
        samples.len(),
        samples.iter().filter(|(_, _, ok)| !ok).count(),
        stats.waits - first.waits,
        e.requests.load(Ordering::SeqCst) - 1,
        (stats.token_requests - first.token_requests) as f64 / lifetimes,
        percentile(&took, 0.5),
        percentile(&took, 0.99),
        took[took.len() - 1],
    );
}

async fn outage() {
    println!(
        "\n## Outage at the end of a token's life: 6 s tokens; from right after the first, \
         the endpoint answers 503 (Retry-After: 1), then 500 HTML pages, for 5.5 s; default policy"
    );
    let (e, url) = endpoint(Duration::from_millis(1), 6).await;
    let cache = cache(&url, RefreshPolicy::new());
    let first = cache.token().await.unwrap();
    let expires_at = first.expires_at().unwrap().into_std();
    let start = Instant::now();
    e.fault.store(DOWN_RETRY_AFTER, Ordering::SeqCst);
    let fault = e.fault.clone();
    let recovered_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(5500)).await;
        fault.store(HEALTHY, Ordering::SeqCst);
        Instant::now()
    });
    let client = BearerAuthLayer::new(cache.clone()).layer(inner());
    let samples = traffic(client, 4, Duration::from_secs(9)).await;
    let recovered_at = recovered_at.await.unwrap();
    let failed_while_valid = samples
        .iter()
        .filter(|(begun, _, ok)| !ok && *begun < expires_at)
        .count();
    let failed_after = samples
        .iter()
        .filter(|(begun, _, ok)| !ok && *begun >= expires_at)
        .count();
    let times = e.times.lock().unwrap().clone();
    let during = times
        .iter()
        .filter(|t| **t >= start && **t < recovered_at)
        .count();
    let back = times
        .iter()
        .find(|t| **t >= recovered_at)
        .map(|t| t.duration_since(recovered_at));
    let waited = samples
        .iter()
        .filter(|(_, took, _)| *took > Duration::from_millis(10))
        .count();
    println!(
        "requests {} ({:.1} million/s); failed while the server would accept the token: {failed_while_valid}; \
         failed after its expiry: {failed_after}; waited over 10 ms: {waited}; \
         token requests during the 5.5 s outage: {during}; first token request after recovery: {back:.2?} later",
        samples.len(),
        samples.len() as f64 / 9.0 / 1e6,
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        stampede().await;
        refresh_under_load().await;
        slow_endpoint().await;
        outage().await;
    });
}
