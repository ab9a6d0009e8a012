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
//! # What a request goes through
//!
//! - A token is ready (the usual case): the header is inserted (replacing any
//!   `Authorization` the request had) and the inner service is called at once.
//!   That costs one atomic load and a reference-count increment; with 401
//!   handling on (the default) also a copy of the request for the replay.
//!   `handle_unauthorized(false)` drops the copy: see `BENCHMARKS.md`.
//! - No token yet (the very first requests, or after an invalidation): the
//!   request waits for the cache's single fetch, then goes out. `poll_ready`
//!   only ever reports the inner service's readiness; a token failure comes
//!   out of the response future as [`BearerAuthError::Token`].
//! - The answer is `401` with `WWW-Authenticate: Bearer error="invalid_token"`
//!   (or a plain 401 with no error code, unless [`retry_plain_401`] is off):
//!   the token that was sent is invalidated and the request is sent once more
//!   with a new one, if its body is a [`ReplayBody`] that could be copied.
//!   Otherwise the 401 is returned as it came. A `403 insufficient_scope` is
//!   always returned as it came.
//! - A request carrying the [`NoBearerAuth`] extension, or going to an origin
//!   outside [`allow_origin`]'s list, is passed on untouched.
//!
//! Put `tower::timeout` *outside* this layer to bound the wait for a token,
//! and `tower::retry` outside to have every attempt read the current token.
//!
//! [`retry_plain_401`]: BearerAuthLayer::retry_plain_401
//! [`allow_origin`]: BearerAuthLayer::allow_origin

mod future;
mod replay;

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use http::{header::AUTHORIZATION, HeaderValue, Request, Response, StatusCode, Uri};
use tower_layer::Layer;
use tower_service::Service;

pub use future::ResponseFuture;
pub use replay::ReplayBody;

use crate::{Error, TokenCache};

/// Adds a bearer token from a [`TokenCache`] to requests. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct BearerAuthLayer {
    cache: TokenCache,
    config: Config,
}

#[derive(Clone, Debug)]
struct Config {
    handle_401: bool,
    retry_plain_401: bool,
    origins: Option<Arc<[Origin]>>,
}

#[derive(Debug, PartialEq, Eq)]
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl BearerAuthLayer {
    /// Adds tokens from `cache`.
    pub fn new(cache: TokenCache) -> Self {
        Self {
            cache,
            config: Config {
                handle_401: true,
                retry_plain_401: true,
                origins: None,
            },
        }
    }

    /// Whether to act on a `401` (invalidate the token sent, replay the
    /// request once). On by default. Turning it off saves the copy of each
    /// replayable request (its headers and body handle) that the replay needs:
    /// the request path then does exactly what a static header would.
    pub fn handle_unauthorized(mut self, enabled: bool) -> Self {
        self.config.handle_401 = enabled;
        self
    }

    /// Whether a 401 without an `error` code in its `WWW-Authenticate`
    /// challenge (or with no challenge at all) counts as a rejected token.
    /// On by default: many APIs answer an expired token that way. A 401 that
    /// names another error (`invalid_request`) never counts.
    pub fn retry_plain_401(mut self, enabled: bool) -> Self {
        self.config.retry_plain_401 = enabled;
        self
    }

    /// Sends the token only to this origin (`scheme://host[:port]`); may be
    /// called several times. Without any, every request gets the token.
    /// Requests to other origins, and requests without an absolute URI, are
    /// passed on without it.
    pub fn allow_origin(mut self, origin: &str) -> Result<Self, Error> {
        let origin = parse_origin(origin)?;
        let mut list: Vec<Origin> = match self.config.origins.take() {
            Some(list) => list.iter().map(clone_origin).collect(),
            None => Vec::new(),
        };
        list.push(origin);
        self.config.origins = Some(list.into());
        Ok(self)
    }

    /// The cache this layer reads.
    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }
}

impl<S> Layer<S> for BearerAuthLayer {
    type Service = BearerAuth<S>;

    fn layer(&self, inner: S) -> BearerAuth<S> {
        BearerAuth {
            inner,
            cache: self.cache.clone(),
            config: self.config.clone(),
        }
    }
}

/// Adds a bearer token to requests, then calls `S`. Made by [`BearerAuthLayer`].
#[derive(Clone)]
pub struct BearerAuth<S> {
    inner: S,
    cache: TokenCache,
    config: Config,
}

impl<S> fmt::Debug for BearerAuth<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BearerAuth")
            .field("cache", &self.cache)
            .field("config", &self.config)
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

    fn wants_token<B>(&self, request: &Request<B>) -> bool {
        if request.extensions().get::<NoBearerAuth>().is_some() {
            return false;
        }
        match &self.config.origins {
            None => true,
            Some(origins) => origin_of(request.uri()).is_some_and(|o| origins.contains(&o)),
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

impl<S, B, ResBody> Service<Request<B>> for BearerAuth<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BearerAuthError<S::Error>;
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(BearerAuthError::Service)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        if !self.wants_token(&request) {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let Some((header, token_id)) = self.cache.current_header() else {
            // Take the service that was polled ready; leave a clone behind.
            let clone = self.inner.clone();
            let ready = std::mem::replace(&mut self.inner, clone);
            let retry = self.config.handle_401.then(|| self.retry_policy());
            return ResponseFuture::wait_for_token(ready, self.cache.clone(), request, retry);
        };
        request.headers_mut().insert(AUTHORIZATION, header);
        if !self.config.handle_401 {
            return ResponseFuture::passthrough(self.inner.call(request));
        }
        let replay = Replay {
            retry: self.retry_policy(),
            cache: self.cache.clone(),
            token_id,
            request: replay::try_clone_request(&request),
            service: self.inner.clone(),
        };
        ResponseFuture::sent(self.inner.call(request), replay)
    }
}

impl<S> BearerAuth<S> {
    fn retry_policy(&self) -> RetryOn {
        RetryOn {
            plain_401: self.config.retry_plain_401,
        }
    }
}

/// Which 401 answers count as "this token was rejected".
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryOn {
    plain_401: bool,
}

impl RetryOn {
    pub(crate) fn matches<T>(self, response: &Response<T>) -> bool {
        if response.status() != StatusCode::UNAUTHORIZED {
            return false;
        }
        let mut codes = response
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .filter_map(challenge_error);
        match codes.next() {
            Some(code) => code.eq_ignore_ascii_case("invalid_token"),
            None => self.plain_401,
        }
    }
}

/// What the response future needs to replay a request after a 401.
pub(crate) struct Replay<S, B> {
    pub(crate) retry: RetryOn,
    pub(crate) cache: TokenCache,
    pub(crate) token_id: u64,
    pub(crate) request: Option<Request<B>>,
    pub(crate) service: S,
}

/// The `error` parameter of a `WWW-Authenticate` challenge (RFC 6750 §3),
/// skipping quoted strings so a description cannot fake one.
fn challenge_error(value: &HeaderValue) -> Option<String> {
    // `to_str` admits visible ASCII only, so byte indices are char boundaries.
    let text = value.to_str().ok()?;
    let bytes = text.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            _ if !quoted
                && text[i..].starts_with("error")
                && (i == 0 || matches!(bytes[i - 1], b' ' | b',' | b'\t')) =>
            {
                if let Some(value) = text[i + 5..].trim_start().strip_prefix('=') {
                    let value = value.trim_start();
                    let code = match value.strip_prefix('"') {
                        Some(rest) => rest.split('"').next().unwrap_or(""),
                        None => value.split([',', ' ']).next().unwrap_or(""),
                    };
                    return Some(code.to_owned());
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn parse_origin(text: &str) -> Result<Origin, Error> {
    let uri: Uri = text
        .parse()
        .map_err(|_| Error::config(format!("`{text}` is not an origin (scheme://host[:port])")))?;
    let path_is_root = matches!(
        uri.path_and_query().map(|p| p.as_str()),
        None | Some("/") | Some("")
    );
    match origin_of(&uri) {
        Some(origin) if path_is_root => Ok(origin),
        _ => Err(Error::config(format!(
            "`{text}` is not an origin (scheme://host[:port], http or https)"
        ))),
    }
}

fn origin_of(uri: &Uri) -> Option<Origin> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return None,
    };
    Some(Origin {
        host: uri.host()?.to_ascii_lowercase(),
        port: uri.port_u16().unwrap_or(default_port),
        scheme,
    })
}

fn clone_origin(origin: &Origin) -> Origin {
    Origin {
        scheme: origin.scheme.clone(),
        host: origin.host.clone(),
        port: origin.port,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn response(challenge: Option<&'static str>) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        if let Some(c) = challenge {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
        }
        response
    }

    #[test]
    fn which_401s_count() {
        let lenient = RetryOn { plain_401: true };
        let strict = RetryOn { plain_401: false };
        let invalid = response(Some(
            r#"Bearer realm="api", error="invalid_token", error_description="expired""#,
        ));
        assert!(lenient.matches(&invalid) && strict.matches(&invalid));
        let plain = response(None);
        assert!(lenient.matches(&plain) && !strict.matches(&plain));
        let realm_only = response(Some(r#"Bearer realm="api""#));
        assert!(lenient.matches(&realm_only) && !strict.matches(&realm_only));
        let other = response(Some(r#"Bearer error="invalid_request""#));
        assert!(!lenient.matches(&other));
        let unquoted = response(Some("Bearer error=invalid_token"));
        assert!(strict.matches(&unquoted));
        let mut forbidden = response(Some(r#"Bearer error="insufficient_scope""#));
        *forbidden.status_mut() = StatusCode::FORBIDDEN;
        assert!(!lenient.matches(&forbidden));
    }

    #[test]
    fn description_mentioning_error_is_not_the_code() {
        let value = HeaderValue::from_static(
            r#"Bearer error_description="error=x", error="invalid_token""#,
        );
        assert_eq!(challenge_error(&value).as_deref(), Some("invalid_token"));
    }

    #[test]
    fn origins() {
        let o = parse_origin("https://API.example.com").unwrap();
        assert_eq!(
            o,
            origin_of(&"https://api.example.com:443/x?y".parse().unwrap()).unwrap()
        );
        assert_ne!(
            Some(o),
            origin_of(&"http://api.example.com/".parse().unwrap())
        );
        assert!(parse_origin("https://api.example.com/path").is_err());
        assert!(parse_origin("api.example.com").is_err());
        assert!(parse_origin("ftp://x").is_err());
        assert!(origin_of(&"/relative".parse().unwrap()).is_none());
    }
}
