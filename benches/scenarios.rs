//! Whole-system figures on loopback: stampede, refresh under load, outage,
//! end to end. `cargo bench --bench scenarios` prints one table each.

mod common;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::StatusCode,
    response::IntoResponse,
    routing::{get, post},
    Router,
};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_oauth2::{BearerAuthLayer, ClientCredentials, RefreshPolicy, TokenCache};

/// A token endpoint on loopback: `latency` per answer, tokens of `lifetime`
/// seconds, 503 while `down` is set; counts and timestamps every request.
#[derive(Clone)]
struct Endpoint {
    latency: Duration,
    lifetime: u64,
    down: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    times: Arc<Mutex<Vec<Instant>>>,
}

async fn token(State(e): State<Endpoint>) -> impl IntoResponse {
    let n = e.requests.fetch_add(1, Ordering::SeqCst);
    e.times.lock().unwrap().push(Instant::now());
    tokio::time::sleep(e.latency).await;
    if e.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, String::new());
    }
    (
        StatusCode::OK,
        format!(
            r#"{{"access_token":"t{n}","token_type":"Bearer","expires_in":{}}}"#,
            e.lifetime
        ),
    )
}

async fn endpoint(latency: Duration, lifetime: u64) -> (Endpoint, String) {
    let e = Endpoint {
        latency,
        lifetime,
        down: Arc::default(),
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
    let client = BearerAuthLayer::new(cache.clone())
        .handle_unauthorized(false)
        .layer(inner());
    let start = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut samples = Vec::new();
                while start.elapsed() < run {
                    let begun = Instant::now();
                    client
                        .ready()
                        .await
                        .unwrap()
                        .call(Request::new(()))
                        .await
                        .unwrap();
                    samples.push((begun, begun.elapsed()));
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::new();
    for worker in workers {
        samples.extend(worker.await.unwrap());
    }
    // Read before the analysis below: the cache keeps refreshing meanwhile.
    let stats = cache.stats();
    let refreshes = e.times.lock().unwrap().clone();
    // Requests that started within 10 ms after a token request was sent.
    let (mut boundary, mut steady): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for (begun, took) in &samples {
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

async fn outage() {
    println!(
        "\n## Outage: endpoint answers 503 from 3.5 s to 4.4 s; 6 s tokens (usable 5 s, refreshed at 3.75 s)"
    );
    let (e, url) = endpoint(Duration::from_millis(1), 6).await;
    let policy = RefreshPolicy::new()
        .jitter(0.0)
        .initial_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(400));
    let cache = cache(&url, policy);
    cache.token().await.unwrap();
    let client = BearerAuthLayer::new(cache.clone())
        .handle_unauthorized(false)
        .layer(inner());
    let start = Instant::now();
    let down = e.down.clone();
    let switch = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(3500)).await;
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(900)).await;
        down.store(false, Ordering::SeqCst);
    });
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0u64, 0u64);
                while start.elapsed() < Duration::from_millis(5500) {
                    match client.ready().await.unwrap().call(Request::new(())).await {
                        Ok(_) => ok += 1,
                        Err(_) => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed += f;
    }
    switch.await.unwrap();
    let during = e
        .times
        .lock()
        .unwrap()
        .iter()
        .filter(|t| {
            let at = t.duration_since(start);
            at >= Duration::from_millis(3500) && at < Duration::from_millis(4400)
        })
        .count();
    let stats = cache.stats();
    println!(
        "requests {ok} succeeded, {failed} failed; token requests during the 0.9 s outage: {during} \
         (failures {}); requests during it: about {:.0}/s",
        stats.failures,
        ok as f64 / 5.5
    );
}

async fn end_to_end() {
    println!("\n## End to end: hyper-util client to a local axum upstream, 2 workers x 3 s");
    let app = Router::new().route("/", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let (_, token_url) = endpoint(Duration::ZERO, 3600).await;
    let cache = cache(&token_url, RefreshPolicy::new());
    cache.token().await.unwrap();
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    async fn drive<S>(client: S, url: &str) -> f64
    where
        S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>
            + Clone
            + Send
            + 'static,
        S::Error: std::fmt::Debug,
        S::Future: Send,
    {
        let run = Duration::from_secs(3);
        let start = Instant::now();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (mut client, url) = (client.clone(), url.to_owned());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < run {
                        let request = Request::get(&url).body(Full::new(Bytes::new())).unwrap();
                        let response = client.ready().await.unwrap().call(request).await.unwrap();
                        response.into_body().collect().await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for worker in workers {
            total += worker.await.unwrap();
        }
        total as f64 / start.elapsed().as_secs_f64()
    }

    let plain = drive(http.clone(), &url).await;
    let with_default = drive(
        BearerAuthLayer::new(cache.clone()).layer(http.clone()),
        &url,
    )
    .await;
    let with_lean = drive(
        BearerAuthLayer::new(cache.clone())
            .handle_unauthorized(false)
            .layer(http.clone()),
        &url,
    )
    .await;
    println!("{:<34} {:>10} {:>8}", "client", "req/s", "ratio");
    println!("{:<34} {plain:>10.0} {:>8.3}", "no layer", 1.0);
    println!(
        "{:<34} {with_lean:>10.0} {:>8.3}",
        "BearerAuth, no 401 handling",
        with_lean / plain
    );
    println!(
        "{:<34} {with_default:>10.0} {:>8.3}",
        "BearerAuth, default",
        with_default / plain
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
        outage().await;
        end_to_end().await;
    });
}
