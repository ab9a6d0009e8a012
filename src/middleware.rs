//! Bearer tokens for [`reqwest_middleware`] clients, from the same
//! [`TokenCache`] the tower layer reads.
//!
//! ```no_run
//! # async fn run(cache: tower_oauth2::TokenCache) -> Result<(), Box<dyn std::error::Error>> {
//! use reqwest_middleware::ClientBuilder;
//! use tower_oauth2::BearerAuthMiddleware;
//!
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(BearerAuthMiddleware::new(cache).replay(true))
//!     .build();
//! let response = client.get("https://api.example.com/items").send().await?;
//! # drop(response);
//! # Ok(())
//! # }
//! ```

use std::{future::Future, pin::Pin};

use http::{Extensions, HeaderValue};
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use crate::{
    layer::{mark_if_rejected, sealed::Request as _, BearerAuthLayer, Entry, NoBearerAuth},
    Error, TokenCache,
};

/// A [`reqwest_middleware::Middleware`] that adds `Authorization: Bearer
/// <token>` to requests, as [`BearerAuth`](crate::BearerAuth) does for tower
/// services: same caches, same origin rules
/// ([`allow_origin`](Self::allow_origin), or build it from a
/// [`BearerAuthLayer`] with `From` to choose a cache per origin), same
/// reading of a rejected token (dropped from the cache; the answer marked
/// [`TokenRejected`](crate::TokenRejected)).
///
/// A request built `with_extension(NoBearerAuth)` is sent without a token.
///
/// A token error comes back as `reqwest_middleware::Error::Middleware`
/// holding a [`tower_oauth2::Error`](crate::Error) (find it with
/// [`Error::find_in`](crate::Error::find_in)).
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
#[derive(Clone, Debug)]
pub struct BearerAuthMiddleware {
    layer: BearerAuthLayer,
    replay: bool,
}

impl BearerAuthMiddleware {
    /// Adds tokens from `cache` to every request.
    pub fn new(cache: TokenCache) -> Self {
        BearerAuthLayer::new(cache).into()
    }

    /// Whether to send a request once more, with a new token, when its token
    /// is rejected. Off by default: it copies every request before sending
    /// it (`reqwest::Request::try_clone`, which refuses streaming bodies).
    pub fn replay(mut self, replay: bool) -> Self {
        self.replay = replay;
        self
    }

    /// Sends the token only to this origin (`scheme://host[:port]`); may be
    /// called several times. Without any, every request gets the token.
    /// Requests to other origins are sent without it. The same rule as
    /// [`BearerAuthLayer::allow_origin`].
    ///
    /// ```
    /// # async fn run(cache: tower_oauth2::TokenCache) -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::BearerAuthMiddleware;
    ///
    /// let middleware = BearerAuthMiddleware::new(cache)
    ///     .allow_origin("https://api.example.com")?;
    /// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
    ///     .with(middleware)
    ///     .build();
    /// # drop(client);
    /// # Ok(())
    /// # }
    /// ```
    pub fn allow_origin(mut self, origin: &str) -> std::result::Result<Self, Error> {
        self.layer = self.layer.allow_origin(origin)?;
        Ok(self)
    }

    /// How many requests this middleware (and its clones) sent on without
    /// a token because no cache serves their origin, as
    /// [`BearerAuthLayer::withheld`] counts them; each such origin is also
    /// logged once.
    pub fn withheld(&self) -> u64 {
        self.layer.withheld()
    }
}

impl From<BearerAuthLayer> for BearerAuthMiddleware {
    fn from(layer: BearerAuthLayer) -> Self {
        Self {
            layer,
            replay: false,
        }
    }
}

/// What `handle` returns: `async_trait`'s type for the trait's future.
type Handled<'a> = Pin<Box<dyn Future<Output = Result<Response>> + Send + 'a>>;

impl BearerAuthMiddleware {
    /// The cache whose token `request` gets, if any.
    #[inline]
    fn cache_for(&self, request: &Request, extensions: &Extensions) -> Option<&Entry> {
        let (caches, routes, _) = self.layer.parts();
        let picked = if routes.routes.is_empty() {
            routes.fallback
        } else {
            routes.pick(request.target())
        };
        let Some(index) = picked else {
            if extensions.get::<NoBearerAuth>().is_none() {
                routes.withheld.note(request.target());
            }
            return None;
        };
        let entry = caches.get(index)?;
        if extensions.get::<NoBearerAuth>().is_some() {
            return None;
        }
        Some(entry)
    }

    /// Marks and reports the answer when it rejects the token sent;
    /// whether it did.
    fn check(&self, cache: &TokenCache, token_id: u64, response: &mut Response) -> bool {
        let (_, _, plain_401) = self.layer.parts();
        let rejected = mark_if_rejected(response, plain_401);
        if rejected {
            tracing::debug!(target: "tower_oauth2", "token rejected; dropped from the cache");
            cache.invalidate_id(token_id);
            crate::metrics::rejected_by(response.extensions_mut(), Some(cache));
        }
        rejected
    }

    // These two return `async` blocks rather than being `async fn`s: an
    // `async fn` keeps its arguments twice (as passed, then as locals), and
    // a request is 264 bytes (the waiting path's future was 776 bytes that
    // way, 456 this way).

    /// One attempt after waiting for a token (none was ready).
    #[allow(clippy::manual_async_fn)]
    fn send_when_ready<'a>(
        &'a self,
        cache: &'a TokenCache,
        mut request: Request,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Response>> + Send + 'a {
        async move {
            let (header, token_id) = header_of(cache).await?;
            request.set_authorization(header);
            let mut response = next.run(request, extensions).await?;
            self.check(cache, token_id, &mut response);
            Ok(response)
        }
    }

    /// `replay(true)`: the first attempt sends a copy, and the request
    /// itself goes once more, with a new token, when that copy's token is
    /// rejected. Sending the copy first keeps one request in the future
    /// across both attempts.
    #[allow(clippy::manual_async_fn)]
    fn send_with_replay<'a>(
        &'a self,
        cache: &'a TokenCache,
        mut request: Request,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Response>> + Send + 'a {
        async move {
            let (header, token_id) = header_of(cache).await?;
            let Some(sent) = send_copy(&request, &header, extensions, &next) else {
                // A body that cannot be copied (a stream): one attempt.
                request.set_authorization(header);
                let mut response = next.run(request, extensions).await?;
                self.check(cache, token_id, &mut response);
                return Ok(response);
            };
            drop(header); // not kept across the attempts
            {
                // In a block: the first answer takes no room in the future
                // while the second attempt is under way.
                let mut response = sent.await?;
                if !self.check(cache, token_id, &mut response) {
                    return Ok(response);
                }
                crate::metrics::replayed(response.extensions());
            }
            let (header, token_id) = header_of(cache).await?;
            request.set_authorization(header);
            let mut response = next.run(request, extensions).await?;
            self.check(cache, token_id, &mut response);
            Ok(response)
        }
    }
}

#[cfg(dpop)]
impl BearerAuthMiddleware {
    /// One request whose token may be DPoP-bound: each attempt gets the
    /// current token and, when bound, a proof of its own (the answer's
    /// nonce is remembered for the next); with `replay(true)`, an answer
    /// marked [`TokenRejected`](crate::TokenRejected) (`use_dpop_nonce`,
    /// or a rejected bearer token) is sent once more.
    #[allow(clippy::manual_async_fn)]
    fn send_proved<'a>(
        &'a self,
        entry: &'a Entry,
        request: Request,
        extensions: &'a mut Extensions,
        next: Next<'a>,
    ) -> impl Future<Output = Result<Response>> + Send + 'a {
        async move {
            let copy = if self.replay {
                request.try_clone()
            } else {
                None
            };
            let response = self
                .prove_once(entry, request, extensions, next.clone())
                .await?;
            let Some(copy) = copy else {
                return Ok(response);
            };
            if response
                .extensions()
                .get::<crate::TokenRejected>()
                .is_none()
            {
                return Ok(response);
            }
            crate::metrics::replayed(response.extensions());
            drop(response);
            self.prove_once(entry, copy, extensions, next).await
        }
    }

    async fn prove_once(
        &self,
        entry: &Entry,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let (_, _, plain_401) = self.layer.parts();
        let token = entry
            .cache
            .token()
            .await
            .map_err(reqwest_middleware::Error::middleware)?;
        let sent = crate::layer::Sent {
            cache: entry.index,
            token_id: token.id(),
            plain_401,
        };
        let proved = crate::layer::dpop::authorize(&mut request, &token, None)
            .map_err(reqwest_middleware::Error::middleware)?;
        drop(token);
        let mut response = next.run(request, extensions).await?;
        match proved {
            Some((binding, htu)) => {
                crate::layer::dpop::Proved { binding, htu, sent }.check(&mut response)
            }
            None => sent.check(&mut response),
        }
        Ok(response)
    }
}

/// Sends a copy of `request` with `header`, if it can be copied. Not
/// `async`: the copy never takes room in the caller's future.
fn send_copy<'b>(
    request: &Request,
    header: &HeaderValue,
    extensions: &'b mut Extensions,
    next: &Next<'b>,
) -> Option<Handled<'b>> {
    let mut copy = request.try_clone()?;
    copy.set_authorization(header.clone());
    Some(next.clone().run(copy, extensions))
}

/// The current header and its token's identity, waiting for a token when
/// none is ready. Kept apart so that the futures holding a request do not
/// also hold the cache's wait.
async fn header_of(cache: &TokenCache) -> Result<(HeaderValue, u64)> {
    if let Some(current) = cache.current_header() {
        return Ok(current);
    }
    let token = cache
        .token()
        .await
        .map_err(reqwest_middleware::Error::middleware)?;
    Ok((token.header_value().clone(), token.id()))
}

// Written out rather than through `#[async_trait]`, which would box the
// whole body, request and replay state included, for every request. Here
// the usual request (a token ready, no replay) gets its header before the
// future is made, and the box holds only the next middleware's future and
// what reading its answer needs; a request this middleware leaves alone
// gets no box of its own.
impl Middleware for BearerAuthMiddleware {
    fn handle<'life0, 'life1, 'life2, 'async_trait>(
        &'life0 self,
        mut request: Request,
        extensions: &'life1 mut Extensions,
        next: Next<'life2>,
    ) -> Handled<'async_trait>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        Self: 'async_trait,
    {
        let Some(entry) = self.cache_for(&request, extensions) else {
            return next.run(request, extensions);
        };
        let cache = &entry.cache;
        // A DPoP-bound token, or none yet (it may come back bound): the
        // path that proves each attempt.
        #[cfg(dpop)]
        if cache
            .current_header()
            .is_none_or(|(_, id)| crate::layer::dpop::is_dpop(id))
        {
            return Box::pin(self.send_proved(entry, request, extensions, next));
        }
        if self.replay {
            return Box::pin(self.send_with_replay(cache, request, extensions, next));
        }
        let Some((header, token_id)) = cache.current_header() else {
            return Box::pin(self.send_when_ready(cache, request, extensions, next));
        };
        request.set_authorization(header);
        let sent = next.run(request, extensions);
        Box::pin(async move {
            let mut response = sent.await?;
            self.check(cache, token_id, &mut response);
            Ok(response)
        })
    }
}
