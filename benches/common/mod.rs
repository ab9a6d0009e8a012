//! The request-path variants the benches compare, each a tower service that
//! adds `Authorization: Bearer <token>` to a `Request<()>` and calls a trivial
//! inner service.
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
use tower::{Layer, Service};
use tower_oauth2::{BearerAuthLayer, Error, Token, TokenCache, TokenSource};

pub const TOKEN: &str =
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.bench-token-of-a-realistic-length-0123456789";

/// The inner service: answers at once.
#[derive(Clone, Copy)]
pub struct Inner;

impl Service<Request<()>> for Inner {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<()>) -> Self::Future {
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

/// A warm cache (its token fetched) on `runtime`.
pub fn warm_cache(runtime: &tokio::runtime::Runtime) -> TokenCache {
    runtime.block_on(async {
        let cache = TokenCache::new(Static);
        cache.token().await.unwrap();
        cache
    })
}

pub fn bearer(cache: &TokenCache, handle_401: bool) -> tower_oauth2::BearerAuth<Inner> {
    BearerAuthLayer::new(cache.clone())
        .handle_unauthorized(handle_401)
        .layer(Inner)
}

/// One request through `service`, polled to completion on the spot (every
/// variant's future is ready at once when the token is fresh).
#[inline]
pub fn one<S>(service: &mut S)
where
    S: Service<Request<()>>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(service.poll_ready(&mut cx).is_ready());
    let future = pin!(service.call(Request::new(())));
    match future.poll(&mut cx) {
        Poll::Ready(Ok(_)) => {}
        _ => panic!("the bench expects an immediate answer"),
    }
}
