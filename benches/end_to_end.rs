//! End-to-end throughput through hyper-util's legacy client to a local axum
//! upstream, with and without the layer. `cargo bench --bench end_to_end`.
//!
//! The variants take turns (40 rounds, each variant once per round, the order
//! rotating so none is always first) so that noise falls on all of them
//! alike. Each ratio is the median over the rounds of the variant's count to
//! the count without a layer in the same round; "middle half" is the range
//! of the middle 50 % of those per-round ratios.

mod common;

use std::time::{Duration, Instant};

use axum::{routing::get, Router};
use bytes::Bytes;
use common::{Static, TOKEN};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_oauth2::{BearerAuthLayer, Replay, TokenCache};

const ROUNDS: usize = 40;
const SLICE: Duration = Duration::from_millis(250);
const WORKERS: usize = 2;

/// Requests completed by `WORKERS` tasks sending back to back for `SLICE`.
async fn drive<S>(client: S, url: &str) -> u64
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>
        + Clone
        + Send
        + 'static,
    S::Error: std::fmt::Debug,
    S::Future: Send,
{
    let start = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (mut client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < SLICE {
                    let request = Request::get(&url).body(Full::default()).unwrap();
                    let response = client.ready().await.unwrap().call(request).await.unwrap();
                    assert!(response.status().is_success());
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
    total
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let app = Router::new().route("/", get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cache = TokenCache::new(Static);
        cache.token().await.unwrap();
        let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        // Warm the connection pool.
        drive(http.clone(), &url).await;

        let bearer = BearerAuthLayer::new(cache.clone());
        let names = [
            "no layer",
            "static header (AddAuthorization)",
            "BearerAuth (default)",
            "retry(Replay) + BearerAuth",
        ];
        // counts[round][variant]
        let mut counts = vec![[0u64; 4]; ROUNDS];
        for (round, counts) in counts.iter_mut().enumerate() {
            // Each variant goes first, second, ... equally often.
            for turn in 0..4 {
                let variant = (turn + round) % 4;
                counts[variant] = match variant {
                    0 => drive(http.clone(), &url).await,
                    1 => {
                        let layer = tower_http::auth::AddAuthorizationLayer::bearer(TOKEN);
                        drive(layer.layer(http.clone()), &url).await
                    }
                    2 => drive(bearer.layer(http.clone()), &url).await,
                    _ => {
                        let stack = ServiceBuilder::new()
                            .retry(Replay::new())
                            .layer(bearer.clone())
                            .service(http.clone());
                        drive(stack, &url).await
                    }
                };
            }
        }
        println!(
            "## End to end: hyper-util client to a local axum upstream, {WORKERS} workers, \
             {ROUNDS} rounds x {SLICE:?} per variant, order rotating"
        );
        println!(
            "{:<34} {:>10} {:>8} {:>15}",
            "client", "req/s", "ratio", "middle half"
        );
        let seconds = (ROUNDS as u32 * SLICE).as_secs_f64();
        for (variant, name) in names.iter().enumerate() {
            let total: u64 = counts.iter().map(|c| c[variant]).sum();
            let mut ratios: Vec<f64> = counts
                .iter()
                .map(|c| c[variant] as f64 / c[0] as f64)
                .collect();
            ratios.sort_by(f64::total_cmp);
            println!(
                "{name:<34} {:>10.0} {:>8.3} {:>7.3}-{:<7.3}",
                total as f64 / seconds,
                ratios[ROUNDS / 2],
                ratios[ROUNDS / 4],
                ratios[3 * ROUNDS / 4],
            );
        }
    });
}
