//! The per-request paths beside the layer's own hot path, and their floors:
//! `BearerAuthMiddleware` in a reqwest-middleware chain against a
//! static-header middleware on the same version, and `TokenCache::token()`.
//! Included by the benches that need it with `#[path]`.
#![allow(dead_code)]

use std::{
    future::Future,
    pin::pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
};

use http::{header::AUTHORIZATION, Extensions, HeaderValue};
use reqwest::{Method, Request, Response, Url};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next, Result};
use tower_oauth2::{BearerAuthMiddleware, TokenCache};

/// Where the bench's requests go (nowhere: [`Answer`] answers them).
pub const URL: &str = "https://api.example.com/items";

/// The end of every chain: answers at once, so no request reaches the
/// network and both variants pay the same for the answer.
pub struct Answer;

#[async_trait::async_trait]
impl Middleware for Answer {
    async fn handle(&self, _: Request, _: &mut Extensions, _: Next<'_>) -> Result<Response> {
        Ok(Response::from(http::Response::new("")))
    }
}

/// The floor: a middleware adding one prebuilt header, written the usual way.
pub struct StaticHeader(HeaderValue);

impl StaticHeader {
    pub fn new() -> Self {
        let mut value = HeaderValue::try_from(format!("Bearer {}", super::TOKEN)).unwrap();
        value.set_sensitive(true);
        Self(value)
    }
}

#[async_trait::async_trait]
impl Middleware for StaticHeader {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        request.headers_mut().insert(AUTHORIZATION, self.0.clone());
        next.run(request, extensions).await
    }
}

/// `middleware`, then [`Answer`].
pub fn client<M: Middleware>(middleware: M) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .with(Answer)
        .build()
}

pub fn static_client() -> ClientWithMiddleware {
    client(StaticHeader::new())
}

pub fn bearer_client(cache: &TokenCache) -> ClientWithMiddleware {
    client(BearerAuthMiddleware::new(cache.clone()))
}

pub fn replay_client(cache: &TokenCache) -> ClientWithMiddleware {
    client(BearerAuthMiddleware::new(cache.clone()).replay(true))
}

pub fn request(url: &Url) -> Request {
    Request::new(Method::GET, url.clone())
}

/// Polls `future` once; every path the benches take is ready at once.
#[inline]
pub fn now<F: Future>(future: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("the bench expects an immediate answer"),
    }
}

/// One request through `client`, answered on the spot.
#[inline]
pub fn send(client: &ClientWithMiddleware, request: Request) {
    let mut extensions = Extensions::new();
    let response = now(client.execute_with_extensions(request, &mut extensions));
    assert!(response.is_ok());
}

/// Wraps a middleware to record the size of the future its `handle` returns.
pub struct Probe<M> {
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
    ) -> Result<Response> {
        let future = self.inner.handle(request, extensions, next);
        self.size
            .store(std::mem::size_of_val(&*future), Ordering::Relaxed);
        future.await
    }
}

/// The size in bytes of the future `middleware.handle(..)` returns for one
/// request (not polled: a cache without a token would wait).
pub fn future_size<M: Middleware>(middleware: M) -> usize {
    let size = Arc::new(AtomicUsize::new(0));
    let client = client(Probe {
        inner: middleware,
        size: size.clone(),
    });
    let url = Url::parse(URL).unwrap();
    let mut extensions = Extensions::new();
    let mut cx = Context::from_waker(Waker::noop());
    let _ = pin!(client.execute_with_extensions(request(&url), &mut extensions)).poll(&mut cx);
    size.load(Ordering::Relaxed)
}
