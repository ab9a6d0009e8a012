//! The crate's error type.
//!
//! One [`Error`] type serves every part of the crate. It is cheap to clone (an
//! `Arc` inside) because the cache hands the same failure to every request that
//! was waiting for a token. Match on [`Error::kind`] to decide what to do, and on
//! [`Error::is_transient`] to know whether trying again later can help.
//!
//! An error never holds a response body: bodies may contain tokens. It holds the
//! HTTP status, the OAuth error code and the server's short `error_description`.

use std::{borrow::Cow, fmt, sync::Arc, time::Duration};

use http::StatusCode;

use crate::clock::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Longest `error_description` kept from a server, in characters.
const MAX_DESCRIPTION: usize = 256;

/// What went wrong. Returned by [`Error::kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The builder was given something unusable: a missing field, a bad URL,
    /// an `http` URL to a non-loopback host, a scope with invalid characters.
    Config,
    /// The token endpoint answered with an OAuth error response (RFC 6749 §5.2).
    OAuth(OAuthErrorCode),
    /// The refresh token (or authorization code) is no longer accepted: a
    /// person must authorize the application again. Not retried.
    ReauthorizationRequired,
    /// The request could not be sent or the connection failed.
    Network,
    /// The token endpoint did not answer in time.
    Timeout,
    /// The token endpoint answered with a redirect. Redirects are never
    /// followed: a redirect target could receive the client's credentials.
    Redirect,
    /// The token endpoint answered with an HTTP error status and no OAuth
    /// error body (an HTML page from a proxy, say).
    Status,
    /// The token endpoint answered with something that is not a usable token
    /// response: not JSON, no `access_token`, an unsupported `token_type`, ...
    InvalidResponse,
    /// The response body was larger than the configured bound.
    ResponseTooLarge,
    /// The cache's background task has stopped (its runtime is shutting down).
    Closed,
    /// A custom [`TokenSource`](crate::TokenSource) failed; see [`Error::custom`].
    Source,
    /// A [`TokenStore`](crate::TokenStore) could not load or save token state.
    Store(StoreErrorKind),
    /// The API rejected new tokens soon after they were issued (a stale key
    /// set at the API, a wrong audience): the next token request waits with
    /// backoff, so rejections cost token requests that grow with time, not
    /// with the request rate. Transient.
    TokenRejected,
    /// The authorization callback is not the answer to the request that was
    /// sent: the `state` does not match, or the `code` is missing.
    Callback,
    /// The client assertion of `private_key_jwt` client authentication could
    /// not be made: the `client_assertion` callback failed or returned an
    /// empty string, or signing failed. No token request was sent. Transient
    /// when the callback failed (its next call may succeed: a token file
    /// being rotated, say), permanent otherwise.
    ClientAssertion,
    /// An authorization server metadata document was refused; see
    /// [`discovery`](crate::discovery).
    Discovery(DiscoveryErrorKind),
}

/// Why a metadata document was refused. In [`ErrorKind::Discovery`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DiscoveryErrorKind {
    /// The document's `issuer` is not the issuer asked for.
    IssuerMismatch,
    /// The document has no `token_endpoint`.
    NoTokenEndpoint,
    /// An endpoint in the document is not a URL the crate sends credentials
    /// to: not `https` (outside loopback), or not a URL.
    InsecureEndpoint,
    /// Not a JSON object, no `issuer`, or a field of the wrong type.
    Invalid,
}

/// What went wrong with a [`TokenStore`](crate::TokenStore). In
/// [`ErrorKind::Store`].
///
/// Two families: *unreachable, tried again* (`Unavailable`, `TimedOut`,
/// transient; `Unreadable` and `WriteFailed`, an I/O error that may pass,
/// are tried again too) and *a person must look* (`Corrupt`,
/// `UnsupportedVersion`, `OtherCredential`, `Unwritable`: the cache stops
/// and writes nothing over the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The stored state could not be read (permissions, I/O). Tried again
    /// with backoff: it may pass (EIO, EMFILE, a volume not mounted yet).
    Unreadable,
    /// The stored state is empty, truncated or not a token state document.
    Corrupt,
    /// The stored state was written by an unknown version of the format.
    UnsupportedVersion,
    /// The stored state belongs to another credential (token URL, client id,
    /// flow or scopes differ).
    OtherCredential,
    /// The state could not be written.
    WriteFailed,
    /// The store cannot be written where it is: its directory is missing or
    /// not writable. Reported by the load at start, before any token is
    /// fetched (a rotated refresh token would otherwise live only in
    /// memory), and by a save that finds it so.
    Unwritable,
    /// A shared store could not be reached (Redis down, a connection
    /// refused or dropped); before a fetch, this means a refresh token was
    /// not sent:
    /// without the fleet's lease another replica may be sending it, and a
    /// server that detects reuse would revoke it. Transient: tried again
    /// with backoff until the store is back.
    Unavailable,
    /// The store did not answer within
    /// [`RefreshPolicy::store_timeout`](crate::RefreshPolicy::store_timeout).
    /// Transient: the call is tried again with backoff.
    TimedOut,
}

/// The `error` code of an OAuth 2.0 error response (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OAuthErrorCode {
    /// `invalid_request`: a parameter is missing, repeated or malformed.
    InvalidRequest,
    /// `invalid_client`: client authentication failed.
    InvalidClient,
    /// `invalid_grant`: the grant (code, refresh token) is invalid, expired or revoked.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant type.
    UnauthorizedClient,
    /// `unsupported_grant_type`: the server does not support this grant type.
    UnsupportedGrantType,
    /// `invalid_scope`: a requested scope is invalid, unknown or not granted.
    InvalidScope,
    /// `invalid_dpop_proof` (RFC 9449): the server refused the request's
    /// DPoP proof (a wrong `htu`, a replayed `jti`, a bad signature).
    InvalidDpopProof,
    /// `use_dpop_nonce` (RFC 9449): the server wants its nonce in the proof.
    /// Retried once with the nonce; this is the answer to that retry.
    UseDpopNonce,
    /// `access_denied` (RFC 6749 §4.1.2.1, RFC 8628 §3.5): the person
    /// refused the authorization.
    AccessDenied,
    /// `expired_token` (RFC 8628 §3.5): the device code expired before the
    /// person approved it.
    ExpiredToken,
    /// `invalid_target` (RFC 8707, RFC 8693): the requested audience or
    /// resource is unknown or not allowed.
    InvalidTarget,
    /// Any other code, as the server sent it.
    Other(String),
}

impl OAuthErrorCode {
    /// Parses a code as sent in the `error` field.
    pub fn parse(code: &str) -> Self {
        match code {
            "invalid_request" => Self::InvalidRequest,
            "invalid_client" => Self::InvalidClient,
            "invalid_grant" => Self::InvalidGrant,
            "unauthorized_client" => Self::UnauthorizedClient,
            "unsupported_grant_type" => Self::UnsupportedGrantType,
            "invalid_scope" => Self::InvalidScope,
            "invalid_dpop_proof" => Self::InvalidDpopProof,
            "use_dpop_nonce" => Self::UseDpopNonce,
            "access_denied" => Self::AccessDenied,
            "expired_token" => Self::ExpiredToken,
            "invalid_target" => Self::InvalidTarget,
            other => Self::Other(sanitize(other, 64)),
        }
    }

    /// The code as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::InvalidDpopProof => "invalid_dpop_proof",
            Self::UseDpopNonce => "use_dpop_nonce",
            Self::AccessDenied => "access_denied",
            Self::ExpiredToken => "expired_token",
            Self::InvalidTarget => "invalid_target",
            Self::Other(code) => code,
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error from a token request, a grant's configuration or the cache.
///
/// Cloning is cheap; clones share one allocation.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    description: Option<String>,
    source: Option<BoxError>,
    transient: bool,
    next_attempt: Option<Instant>,
}

impl Error {
    fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                status: None,
                retry_after: None,
                description: None,
                source: None,
                transient: false,
                next_attempt: None,
            }),
        }
    }

    /// An error for a custom [`TokenSource`](crate::TokenSource): `error` is
    /// kept as the [`source`](std::error::Error::source), `transient` tells the
    /// cache whether to retry with backoff (`true`) or treat it as permanent.
    ///
    /// ```
    /// use tower_oauth2::{Error, ErrorKind};
    ///
    /// let error = Error::custom("metadata server unreachable", true);
    /// assert_eq!(error.kind(), &ErrorKind::Source);
    /// assert!(error.is_transient());
    /// ```
    pub fn custom(error: impl Into<BoxError>, transient: bool) -> Self {
        Self::new(ErrorKind::Source, "the token source failed").with(|i| {
            i.source = Some(error.into());
            i.transient = transient;
        })
    }

    /// An error saying the source can never succeed again without a person
    /// authorizing the application anew (a dead refresh token, say). The
    /// cache stops fetching for good after it.
    pub fn reauthorization_required(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::ReauthorizationRequired, message)
    }

    /// The same error, saying the server asked to wait `delay` before trying again.
    pub fn with_retry_after(self, delay: Duration) -> Self {
        self.with_retry_after_opt(Some(delay))
    }

    fn with(mut self, f: impl FnOnce(&mut Inner)) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => f(inner),
            // Shared already: copy what can be copied, then change the copy.
            None => {
                let old = &self.inner;
                let mut inner = Inner {
                    kind: old.kind.clone(),
                    message: old.message.clone(),
                    status: old.status,
                    retry_after: old.retry_after,
                    description: old.description.clone(),
                    source: None,
                    transient: old.transient,
                    next_attempt: old.next_attempt,
                };
                f(&mut inner);
                self.inner = Arc::new(inner);
            }
        }
        self
    }

    pub(crate) fn config(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Config, message)
    }

    pub(crate) fn invalid_response(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::InvalidResponse, message)
    }

    /// A [`TokenStore`](crate::TokenStore) error, for stores of your own;
    /// `source` (an `io::Error`, a client's error) is kept as the
    /// [`source`](std::error::Error::source). Never put a token in it.
    pub fn store(kind: StoreErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Store(kind), message)
    }

    /// The same error with `source` as its cause.
    pub fn with_source(self, source: impl Into<BoxError>) -> Self {
        self.with(|i| i.source = Some(source.into()))
    }

    pub(crate) fn discovery(
        kind: DiscoveryErrorKind,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::new(ErrorKind::Discovery(kind), message)
    }

    pub(crate) fn callback(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Callback, message)
    }

    /// A [`ErrorKind::ClientAssertion`] error; `source` is the callback's own
    /// error, never the assertion.
    pub(crate) fn client_assertion(
        message: impl Into<Cow<'static, str>>,
        source: Option<BoxError>,
        transient: bool,
    ) -> Self {
        Self::new(ErrorKind::ClientAssertion, message).with(|i| {
            i.source = source;
            i.transient = transient;
        })
    }

    pub(crate) fn token_rejected() -> Self {
        Self::new(
            ErrorKind::TokenRejected,
            "the API rejected new tokens soon after they were issued; the next token request waits",
        )
    }

    pub(crate) fn closed() -> Self {
        Self::new(
            ErrorKind::Closed,
            "the token cache's background task has stopped",
        )
    }

    pub(crate) fn timeout(after: Duration) -> Self {
        Self::new(
            ErrorKind::Timeout,
            format!("request timed out after {after:?}"),
        )
    }

    pub(crate) fn redirect(status: StatusCode) -> Self {
        Self::new(
            ErrorKind::Redirect,
            "the server answered with a redirect, which is not followed",
        )
        .with_status(status)
    }

    pub(crate) fn too_large(limit: usize) -> Self {
        Self::new(
            ErrorKind::ResponseTooLarge,
            format!("response larger than {limit} bytes"),
        )
    }

    pub(crate) fn http_status(status: StatusCode) -> Self {
        Self::new(
            ErrorKind::Status,
            "the server answered with an HTTP error and no OAuth error body",
        )
        .with_status(status)
    }

    pub(crate) fn oauth(code: OAuthErrorCode, description: Option<&str>) -> Self {
        let description = description.map(|d| sanitize(d, MAX_DESCRIPTION));
        Self::new(ErrorKind::OAuth(code), "token endpoint returned an error")
            .with(|i| i.description = description)
    }

    /// Turns `invalid_grant` into [`ErrorKind::ReauthorizationRequired`];
    /// other errors pass through.
    pub(crate) fn into_reauthorization(self) -> Self {
        if self.kind() != &ErrorKind::OAuth(OAuthErrorCode::InvalidGrant) {
            return self;
        }
        let inner = &self.inner;
        Self {
            inner: Arc::new(Inner {
                kind: ErrorKind::ReauthorizationRequired,
                message:
                    "the refresh token was rejected (invalid_grant): re-authorization required"
                        .into(),
                status: inner.status,
                retry_after: None,
                description: inner.description.clone(),
                source: None,
                transient: false,
                next_attempt: None,
            }),
        }
    }

    #[cfg(reqwest_client)]
    pub(crate) fn from_transport(err: reqwest::Error) -> Self {
        if err.is_timeout() {
            // reqwest's error names the URL, never the body or headers.
            return Self::new(ErrorKind::Timeout, "request timed out")
                .with(|i| i.source = Some(Box::new(err.without_url())));
        }
        Self::network(err.without_url())
    }

    /// The request could not be sent or its answer not read. The transport's
    /// error is kept as the source: transports name hosts, never bodies.
    pub(crate) fn network(source: impl Into<BoxError>) -> Self {
        Self::new(ErrorKind::Network, "request failed in transport")
            .with(|i| i.source = Some(source.into()))
    }

    pub(crate) fn with_status(self, status: StatusCode) -> Self {
        self.with(|i| i.status = Some(status))
    }

    pub(crate) fn with_retry_after_opt(self, retry_after: Option<Duration>) -> Self {
        self.with(|i| i.retry_after = retry_after)
    }

    pub(crate) fn with_next_attempt(self, at: Option<Instant>) -> Self {
        self.with(|i| i.next_attempt = at)
    }

    /// What kind of error this is.
    pub fn kind(&self) -> &ErrorKind {
        &self.inner.kind
    }

    /// The OAuth error code, when the server sent one.
    ///
    /// [`ErrorKind::ReauthorizationRequired`] reports `invalid_grant` here
    /// when it came from the server's `invalid_grant` answer.
    pub fn oauth_code(&self) -> Option<&OAuthErrorCode> {
        match &self.inner.kind {
            ErrorKind::OAuth(code) => Some(code),
            ErrorKind::ReauthorizationRequired if self.inner.status.is_some() => {
                Some(&OAuthErrorCode::InvalidGrant)
            }
            _ => None,
        }
    }

    /// The server's `error_description`, trimmed to a short, printable string.
    pub fn description(&self) -> Option<&str> {
        self.inner.description.as_deref()
    }

    /// The HTTP status of the token endpoint's answer, when there was one.
    pub fn status(&self) -> Option<StatusCode> {
        self.inner.status
    }

    /// How long the server asked us to wait (`Retry-After`), when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// When the [`TokenCache`](crate::TokenCache) that handed out this error
    /// will next ask the token endpoint, on Tokio's clock: a caller's own
    /// retry can sleep until then (`tokio::time::sleep_until`) instead of
    /// guessing. `None` when the cache will not try again
    /// ([`ErrorKind::ReauthorizationRequired`]) or the error did not come
    /// from a cache.
    ///
    /// The time may already have passed: the attempt is then due or under
    /// way, and [`TokenCache::token`](crate::TokenCache::token) waits for it.
    pub fn next_attempt_at(&self) -> Option<Instant> {
        self.inner.next_attempt
    }

    /// Whether the same request may succeed later without any change on the
    /// client: network failures, timeouts, 5xx, 429 and 408 answers, the
    /// OAuth codes `server_error` and `temporarily_unavailable`, and a failed
    /// `client_assertion` callback.
    ///
    /// Everything else (`invalid_client`, `invalid_grant`, `invalid_scope`,
    /// `unauthorized_client`, bad configuration, a malformed success response)
    /// is permanent: retrying it quickly would only hammer the server.
    pub fn is_transient(&self) -> bool {
        let status_transient = self.inner.status.is_some_and(|s| {
            s.is_server_error()
                || s == StatusCode::TOO_MANY_REQUESTS
                || s == StatusCode::REQUEST_TIMEOUT
        });
        match &self.inner.kind {
            ErrorKind::Network
            | ErrorKind::Timeout
            | ErrorKind::ResponseTooLarge
            | ErrorKind::TokenRejected
            | ErrorKind::Store(StoreErrorKind::Unavailable | StoreErrorKind::TimedOut) => true,
            ErrorKind::Source | ErrorKind::ClientAssertion => self.inner.transient,
            ErrorKind::Status => status_transient,
            ErrorKind::OAuth(OAuthErrorCode::Other(code)) => {
                status_transient || code == "server_error" || code == "temporarily_unavailable"
            }
            // The nonce moved on again between the retry and its answer:
            // the next attempt sends the newest.
            ErrorKind::OAuth(OAuthErrorCode::UseDpopNonce) => true,
            _ => false,
        }
    }

    /// Finds a token error in `error` or its chain of sources: useful behind
    /// layers that box errors (`tower::timeout`, `tower::buffer`), where the
    /// layer's [`BearerAuthError::Token`](crate::BearerAuthError::Token) is
    /// one link of the chain.
    ///
    /// ```
    /// use tower_oauth2::{BearerAuthError, Error};
    ///
    /// let boxed: tower::BoxError =
    ///     Box::new(BearerAuthError::<std::io::Error>::Token(Error::custom("down", true)));
    /// assert!(Error::find_in(boxed.as_ref()).is_some_and(Error::is_transient));
    /// ```
    pub fn find_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Error> {
        let mut next = Some(error);
        while let Some(error) = next {
            if let Some(found) = error.downcast_ref::<Error>() {
                return Some(found);
            }
            next = error.source();
        }
        None
    }

    /// Whether a person must authorize the application again.
    pub fn is_reauthorization_required(&self) -> bool {
        self.inner.kind == ErrorKind::ReauthorizationRequired
    }
}

/// Keeps printable ASCII (and spaces) only, bounded in length: server text
/// ends up in logs, so it must not smuggle control sequences or grow without bound.
fn sanitize(text: &str, max: usize) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(max)
        .collect()
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        f.write_str(&inner.message)?;
        if let ErrorKind::OAuth(code) = &inner.kind {
            write!(f, ": {code}")?;
        }
        if let Some(status) = inner.status {
            write!(f, " (HTTP {})", status.as_u16())?;
        }
        if let Some(description) = &inner.description {
            write!(f, ": {description}")?;
        }
        if let Some(retry_after) = inner.retry_after {
            write!(f, "; retry after {}s", retry_after.as_secs())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.inner;
        let mut d = f.debug_struct("Error");
        d.field("kind", &inner.kind)
            .field("message", &inner.message);
        if let Some(status) = inner.status {
            d.field("status", &status);
        }
        if let Some(description) = &inner.description {
            d.field("description", description);
        }
        if let Some(retry_after) = inner.retry_after {
            d.field("retry_after", &retry_after);
        }
        if let Some(next_attempt) = inner.next_attempt {
            d.field("next_attempt", &next_attempt);
        }
        if let Some(source) = &inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in [
            "invalid_request",
            "invalid_client",
            "invalid_grant",
            "unauthorized_client",
            "unsupported_grant_type",
            "invalid_scope",
            "invalid_dpop_proof",
            "use_dpop_nonce",
            "access_denied",
            "expired_token",
            "invalid_target",
            "slow_down",
        ] {
            assert_eq!(OAuthErrorCode::parse(code).as_str(), code);
        }
        assert_eq!(
            OAuthErrorCode::parse("use_dpop_nonce"),
            OAuthErrorCode::UseDpopNonce
        );
        assert_eq!(
            OAuthErrorCode::parse("invalid_dpop_proof"),
            OAuthErrorCode::InvalidDpopProof
        );
        let nonce =
            Error::oauth(OAuthErrorCode::UseDpopNonce, None).with_status(StatusCode::BAD_REQUEST);
        assert!(
            nonce.is_transient(),
            "the next attempt has the newest nonce"
        );
        let proof = Error::oauth(OAuthErrorCode::InvalidDpopProof, None)
            .with_status(StatusCode::BAD_REQUEST);
        assert!(!proof.is_transient());
    }

    #[test]
    fn classification() {
        let permanent =
            Error::oauth(OAuthErrorCode::InvalidScope, None).with_status(StatusCode::BAD_REQUEST);
        assert!(!permanent.is_transient());
        let busy = Error::http_status(StatusCode::SERVICE_UNAVAILABLE);
        assert!(busy.is_transient());
        let throttled = Error::http_status(StatusCode::TOO_MANY_REQUESTS);
        assert!(throttled.is_transient());
        let not_found = Error::http_status(StatusCode::NOT_FOUND);
        assert!(!not_found.is_transient());
        let unavailable = Error::oauth(OAuthErrorCode::parse("temporarily_unavailable"), None);
        assert!(unavailable.is_transient());
    }

    #[test]
    fn invalid_grant_becomes_reauthorization() {
        let err = Error::oauth(OAuthErrorCode::InvalidGrant, Some("revoked"))
            .with_status(StatusCode::BAD_REQUEST)
            .into_reauthorization();
        assert!(err.is_reauthorization_required());
        assert_eq!(err.oauth_code(), Some(&OAuthErrorCode::InvalidGrant));
        assert!(err.to_string().contains("re-authorization required"));
        let other = Error::oauth(OAuthErrorCode::InvalidClient, None).into_reauthorization();
        assert_eq!(
            other.kind(),
            &ErrorKind::OAuth(OAuthErrorCode::InvalidClient)
        );
    }

    #[test]
    fn description_is_sanitized_and_bounded() {
        let long = format!("bad\r\n\x1b[31m{}", "x".repeat(1000));
        let err = Error::oauth(OAuthErrorCode::InvalidRequest, Some(&long));
        let d = err.description().unwrap();
        assert!(d.len() <= MAX_DESCRIPTION);
        assert!(!d.contains('\r') && !d.contains('\n') && !d.contains('\x1b'));
    }
}
