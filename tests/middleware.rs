//! `BearerAuthMiddleware` beyond the stream of calls in `clients.rs`: its
//! own origin rule, and the size of what it boxes per request.

mod support;

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use http::{Extensions, StatusCode};
use reqwest::{Request, Response};
use reqwest_middleware::{ClientBuilder, Middleware, Next};
use support::{scripted::Scripted, upstream::Upstream};
use tower_oauth2::{BearerAuthMiddleware, ErrorKind, TokenCache};

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test]
async fn allow_origin_sends_the_token_to_that_origin_only() {
    let (allowed, other) = (Upstream::start().await, Upstream::start().await);
    let script = Scripted::tokens(HOUR);
    let cache = TokenCache::new(script.source());
    let middleware = BearerAuthMiddleware::new(cache.clone())
        .allow_origin(&allowed.origin)
        .unwrap();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(middleware.clone())
        .build();

    let response = client.get(&other.url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(other.seen(), [""]);
    assert_eq!(script.calls(), 0, "no token fetched for another origin");
    assert_eq!(middleware.withheld(), 1, "counted, shared by clones");

    let response = client.get(&allowed.url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Bearer token-1 0");
    assert_eq!(allowed.seen(), ["Bearer token-1"]);
}

#[tokio::test]
async fn allow_origin_refuses_what_is_not_an_origin() {
    let cache = TokenCache::new(Scripted::tokens(HOUR).source());
    let error = BearerAuthMiddleware::new(cache)
        .allow_origin("not an origin")
        .unwrap_err();
    assert_eq!(*error.kind(), ErrorKind::Config);
}

/// Records the size of the future the middleware inside returns.
struct Probe<M> {
    inner: M,
    size: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl<M: Middleware> Middleware for Probe<M> {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let future = self.inner.handle(request, extensions, next);
        self.size
            .store(std::mem::size_of_val(&*future), Ordering::Relaxed);
        future.await
    }
}

/// With a token ready and no replay, the box made per request holds the
/// next middleware's future and what reading its answer needs, not the
/// request nor a copy of it (it held both, 1,808 bytes).
#[tokio::test]
async fn the_usual_request_boxes_a_small_future() {
    let upstream = Upstream::start().await;
    let cache = TokenCache::new(Scripted::tokens(HOUR).source());
    cache.token().await.unwrap();
    let size = Arc::new(AtomicUsize::new(0));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(Probe {
            inner: BearerAuthMiddleware::new(cache),
            size: size.clone(),
        })
        .build();
    let response = client.get(&upstream.url).send().await.unwrap();
    assert_eq!(response.text().await.unwrap(), "Bearer token-1 0");
    let size = size.load(Ordering::Relaxed);
    assert!(size > 0 && size <= 256, "boxed future of {size} bytes");
}
