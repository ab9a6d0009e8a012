//! N replicas of a service on one machine, each with its own `TokenCache`,
//! against a loopback token server: token requests per token lifetime with
//! and without a shared `RedisStore`.
//!
//! ```sh
//! redis-server --port 6379 --save "" &        # a local Redis
//! cargo run --release --example fleet          # REDIS_URL=redis://127.0.0.1:6379/ by default
//! ```
//!
//! Each replica sends requests back to back for a few token lifetimes; the
//! token server counts what it is asked. Without the store every replica
//! refreshes for itself; with it, one replica at a time holds the lease and
//! the others adopt its token.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use axum::{extract::State, routing::post, Router};
use tower_oauth2::{ClientCredentials, RedisStore, TokenCache};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Lifetime of the tokens the server hands out, in seconds.
const LIFETIME: u64 = 2;
/// Lifetimes of traffic per measurement.
const LIFETIMES: u64 = 4;

async fn token(State(issued): State<Arc<AtomicU64>>) -> String {
    let n = issued.fetch_add(1, Ordering::SeqCst);
    format!(r#"{{"access_token":"t{n}","token_type":"Bearer","expires_in":{LIFETIME}}}"#)
}

/// `replicas` caches (with a shared store or without), requests back to
/// back for `LIFETIMES` lifetimes; returns the token requests the server saw.
async fn measure(
    url: &str,
    issued: &AtomicU64,
    replicas: usize,
    redis: Option<(&str, &str)>,
) -> Result<u64, BoxError> {
    let before = issued.load(Ordering::SeqCst);
    let mut caches = Vec::new();
    for _ in 0..replicas {
        let grant = ClientCredentials::builder()
            .token_url(url)
            .client_id("fleet")
            .client_secret("secret")
            .build()?;
        let cache = match redis {
            Some((redis_url, namespace)) => TokenCache::builder(grant)
                .store(RedisStore::new(redis_url)?.namespace(namespace))
                .build(),
            None => TokenCache::new(grant),
        };
        caches.push(cache);
    }
    let end = Instant::now() + Duration::from_secs(LIFETIME * LIFETIMES);
    let workers: Vec<_> = caches
        .iter()
        .map(|cache| {
            let cache = cache.clone();
            tokio::spawn(async move {
                while Instant::now() < end {
                    cache.token().await?;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok::<_, tower_oauth2::Error>(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    for cache in &caches {
        cache.shutdown().await?;
    }
    Ok(issued.load(Ordering::SeqCst) - before)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let redis_url =
        std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/".to_owned());
    let issued = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route("/token", post(token))
        .with_state(issued.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/token", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!("{LIFETIME} s tokens, {LIFETIMES} lifetimes of traffic per row; Redis at {redis_url}");
    println!(
        "{:>8} {:>26} {:>26}",
        "replicas", "alone: per lifetime", "shared store: per lifetime"
    );
    for (run, replicas) in [1, 2, 4, 8].into_iter().enumerate() {
        let alone = measure(&url, &issued, replicas, None).await?;
        // A fresh namespace per row: no token left over from the last one.
        let namespace = format!("fleet-example-{}-{run}", std::process::id());
        let shared = measure(&url, &issued, replicas, Some((&redis_url, &namespace))).await?;
        println!(
            "{replicas:>8} {:>26.2} {:>26.2}",
            alone as f64 / LIFETIMES as f64,
            shared as f64 / LIFETIMES as f64
        );
    }
    Ok(())
}
