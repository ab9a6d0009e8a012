//! The crate's main job, end to end on loopback: hundreds of concurrent
//! requests share one short-lived token, refreshed in the background, and not
//! one of them fails or reaches the API with an expired token.
//!
//! ```text
//! cargo run --example demo
//! DEMO_SECONDS=30 DEMO_TOKEN_LIFETIME_SECS=5 cargo run --release --example demo
//! ```
//!
//! Everything runs in this process, on 127.0.0.1:
//! - a token server (client_credentials; client_secret_post or _basic) that
//!   issues random opaque tokens living `DEMO_TOKEN_LIFETIME_SECS` (2 s);
//! - an API that accepts only tokens that server issued and that have not
//!   expired by the real clock, and answers anything else with
//!   `401` + `WWW-Authenticate: Bearer error="invalid_token"`;
//! - the client: retry (`Replay` after a rejected token, wrapping a policy
//!   that retries connection errors) → timeout → `BearerAuthLayer` →
//!   hyper-util client, driven by `WORKERS` looping tasks for `DEMO_SECONDS` (12 s).
//!
//! The process exits with status 1 if any request failed or the API saw an
//! unknown or expired token: the demo is itself a check.

use std::{
    collections::HashMap,
    env,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{header, HeaderMap, Request, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Form, Json, Router,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use rand::Rng;
use tower::{retry::Policy, BoxError, Service, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    AuthMethod, BearerAuthError, BearerAuthLayer, ClientCredentials, RefreshPolicy, Replay,
    TokenCache,
};

const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret";
const WORKERS: usize = 200;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let run_for = Duration::from_secs(env_u64("DEMO_SECONDS", 12));
    let lifetime = Duration::from_secs(env_u64("DEMO_TOKEN_LIFETIME_SECS", 2).max(1));

    // 1. The token server and the API, sharing the registry of issued tokens.
    let issuer = Arc::new(Issuer {
        lifetime,
        ..Issuer::default()
    });
    let auth_server = Router::new().route("/oauth/token", post(issue_token));
    let auth_addr = serve(auth_server.with_state(issuer.clone())).await?;
    let api_addr = serve(
        Router::new()
            .route("/items", get(api))
            .with_state(issuer.clone()),
    )
    .await?;

    // 2. The client. Outermost first: retry wraps timeout wraps the bearer
    // layer, so each attempt is timed out on its own (the token wait included)
    // and each attempt reads the token current at that moment.
    let grant = ClientCredentials::builder()
        .token_url(format!("http://{auth_addr}/oauth/token"))
        .client_id(CLIENT_ID)
        .client_secret(CLIENT_SECRET)
        .auth_method(AuthMethod::ClientSecretPost)
        .scope("items.read items.write")
        .build()?;
    let cache = TokenCache::with_policy(grant, RefreshPolicy::new());
    let retries = Arc::new(AtomicU64::new(0));
    let client = ServiceBuilder::new()
        // Replays once after a rejected token; every other decision is ours.
        .retry(Replay::new().with_policy(RetryConnectErrors {
            attempts_left: 2,
            retries: retries.clone(),
        }))
        .timeout(Duration::from_secs(5))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // 3. The load: WORKERS tasks, each sending one request after another.
    let (secs, life) = (run_for.as_secs(), lifetime.as_secs());
    println!("token server {auth_addr}, API {api_addr}");
    println!("{WORKERS} workers for {secs}s, against tokens that live {life}s");
    let url: http::Uri = format!("http://{api_addr}/items").parse()?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (mut client, url) = (client.clone(), url.clone());
            let (stop, sent) = (stop.clone(), sent.clone());
            tokio::spawn(async move {
                let (mut latencies, mut failed) = (Vec::new(), 0u64);
                while !stop.load(Relaxed) {
                    let request = Request::get(url.clone()).body(Full::new(Bytes::new()))?;
                    let begun = Instant::now();
                    let outcome = async {
                        let response = client.ready().await?.call(request).await?;
                        let status = response.status();
                        // Read the body to the end so the connection goes back to the pool.
                        response.into_body().collect().await?;
                        Ok::<_, BoxError>(status)
                    }
                    .await;
                    latencies.push(begun.elapsed());
                    sent.fetch_add(1, Relaxed);
                    match outcome {
                        Ok(status) if status.is_success() => {}
                        Ok(status) => report_failure(&mut failed, &status),
                        Err(error) => report_failure(&mut failed, &error),
                    }
                }
                Ok::<_, BoxError>((latencies, failed))
            })
        })
        .collect();

    // One progress line a second while the workers run.
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    while started.elapsed() < run_for {
        tick.tick().await;
        println!(
            "  {:>5.1}s  requests {:>8}  token requests {:>3}",
            started.elapsed().as_secs_f64(),
            sent.load(Relaxed),
            cache.stats().token_requests
        );
    }
    stop.store(true, Relaxed);
    let (mut latencies, mut failed) = (Vec::new(), 0);
    for worker in workers {
        let (l, f) = worker.await??;
        latencies.extend(l);
        failed += f;
    }
    let elapsed = started.elapsed();
    // Read both counts together: the cache goes on refreshing in the background.
    let (stats, served) = (cache.stats(), issuer.token_requests.load(Relaxed));
    // Stop it cleanly: a refresh under way finishes first.
    cache.shutdown().await?;

    // 4. The report.
    let total = latencies.len() as u64;
    latencies.sort_unstable();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let period = RefreshPolicy::new().refresh_after(lifetime);
    let expected = (elapsed.as_secs_f64() / period.as_secs_f64()).floor() as u64 + 1;
    let (unknown, expired) = (
        issuer.rejected_unknown.load(Relaxed),
        issuer.rejected_expired.load(Relaxed),
    );
    let (rate, ok) = (total as f64 / elapsed.as_secs_f64(), total - failed);
    let (secs, lives) = (
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / lifetime.as_secs_f64(),
    );
    let (made, ahead, waits) = (stats.token_requests, stats.refreshes_ahead, stats.waits);
    let (fails, inval, retried) = (stats.failures, stats.invalidations, retries.load(Relaxed));
    let (p50, p99, max) = (pct(0.50), pct(0.99), pct(1.0));
    println!("\nrequests            {total} sent ({rate:.0}/s): {ok} succeeded, {failed} failed");
    println!(
        "token requests      {made} in {secs:.1}s = {lives:.1} lifetimes (server saw {served})"
    );
    println!("  expected          ≈ {expected}: the first, then one every {period:.2?}");
    println!("refreshes ahead     {ahead} (a new token before the old one expired)");
    println!("waited for a token  {waits} requests (the first burst, during the first fetch)");
    println!("401s at the API     {unknown} with an unknown token, {expired} with an expired one");
    println!(
        "also                {fails} token failures, {inval} invalidations, {retried} retries"
    );
    println!("latency             p50 {p50:.2?}  p99 {p99:.2?}  max {max:.2?}");

    if failed > 0 || unknown + expired > 0 {
        println!("\nFAILED: every request should succeed with a valid token");
        std::process::exit(1);
    }
    println!("\nOK: every request succeeded, and the API never saw an expired token");
    Ok(())
}

/// Prints the first few failures (all of them would drown the progress lines).
fn report_failure(failed: &mut u64, what: &dyn std::fmt::Display) {
    static PRINTED: AtomicU64 = AtomicU64::new(0);
    *failed += 1;
    if PRINTED.fetch_add(1, Relaxed) < 5 {
        eprintln!("  request failed: {what}");
    }
}

/// Retries a request whose connection could not be made, twice at most.
/// Anything else (a timeout, a token error, any HTTP answer) is final.
#[derive(Clone)]
struct RetryConnectErrors {
    attempts_left: u32,
    retries: Arc<AtomicU64>,
}

type ReqBody = Full<Bytes>;

impl<Res> Policy<Request<ReqBody>, Res, BoxError> for RetryConnectErrors {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<ReqBody>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Self::Future> {
        // `timeout` boxes the bearer layer's error; look inside for hyper's.
        let connect_failed = result.as_ref().err().is_some_and(|error| {
            matches!(
                error.downcast_ref::<BearerAuthError<hyper_util::client::legacy::Error>>(),
                Some(BearerAuthError::Service(e)) if e.is_connect()
            )
        });
        if !connect_failed || self.attempts_left == 0 {
            return None;
        }
        self.attempts_left -= 1;
        self.retries.fetch_add(1, Relaxed);
        Some(tokio::time::sleep(Duration::from_millis(50)))
    }

    fn clone_request(&mut self, request: &Request<ReqBody>) -> Option<Request<ReqBody>> {
        Some(request.clone()) // `Full<Bytes>` is a cheap, reference-counted copy
    }
}

/// What the token server and the API share.
#[derive(Default)]
struct Issuer {
    lifetime: Duration,
    /// Every token issued, with the instant it expires.
    tokens: Mutex<HashMap<String, Instant>>,
    token_requests: AtomicU64,
    rejected_unknown: AtomicU64,
    rejected_expired: AtomicU64,
}

/// `POST /oauth/token`: the client_credentials grant (RFC 6749 §4.4).
async fn issue_token(
    State(issuer): State<Arc<Issuer>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    issuer.token_requests.fetch_add(1, Relaxed);
    let field = |name: &str| form.get(name).map(String::as_str);
    // client_secret_basic: id and secret are form-urlencoded, then base64 (RFC 6749 §2.3.1).
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Basic ").map(str::to_owned));
    let authenticated = match basic {
        Some(basic) => {
            basic == STANDARD.encode(format!("{}:{}", encode(CLIENT_ID), encode(CLIENT_SECRET)))
        }
        None => {
            field("client_id") == Some(CLIENT_ID) && field("client_secret") == Some(CLIENT_SECRET)
        }
    };
    if !authenticated {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    if field("grant_type") != Some("client_credentials") {
        return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type");
    }
    let token = format!("{:032x}", rand::rng().random::<u128>());
    let expires = Instant::now() + issuer.lifetime;
    issuer.tokens.lock().unwrap().insert(token.clone(), expires);
    Json(serde_json::json!({
        "access_token": token,
        "token_type": "Bearer",
        "expires_in": issuer.lifetime.as_secs(),
        "scope": field("scope").unwrap_or_default(),
    }))
    .into_response()
}

/// `GET /items`: the protected API.
async fn api(State(issuer): State<Arc<Issuer>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "));
    let expires = token.and_then(|t| issuer.tokens.lock().unwrap().get(t).copied());
    let rejected = match expires {
        Some(at) if Instant::now() < at => {
            return (StatusCode::OK, r#"{"items":[]}"#).into_response()
        }
        Some(_) => &issuer.rejected_expired,
        None => &issuer.rejected_unknown,
    };
    rejected.fetch_add(1, Relaxed);
    let challenge = r#"Bearer error="invalid_token""#;
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
    )
        .into_response()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(serde_json::json!({ "error": code }))).into_response()
}

fn encode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Serves `app` on a fresh loopback port, in the background.
async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

fn env_u64(name: &str, default: u64) -> u64 {
    match env::var(name) {
        Ok(value) => value.parse().unwrap_or_else(|_| {
            eprintln!("{name}={value} is not a whole number of seconds; using {default}");
            default
        }),
        Err(_) => default,
    }
}
