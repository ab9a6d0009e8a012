//! Send a request once more, with a new token, when its token was rejected.
//!
//! [`Replay`] is a [`tower::retry::Policy`]: put it in a `retry` layer
//! *outside* [`BearerAuthLayer`](super::BearerAuthLayer). The layer drops a
//! rejected token from its cache and marks the answer [`TokenRejected`];
//! `Replay` sees the mark and sends the request's copy once more, which then
//! carries the new token. Everything else is left to the policy it wraps
//! (none by default).
//!
//! ```
//! use std::{convert::Infallible, sync::{Arc, atomic::{AtomicUsize, Ordering}}};
//! use http::{header::AUTHORIZATION, Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_oauth2::{layer::Replay, BearerAuthLayer, Error, Token, TokenCache, TokenSource};
//!
//! // Hands out token-1, token-2, ...
//! struct Counting(usize);
//! impl TokenSource for Counting {
//!     async fn fetch(&mut self) -> Result<Token, Error> {
//!         self.0 += 1;
//!         Token::builder(format!("token-{}", self.0)).build()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // An API that has revoked token-1.
//! let api = service_fn(|request: Request<String>| async move {
//!     let mut response = Response::new(String::new());
//!     if request.headers()[AUTHORIZATION] == "Bearer token-1" {
//!         *response.status_mut() = StatusCode::UNAUTHORIZED;
//!     }
//!     Ok::<_, Infallible>(response)
//! });
//! let cache = TokenCache::new(Counting(0));
//! let client = ServiceBuilder::new()
//!     .retry(Replay::new())
//!     .layer(BearerAuthLayer::new(cache))
//!     .service(api);
//!
//! // An empty body is copied by default; `copy_body(CloneBody)` copies any `Clone` body.
//! let response = client.oneshot(Request::get("https://api.example.com/").body(String::new())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```
//!
//! # Copying the body
//!
//! A request is copied before its first attempt (a replay needs the
//! original, which the first attempt consumes). Headers, method, URI and
//! extensions are always copied; how to copy the body is the policy's
//! choice, not a trait the body type has to implement:
//!
//! - [`EmptyBody`] (the default): bodies whose size is known to be zero (a
//!   `GET`, a `DELETE`) are remade with `Default`; others are not copied, so
//!   their request is not replayed. Works for hyper, axum and
//!   `http-body-util` bodies.
//! - [`CloneBody`]: any `Clone` body (`String`, `Bytes`, `Full<Bytes>`);
//!   the whole request is copied with its own `Clone`, the cheapest copy
//!   (BENCHMARKS.md, section 1), so prefer it where the body is `Clone`.
//! - a function or closure `Fn(&B) -> Option<B>`: anything else.
//!
//! A [`reqwest::Request`] is copied with its own `try_clone` (which refuses
//! streaming bodies), whatever the choice.
//!
//! A request that could not be copied is not replayed: its answer comes back
//! marked [`TokenRejected`], and the token is already dropped, so a
//! caller's own retry gets a new one.
//!
//! # Wrapping your own retry policy
//!
//! [`Replay::with_policy`] puts `Replay` in front of another policy: a
//! rejected token is replayed once, and every other decision (errors, 503s,
//! backoff) is that policy's. One copy of the request serves both: the
//! wrapped policy's copy when it makes one, otherwise `Replay`'s.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Request;
use pin_project_lite::pin_project;
use tower::retry::Policy;

use super::{AuthResponse, TokenRejected};

/// A [`tower::retry::Policy`] that replays a request once when the answer
/// says its token was rejected. See the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct Replay<C = EmptyBody, P = NoRetry> {
    copy: C,
    policy: P,
    replayed: bool,
    /// Whether the wrapped policy made the copy for the attempt in flight.
    policy_copied: bool,
}

impl Replay {
    /// Replays once after a rejected token; copies empty bodies only;
    /// wraps no other policy.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<C, P> Replay<C, P> {
    /// Copies request bodies with `copy`: [`EmptyBody`], [`CloneBody`], or a
    /// closure `Fn(&B) -> Option<B>`.
    pub fn copy_body<C2>(self, copy: C2) -> Replay<C2, P> {
        Replay {
            copy,
            policy: self.policy,
            replayed: false,
            policy_copied: false,
        }
    }

    /// Leaves every decision but the replay to `policy`.
    pub fn with_policy<P2>(self, policy: P2) -> Replay<C, P2> {
        Replay {
            copy: self.copy,
            policy,
            replayed: false,
            policy_copied: false,
        }
    }

    /// Whether this is a rejected token not yet replayed.
    #[inline]
    fn replays<R: AuthResponse, E>(&mut self, result: &Result<R, E>) -> bool {
        let rejected = matches!(result, Ok(response)
            if response.extensions().get::<TokenRejected>().is_some());
        if rejected && !self.replayed {
            self.replayed = true;
            return true;
        }
        false
    }
}

/// How [`Replay`] copies a request body of type `B`. Implemented by
/// [`EmptyBody`], [`CloneBody`] and every `Fn(&B) -> Option<B>`: choose one,
/// there is nothing to implement.
pub trait CopyBody<B> {
    /// A copy of `body`, or `None` when it cannot be sent twice.
    fn copy_body(&self, body: &B) -> Option<B>;

    /// A copy of the whole request: the body by [`copy_body`](Self::copy_body),
    /// the rest field by field.
    #[inline]
    fn copy_request(&self, request: &Request<B>) -> Option<Request<B>> {
        let body = self.copy_body(request.body())?;
        let mut copied = Request::new(body);
        *copied.method_mut() = request.method().clone();
        *copied.uri_mut() = request.uri().clone();
        *copied.version_mut() = request.version();
        *copied.headers_mut() = request.headers().clone();
        *copied.extensions_mut() = request.extensions().clone();
        Some(copied)
    }
}

/// Copies bodies known to be empty (`size_hint` exactly 0) by making a new
/// one with `Default`; never copies others.
#[derive(Clone, Copy, Debug, Default)]
pub struct EmptyBody;

impl<B: http_body::Body + Default> CopyBody<B> for EmptyBody {
    fn copy_body(&self, body: &B) -> Option<B> {
        (body.size_hint().exact() == Some(0)).then(B::default)
    }
}

/// Copies any body that is `Clone`.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneBody;

impl<B: Clone> CopyBody<B> for CloneBody {
    fn copy_body(&self, body: &B) -> Option<B> {
        Some(body.clone())
    }

    // The request's own `Clone` builds the head once instead of a default
    // head that is then overwritten: what a plain cloning policy costs.
    #[inline]
    fn copy_request(&self, request: &Request<B>) -> Option<Request<B>> {
        Some(request.clone())
    }
}

impl<B, F: Fn(&B) -> Option<B>> CopyBody<B> for F {
    fn copy_body(&self, body: &B) -> Option<B> {
        self(body)
    }
}

/// A retry policy that never retries and copies nothing: what [`Replay`]
/// wraps unless told otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetry;

impl<Req, Res, E> Policy<Req, Res, E> for NoRetry {
    type Future = std::future::Ready<()>;

    #[inline]
    fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
        None
    }

    #[inline]
    fn clone_request(&mut self, _: &Req) -> Option<Req> {
        None
    }
}

pin_project! {
    /// What [`Replay`] waits for before the next attempt: nothing for a
    /// replay, the wrapped policy's future otherwise.
    pub struct ReplayFuture<F> {
        #[pin]
        wait: Wait<F>,
    }
}

pin_project! {
    #[project = WaitProj]
    enum Wait<F> {
        Now,
        Policy {
            #[pin]
            future: F,
        },
    }
}

impl<F> ReplayFuture<F> {
    const NOW: Self = Self { wait: Wait::Now };

    fn policy(future: F) -> Self {
        Self {
            wait: Wait::Policy { future },
        }
    }
}

impl<F: Future<Output = ()>> Future for ReplayFuture<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.project().wait.project() {
            WaitProj::Now => Poll::Ready(()),
            WaitProj::Policy { future } => future.poll(cx),
        }
    }
}

impl<F> std::fmt::Debug for ReplayFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayFuture").finish_non_exhaustive()
    }
}

impl<C, P> Replay<C, P> {
    #[inline]
    fn decide<Req, Res, E>(
        &mut self,
        request: &mut Req,
        result: &mut Result<Res, E>,
    ) -> Option<ReplayFuture<P::Future>>
    where
        Res: AuthResponse,
        P: Policy<Req, Res, E>,
    {
        if self.replays(result) {
            if let Ok(response) = result {
                crate::metrics::replayed(response.extensions());
            }
            return Some(ReplayFuture::NOW);
        }
        if !self.policy_copied {
            return None;
        }
        let future = self.policy.retry(request, result)?;
        Some(ReplayFuture::policy(future))
    }

    /// The wrapped policy's copy (`Ok`), or whether to make one of ours
    /// (`Err`): one only before the replay. Ours is made by the caller, so
    /// that the request is built where it is returned, not moved through here.
    #[inline]
    fn wrapped_copy<Req, Res, E>(&mut self, request: &Req) -> Result<Req, bool>
    where
        P: Policy<Req, Res, E>,
    {
        if let Some(copy) = self.policy.clone_request(request) {
            self.policy_copied = true;
            return Ok(copy);
        }
        self.policy_copied = false;
        Err(!self.replayed)
    }
}

impl<B, Res, E, C, P> Policy<Request<B>, Res, E> for Replay<C, P>
where
    Res: AuthResponse,
    C: CopyBody<B>,
    P: Policy<Request<B>, Res, E>,
{
    type Future = ReplayFuture<P::Future>;

    #[inline]
    fn retry(
        &mut self,
        request: &mut Request<B>,
        result: &mut Result<Res, E>,
    ) -> Option<Self::Future> {
        self.decide(request, result)
    }

    #[inline]
    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        match self.wrapped_copy::<_, Res, E>(request) {
            Ok(copy) => Some(copy),
            Err(true) => self.copy.copy_request(request),
            Err(false) => None,
        }
    }
}

#[cfg(feature = "reqwest")]
impl<E, C, P> Policy<reqwest::Request, reqwest::Response, E> for Replay<C, P>
where
    P: Policy<reqwest::Request, reqwest::Response, E>,
{
    type Future = ReplayFuture<P::Future>;

    fn retry(
        &mut self,
        request: &mut reqwest::Request,
        result: &mut Result<reqwest::Response, E>,
    ) -> Option<Self::Future> {
        self.decide(request, result)
    }

    fn clone_request(&mut self, request: &reqwest::Request) -> Option<reqwest::Request> {
        match self.wrapped_copy::<_, reqwest::Response, E>(request) {
            Ok(copy) => Some(copy),
            Err(true) => request.try_clone(),
            Err(false) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u8);

    fn copy<C: CopyBody<B>, B>(policy: &mut Replay<C>, request: &Request<B>) -> Option<Request<B>> {
        Policy::<Request<B>, http::Response<()>, ()>::clone_request(policy, request)
    }

    #[test]
    fn copies_every_part() {
        let request = Request::post("https://api.example.com/items?x=1")
            .header("x-trace", "abc")
            .extension(Marker(7))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let copied = copy(&mut Replay::new().copy_body(CloneBody), &request).unwrap();
        assert_eq!(copied.method(), request.method());
        assert_eq!(copied.uri(), request.uri());
        assert_eq!(copied.headers(), request.headers());
        assert_eq!(copied.extensions().get::<Marker>(), Some(&Marker(7)));
    }

    #[test]
    fn by_default_only_empty_bodies_are_copied() {
        type Streaming = BoxBody<Bytes, std::convert::Infallible>;
        let full: Streaming = Full::new(Bytes::from_static(b"data")).boxed();
        assert!(copy(&mut Replay::new(), &Request::new(full)).is_none());
        let empty: Streaming = Empty::new().boxed();
        let copied = copy(&mut Replay::new(), &Request::new(empty)).expect("an empty body");
        assert_eq!(http_body::Body::size_hint(copied.body()).exact(), Some(0));
        let by_hand = Replay::new().copy_body(|b: &Vec<u8>| (b.len() < 4).then(|| b.clone()));
        assert!(copy(&mut by_hand.clone(), &Request::new(vec![1])).is_some());
        assert!(copy(&mut by_hand.clone(), &Request::new(vec![1; 9])).is_none());
    }

    #[test]
    fn replays_a_rejected_token_once() {
        let mut policy = Replay::new();
        let mut request = Request::new(String::new());
        let rejected = || {
            let mut response = http::Response::new(());
            response.extensions_mut().insert(TokenRejected);
            Ok::<_, ()>(response)
        };
        assert!(copy(&mut policy, &request).is_some());
        assert!(policy.retry(&mut request, &mut rejected()).is_some());
        assert!(
            copy(&mut policy, &request).is_none(),
            "no copy needed after a replay"
        );
        let mut plain = Ok::<_, ()>(http::Response::new(()));
        assert!(Replay::new().retry(&mut request, &mut plain).is_none());
    }
}
