//! Add `Authorization: Bearer <token>` to every request, from a [`TokenCache`].
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{header::AUTHORIZATION, Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_oauth2::{BearerAuthLayer, Token, TokenCache, TokenSource, Error};
//!
//! // Any token source will do; the grants are the usual ones.
//! struct Static;
//! impl TokenSource for Static {
//!     async fn fetch(&mut self) -> Result<Token, Error> {
//!         Token::builder("abc123").expires_in(std::time::Duration::from_secs(3600)).build()
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cache = TokenCache::new(Static);
//! let api = service_fn(|request: Request<String>| async move {
//!     let auth = request.headers()[AUTHORIZATION].to_str().unwrap().to_owned();
//!     Ok::<_, Infallible>(Response::new(auth))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(cache))
//!     .service(api);
//!
//! let response = client.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.body(), "Bearer abc123");
//! # Ok(())
//! # }
//! ```
//!
//! [`BearerAuth`] takes [`http::Request<B>`] for any body type `B` (hyper,
//! axum, tonic's gRPC channel, streaming bodies) and [`reqwest::Request`]
//! (so a `reqwest::Client` is wrapped like any tower service). With the
//! `reqwest-middleware` feature, `BearerAuthMiddleware` does the same for a
//! `reqwest_middleware::ClientWithMiddleware`.
//!
//! # What a request goes through
//!
//! - A token is ready (the usual case): the header is inserted (replacing any
//!   `Authorization` the request had) and the inner service is called at once.
//!   That costs one atomic load, a clone of the header value (a reference
//!   count, as for any shared `HeaderValue`) and the header insert; the
//!   request is not copied.
//! - No token yet (the very first requests, or after an invalidation): the
//!   request waits for the cache's single fetch, then goes out. `poll_ready`
//!   only ever reports the inner service's readiness; a token failure comes
//!   out of the response future as [`BearerAuthError::Token`].
//! - The answer rejects the token (`401` with `WWW-Authenticate: Bearer
//!   error="invalid_token"`, a plain 401, or gRPC `UNAUTHENTICATED`: see
//!   [`TokenRejected`]): the token that was sent is dropped from the cache,
//!   so the next request gets a new one, and the answer is returned marked
//!   [`TokenRejected`]. Many rejections of one token cause one refresh.
//! - The token is DPoP-bound (the `dpop` feature, a grant given a
//!   `DpopKey`): the request leaves with `Authorization: DPoP <token>` and a
//!   `DPoP` proof for its method and URI (one signature; the token's hash
//!   and the proof header are computed once per token), and the answer's
//!   `DPoP-Nonce` is remembered for its origin. A `401` asking for a nonce
//!   (`use_dpop_nonce`) keeps the token and is marked for [`Replay`], which
//!   sends the request once more with the nonce. Bearer tokens never take
//!   this branch. A DPoP request needs an absolute URI.
//! - A request carrying the [`NoBearerAuth`] extension, or going to an origin
//!   no cache serves (see [`allow_origin`] and [`origin`]), is passed on
//!   untouched. The second kind is logged once per origin and counted
//!   ([`withheld`]): a request whose URI is a path only, as a tonic
//!   channel's, has no origin until [`relative_uri_origin`] gives it one.
//!
//! # Replay after a rejected token
//!
//! Sending a request a second time needs a copy of it, made before the
//! first attempt. That is the job of a [`tower::retry`] policy outside the
//! layer, [`Replay`], not of the layer itself: it replays a request once
//! when its answer is marked [`TokenRejected`], can wrap your own retry
//! policy, and copies bodies as you tell it to (see [`replay`]).
//!
//! ```
//! # use std::convert::Infallible;
//! # async fn run(cache: tower_oauth2::TokenCache) {
//! # let api = tower::service_fn(|_: http::Request<String>| async {
//! #     Ok::<_, Infallible>(http::Response::new(()))
//! # });
//! use tower::ServiceBuilder;
//! use tower_oauth2::layer::{BearerAuthLayer, Replay};
//!
//! let client = ServiceBuilder::new()
//!     .retry(Replay::new()) // replays once, with a new token, when the body can be copied
//!     .layer(BearerAuthLayer::new(cache))
//!     .service(api);
//! # drop(client);
//! # }
//! ```
//!
//! Put `tower::timeout` *outside* this layer to bound the wait for a token,
//! and `tower::retry` outside to have every attempt read the current token.
//!
//! [`allow_origin`]: BearerAuthLayer::allow_origin
//! [`withheld`]: BearerAuthLayer::withheld
//! [`relative_uri_origin`]: BearerAuthLayer::relative_uri_origin
//! [`origin`]: BearerAuthLayer::origin
//! [`tower::retry`]: https://docs.rs/tower/latest/tower/retry/index.html

#[cfg(dpop)]
pub(crate) mod dpop;
mod future;
mod message;
mod origin;
pub(crate) mod registry;
mod rejection;
pub mod replay;

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use tower_layer::Layer;
use tower_service::Service;

pub use future::ResponseFuture;
pub use message::{AuthRequest, AuthResponse};
pub use rejection::TokenRejected;
pub use replay::{CloneBody, Replay};

pub(crate) use future::Sent;
#[cfg(feature = "reqwest-middleware")]
pub(crate) use message::{mark_if_rejected, sealed};
pub(crate) use origin::Routes;

use crate::{cache::HeaderReader, Error, TokenCache};
use origin::Origin;

/// Adds a bearer token from a [`TokenCache`] to requests. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct BearerAuthLayer {
    caches: Vec<Entry>,
    routes: Routes,
    plain_401: bool,
    /// Whether `caches[0]` is the cache given to `new`, the one
    /// `allow_origin` narrows down.
    own_cache: bool,
}

/// A cache the layer uses, with its index in the [`registry`].
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub(crate) cache: TokenCache,
    pub(crate) index: u32,
}

impl BearerAuthLayer {
    /// Adds tokens from `cache` to every request (see
    /// [`allow_origin`](Self::allow_origin) to narrow that down).
    pub fn new(cache: TokenCache) -> Self {
        Self {
            own_cache: true,
            ..Self::per_origin().with_cache(cache, None)
        }
    }

    /// A layer that adds no token until told which cache serves which
    /// origin with [`origin`](Self::origin): one client calling several
    /// APIs, each with its own audience or scopes. A request to any other
    /// origin leaves without a token.
    pub fn per_origin() -> Self {
        Self {
            caches: Vec::new(),
            routes: Routes::default(),
            plain_401: true,
            own_cache: false,
        }
    }

    /// Sends requests to `origin` (`scheme://host[:port]`) with tokens from
    /// `cache`. May be called for several origins and caches; the first
    /// listed origin that matches a request wins.
    ///
    /// ```
    /// # async fn run(storage: tower_oauth2::TokenCache, pubsub: tower_oauth2::TokenCache) -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::BearerAuthLayer;
    ///
    /// let layer = BearerAuthLayer::per_origin()
    ///     .origin("https://storage.googleapis.com", storage)?
    ///     .origin("https://pubsub.googleapis.com", pubsub)?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn origin(self, origin: &str, cache: TokenCache) -> Result<Self, Error> {
        let origin = Origin::parse(origin)?;
        Ok(self.with_cache(cache, Some(origin)))
    }

    /// Sends the token of the cache given to [`new`](Self::new) only to this
    /// origin (`scheme://host[:port]`); may be called several times. Without
    /// any, every request gets that token. Requests to other origins, and
    /// requests without an absolute URI, are passed on without it.
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, Error> {
        let origin = Origin::parse(origin)?;
        // A `per_origin` layer's first cache belongs to another origin.
        if !self.own_cache {
            return Err(Error::config(
                "allow_origin: this layer has no cache of its own; use origin(origin, cache)",
            ));
        }
        self.routes.fallback = None;
        self.routes.routes.push((origin, 0));
        Ok(self)
    }

    /// Takes requests whose URI is a path only, with no scheme or host, to
    /// go to `origin` (`scheme://host[:port]`), for the origin rules of
    /// [`allow_origin`](Self::allow_origin) and [`origin`](Self::origin).
    ///
    /// A tonic channel is one: its generated clients send
    /// `/package.Service/Method`, and the channel adds its endpoint's origin
    /// below this layer. Without this setting such requests match no origin
    /// and leave without a token (logged once, and counted: see
    /// [`withheld`](Self::withheld)). The other way is to give the client
    /// the origin itself (`MyClient::with_origin(service, origin)` in tonic).
    ///
    /// ```
    /// # async fn run(cache: tower_oauth2::TokenCache) -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::BearerAuthLayer;
    ///
    /// let layer = BearerAuthLayer::new(cache)
    ///     .allow_origin("https://pubsub.googleapis.com")?
    ///     .relative_uri_origin("https://pubsub.googleapis.com")?;
    /// // tonic: MyClient::new(layer.layer(channel))
    /// # Ok(())
    /// # }
    /// ```
    pub fn relative_uri_origin(mut self, origin: &str) -> Result<Self, Error> {
        self.routes.relative = Some(Origin::parse(origin)?);
        Ok(self)
    }

    /// How many requests the services made by this layer (and its clones)
    /// sent on without a token because no cache serves their origin.
    /// Requests that opted out with [`NoBearerAuth`] are not counted. Each
    /// such origin is also logged once (at `warn` for a URI without an
    /// origin, `info` otherwise), and counted in the metrics.
    pub fn withheld(&self) -> u64 {
        self.routes.withheld.count()
    }

    /// Whether a `401` that names no error in its `WWW-Authenticate`
    /// challenge (or has no challenge at all) rejects the token. On by
    /// default: many APIs answer an expired token that way. A 401 that names
    /// another error (`invalid_request`) never does. See [`TokenRejected`].
    pub fn plain_401_rejects(mut self, rejects: bool) -> Self {
        self.plain_401 = rejects;
        self
    }

    fn with_cache(mut self, cache: TokenCache, origin: Option<Origin>) -> Self {
        let index = registry::index_of(&cache);
        // A layer built per request (one cache per caller) is a use.
        cache.note_use();
        let position = match self.caches.iter().position(|e| e.index == index) {
            Some(position) => position,
            None => {
                self.caches.push(Entry { cache, index });
                self.caches.len() - 1
            }
        };
        match origin {
            Some(origin) => self.routes.routes.push((origin, position)),
            None => self.routes.fallback = Some(position),
        }
        self
    }

    /// The caches and routes, for the `reqwest-middleware` adapter.
    #[cfg_attr(not(feature = "reqwest-middleware"), allow(dead_code))]
    pub(crate) fn parts(&self) -> (&[Entry], &Routes, bool) {
        (&self.caches, &self.routes, self.plain_401)
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        let source = |entry: &Entry| Source {
            reader: entry.cache.header_reader(),
            index: entry.index,
            #[cfg(dpop)]
            dpop: None,
        };
        let sources = match &self.caches[..] {
            [] => Sources::Nothing,
            [one] => Sources::One(source(one)),
            many => Sources::Many(many.iter().map(source).collect()),
        };
        // Every request to the one cache: no table to consult, none to clone.
        let routes = match (&self.routes.routes[..], self.routes.fallback) {
            ([], Some(_)) => None,
            _ => Some(Arc::new(self.routes.clone())),
        };
        BearerAuth {
            inner,
            sources,
            routes,
            plain_401: self.plain_401,
            #[cfg(dpop)]
            relative: self.routes.relative.as_ref().map(|o| o.prefix().into()),
        }
    }
}

/// Adds a bearer token to requests, then calls `S`. Made by [`BearerAuthLayer`].
///
/// A service for [`http::Request<B>`] (any `B`) or [`reqwest::Request`]; see
/// [`AuthRequest`].
#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    sources: Sources,
    /// `None`: every request goes to the one cache (the usual case).
    routes: Option<Arc<Routes>>,
    plain_401: bool,
    /// `relative_uri_origin`, as a DPoP proof's `htu` starts with it.
    #[cfg(dpop)]
    relative: Option<Arc<str>>,
}

/// Where this service clone reads tokens: one reader per cache, each with
/// its own `arc_swap::Cache`, so a read writes nothing shared.
#[derive(Clone)]
enum Sources {
    Nothing,
    One(Source),
    Many(Box<[Source]>),
}

#[derive(Clone)]
struct Source {
    reader: HeaderReader,
    index: u32,
    /// The binding of the last DPoP token this clone sent, by token id.
    #[cfg(dpop)]
    dpop: Option<(u64, Arc<crate::dpop::Binding>)>,
}

impl<S> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let caches: Vec<&TokenCache> = match &self.sources {
            Sources::Nothing => Vec::new(),
            Sources::One(source) => vec![source.reader.cache()],
            Sources::Many(sources) => sources.iter().map(|s| s.reader.cache()).collect(),
        };
        f.debug_struct("BearerAuth")
            .field("caches", &caches)
            .field("routes", &self.routes)
            .field("plain_401", &self.plain_401)
            .finish_non_exhaustive()
    }
}

impl<S> BearerAuth<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Gives back the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// The source of this request's token, if it gets one.
    #[inline]
    fn source_for<R: AuthRequest>(&mut self, request: &R) -> Option<&mut Source> {
        if request.opted_out() {
            return None;
        }
        let index = match &self.routes {
            None => 0,
            Some(routes) => routes.pick_or_note(request.target())?,
        };
        match &mut self.sources {
            Sources::Nothing => None,
            Sources::One(source) => Some(source),
            Sources::Many(sources) => sources.get_mut(index),
        }
    }
}

/// A request extension that tells [`BearerAuth`] to leave this request alone.
///
/// ```
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(tower_oauth2::layer::NoBearerAuth);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct NoBearerAuth;

impl<S, R> Service<R> for BearerAuth<S>
where
    R: AuthRequest + Send + 'static,
    S: Service<R> + Clone + Send + 'static,
    S::Response: AuthResponse + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = BearerAuthError<S::Error>;
    type Future = ResponseFuture<S::Future, S::Response, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BearerAuthError::Service)
    }

    #[inline]
    fn call(&mut self, mut request: R) -> Self::Future {
        let plain_401 = self.plain_401;
        let Some(source) = self.source_for(&request) else {
            return ResponseFuture::sent(self.inner.call(request), None);
        };
        let cache = source.index;
        if let Some((header, token_id)) = source.reader.current_header() {
            #[cfg(dpop)]
            if dpop::is_dpop(token_id) {
                // Out of line: the bearer path above stays as small as it was.
                let binding = dpop::binding(&mut source.dpop, source.reader.cache(), token_id);
                let sent = Sent {
                    cache,
                    token_id,
                    plain_401,
                };
                return match binding {
                    Some(binding) => self.call_dpop(request, header, binding, sent),
                    // Not ready after all: the waiting path.
                    None => {
                        let tokens = source.reader.cache().clone();
                        self.call_waiting(request, tokens, cache, plain_401)
                    }
                };
            }
            request.set_authorization(header);
            let sent = Sent {
                cache,
                token_id,
                plain_401,
            };
            return ResponseFuture::sent(self.inner.call(request), Some(sent));
        }
        let tokens = source.reader.cache().clone();
        self.call_waiting(request, tokens, cache, plain_401)
    }
}

impl<S> BearerAuth<S> {
    /// No token ready: waits for one, with the service that was polled
    /// ready (a clone stays behind for the next request).
    #[inline(never)]
    fn call_waiting<R>(
        &mut self,
        mut request: R,
        tokens: TokenCache,
        cache: u32,
        plain_401: bool,
    ) -> ResponseFuture<S::Future, S::Response, S::Error>
    where
        R: AuthRequest + Send + 'static,
        S: Service<R> + Clone + Send + 'static,
        S::Response: AuthResponse + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
        // The future holds a handle: the service may be gone before it ends.
        #[cfg(dpop)]
        let relative = self.relative.clone();
        let clone = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::waiting(Box::pin(async move {
            let token = tokens.token().await.map_err(BearerAuthError::Token)?;
            #[cfg(dpop)]
            let proved = dpop::authorize(&mut request, &token, relative.as_deref())
                .map_err(BearerAuthError::Token)?;
            #[cfg(not(dpop))]
            request.set_authorization(token.header_value().clone());
            let mut response = ready
                .call(request)
                .await
                .map_err(BearerAuthError::Service)?;
            let sent = Sent {
                cache,
                token_id: token.id(),
                plain_401,
            };
            #[cfg(dpop)]
            if let Some((binding, htu)) = proved {
                dpop::Proved { binding, htu, sent }.check(&mut response);
                return Ok(response);
            }
            sent.check(&mut response);
            Ok(response)
        }))
    }

    /// A DPoP-bound token is ready: the proof is made here, synchronously
    /// (one signature), and the answer read for its nonce.
    #[cfg(dpop)]
    #[inline(never)]
    fn call_dpop<R>(
        &mut self,
        mut request: R,
        header: http::HeaderValue,
        binding: Arc<crate::dpop::Binding>,
        sent: Sent,
    ) -> ResponseFuture<S::Future, S::Response, S::Error>
    where
        R: AuthRequest + Send + 'static,
        S: Service<R> + Clone + Send + 'static,
        S::Response: AuthResponse + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Send + 'static,
    {
        let htu = match dpop::prove(&mut request, &binding, self.relative.as_deref()) {
            Ok(htu) => htu,
            Err(error) => return ResponseFuture::waiting(dpop::failed(error)),
        };
        request.set_authorization(header);
        let future = self.inner.call(request);
        ResponseFuture::waiting(Box::pin(async move {
            let mut response = future.await.map_err(BearerAuthError::Service)?;
            dpop::Proved { binding, htu, sent }.check(&mut response);
            Ok(response)
        }))
    }
}

/// The error of a [`BearerAuth`] service: no token could be had, or the
/// inner service failed.
#[derive(Debug)]
pub enum BearerAuthError<E> {
    /// No valid token: the cache's fetch failed (see [`Error::kind`]).
    Token(Error),
    /// The inner service failed.
    Service(E),
}

impl<E: fmt::Display> fmt::Display for BearerAuthError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(error) => write!(f, "no access token: {error}"),
            Self::Service(error) => error.fmt(f),
        }
    }
}

impl<E> std::error::Error for BearerAuthError<E>
where
    E: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Token(error) => Some(error),
            Self::Service(error) => Some(error),
        }
    }
}
