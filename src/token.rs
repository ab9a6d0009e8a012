//! Access tokens.

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::{
    clock::{self, Instant},
    Error,
};

/// Tokens live at most this long, whatever a server says: it keeps instant
/// arithmetic far from overflow for absurd `expires_in` values.
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// An access token, with the `Authorization` header value built once.
///
/// Cloning is cheap (an `Arc` inside). `Debug` never shows the token.
/// Two clones of one token are the *same* token for [`TokenCache::invalidate`];
/// a token fetched later is a different one even when the server returned
/// the same string.
///
/// [`TokenCache::invalidate`]: crate::TokenCache::invalidate
#[derive(Clone)]
pub struct Token {
    inner: Arc<Inner>,
}

#[derive(Clone)]
struct Inner {
    id: u64,
    access_token: SecretString,
    header: HeaderValue,
    refresh_token: Option<SecretString>,
    scopes: Vec<String>,
    expires_in: Option<Duration>,
    issued_at: Instant,
    /// `token_type` `DPoP` (RFC 9449 §5): the header says `DPoP`, and every
    /// request needs a proof.
    dpop_type: bool,
    /// The key a DPoP token is bound to, and its `ath`.
    #[cfg(dpop)]
    dpop: Option<Arc<crate::dpop::Binding>>,
    /// The thumbprint of the client certificate the token request presented.
    x5t_s256: Option<Arc<str>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Set in the id of a DPoP token: the layer tells such a token from a
/// bearer one by the id it already holds, without reading anything more.
pub(crate) const DPOP_ID: u64 = 1 << 63;

/// Whether `id` is a DPoP token's.
#[cfg(dpop)]
#[inline]
pub(crate) fn is_dpop_id(id: u64) -> bool {
    id & DPOP_ID != 0
}

impl Token {
    /// Starts building a bearer token from its access token string.
    ///
    /// For custom [`TokenSource`](crate::TokenSource)s; the grants build their
    /// tokens themselves.
    pub fn builder(access_token: impl Into<String>) -> TokenBuilder {
        TokenBuilder {
            access_token: access_token.into(),
            refresh_token: None,
            scopes: Vec::new(),
            expires_in: None,
            issued_at: None,
            dpop_type: false,
        }
    }

    /// The access token. Call `expose_secret()` on it to read the string.
    pub fn access_token(&self) -> &SecretString {
        &self.inner.access_token
    }

    /// The refresh token that goes with this access token, if any: the one the
    /// server just issued, or the one kept from before when it issued none.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.inner.refresh_token.as_ref()
    }

    /// The scopes granted: as the server reported them, or as requested when
    /// it did not say.
    pub fn scopes(&self) -> &[String] {
        &self.inner.scopes
    }

    /// The lifetime the server announced (`expires_in`), if it announced one.
    pub fn expires_in(&self) -> Option<Duration> {
        self.inner.expires_in
    }

    /// When the token request was sent; the lifetime counts from here.
    pub fn issued_at(&self) -> Instant {
        self.inner.issued_at
    }

    /// When the token expires, if the server said.
    pub fn expires_at(&self) -> Option<Instant> {
        self.inner.expires_in.map(|d| self.inner.issued_at + d)
    }

    /// The `Authorization` header value, marked sensitive: `Bearer <token>`,
    /// or `DPoP <token>` for a DPoP-bound token (which also needs a proof
    /// per request: [`BearerAuth`](crate::BearerAuth) adds it).
    pub fn header_value(&self) -> &HeaderValue {
        &self.inner.header
    }

    /// The `token_type` the server answered: `Bearer`, or `DPoP` for a
    /// token bound to the client's key (RFC 9449).
    pub fn token_type(&self) -> &'static str {
        if self.inner.dpop_type {
            "DPoP"
        } else {
            "Bearer"
        }
    }

    /// The thumbprint of the key this token is bound to, for a DPoP token.
    #[cfg(dpop)]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn dpop_jkt(&self) -> Option<&str> {
        self.inner.dpop.as_ref().map(|b| b.key.thumbprint())
    }

    /// The key binding of a DPoP token.
    #[cfg(dpop)]
    pub(crate) fn dpop(&self) -> Option<&Arc<crate::dpop::Binding>> {
        self.inner.dpop.as_ref()
    }

    /// The same token bound to `key`, when it is a DPoP token (its `ath`
    /// is computed here, once).
    #[cfg(dpop)]
    pub(crate) fn bind_dpop(self, key: &crate::DpopKey) -> Token {
        if !self.inner.dpop_type {
            return self;
        }
        let binding = crate::dpop::Binding::new(key.clone(), expose(&self.inner.access_token));
        self.with(|inner| inner.dpop = Some(Arc::new(binding)))
    }

    /// The SHA-256 thumbprint (`x5t#S256`, base64url) of the client
    /// certificate the token request presented (RFC 8705 §3): the
    /// certificate a certificate-bound token is bound to, which every
    /// request carrying the token must present too. `Some` for tokens of a
    /// grant given a `client_certificate`, `None` otherwise.
    ///
    /// It says which certificate was presented, not that the server bound
    /// the token: a token response does not say (RFC 8705 §3.1), a server
    /// binds when it supports it and the client is registered with
    /// `tls_client_certificate_bound_access_tokens`. The server's own word
    /// is the token's `cnf` claim (`x5t#S256`): in a JWT access token, or
    /// in the token introspection answer (RFC 8705 §3.2). With a
    /// `transport` of your own it is the certificate the builder was given,
    /// which that transport must be the one to present. A token restored
    /// from a [`TokenStore`](crate::TokenStore) keeps it.
    pub fn x5t_s256(&self) -> Option<&str> {
        self.inner.x5t_s256.as_deref()
    }

    /// Whether `self` and `other` are clones of one fetched token.
    pub fn same_as(&self, other: &Token) -> bool {
        self.inner.id == other.inner.id
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// The same token with the refresh token set to `refresh_token`.
    pub(crate) fn with_refresh_token(self, refresh_token: Option<SecretString>) -> Token {
        self.with(|inner| inner.refresh_token = refresh_token)
    }

    /// The same token, obtained over a connection that presented the
    /// client certificate with thumbprint `x5t_s256`.
    pub(crate) fn bind_certificate(self, x5t_s256: Arc<str>) -> Token {
        self.with(|inner| inner.x5t_s256 = Some(x5t_s256))
    }

    /// The same token (same id) with `change` made: copied only if another
    /// handle shares it.
    fn with(self, change: impl FnOnce(&mut Inner)) -> Token {
        let mut inner = Arc::unwrap_or_clone(self.inner);
        change(&mut inner);
        Token {
            inner: Arc::new(inner),
        }
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"[REDACTED]")
            .field(
                "refresh_token",
                &self.inner.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("token_type", &self.token_type())
            .field("scopes", &self.inner.scopes)
            .field("expires_in", &self.inner.expires_in)
            .finish()
    }
}

/// Builds a [`Token`]. Made by [`Token::builder`].
#[derive(Debug)]
pub struct TokenBuilder {
    access_token: String,
    refresh_token: Option<SecretString>,
    scopes: Vec<String>,
    expires_in: Option<Duration>,
    issued_at: Option<Instant>,
    dpop_type: bool,
}

impl TokenBuilder {
    /// A `token_type: DPoP` answer.
    pub(crate) fn dpop_type(mut self) -> Self {
        self.dpop_type = true;
        self
    }

    /// The announced lifetime. Values beyond ten years are capped to ten years.
    pub fn expires_in(mut self, lifetime: Duration) -> Self {
        self.expires_in = Some(lifetime.min(MAX_LIFETIME));
        self
    }

    /// The refresh token that came with the access token.
    pub fn refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(SecretString::from(refresh_token.into()));
        self
    }

    /// The granted scopes.
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.scopes = scopes.into_iter().map(Into::into).collect();
        self
    }

    /// When the token request was sent (defaults to now).
    pub fn issued_at(mut self, issued_at: Instant) -> Self {
        self.issued_at = Some(issued_at);
        self
    }

    /// Builds the token.
    ///
    /// Fails when the access token is empty or holds characters that cannot
    /// appear in an HTTP header (controls, spaces, non-ASCII).
    pub fn build(self) -> Result<Token, Error> {
        let access = self.access_token;
        if access.is_empty() {
            return Err(Error::invalid_response("access_token is empty"));
        }
        // RFC 6750 b64token is a subset of visible ASCII; anything else would
        // either be refused by `HeaderValue` or split the header.
        if !access.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid_response(
                "access_token contains characters not allowed in a header",
            ));
        }
        let scheme = if self.dpop_type { "DPoP" } else { "Bearer" };
        // One spare byte of capacity: `Bytes` then takes the buffer as a
        // shared one at once, and every request's clone of the header is a
        // plain reference count (an exact-size buffer is "promotable", and
        // each clone checks for that first).
        let mut value = Vec::with_capacity(scheme.len() + 1 + access.len() + 1);
        value.extend_from_slice(scheme.as_bytes());
        value.push(b' ');
        value.extend_from_slice(access.as_bytes());
        let mut header = HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
            .map_err(|_| Error::invalid_response("access_token is not a valid header value"))?;
        header.set_sensitive(true);
        Ok(Token {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed)
                    | if self.dpop_type { DPOP_ID } else { 0 },
                access_token: SecretString::from(access),
                header,
                refresh_token: self.refresh_token,
                scopes: self.scopes,
                expires_in: self.expires_in,
                issued_at: self.issued_at.unwrap_or_else(clock::now),
                dpop_type: self.dpop_type,
                #[cfg(dpop)]
                dpop: None,
                x5t_s256: None,
            }),
        })
    }
}

/// Exposes a secret for building a request; kept in one place so the places
/// that touch raw secrets are easy to audit.
pub(crate) fn expose(secret: &SecretString) -> &str {
    secret.expose_secret()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn header_is_sensitive_bearer() {
        let token = Token::builder("abc.DEF-123").build().unwrap();
        assert_eq!(token.header_value(), "Bearer abc.DEF-123");
        assert!(token.header_value().is_sensitive());
    }

    #[tokio::test]
    async fn rejects_unusable_access_tokens() {
        for bad in ["", "a b", "a\r\nX-Evil: 1", "é", "tab\there", "nul\0"] {
            let err = Token::builder(bad).build().unwrap_err();
            assert_eq!(err.kind(), &crate::ErrorKind::InvalidResponse, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn debug_redacts() {
        let token = Token::builder("SENTINEL-ACCESS")
            .refresh_token("SENTINEL-REFRESH")
            .build()
            .unwrap();
        let shown = format!("{token:?}");
        assert!(!shown.contains("SENTINEL"), "{shown}");
    }

    #[tokio::test]
    async fn identity_survives_clone_not_refetch() {
        let a = Token::builder("same").build().unwrap();
        let b = Token::builder("same").build().unwrap();
        assert!(a.same_as(&a.clone()));
        assert!(!a.same_as(&b));
    }

    #[tokio::test]
    async fn huge_lifetimes_are_capped() {
        let token = Token::builder("t")
            .expires_in(Duration::from_secs(u64::MAX))
            .build()
            .unwrap();
        assert_eq!(token.expires_in(), Some(MAX_LIFETIME));
        assert!(token.expires_at().is_some());
    }
}
