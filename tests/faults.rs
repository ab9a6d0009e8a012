//! A token endpoint that fails in every way a real one does, behind a
//! `TokenCache`: no panic, a typed error where one is due, the cached token
//! keeps serving while it is valid, and token requests stay bounded.
//!
//! Real sockets need real time: the server hands out 3 s tokens (to be
//! replaced by 2 s, refreshed after 1.5 s), the fault starts with the first
//! refresh, and each scenario runs for 4 s: the token is served until it
//! expires at 3 s, then requests get the fault's typed error.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use support::{
    recorder::{Recorder, Reply},
    retry::RetryOnError,
};
use tokio::time::Instant;
use tower_oauth2::{BearerAuthLayer, ClientCredentials, ErrorKind, RefreshPolicy, TokenCache};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Hang,
    HtmlError(u16),
    RetryAfter(u16),
    Malformed,
    Oversized,
    Redirect,
    Refused,
}

#[derive(Clone)]
struct Endpoint {
    fault: Fault,
    token_requests: Arc<AtomicUsize>,
    redirect_hits: Arc<AtomicUsize>,
    shutdown: Arc<tokio::sync::Notify>,
}

async fn token(State(e): State<Endpoint>) -> Response {
    let n = e.token_requests.fetch_add(1, Ordering::SeqCst);
    if n == 0 {
        let body = format!(r#"{{"access_token":"tok-{n}","token_type":"Bearer","expires_in":3}}"#);
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
    }
    match e.fault {
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::OK.into_response()
        }
        Fault::HtmlError(code) => (
            StatusCode::from_u16(code).unwrap(),
            [(header::CONTENT_TYPE, "text/html")],
            "<html><body>Bad gateway tok-secret-in-page</body></html>",
        )
            .into_response(),
        Fault::RetryAfter(code) => (
            StatusCode::from_u16(code).unwrap(),
            [(header::RETRY_AFTER, HeaderValue::from_static("120"))],
            r#"{"error":"temporarily_unavailable"}"#,
        )
            .into_response(),
        Fault::Malformed => (
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"access_token": "#,
        )
            .into_response(),
        Fault::Oversized => {
            let chunk = "x".repeat(1 << 20);
            let body = format!(r#"{{"access_token":"{}"}}"#, chunk.repeat(10));
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Fault::Redirect => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, "/elsewhere")],
        )
            .into_response(),
        Fault::Refused => {
            e.shutdown.notify_one();
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn elsewhere(State(e): State<Endpoint>) -> StatusCode {
    e.redirect_hits.fetch_add(1, Ordering::SeqCst);
    StatusCode::OK
}

/// Starts an endpoint that serves one 3 s token and then fails with `fault`.
async fn endpoint(fault: Fault) -> (Endpoint, String) {
    let e = Endpoint {
        fault,
        token_requests: Arc::default(),
        redirect_hits: Arc::default(),
        shutdown: Arc::default(),
    };
    let app = Router::new()
        .route("/token", post(token))
        .route("/elsewhere", post(elsewhere).get(elsewhere))
        .with_state(e.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    let shutdown = e.shutdown.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.notified().await })
            .await
            .unwrap();
    });
    (e, url)
}

struct Outcome {
    served_while_valid: usize,
    failed_while_valid: usize,
    errors_after: Vec<ErrorKind>,
    token_requests: usize,
    redirect_hits: usize,
}

async fn run(fault: Fault) -> Outcome {
    let (e, url) = endpoint(fault).await;
    let grant = ClientCredentials::builder()
        .token_url(url)
        .client_id("id")
        .client_secret("secret")
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let cache = TokenCache::with_policy(grant, RefreshPolicy::new().jitter(0.0));
    let first = cache.token().await.unwrap();
    let valid_until = first.expires_at().unwrap();
    let end = Instant::now() + Duration::from_secs(4);
    let mut outcome = Outcome {
        served_while_valid: 0,
        failed_while_valid: 0,
        errors_after: Vec::new(),
        token_requests: 0,
        redirect_hits: 0,
    };
    // Traffic every 5 ms; the request rate must not drive token requests.
    while Instant::now() < end {
        let before_expiry = Instant::now() < valid_until - Duration::from_millis(50);
        match cache.token().await {
            Ok(token) => {
                assert!(
                    token.same_as(&first),
                    "{fault:?}: the endpoint only ever gave one token"
                );
                if before_expiry {
                    outcome.served_while_valid += 1;
                }
            }
            Err(error) if before_expiry => {
                outcome.failed_while_valid += 1;
                panic!("{fault:?}: request failed while the token was valid: {error}");
            }
            Err(error) => {
                assert!(
                    !format!("{error} {error:?}").contains("tok-"),
                    "{fault:?} leaks: {error:?}"
                );
                outcome.errors_after.push(error.kind().clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    outcome.token_requests = e.token_requests.load(Ordering::SeqCst);
    outcome.redirect_hits = e.redirect_hits.load(Ordering::SeqCst);
    outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_survived_while_the_token_is_valid() {
    let faults = [
        (Fault::Hang, ErrorKind::Timeout),
        (Fault::HtmlError(500), ErrorKind::Status),
        (Fault::HtmlError(502), ErrorKind::Status),
        (
            Fault::RetryAfter(503),
            ErrorKind::OAuth(tower_oauth2::OAuthErrorCode::Other(
                "temporarily_unavailable".into(),
            )),
        ),
        (
            Fault::RetryAfter(429),
            ErrorKind::OAuth(tower_oauth2::OAuthErrorCode::Other(
                "temporarily_unavailable".into(),
            )),
        ),
        (Fault::Malformed, ErrorKind::InvalidResponse),
        (Fault::Oversized, ErrorKind::ResponseTooLarge),
        (Fault::Redirect, ErrorKind::Redirect),
        (Fault::Refused, ErrorKind::Network),
    ];
    let runs: Vec<_> = faults
        .iter()
        .map(|(fault, _)| tokio::spawn(run(*fault)))
        .collect();
    for ((fault, kind), run) in faults.into_iter().zip(runs) {
        let outcome = run.await.unwrap();
        assert!(
            outcome.served_while_valid > 100,
            "{fault:?}: {}",
            outcome.served_while_valid
        );
        assert_eq!(outcome.failed_while_valid, 0);
        assert!(
            !outcome.errors_after.is_empty(),
            "{fault:?}: no request outlived the token"
        );
        assert!(
            outcome
                .errors_after
                .iter()
                // Refused: the 503 that shut the server down comes first.
                .all(|k| *k == kind || (fault == Fault::Refused && *k == ErrorKind::Status)),
            "{fault:?}: expected {kind:?}, got {:?}",
            outcome.errors_after
        );
        assert!(
            outcome.errors_after.contains(&kind),
            "{fault:?}: never saw {kind:?}"
        );
        // One token, then failed refreshes from 1.5 s on, backing off 0.1,
        // 0.2, 0.4, 0.8 s (1.6 s would end after the run): at most 6 in all.
        // With Retry-After 120 s, no retry at all.
        let bound = match fault {
            Fault::RetryAfter(_) => 2,
            _ => 6,
        };
        assert!(
            (2..=bound).contains(&outcome.token_requests),
            "{fault:?}: {} token requests",
            outcome.token_requests
        );
        assert_eq!(
            outcome.redirect_hits, 0,
            "{fault:?}: the redirect was followed"
        );
    }
}

/// The cold-start case on real sockets: the very first token request meets
/// one 503, the second would succeed, and 1000 requests wait behind a
/// caller-side retry (2 retries, 100 ms apart) outside the layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_that_meets_one_503_fails_no_request() {
    let server = Recorder::start().await;
    server.reply([
        Reply::json(503, r#"{"error":"temporarily_unavailable"}"#),
        Reply::token("after-one-503"),
    ]);
    let grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("id")
        .client_secret("secret")
        .build()
        .unwrap();
    let cache = TokenCache::new(grant);
    let client = tower::ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(RetryOnError::new(
            2,
            Duration::from_millis(100),
        )))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(tower::service_fn(|request: http::Request<()>| async move {
            let auth = request.headers()[http::header::AUTHORIZATION].clone();
            Ok::<_, std::convert::Infallible>(http::Response::new(auth))
        }));
    let requests: Vec<_> = (0..1000)
        .map(|_| {
            tokio::spawn(tower::ServiceExt::oneshot(
                client.clone(),
                http::Request::new(()),
            ))
        })
        .collect();
    let mut ok = 0;
    for request in requests {
        let response = request.await.unwrap().expect("every request succeeds");
        assert_eq!(response.body(), "Bearer after-one-503");
        ok += 1;
    }
    assert_eq!(ok, 1000);
    assert_eq!(
        server.requests().len(),
        2,
        "one failed token request, one good one"
    );
}
