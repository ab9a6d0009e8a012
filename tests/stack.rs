//! BearerAuth composed with the tower and hyper pieces users stack it with.

mod support;

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{header::AUTHORIZATION, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use support::scripted::{Reply, Scripted};
use tower::{
    buffer::BufferLayer, limit::ConcurrencyLimitLayer, retry::Policy, service_fn,
    timeout::TimeoutLayer, BoxError, Layer, Service, ServiceBuilder, ServiceExt,
};
use tower_oauth2::{
    BearerAuthError, BearerAuthLayer, Error, ErrorKind, RefreshPolicy, Replay, TokenCache,
};

const HOUR: Duration = Duration::from_secs(3600);

/// An upstream that answers with the `Authorization` header it got.
fn echo(
) -> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
       + Clone
       + Send {
    service_fn(|request: Request<String>| async move {
        let auth = request
            .headers()
            .get(AUTHORIZATION)
            .map(|h| h.to_str().unwrap().to_owned());
        Ok::<_, Infallible>(Response::new(auth.unwrap_or_default()))
    })
}

fn hour_cache(script: &Scripted) -> TokenCache {
    TokenCache::with_policy(script.source(), RefreshPolicy::new().jitter(0.0))
}

/// Retries once when the answer is a 401 (so the retry, not the layer, acts).
#[derive(Clone)]
struct RetryUnauthorizedOnce(Arc<AtomicUsize>);

impl<E> Policy<Request<String>, Response<String>, E> for RetryUnauthorizedOnce {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<String>,
        result: &mut Result<Response<String>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response)
                if response.status() == StatusCode::UNAUTHORIZED
                    && self.0.fetch_add(1, Ordering::SeqCst) == 0 =>
            {
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<String>) -> Option<Request<String>> {
        let mut copy = Request::new(request.body().clone());
        *copy.uri_mut() = request.uri().clone();
        Some(copy)
    }
}

#[tokio::test(start_paused = true)]
async fn retry_outside_reads_the_current_token_on_every_attempt() {
    let script = Scripted::tokens(HOUR);
    let cache = hour_cache(&script);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (record, invalidate) = (seen.clone(), cache.clone());
    // Rejects the first token, and drops it from the cache the way an
    // out-of-band revocation notice would.
    let upstream = service_fn(move |request: Request<String>| {
        let auth = request.headers()[AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned();
        record.lock().unwrap().push(auth.clone());
        let cache = invalidate.clone();
        async move {
            let mut response = Response::new(String::new());
            if auth == "Bearer token-1" {
                cache.invalidate(&cache.token().await.unwrap());
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            Ok::<_, Infallible>(response)
        }
    });
    let client = ServiceBuilder::new()
        .retry(RetryUnauthorizedOnce(Arc::default()))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(upstream);
    let response = client.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*seen.lock().unwrap(), ["Bearer token-1", "Bearer token-2"]);
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn timeout_outside_bounds_the_wait_without_cancelling_the_fetch() {
    let script = Scripted::exactly(vec![Reply::Token(Some(HOUR))]).latency(Duration::from_secs(10));
    let cache = hour_cache(&script);
    let client = ServiceBuilder::new()
        .layer(TimeoutLayer::new(Duration::from_secs(1)))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(echo());
    let error = client
        .clone()
        .oneshot(Request::new(String::new()))
        .await
        .unwrap_err();
    assert!(error.is::<tower::timeout::error::Elapsed>(), "{error}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let response = client.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.body(), "Bearer token-1");
    assert_eq!(script.calls(), 1, "the first fetch finished; no second one");
}

#[tokio::test(start_paused = true)]
async fn a_buffer_in_front_survives_token_failures() {
    let script = Scripted::exactly(vec![
        Reply::Fail(Error::custom("invalid_client", false)),
        Reply::Token(Some(HOUR)),
    ]);
    let cache = TokenCache::with_policy(
        script.source(),
        RefreshPolicy::new().permanent_backoff(Duration::from_secs(5), Duration::from_secs(5)),
    );
    let client = ServiceBuilder::new()
        .layer(BufferLayer::new(64))
        .layer(BearerAuthLayer::new(cache))
        .service(echo());
    let failures: Vec<_> = (0..20)
        .map(|_| tokio::spawn(client.clone().oneshot(Request::new(String::new()))))
        .collect();
    for failure in failures {
        let error: BoxError = failure.await.unwrap().unwrap_err();
        let token_error = Error::find_in(error.as_ref()).expect("a token error in the chain");
        assert!(!token_error.is_transient());
        assert!(
            error
                .downcast_ref::<BearerAuthError<Infallible>>()
                .is_some(),
            "{error}"
        );
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let response = client.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.body(), "Bearer token-2", "the buffer still works");
}

#[tokio::test(start_paused = true)]
async fn a_concurrency_limit_on_a_cold_cache() {
    let script =
        Scripted::exactly(vec![Reply::Token(Some(HOUR))]).latency(Duration::from_millis(100));
    let client = ServiceBuilder::new()
        .layer(ConcurrencyLimitLayer::new(2))
        .layer(BearerAuthLayer::new(hour_cache(&script)))
        .service(echo());
    let calls: Vec<_> = (0..200)
        .map(|_| tokio::spawn(client.clone().oneshot(Request::new(String::new()))))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().body(), "Bearer token-1");
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn trace_layer_passes_the_header_and_logs_no_token() {
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Logs {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let logs = Logs::default();
    let sink = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || sink.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let script = Scripted::tokens(HOUR);
    for outside in [true, false] {
        let bearer = BearerAuthLayer::new(hour_cache(&script));
        let trace = tower_http::trace::TraceLayer::new_for_http();
        let response = if outside {
            trace
                .layer(bearer.layer(echo()))
                .oneshot(Request::new(String::new()))
                .await
                .unwrap()
        } else {
            bearer
                .layer(trace.layer(echo()))
                .oneshot(Request::new(String::new()))
                .await
                .unwrap()
        };
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(body.starts_with(b"Bearer token-"));
    }
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("request") || logs.contains("response"),
        "trace logged nothing: {logs}"
    );
    assert!(
        !logs.contains("token-1") && !logs.contains("token-2"),
        "{logs}"
    );
}

/// An inner service whose clones are not ready until polled, and which
/// panics when called without readiness: the tower contract.
struct Strict {
    ready: bool,
    calls: Arc<AtomicUsize>,
}

impl Clone for Strict {
    fn clone(&self) -> Self {
        Strict {
            ready: false,
            calls: self.calls.clone(),
        }
    }
}

impl Service<Request<()>> for Strict {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.ready = true;
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        assert!(std::mem::take(&mut self.ready), "call without poll_ready");
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(Response::new(())))
    }
}

#[tokio::test(start_paused = true)]
async fn only_a_service_polled_ready_is_called() {
    let script = Scripted::tokens(HOUR).latency(Duration::from_millis(50));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut client = BearerAuthLayer::new(hour_cache(&script)).layer(Strict {
        ready: false,
        calls: calls.clone(),
    });
    // Cold: the ready service moves into the waiting future.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        client.ready().await.unwrap();
        waiting.push(client.call(Request::new(())));
    }
    for response in waiting {
        response.await.unwrap();
    }
    // Warm: called at once.
    for _ in 0..3 {
        client
            .ready()
            .await
            .unwrap()
            .call(Request::new(()))
            .await
            .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 6);
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_service_alone() {
    let script = Scripted::exactly(vec![Reply::Fail(Error::custom("down", false))]);
    let (inner, mut handle) = gate::pending_until_released();
    let mut client = BearerAuthLayer::new(hour_cache(&script)).layer(inner);
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    assert!(
        client.poll_ready(&mut cx).is_pending(),
        "inner not ready, so neither is the layer"
    );
    handle.release();
    assert!(matches!(client.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    match client.call(Request::new(())).await {
        Err(BearerAuthError::Token(error)) => assert_eq!(error.kind(), &ErrorKind::Source),
        other => panic!("expected a token error, got {other:?}"),
    }
    assert!(
        matches!(client.poll_ready(&mut cx), Poll::Ready(Ok(()))),
        "a token failure never shows in poll_ready"
    );
}

/// A service that is not ready until its handle says so.
mod gate {
    use super::*;
    use std::sync::atomic::AtomicBool;

    #[derive(Clone)]
    pub struct Gated(Arc<AtomicBool>);
    pub struct Handle(Arc<AtomicBool>);

    impl Handle {
        pub fn release(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    pub fn pending_until_released() -> (Gated, Handle) {
        let open = Arc::new(AtomicBool::new(false));
        (Gated(open.clone()), Handle(open))
    }

    impl Service<Request<()>> for Gated {
        type Response = Response<()>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<()>, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            if self.0.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }

        fn call(&mut self, _: Request<()>) -> Self::Future {
            std::future::ready(Ok(Response::new(())))
        }
    }
}

/// An axum upstream on loopback: echoes the bearer token, and answers 401
/// `invalid_token` to the first request carrying `reject`.
async fn upstream(reject: Option<&'static str>) -> (String, Arc<AtomicUsize>) {
    use axum::{http::HeaderMap, routing::get, Router};
    let hits = Arc::new(AtomicUsize::new(0));
    let rejected = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = Router::new().route(
        "/echo",
        get(move |headers: HeaderMap| {
            let (counter, rejected) = (counter.clone(), rejected.clone());
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let auth = headers
                    .get(AUTHORIZATION)
                    .map(|h| h.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                if reject.is_some_and(|r| auth.ends_with(r))
                    && rejected.fetch_add(1, Ordering::SeqCst) == 0
                {
                    let challenge = [(
                        http::header::WWW_AUTHENTICATE,
                        HeaderValue::from_static(r#"Bearer error="invalid_token""#),
                    )];
                    return (StatusCode::UNAUTHORIZED, challenge, String::new());
                }
                (
                    StatusCode::OK,
                    [(
                        http::header::VARY,
                        HeaderValue::from_static("authorization"),
                    )],
                    auth,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/echo", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, hits)
}

type Http = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get_body<S>(client: S, url: &str) -> (StatusCode, String)
where
    S: Service<Request<Full<Bytes>>, Response = Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Debug,
{
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client.oneshot(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn over_hyper_util_against_an_axum_upstream() {
    let (url, _) = upstream(None).await;
    let script =
        Scripted::exactly(vec![Reply::Token(Some(HOUR))]).latency(Duration::from_millis(20));
    let client = BearerAuthLayer::new(hour_cache(&script)).layer(http_client());
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move { get_body(client, &url).await })
        })
        .collect();
    for call in calls {
        assert_eq!(
            call.await.unwrap(),
            (StatusCode::OK, "Bearer token-1".to_owned())
        );
    }
    assert_eq!(script.calls(), 1);
}

#[tokio::test]
async fn over_hyper_util_a_401_is_replayed_with_a_new_token() {
    let (url, hits) = upstream(Some("token-1")).await;
    let script = Scripted::tokens(HOUR);
    let cache = hour_cache(&script);
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(http_client());
    assert_eq!(
        get_body(client, &url).await,
        (StatusCode::OK, "Bearer token-2".to_owned())
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    assert_eq!(script.calls(), 2);
    assert_eq!(cache.stats().invalidations, 1);
}

#[tokio::test]
async fn inside_an_axum_handler() {
    use axum::{extract::State, routing::get, Router};
    let (upstream_url, _) = upstream(None).await;
    let script = Scripted::tokens(HOUR);
    let api = BearerAuthLayer::new(hour_cache(&script)).layer(http_client());
    let app = Router::new()
        .route(
            "/proxy",
            get(
                |State((api, url)): State<(tower_oauth2::BearerAuth<Http>, String)>| async move {
                    get_body(api, &url).await.1
                },
            ),
        )
        .with_state((api, upstream_url));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}/proxy", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    for _ in 0..5 {
        assert_eq!(
            get_body(http_client(), &proxy).await,
            (StatusCode::OK, "Bearer token-1".to_owned())
        );
    }
    assert_eq!(script.calls(), 1);
}

/// An API that rejects every token (its key set is stale after the provider
/// rotated keys, or the audience is wrong), behind the recommended stack:
/// each new token is rejected soon after it was issued, and the next token
/// request waits with backoff. Token requests grow with time, not with the
/// request rate (before: one per request, 400 here).
#[tokio::test(start_paused = true)]
async fn an_api_that_rejects_every_token_costs_token_requests_by_time_not_by_rate() {
    // 45
    let script = Scripted::tokens(HOUR);
    let cache = hour_cache(&script);
    let rejects_all = service_fn(|_: Request<String>| async {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
        Ok::<_, Infallible>(response)
    });
    let client = ServiceBuilder::new()
        .retry(Replay::new().copy_body(tower_oauth2::layer::replay::CloneBody))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(rejects_all);
    let mut answered = 0;
    for round in 0..2 {
        for _ in 0..200 {
            let answer = client.clone().oneshot(Request::new(String::new())).await;
            match answer {
                Ok(response) => assert_eq!(response.status(), StatusCode::UNAUTHORIZED),
                Err(BearerAuthError::Token(error)) => {
                    assert_eq!(error.kind(), &ErrorKind::TokenRejected, "{error}");
                    assert!(error.is_transient());
                }
                Err(BearerAuthError::Service(never)) => match never {},
            }
            answered += 1;
        }
        println!("after round {round}: {} token requests", script.calls());
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    assert_eq!(answered, 400);
    assert!(
        script.calls() <= 12,
        "{} token requests for 400 requests",
        script.calls()
    );
}
