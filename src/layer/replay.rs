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
//! wrapped policy's copy when it makes one, otherwise `Replay`'s. The
//! wrapped policy is asked to retry only requests it copied itself.
//!
//! # Cost
//!
//! Alone, `Replay` decides by the answer's mark and one flag: with
//! [`CloneBody`] a request costs what it costs under a hand-written
//! `tower::retry` policy that clones requests and retries once after a
//! `401` (BENCHMARKS.md, section 1). A policy that never looks at the
//! answer is cheaper by that look, about 2 % of the instructions.
//! [`EmptyBody`] builds each copy's head part by part, which costs more
//! than a `Clone`.

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
        }
    }

    /// Leaves every decision but the replay to `policy`.
    pub fn with_policy<P2>(self, policy: P2) -> Replay<C, Wrapped<P2>> {
        Replay {
            copy: self.copy,
            policy: Wrapped {
                policy,
                copied: false,
            },
            replayed: false,
        }
    }

    /// Whether this is a rejected token not yet replayed.
    #[inline]
    fn replays<R: AuthResponse, E>(&mut self, result: &Result<R, E>) -> bool {
        let rejected = matches!(result, Ok(response)
            if response.extensions().get::<TokenRejected>().is_some());
        if rejected && !self.replayed {
            self.replayed = true;
            if let Ok(response) = result {
                crate::metrics::replayed(response.extensions());
            }
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

/// What [`Replay`] wraps unless told otherwise: no other retry policy, so
/// the replay is the only retry.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetry;

/// A retry policy wrapped by [`Replay::with_policy`].
#[derive(Clone, Debug)]
pub struct Wrapped<P> {
    policy: P,
    /// Whether `policy` made the copy for the attempt in flight: it decides
    /// only about requests it agreed to copy.
    copied: bool,
}

/// A request [`Replay`] can copy with `C`: an [`http::Request`] by the
/// [`CopyBody`] choice, a [`reqwest::Request`] by its own `try_clone`.
///
/// Sealed: this crate implements it for those types; nobody else needs to.
pub trait ReplayRequest<C>: Sized + sealed::Sealed {
    /// A copy of the request, or `None` when it cannot be sent twice.
    #[doc(hidden)]
    fn copy_with(&self, copy: &C) -> Option<Self>;
}

mod sealed {
    pub trait Sealed {}
}

impl<B> sealed::Sealed for Request<B> {}

impl<B, C: CopyBody<B>> ReplayRequest<C> for Request<B> {
    #[inline]
    fn copy_with(&self, copy: &C) -> Option<Self> {
        copy.copy_request(self)
    }
}

#[cfg(reqwest_client)]
impl sealed::Sealed for reqwest::Request {}

#[cfg(reqwest_client)]
impl<C> ReplayRequest<C> for reqwest::Request {
    fn copy_with(&self, _: &C) -> Option<Self> {
        self.try_clone()
    }
}

// Alone, `Replay` decides by the mark and its one flag, nothing else: the
// same work as a hand-written "retry once after a 401" policy.
impl<Req, Res, E, C> Policy<Req, Res, E> for Replay<C, NoRetry>
where
    Req: ReplayRequest<C>,
    Res: AuthResponse,
{
    type Future = std::future::Ready<()>;

    #[inline]
    fn retry(&mut self, _: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        self.replays(result).then(|| std::future::ready(()))
    }

    #[inline]
    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        if self.replayed {
            return None;
        }
        request.copy_with(&self.copy)
    }
}

pin_project! {
    /// What [`Replay`] waits for before the next attempt when it wraps a
    /// policy: nothing for a replay, the wrapped policy's future otherwise.
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

// Wrapping a policy: the replay first, every other decision the policy's,
// which retries only requests it copied itself (or our copy, when it
// copies nothing).
impl<Req, Res, E, C, P> Policy<Req, Res, E> for Replay<C, Wrapped<P>>
where
    Req: ReplayRequest<C>,
    Res: AuthResponse,
    P: Policy<Req, Res, E>,
{
    type Future = ReplayFuture<P::Future>;

    fn retry(&mut self, request: &mut Req, result: &mut Result<Res, E>) -> Option<Self::Future> {
        if self.replays(result) {
            return Some(ReplayFuture { wait: Wait::Now });
        }
        if !self.policy.copied {
            return None;
        }
        let future = self.policy.policy.retry(request, result)?;
        Some(ReplayFuture {
            wait: Wait::Policy { future },
        })
    }

    fn clone_request(&mut self, request: &Req) -> Option<Req> {
        if let Some(copy) = self.policy.policy.clone_request(request) {
            self.policy.copied = true;
            return Some(copy);
        }
        self.policy.copied = false;
        if self.replayed {
            return None;
        }
        request.copy_with(&self.copy)
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

    fn rejected() -> Result<http::Response<()>, ()> {
        let mut response = http::Response::new(());
        response.extensions_mut().insert(TokenRejected);
        Ok(response)
    }

    #[test]
    fn replays_a_rejected_token_once() {
        let mut policy = Replay::new();
        let mut request = Request::new(String::new());
        assert!(copy(&mut policy, &request).is_some());
        assert!(policy.retry(&mut request, &mut rejected()).is_some());
        assert!(
            copy(&mut policy, &request).is_none(),
            "no copy needed after a replay"
        );
        let mut plain = Ok::<_, ()>(http::Response::new(()));
        assert!(Replay::new().retry(&mut request, &mut plain).is_none());
    }

    /// Copies nothing, and fails the test if asked to retry.
    #[derive(Clone)]
    struct Declines;

    impl<Req, Res, E> Policy<Req, Res, E> for Declines {
        type Future = std::future::Ready<()>;

        fn retry(&mut self, _: &mut Req, _: &mut Result<Res, E>) -> Option<Self::Future> {
            panic!("asked to retry a request it did not copy")
        }

        fn clone_request(&mut self, _: &Req) -> Option<Req> {
            None
        }
    }

    #[test]
    fn a_wrapped_policy_decides_only_about_requests_it_copied() {
        let mut policy = Replay::new().copy_body(CloneBody).with_policy(Declines);
        let mut request = Request::new(String::from("body"));
        let copied = Policy::<_, http::Response<()>, ()>::clone_request(&mut policy, &request);
        assert_eq!(copied.map(Request::into_body).as_deref(), Some("body"));
        let mut plain = Ok::<_, ()>(http::Response::new(()));
        assert!(policy.retry(&mut request, &mut plain).is_none());
        assert!(policy.retry(&mut request, &mut rejected()).is_some());
        assert!(
            Policy::<_, http::Response<()>, ()>::clone_request(&mut policy, &request).is_none(),
            "nothing to copy after the replay"
        );
    }
}
