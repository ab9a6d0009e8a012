//! The request-path variants the benches compare, each a tower service that
//! adds `Authorization: Bearer <token>` to a request and calls a trivial
//! inner service. Requests have a `()` body, except where a retry policy
//! needs a body it can copy (an empty `String`, which allocates nothing).
#![allow(dead_code)]

use std::{
    convert::Infallible,
    future::{ready, Future, Ready},
    pin::pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use http::{header::AUTHORIZATION, HeaderValue, Request, Response};
use tower::{retry::Retry, Layer, Service};
use tower_oauth2::{BearerAuth, BearerAuthLayer, Error, Replay, Token, TokenCache, TokenSource};

pub const TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.bench-token-of-a-realistic-length-0123456789";

/// The inner service: answers at once.
#[derive(Clone, Copy)]
pub struct Inner;

impl<B> Service<Request<B>> for Inner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        debug_assert!(request.headers().len() <= 1);
        ready(Ok(Response::new(())))
    }
}

/// A token source for a warm cache: one long-lived token.
pub struct Static;

impl TokenSource for Static {
    async fn fetch(&mut self) -> Result<Token, Error> {
        Token::builder(TOKEN)
            .expires_in(Duration::from_secs(24 * 3600))
            .build()
    }
}

/// A hand-written cache: the header and its expiry behind a lock, checked
/// against the clock on every request, as most hand-rolled clients do.
pub struct Locked<L> {
    lock: Arc<L>,
    inner: Inner,
}

impl<L> Clone for Locked<L> {
    fn clone(&self) -> Self {
        Locked {
            lock: self.lock.clone(),
            inner: Inner,
        }
    }
}

pub type MutexCache = Locked<Mutex<Option<(HeaderValue, Instant)>>>;
pub type RwLockCache = Locked<tokio::sync::RwLock<Option<(HeaderValue, Instant)>>>;

fn entry() -> Option<(HeaderValue, Instant)> {
    let mut value = HeaderValue::try_from(format!("Bearer {TOKEN}")).unwrap();
    value.set_sensitive(true);
    Some((value, Instant::now() + Duration::from_secs(3600)))
}

pub fn mutex_cache() -> MutexCache {
    Locked {
        lock: Arc::new(Mutex::new(entry())),
        inner: Inner,
    }
}

pub fn rwlock_cache() -> RwLockCache {
    Locked {
        lock: Arc::new(tokio::sync::RwLock::new(entry())),
        inner: Inner,
    }
}

macro_rules! locked_service {
    ($lock:ty, |$l:ident| $read:expr) => {
        impl Service<Request<()>> for Locked<$lock> {
            type Response = Response<()>;
            type Error = Infallible;
            type Future = Ready<Result<Response<()>, Infallible>>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, mut request: Request<()>) -> Self::Future {
                let header = {
                    let $l = &self.lock;
                    let guard = $read;
                    match &*guard {
                        Some((value, expires)) if Instant::now() < *expires => value.clone(),
                        _ => unreachable!("the bench keeps the token fresh"),
                    }
                };
                request.headers_mut().insert(AUTHORIZATION, header);
                self.inner.call(request)
            }
        }
    };
}

locked_service!(Mutex<Option<(HeaderValue, Instant)>>, |l| l.lock().unwrap());
// A reader never waits here: the bench has no writer. `try_read` is the
// same atomic acquire that `read().await` makes when uncontended.
locked_service!(tokio::sync::RwLock<Option<(HeaderValue, Instant)>>, |l| l
    .try_read()
    .unwrap());

/// A `watch` channel holding the token string; the header is built per request.
#[derive(Clone)]
pub struct Watched {
    rx: tokio::sync::watch::Receiver<String>,
    inner: Inner,
}

pub fn watched() -> Watched {
    let (tx, rx) = tokio::sync::watch::channel(TOKEN.to_owned());
    std::mem::forget(tx);
    Watched { rx, inner: Inner }
}

impl Service<Request<()>> for Watched {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<()>) -> Self::Future {
        let mut value = HeaderValue::try_from(format!("Bearer {}", *self.rx.borrow())).unwrap();
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
        self.inner.call(request)
    }
}

pub fn static_header() -> tower_http::auth::AddAuthorization<Inner> {
    tower_http::auth::AddAuthorizationLayer::bearer(TOKEN).layer(Inner)
}

/// A one-worker runtime (the cache's background task runs there, off the
/// bench threads) and a warm cache on it.
pub fn warm() -> (tokio::runtime::Runtime, TokenCache) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cache = warm_cache(&runtime);
    (runtime, cache)
}

/// A warm cache (its token fetched) on `runtime`.
pub fn warm_cache(runtime: &tokio::runtime::Runtime) -> TokenCache {
    runtime.block_on(async {
        let cache = TokenCache::new(Static);
        cache.token().await.unwrap();
        cache
    })
}

/// A warm cache keeping its state in the Redis at `url`.
pub fn warm_redis_cache(runtime: &tokio::runtime::Runtime, url: &str) -> TokenCache {
    runtime.block_on(async {
        let store = tower_oauth2::RedisStore::new(url)
            .unwrap()
            .namespace("hot-path-bench");
        let cache = TokenCache::builder(Static)
            .store(store)
            .store_key(tower_oauth2::StoreKey::new("bench", "static", "", &[]))
            .build();
        cache.token().await.unwrap();
        cache
    })
}

/// `BearerAuth` as a user gets it by default.
pub fn bearer(cache: &TokenCache) -> BearerAuth<Inner> {
    BearerAuthLayer::new(cache.clone()).layer(Inner)
}

/// `BearerAuth` behind `tower::retry` with the crate's `Replay` policy.
pub fn bearer_with_replay(cache: &TokenCache) -> Retry<Replay, BearerAuth<Inner>> {
    Retry::new(Replay::new(), bearer(cache))
}

/// `BearerAuth` behind `tower::retry` with `Replay` copying bodies by `Clone`,
/// as the cloning policy does.
pub fn bearer_with_replay_cloning(
    cache: &TokenCache,
) -> Retry<Replay<tower_oauth2::layer::replay::CloneBody>, BearerAuth<Inner>> {
    Retry::new(
        Replay::new().copy_body(tower_oauth2::layer::replay::CloneBody),
        bearer(cache),
    )
}

/// `BearerAuth` behind `tower::retry` with a plain cloning policy.
pub fn bearer_with_cloning_retry(cache: &TokenCache) -> Retry<Cloning, BearerAuth<Inner>> {
    Retry::new(Cloning, bearer(cache))
}

/// The static header behind `tower::retry` with a plain cloning policy:
/// what retrying costs without this crate.
pub fn static_with_cloning_retry() -> Retry<Cloning, tower_http::auth::AddAuthorization<Inner>> {
    Retry::new(Cloning, static_header())
}

/// The simplest `tower::retry` policy that can retry anything: copies every
/// request (method, URI, version, headers, extensions, body), never retries.
#[derive(Clone, Copy)]
pub struct Cloning;

impl<B: Clone, Res, E> tower::retry::Policy<Request<B>, Res, E> for Cloning {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut Request<B>, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        Some(request.clone())
    }
}

/// What a user writes today to replay a rejected request with `tower::retry`:
/// copies every request as [`Cloning`] does, and retries once after a `401`.
/// The cheapest policy that looks at the answer.
#[derive(Clone, Copy, Default)]
pub struct CloningOnce401 {
    retried: bool,
}

impl<B: Clone, ResB, E> tower::retry::Policy<Request<B>, Response<ResB>, E> for CloningOnce401 {
    type Future = Ready<()>;

    fn retry(
        &mut self,
        _: &mut Request<B>,
        result: &mut Result<Response<ResB>, E>,
    ) -> Option<Self::Future> {
        match result {
            Ok(response) if response.status() == 401 && !self.retried => {
                self.retried = true;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        (!self.retried).then(|| request.clone())
    }
}

/// `BearerAuth` behind `tower::retry` with [`CloningOnce401`].
pub fn bearer_with_once_401(cache: &TokenCache) -> Retry<CloningOnce401, BearerAuth<Inner>> {
    Retry::new(CloningOnce401::default(), bearer(cache))
}

/// One request through `service`, polled to completion on the spot (every
/// variant's future is ready at once when the token is fresh).
#[inline]
pub fn one<S>(service: &mut S)
where
    S: Service<Request<()>>,
{
    one_with(service, ())
}

/// One request with an empty `String` body (for the retry variants).
#[inline]
pub fn one_string<S>(service: &mut S)
where
    S: Service<Request<String>>,
{
    one_with(service, String::new())
}

#[inline]
fn one_with<S, B>(service: &mut S, body: B)
where
    S: Service<Request<B>>,
{
    serve(service, Request::new(body))
}

/// `request` through `service`, polled to completion on the spot: all the
/// work a variant does for one request, and nothing else.
#[inline]
pub fn serve<S, B>(service: &mut S, request: Request<B>)
where
    S: Service<Request<B>>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(request));
    match future.poll(&mut cx) {
        Poll::Ready(Ok(_)) => {}
        _ => panic!("the bench expects an immediate answer"),
    }
}
