//! End-to-end throughput through hyper-util's legacy client to a local axum
//! upstream, with and without the layer. `cargo bench --bench end_to_end`.
//!
//! The variants take turns (several rounds, each variant once per round) so
//! that noise from anything else on the machine falls on all of them alike;
//! each ratio is to the client without a layer over the same rounds.

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

const ROUNDS: usize = 5;
const SLICE: Duration = Duration::from_millis(1500);
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

        let names = [
            "no layer",
            "static header (AddAuthorization)",
            "BearerAuth (default)",
            "retry(Replay) + BearerAuth",
        ];
        let mut totals = [0u64; 4];
        for _ in 0..ROUNDS {
            totals[0] += drive(http.clone(), &url).await;
            totals[1] += drive(
                tower_http::auth::AddAuthorizationLayer::bearer(TOKEN).layer(http.clone()),
                &url,
            )
            .await;
            totals[2] += drive(
                BearerAuthLayer::new(cache.clone()).layer(http.clone()),
                &url,
            )
            .await;
            totals[3] += drive(
                ServiceBuilder::new()
                    .retry(Replay::new())
                    .layer(BearerAuthLayer::new(cache.clone()))
                    .service(http.clone()),
                &url,
            )
            .await;
        }
        let seconds = (ROUNDS as u32 * SLICE).as_secs_f64();
        println!(
            "## End to end: hyper-util client to a local axum upstream, {WORKERS} workers, \
             {ROUNDS} rounds x {SLICE:?} per variant"
        );
        println!("{:<34} {:>10} {:>8}", "client", "req/s", "ratio");
        for (name, total) in names.iter().zip(totals) {
            println!(
                "{name:<34} {:>10.0} {:>8.3}",
                total as f64 / seconds,
                total as f64 / totals[0] as f64
            );
        }
    });
}
