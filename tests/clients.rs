//! Every client the ecosystem uses, through the layer, against real servers
//! on loopback: hyper-util's legacy client, an axum handler forwarding
//! requests, `reqwest::Client` as a tower service, `reqwest-middleware`, and
//! a tonic gRPC channel.
//!
//! Each goes through the same stream of 15 calls: after call 5 the clock
//! moves 55 minutes on and the hour token is refreshed ahead of its expiry,
//! on the cache's own timer (every service clone must see the new token),
//! and the server revokes that token before call 11 (the rejected token must
//! be dropped, and the call replayed where the client can copy it).

mod support;

use std::{future::Future, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use support::{grpc::GrpcUpstream, scripted::Scripted, upstream::Upstream};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    layer::Replay, BearerAuth, BearerAuthLayer, BearerAuthMiddleware, RefreshPolicy, TokenCache,
};

const HOUR: Duration = Duration::from_secs(3600);
const CALLS: usize = 15;

fn cache(script: &Scripted) -> TokenCache {
    TokenCache::with_policy(script.source(), RefreshPolicy::new().jitter(0.0))
}

/// Runs the stream of calls; `call(i)` answers the `Authorization` the server
/// echoed, or a description of the failure.
async fn stream_of_calls<F, Fut>(
    cache: &TokenCache,
    revoke: impl Fn(&str),
    mut call: F,
) -> Vec<Result<String, String>>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut results = Vec::new();
    for i in 1..=CALLS {
        if i == 6 {
            refresh_on_time(cache).await;
        }
        if i == 11 {
            revoke("Bearer token-2");
        }
        results.push(call(i).await);
    }
    results
}

/// Moves Tokio's clock past the refresh point of the hour token (50 min with
/// no jitter) and waits until the background task has replaced it. Time is
/// paused only for the jump, so the sockets of the calls run on real time.
async fn refresh_on_time(cache: &TokenCache) {
    let before = cache.token().await.unwrap();
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(55 * 60)).await;
    tokio::time::resume();
    for _ in 0..10_000 {
        let now = cache.token().await.unwrap();
        if !now.same_as(&before) {
            assert_eq!(cache.stats().refreshes_ahead, 1);
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("the hour token was not refreshed ahead of its expiry");
}

/// What a client that replays must have seen: every call succeeds.
fn assert_replayed(
    results: &[Result<String, String>],
    seen: &[String],
    script: &Scripted,
    cache: &TokenCache,
) {
    let expected: Vec<Result<String, String>> = (1..=CALLS)
        .map(|i| {
            Ok(format!(
                "Bearer token-{}",
                1 + (i > 5) as usize + (i > 10) as usize
            ))
        })
        .collect();
    assert_eq!(results, expected);
    let mut sent: Vec<String> = expected.into_iter().map(Result::unwrap).collect();
    sent.insert(10, "Bearer token-2".to_owned()); // call 11, rejected, then replayed
    assert_eq!(seen, sent);
    assert_eq!(script.calls(), 3, "one fetch per token, no more");
    assert_eq!(cache.stats().invalidations, 1, "only the revoked token");
}

type Http = Client<HttpConnector, Full<Bytes>>;

/// A reqwest answer as `stream_of_calls` wants it: the echoed header, or
/// the status.
async fn reqwest_text(response: reqwest::Response) -> Result<String, String> {
    let status = response.status();
    let text = response.text().await.unwrap();
    match status {
        StatusCode::OK => Ok(text.trim_end_matches(" 7").to_owned()),
        other => Err(other.to_string()),
    }
}

fn hyper_client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url` through an http client stack; the echoed header or the status.
async fn hyper_get<S>(client: &mut S, url: &str) -> Result<String, String>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Display,
{
    let request = Request::get(url).body(Full::default()).unwrap();
    let response = client
        .ready()
        .await
        .map_err(|e| e.to_string())?
        .call(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8(body.to_vec()).unwrap();
    match status {
        StatusCode::OK => Ok(body.trim_end_matches(" 0").to_owned()),
        other => Err(other.to_string()),
    }
}

#[tokio::test]
async fn hyper_util_client() {
    let upstream = Upstream::start().await;
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(
            BearerAuthLayer::new(cache.clone())
                .allow_origin(&upstream.origin)
                .unwrap(),
        )
        .service(hyper_client());
    let results = stream_of_calls(
        &cache,
        |t| upstream.revoke(t),
        |_| {
            let mut client = client.clone();
            let url = upstream.url.clone();
            async move { hyper_get(&mut client, &url).await }
        },
    )
    .await;
    assert_replayed(&results, &upstream.seen(), &script, &cache);
}

#[tokio::test]
async fn axum_handler_forwarding_requests() {
    use axum::{extract::State, routing::get, Router};
    type Api = tower::retry::Retry<Replay, BearerAuth<Http>>;

    let upstream = Upstream::start().await;
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let api: Api = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(hyper_client());
    // The handler forwards each request upstream with its own clone of the client.
    let app = Router::new()
        .route(
            "/proxy",
            get(|State((mut api, url)): State<(Api, String)>| async move {
                match hyper_get(&mut api, &url).await {
                    Ok(auth) => (StatusCode::OK, auth),
                    Err(status) => (StatusCode::BAD_GATEWAY, status),
                }
            }),
        )
        .with_state((api, upstream.url.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = format!("http://{}/proxy", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let plain = hyper_client();
    let results = stream_of_calls(
        &cache,
        |t| upstream.revoke(t),
        |_| {
            let (mut plain, proxy) = (plain.clone(), proxy.clone());
            async move { hyper_get(&mut plain, &proxy).await }
        },
    )
    .await;
    assert_replayed(&results, &upstream.seen(), &script, &cache);
}

#[tokio::test]
async fn reqwest_client_as_a_tower_service() {
    let upstream = Upstream::start().await;
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let http = reqwest::Client::new();
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(
            BearerAuthLayer::new(cache.clone())
                .allow_origin(&upstream.origin)
                .unwrap(),
        )
        .service(http.clone());
    let results = stream_of_calls(
        &cache,
        |t| upstream.revoke(t),
        |i| {
            // The request keeps reqwest's builder up to `build()`.
            let request = http
                .post(&upstream.url)
                .header("x-call", i.to_string())
                .body(format!("call {i:02}"))
                .build()
                .unwrap();
            let client = client.clone();
            async move {
                let response = client.oneshot(request).await.map_err(|e| e.to_string())?;
                reqwest_text(response).await
            }
        },
    )
    .await;
    assert_replayed(&results, &upstream.seen(), &script, &cache);
}

#[tokio::test]
async fn reqwest_middleware_client() {
    let upstream = Upstream::start().await;
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::new(cache.clone()).replay(true))
        .build();
    let results = stream_of_calls(
        &cache,
        |t| upstream.revoke(t),
        |i| {
            let request = client.post(&upstream.url).body(format!("call {i:02}"));
            async move {
                let response = request.send().await.map_err(|e| e.to_string())?;
                reqwest_text(response).await
            }
        },
    )
    .await;
    assert_replayed(&results, &upstream.seen(), &script, &cache);
}

#[tokio::test]
async fn reqwest_middleware_without_replay_drops_the_token_only() {
    let upstream = Upstream::start().await;
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::from(
            BearerAuthLayer::new(cache.clone())
                .allow_origin(&upstream.origin)
                .unwrap(),
        ))
        .build();
    let token = cache.token().await.unwrap();
    upstream.revoke(token.header_value().to_str().unwrap());
    let rejected = client.get(&upstream.url).send().await.unwrap();
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    assert!(rejected
        .extensions()
        .get::<tower_oauth2::TokenRejected>()
        .is_some());
    let next = client.get(&upstream.url).send().await.unwrap();
    assert_eq!(next.text().await.unwrap(), "Bearer token-2 0");
    assert_eq!(upstream.seen(), ["Bearer token-1", "Bearer token-2"]);
    assert_eq!(script.calls(), 2);
    // A request that opts out leaves without a token.
    client
        .get(&upstream.url)
        .with_extension(tower_oauth2::layer::NoBearerAuth)
        .send()
        .await
        .unwrap();
    assert_eq!(upstream.seen().last().map(String::as_str), Some(""));
}

#[tokio::test]
async fn tonic_grpc_channel() {
    let upstream = GrpcUpstream::start().await;
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let channel = tonic::transport::Channel::from_shared(upstream.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = tonic::client::Grpc::new(BearerAuthLayer::new(cache.clone()).layer(channel));
    let results = stream_of_calls(
        &cache,
        |t| upstream.revoke(t),
        |i| {
            let mut client = client.clone();
            async move {
                let reply = support::grpc::say(&mut client, &format!("call {i}"))
                    .await
                    .map_err(|status| format!("{:?}", status.code()))?;
                assert_eq!(reply.message, format!("call {i}"));
                Ok(reply.authorization)
            }
        },
    )
    .await;
    // A gRPC body is a stream that cannot be copied: the rejected call
    // fails with UNAUTHENTICATED, the token is dropped, the next call has a
    // new one.
    let expected: Vec<Result<String, String>> = (1..=CALLS)
        .map(|i| match i {
            11 => Err("Unauthenticated".to_owned()),
            _ => Ok(format!(
                "Bearer token-{}",
                1 + (i > 5) as usize + (i > 10) as usize
            )),
        })
        .collect();
    assert_eq!(results, expected);
    let sent: Vec<String> = (1..=CALLS)
        .map(|i| format!("Bearer token-{}", 1 + (i > 5) as usize + (i > 11) as usize))
        .collect();
    assert_eq!(upstream.seen(), sent);
    assert_eq!(script.calls(), 3);
    assert_eq!(cache.stats().invalidations, 1, "only the revoked token");
}

/// A tonic client sends paths only (`/pkg.Service/Method`): with
/// `allow_origin` alone its calls leave without a token, and that is
/// counted and logged once (it was silent); `relative_uri_origin` tells the
/// layer where they go, and they carry the token.
#[tokio::test]
async fn tonic_channel_with_allow_origin_needs_the_relative_uri_origin() {
    let logs = support::logs::Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let upstream = GrpcUpstream::start().await;
    let origin = upstream.url.trim_end_matches('/').to_owned();
    let script = Scripted::tokens(HOUR);
    let cache = cache(&script);
    let channel = tonic::transport::Channel::from_shared(upstream.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let narrowed = BearerAuthLayer::new(cache.clone())
        .allow_origin(&origin)
        .unwrap();
    let mut client = tonic::client::Grpc::new(narrowed.layer(channel.clone()));
    for i in 0..3 {
        let status = support::grpc::say(&mut client, &format!("call {i}"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated);
    }
    assert_eq!(upstream.seen(), ["", "", ""], "sent without a token");
    assert_eq!(narrowed.withheld(), 3);
    let text = logs.text();
    assert_eq!(
        text.matches("relative_uri_origin").count(),
        1,
        "logged once: {text}"
    );
    assert_eq!(script.calls(), 0);

    let told = narrowed.relative_uri_origin(&origin).unwrap();
    let mut client = tonic::client::Grpc::new(told.layer(channel));
    let reply = support::grpc::say(&mut client, "told").await.unwrap();
    assert_eq!(reply.authorization, "Bearer token-1");
    assert_eq!(told.withheld(), 3, "nothing withheld since");
    assert!(BearerAuthLayer::new(cache)
        .relative_uri_origin("pubsub.googleapis.com")
        .is_err());
}
