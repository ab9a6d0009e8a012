//! BearerAuth behaviour: headers, opt-outs, origins, caches per origin,
//! rejected tokens, and the Replay retry policy. Inner services are
//! in-memory; time is paused.

mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{
    header::{AUTHORIZATION, WWW_AUTHENTICATE},
    HeaderValue, Request, Response, StatusCode,
};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use support::scripted::{Reply, Scripted};
use tower::{retry::RetryLayer, service_fn, Layer, Service, ServiceExt};
use tower_oauth2::{
    layer::{
        replay::{CloneBody, EmptyBody},
        BearerAuthError, NoBearerAuth, Replay, TokenRejected,
    },
    BearerAuthLayer, Error, ErrorKind, RefreshPolicy, TokenCache,
};

const HOUR: Duration = Duration::from_secs(3600);

/// What the upstream saw: the `Authorization` header of each call, and
/// whether it was marked sensitive.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Call>>>);

/// One upstream call: its `Authorization` header and whether it was sensitive.
type Call = (Option<String>, bool);

impl Seen {
    fn headers(&self) -> Vec<Option<String>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(h, _)| h.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// An upstream that records each call and answers with `answer(authorization)`
/// after 10 ms.
fn upstream<B: Send + 'static>(
    seen: &Seen,
    answer: impl Fn(Option<&str>) -> Response<()> + Clone + Send + 'static,
) -> impl Service<Request<B>, Response = Response<()>, Error = Infallible, Future: Send> + Clone + Send
{
    let seen = seen.clone();
    service_fn(move |request: Request<B>| {
        let header = request.headers().get(AUTHORIZATION);
        let auth = header.map(|h| h.to_str().unwrap().to_owned());
        seen.0
            .lock()
            .unwrap()
            .push((auth.clone(), header.is_some_and(HeaderValue::is_sensitive)));
        let response = answer(auth.as_deref());
        async move {
            // A round trip, so concurrent requests are really in flight together.
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(response)
        }
    })
}

fn ok() -> Response<()> {
    Response::new(())
}

fn status(code: StatusCode, challenge: Option<&'static str>) -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = code;
    if let Some(challenge) = challenge {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    }
    response
}

fn invalid_token() -> Response<()> {
    status(
        StatusCode::UNAUTHORIZED,
        Some(r#"Bearer realm="api", error="invalid_token", error_description="expired""#),
    )
}

/// Rejects `token-1` as invalid and accepts any other token.
fn rejects_first_token(auth: Option<&str>) -> Response<()> {
    match auth {
        Some("Bearer token-1") => invalid_token(),
        Some(_) => ok(),
        None => status(StatusCode::UNAUTHORIZED, None),
    }
}

fn hour_tokens() -> (Scripted, TokenCache) {
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::with_policy(script.source(), RefreshPolicy::new().jitter(0.0));
    (script, cache)
}

fn get<B: Default>(uri: &str) -> Request<B> {
    Request::get(uri).body(B::default()).unwrap()
}

async fn send<S, B>(service: &mut S, request: Request<B>) -> Result<Response<()>, S::Error>
where
    S: Service<Request<B>, Response = Response<()>>,
{
    service.ready().await?.call(request).await
}

#[tokio::test(start_paused = true)]
async fn inserts_a_sensitive_header_replacing_any_other() {
    let (_, cache) = hour_tokens();
    let seen = Seen::default();
    let mut client = BearerAuthLayer::new(cache).layer(upstream::<()>(&seen, |_| ok()));
    let mut request = get("https://api.example.com/items");
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer stale"));
    send(&mut client, request).await.unwrap();
    send(&mut client, get("https://api.example.com/items"))
        .await
        .unwrap();
    let calls = seen.0.lock().unwrap().clone();
    assert_eq!(
        calls,
        vec![
            (Some("Bearer token-1".to_owned()), true),
            (Some("Bearer token-1".to_owned()), true)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_can_opt_out() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let mut client = BearerAuthLayer::new(cache).layer(upstream::<()>(&seen, |_| ok()));
    let mut request = get("https://api.example.com/public");
    request.extensions_mut().insert(NoBearerAuth);
    request
        .headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Basic mine"));
    send(&mut client, request).await.unwrap();
    assert_eq!(seen.headers(), vec![Some("Basic mine".to_owned())]);
    assert_eq!(
        script.calls(),
        0,
        "no token is fetched for an opted-out request"
    );
}

#[tokio::test(start_paused = true)]
async fn the_token_goes_only_to_allowed_origins() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let layer = BearerAuthLayer::new(cache)
        .allow_origin("https://api.example.com")
        .unwrap()
        .allow_origin("http://127.0.0.1:8080")
        .unwrap();
    let mut client = layer.layer(upstream::<()>(&seen, |_| ok()));
    for uri in [
        "https://evil.example.com/steal",
        "http://api.example.com/downgraded",
        "https://api.example.com:8443/other-port",
        "/relative",
    ] {
        send(&mut client, get(uri)).await.unwrap();
    }
    assert_eq!(seen.headers(), vec![None, None, None, None]);
    assert_eq!(script.calls(), 0);
    for uri in [
        "https://api.example.com/items",
        "https://API.example.com:443/x",
        "http://127.0.0.1:8080/y",
    ] {
        send(&mut client, get(uri)).await.unwrap();
    }
    assert!(seen.headers()[4..]
        .iter()
        .all(|h| h.as_deref() == Some("Bearer token-1")));
    assert_eq!(seen.count(), 7);
    assert!(BearerAuthLayer::new(hour_tokens().1)
        .allow_origin("https://api.example.com/path")
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn concurrent_401s_cause_one_refresh_and_one_replay_each() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let client = RetryLayer::new(Replay::new().copy_body(CloneBody)).layer(
        BearerAuthLayer::new(cache.clone()).layer(upstream::<String>(&seen, rejects_first_token)),
    );
    cache.token().await.unwrap();
    let requests: Vec<_> = (0..50)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let request = Request::post("https://api.example.com/items")
                    .body(format!("item {i}"))
                    .unwrap();
                send(&mut client, request).await.unwrap()
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.unwrap().status(), StatusCode::OK);
    }
    let headers = seen.headers();
    assert_eq!(headers.len(), 100, "each request sent exactly twice");
    assert_eq!(
        headers
            .iter()
            .filter(|h| h.as_deref() == Some("Bearer token-1"))
            .count(),
        50
    );
    assert_eq!(
        headers
            .iter()
            .filter(|h| h.as_deref() == Some("Bearer token-2"))
            .count(),
        50
    );
    assert_eq!(script.calls(), 2, "one refresh for all the 401s");
    assert_eq!(cache.stats().invalidations, 1);
}

#[tokio::test(start_paused = true)]
async fn a_request_is_replayed_at_most_once() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let mut client = RetryLayer::new(Replay::new())
        .layer(BearerAuthLayer::new(cache).layer(upstream::<String>(&seen, |_| invalid_token())));
    let response = send(&mut client, get("https://api.example.com/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<TokenRejected>().is_some());
    assert_eq!(
        seen.headers(),
        vec![Some("Bearer token-1".into()), Some("Bearer token-2".into())]
    );
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_cannot_be_copied_is_not_replayed_but_the_token_is_dropped() {
    type Streaming = BoxBody<Bytes, Infallible>;
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    // The default copies only empty bodies: this one streams data.
    let mut client = RetryLayer::new(Replay::new().copy_body(EmptyBody)).layer(
        BearerAuthLayer::new(cache).layer(upstream::<Streaming>(&seen, rejects_first_token)),
    );
    let body = || Full::new(Bytes::from_static(b"stream")).boxed();
    let request = Request::post("https://api.example.com/upload")
        .body(body())
        .unwrap();
    let first = send(&mut client, request).await.unwrap();
    assert_eq!(first.status(), StatusCode::UNAUTHORIZED);
    assert!(first.extensions().get::<TokenRejected>().is_some());
    let request = Request::post("https://api.example.com/upload")
        .body(body())
        .unwrap();
    let second = send(&mut client, request).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(
        seen.headers(),
        vec![Some("Bearer token-1".into()), Some("Bearer token-2".into())]
    );
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn answers_that_do_not_blame_the_token_are_returned_as_they_are() {
    type Answer = fn() -> Response<()>;
    let cases: [(Answer, bool); 4] = [
        (
            || {
                status(
                    StatusCode::FORBIDDEN,
                    Some(r#"Bearer error="insufficient_scope""#),
                )
            },
            true,
        ),
        (
            || {
                status(
                    StatusCode::UNAUTHORIZED,
                    Some(r#"Bearer error="invalid_request""#),
                )
            },
            true,
        ),
        (|| status(StatusCode::INTERNAL_SERVER_ERROR, None), true),
        // A plain 401 counts only when the layer is told to count it.
        (|| status(StatusCode::UNAUTHORIZED, None), false),
    ];
    for (answer, plain_401) in cases {
        let (script, cache) = hour_tokens();
        let seen = Seen::default();
        let mut client = RetryLayer::new(Replay::new()).layer(
            BearerAuthLayer::new(cache.clone())
                .plain_401_rejects(plain_401)
                .layer(upstream::<String>(&seen, move |_| answer())),
        );
        let response = send(&mut client, get("https://api.example.com/"))
            .await
            .unwrap();
        assert_eq!(response.status(), answer().status());
        assert!(response.extensions().get::<TokenRejected>().is_none());
        assert_eq!(seen.count(), 1, "{:?} not replayed", answer().status());
        assert_eq!(cache.stats().invalidations, 0);
        assert_eq!(script.calls(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn a_plain_401_counts_by_default() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let mut client = RetryLayer::new(Replay::new()).layer(BearerAuthLayer::new(cache).layer(
        upstream::<String>(&seen, |auth| match auth {
            Some("Bearer token-1") => status(StatusCode::UNAUTHORIZED, None),
            _ => ok(),
        }),
    ));
    let response = send(&mut client, get("https://api.example.com/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_bare_layer_drops_a_rejected_token_and_copies_nothing() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let mut client =
        BearerAuthLayer::new(cache.clone()).layer(upstream::<String>(&seen, rejects_first_token));
    let response = send(&mut client, get("https://api.example.com/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "not replayed");
    assert!(response.extensions().get::<TokenRejected>().is_some());
    assert_eq!(seen.count(), 1);
    assert_eq!(cache.stats().invalidations, 1, "the token was dropped");
    let response = send(&mut client, get("https://api.example.com/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen.headers(),
        vec![Some("Bearer token-1".into()), Some("Bearer token-2".into())]
    );
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_to_a_request_sent_without_a_token_drops_nothing() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let mut client = RetryLayer::new(Replay::new()).layer(
        BearerAuthLayer::new(cache.clone())
            .allow_origin("https://api.example.com")
            .unwrap()
            .layer(upstream::<String>(&seen, |_| invalid_token())),
    );
    cache.token().await.unwrap();
    let response = send(&mut client, get("https://elsewhere.example.com/"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<TokenRejected>().is_none());
    assert_eq!(seen.headers(), vec![None], "sent once, without a token");
    assert_eq!(cache.stats().invalidations, 0);
    assert_eq!(script.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_refresh_ahead_reaches_every_service_clone() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let first = BearerAuthLayer::new(cache.clone()).layer(upstream::<()>(&seen, |_| ok()));
    let mut clones = vec![first.clone(), first.clone(), first];
    for client in &mut clones {
        send(client, get("https://api.example.com/")).await.unwrap();
    }
    // Past the refresh point, before expiry: the cache has a new token.
    tokio::time::sleep(Duration::from_secs(55 * 60)).await;
    assert_eq!(cache.stats().refreshes_ahead, 1);
    for client in &mut clones {
        send(client, get("https://api.example.com/")).await.unwrap();
    }
    let headers = seen.headers();
    assert!(headers[..3]
        .iter()
        .all(|h| h.as_deref() == Some("Bearer token-1")));
    assert!(
        headers[3..]
            .iter()
            .all(|h| h.as_deref() == Some("Bearer token-2")),
        "{headers:?}"
    );
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn each_origin_gets_the_token_of_its_own_cache() {
    let (storage_script, storage) = hour_tokens();
    let pubsub_script = Scripted::new(|_| support::scripted::Reply::Token(Some(HOUR)));
    let pubsub = TokenCache::with_policy(pubsub_script.source(), RefreshPolicy::new().jitter(0.0));
    let seen = Seen::default();
    let mut client = BearerAuthLayer::per_origin()
        .origin("https://storage.example.com", storage.clone())
        .unwrap()
        .origin("https://pubsub.example.com", pubsub.clone())
        .unwrap()
        .layer(upstream::<()>(&seen, |_| ok()));
    // Both scripts name their tokens token-1, token-2, ...: move storage on
    // to token-2, so that a header says which cache it came from.
    let first = storage.token().await.unwrap();
    storage.invalidate(&first);
    storage.token().await.unwrap();
    for uri in [
        "https://storage.example.com/b/1",
        "https://pubsub.example.com/t/1",
        "https://elsewhere.example.com/",
        "/relative",
        "https://storage.example.com/b/2",
    ] {
        send(&mut client, get(uri)).await.unwrap();
    }
    let headers = seen.headers();
    assert_eq!(headers[0].as_deref(), Some("Bearer token-2"), "storage's");
    assert_eq!(headers[1].as_deref(), Some("Bearer token-1"), "pubsub's");
    assert_eq!(headers[2..4], [None, None], "no cache for these origins");
    assert_eq!(headers[4].as_deref(), Some("Bearer token-2"), "storage's");
    assert_eq!((storage_script.calls(), pubsub_script.calls()), (2, 1));
    // A rejected token is dropped from its own cache only.
    let mut rejecting = BearerAuthLayer::per_origin()
        .origin("https://storage.example.com", storage.clone())
        .unwrap()
        .origin("https://pubsub.example.com", pubsub.clone())
        .unwrap()
        .layer(upstream::<()>(&seen, |_| invalid_token()));
    send(&mut rejecting, get("https://pubsub.example.com/t/2"))
        .await
        .unwrap();
    assert_eq!(pubsub.stats().invalidations, 1);
    assert_eq!(storage.stats().invalidations, 1, "only the one made above");
    // A default cache serves every origin not listed.
    let mut with_default = BearerAuthLayer::new(storage)
        .origin("https://pubsub.example.com", pubsub)
        .unwrap()
        .layer(upstream::<()>(&seen, |_| ok()));
    send(&mut with_default, get("https://elsewhere.example.com/"))
        .await
        .unwrap();
    assert_eq!(
        seen.headers().last().unwrap().as_deref(),
        Some("Bearer token-2"),
        "storage's"
    );
    assert!(BearerAuthLayer::per_origin()
        .allow_origin("https://api.example.com")
        .is_err());
    // `allow_origin` narrows `new`'s cache; a `per_origin` layer has none,
    // and its first cache must not go to another origin.
    let (_, other) = hour_tokens();
    assert!(BearerAuthLayer::per_origin()
        .origin("https://storage.example.com", other)
        .unwrap()
        .allow_origin("https://elsewhere.example.com")
        .is_err());
}

/// Retries a 503 once, as a user's own policy would.
#[derive(Clone, Default)]
struct RetryUnavailableOnce(bool);

impl<B: Clone, E> tower::retry::Policy<Request<B>, Response<()>, E> for RetryUnavailableOnce {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<B>,
        result: &mut Result<Response<()>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE && !self.0 => {
                self.0 = true;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        let mut copy = Request::new(request.body().clone());
        *copy.uri_mut() = request.uri().clone();
        Some(copy)
    }
}

#[tokio::test(start_paused = true)]
async fn replay_wraps_a_retry_policy_of_your_own() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let answers = Arc::new(Mutex::new(vec![
        ok(),
        invalid_token(),
        status(StatusCode::SERVICE_UNAVAILABLE, None),
    ]));
    let next = answers.clone();
    let mut client = RetryLayer::new(Replay::new().with_policy(RetryUnavailableOnce::default()))
        .layer(
            BearerAuthLayer::new(cache).layer(upstream::<String>(&seen, move |_| {
                next.lock().unwrap().pop().unwrap()
            })),
        );
    let request = Request::post("https://api.example.com/items")
        .body("streamed once, copied by my policy".to_owned())
        .unwrap();
    let response = send(&mut client, request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen.headers(),
        vec![
            Some("Bearer token-1".into()), // 503: my policy retries
            Some("Bearer token-1".into()), // 401 invalid_token: replayed
            Some("Bearer token-2".into()), // 200
        ]
    );
    assert!(answers.lock().unwrap().is_empty());
    assert_eq!(script.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn reqwest_requests_go_through_the_layer_too() {
    let (script, cache) = hour_tokens();
    let seen = Seen::default();
    let record = seen.clone();
    let api = service_fn(move |request: reqwest::Request| {
        let auth = request.headers().get(AUTHORIZATION).cloned();
        let sensitive = auth.as_ref().is_some_and(HeaderValue::is_sensitive);
        let auth = auth.map(|h| h.to_str().unwrap().to_owned());
        record.0.lock().unwrap().push((auth.clone(), sensitive));
        let answer = rejects_first_token(auth.as_deref()).map(|()| String::new());
        async move { Ok::<_, Infallible>(reqwest::Response::from(answer)) }
    });
    let mut client =
        RetryLayer::new(Replay::new()).layer(BearerAuthLayer::new(cache.clone()).layer(api));
    let http = reqwest::Client::new();
    let request = http
        .post("https://api.example.com/items")
        .body("in memory, so try_clone copies it")
        .build()
        .unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen.0.lock().unwrap().clone(),
        vec![
            (Some("Bearer token-1".to_owned()), true),
            (Some("Bearer token-2".to_owned()), true)
        ]
    );
    assert_eq!(script.calls(), 2);
    assert_eq!(cache.stats().invalidations, 1);
}

#[tokio::test(start_paused = true)]
async fn a_cold_request_waits_for_the_token_then_goes_out() {
    let script = Scripted::tokens(HOUR).latency(Duration::from_millis(200));
    let cache = TokenCache::new(script.source());
    let seen = Seen::default();
    let mut client = BearerAuthLayer::new(cache.clone()).layer(upstream::<()>(&seen, |_| ok()));
    send(&mut client, get("https://api.example.com/"))
        .await
        .unwrap();
    assert_eq!(seen.headers(), vec![Some("Bearer token-1".into())]);
    assert_eq!(cache.stats().waits, 1);
}

#[tokio::test(start_paused = true)]
async fn a_token_failure_is_a_typed_error_from_the_response_future() {
    let script = Scripted::exactly(vec![Reply::Fail(Error::custom("invalid_client", false))]);
    let cache = TokenCache::new(script.source());
    let seen = Seen::default();
    let mut client = BearerAuthLayer::new(cache).layer(upstream::<()>(&seen, |_| ok()));
    // Readiness is the inner service's alone.
    std::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .unwrap();
    match client.call(get("https://api.example.com/")).await {
        Err(BearerAuthError::Token(error)) => {
            assert_eq!(error.kind(), &ErrorKind::Source);
            assert!(!error.is_transient());
        }
        other => panic!("expected a token error, got {other:?}"),
    }
    assert_eq!(seen.count(), 0, "nothing reaches upstream without a token");
    std::future::poll_fn(|cx| client.poll_ready(cx))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn debug_output_shows_no_token() {
    let (_, cache) = hour_tokens();
    let token = cache.token().await.unwrap();
    let layer = BearerAuthLayer::new(cache.clone());
    let client = layer.layer(upstream::<()>(&Seen::default(), |_| ok()));
    let shown = format!("{layer:?} {client:?} {cache:?} {token:?}");
    assert!(shown.contains("TokenCache"));
    assert!(!shown.contains("token-1"), "{shown}");
}
