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

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next, Result};

use crate::{
    layer::{mark_if_rejected, sealed::Request as _, BearerAuthLayer, Entry, NoBearerAuth},
    TokenCache,
};

/// A [`reqwest_middleware::Middleware`] that adds `Authorization: Bearer
/// <token>` to requests, as [`BearerAuth`](crate::BearerAuth) does for tower
/// services: same caches, same origin rules (build it from a
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
}

impl From<BearerAuthLayer> for BearerAuthMiddleware {
    fn from(layer: BearerAuthLayer) -> Self {
        Self {
            layer,
            replay: false,
        }
    }
}

impl BearerAuthMiddleware {
    async fn send(
        &self,
        cache: &TokenCache,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<(Response, bool)> {
        let (header, token_id) = match cache.current_header() {
            Some(current) => current,
            None => {
                let token = cache
                    .token()
                    .await
                    .map_err(reqwest_middleware::Error::middleware)?;
                (token.header_value().clone(), token.id())
            }
        };
        request.set_authorization(header);
        let mut response = next.run(request, extensions).await?;
        let (_, _, plain_401) = self.layer.parts();
        let rejected = mark_if_rejected(&mut response, plain_401);
        if rejected {
            tracing::debug!(target: "tower_oauth2", "token rejected; dropped from the cache");
            cache.invalidate_id(token_id);
            crate::metrics::rejected_by(response.extensions_mut(), Some(cache));
        }
        Ok((response, rejected))
    }
}

#[async_trait::async_trait]
impl Middleware for BearerAuthMiddleware {
    async fn handle(
        &self,
        request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> Result<Response> {
        let (caches, routes, _) = self.layer.parts();
        let entry = routes
            .pick(request.target())
            .and_then(|index| caches.get(index));
        let Some(Entry { cache, .. }) = entry else {
            return next.run(request, extensions).await;
        };
        if extensions.get::<NoBearerAuth>().is_some() {
            return next.run(request, extensions).await;
        }
        let copy = if self.replay {
            request.try_clone()
        } else {
            None
        };
        let (response, rejected) = self.send(cache, request, extensions, next.clone()).await?;
        match copy {
            Some(copy) if rejected => {
                crate::metrics::replayed(response.extensions());
                Ok(self.send(cache, copy, extensions, next).await?.0)
            }
            _ => Ok(response),
        }
    }
}
