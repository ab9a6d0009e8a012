//! Grants: the ways to obtain a token, each a [`TokenSource`].
//!
//! - [`ClientCredentials`] (RFC 6749 §4.4): a service acting as itself.
//! - [`RefreshToken`] (RFC 6749 §6): exchanges a refresh token, keeping the
//!   newest one when the server rotates it.
//! - [`AuthorizationCode`] (RFC 6749 §4.1.3): exchanges a code once, then
//!   carries on as a [`RefreshToken`] source.
//! - [`TokenExchange`] (RFC 8693): trades a caller's or a workload's token
//!   for one the next service accepts.
//! - [`JwtBearer`] (RFC 7523 §2.1): a signed JWT as the grant.
//! - [`DeviceAuthorization`] (RFC 8628): a person approves on another
//!   device; then carries on as a [`RefreshToken`] source.

mod authorization_code;
mod authorize;
mod client;
mod client_credentials;
pub mod device;
mod jwt_bearer;
mod refresh_token;
mod token_exchange;

use std::future::Future;

use secrecy::SecretString;

pub use authorization_code::{AuthorizationCode, AuthorizationCodeBuilder};
pub use authorize::{AuthorizationRequest, AuthorizationRequestBuilder};
pub use client::{OAuthClient, OAuthClientBuilder};
pub use client_credentials::{ClientCredentials, ClientCredentialsBuilder};
pub use device::{DeviceAuthorization, DeviceAuthorizationBuilder, DeviceCode, DeviceGrant};
pub use jwt_bearer::{JwtBearer, JwtBearerBuilder, JWT_BEARER};
pub use refresh_token::{RefreshToken, RefreshTokenBuilder};
pub use token_exchange::{token_types, TokenExchange, TokenExchangeBuilder, TOKEN_EXCHANGE};

use crate::{Error, StoreKey, Token};

/// Something that can fetch a fresh access token.
///
/// The grants implement it; implement it yourself for any other source (a
/// sidecar, a cloud metadata server, a grant this crate does not ship).
/// [`TokenCache`](crate::TokenCache) owns its source and calls `fetch` from
/// one background task, one call at a time, so `&mut self` is safe for state
/// such as a rotating refresh token. The cache never drops a `fetch` future
/// early because a request gave up waiting.
///
/// ```
/// use tower_oauth2::{Error, Token, TokenSource};
///
/// struct Fixed(&'static str);
///
/// impl TokenSource for Fixed {
///     async fn fetch(&mut self) -> Result<Token, Error> {
///         Token::builder(self.0)
///             .expires_in(std::time::Duration::from_secs(60))
///             .build()
///     }
/// }
/// ```
pub trait TokenSource: Send + 'static {
    /// Fetches a new token.
    fn fetch(&mut self) -> impl Future<Output = Result<Token, Error>> + Send;

    /// The name of this credential in a [`TokenStore`](crate::TokenStore):
    /// everything that decides which token `fetch` gets (build it with
    /// [`StoreKey::builder`]). The grants name theirs. With `None` (the
    /// default), a cache with a store needs
    /// [`CacheBuilder::store_key`](crate::CacheBuilder::store_key), or
    /// answers every request with an
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) error.
    fn store_key(&self) -> Option<StoreKey> {
        None
    }

    /// The refresh token the next fetch would send, if the source has one.
    /// After every fetch, failed ones included, the cache saves it to its
    /// store when it changed: a refused answer may still have rotated it.
    fn refresh_token(&self) -> Option<&SecretString> {
        None
    }

    /// Continues from `refresh_token`, loaded from a store: it is newer than
    /// the one the source was built with. The default ignores it.
    fn resume(&mut self, refresh_token: SecretString) {
        let _ = refresh_token;
    }

    /// Names the authorization this source's refresh tokens descend from
    /// (for [`AuthorizationCode`], a digest of its code), saved with the
    /// state. A stored state of another origin is older than the
    /// authorization this source was given: its refresh token is not
    /// resumed, and the source's own is used. `None` (the default): the
    /// stored refresh token is always resumed.
    fn origin(&self) -> Option<String> {
        None
    }

    /// Whether this source has nothing to ask the server with (no code, no
    /// refresh token): a person must authorize first. See
    /// [`TokenCache::authorization_required`](crate::TokenCache::authorization_required).
    fn needs_authorization(&self) -> bool {
        false
    }

    /// Gives the grant back to the server (RFC 7009), for
    /// [`TokenCache::shutdown_and_revoke`](crate::TokenCache::shutdown_and_revoke):
    /// the refresh token when the source holds one (the server should then
    /// end the access tokens issued with it too), else `access_token`, the
    /// token the cache hands out. The source holds no refresh token after it
    /// succeeded. The default revokes nothing; the grants revoke at their
    /// endpoint's `revocation_url` (or the discovered one).
    fn revoke(
        &mut self,
        access_token: Option<&Token>,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = access_token;
        async { Ok(()) }
    }
}

/// Scopes as RFC 6749 §3.3 defines them: split on any whitespace, each
/// non-empty and made of printable ASCII other than `"` and `\`.
pub(crate) fn push_scopes(into: &mut Vec<String>, raw: &str) {
    into.extend(raw.split_whitespace().map(str::to_owned));
}

pub(crate) fn check_scopes(scopes: &[String]) -> Result<(), Error> {
    let valid = |c: char| c.is_ascii_graphic() && c != '"' && c != '\\';
    match scopes.iter().find(|s| !s.chars().all(valid)) {
        Some(_) => Err(Error::config(
            "a scope may only contain printable ASCII other than '\"' and '\\'",
        )),
        None => Ok(()),
    }
}

/// Writes the scope setters every grant builder shares. Each builder using
/// it has a field `scopes: Vec<String>`.
macro_rules! scope_settings {
    () => {
        /// Adds scopes from a space-separated string. Splits on any run of
        /// whitespace, so `" officernd.api.write"` is one scope.
        pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
            crate::grant::push_scopes(&mut self.scopes, scope.as_ref());
            self
        }

        /// Adds each scope in turn (each may itself hold several, space-separated).
        pub fn scopes<I, T>(mut self, scopes: I) -> Self
        where
            I: IntoIterator<Item = T>,
            T: AsRef<str>,
        {
            for scope in scopes {
                crate::grant::push_scopes(&mut self.scopes, scope.as_ref());
            }
            self
        }
    };
}
pub(crate) use scope_settings;

/// Writes the refresh settings both refresh-token grants share. Each builder
/// using it has fields `param_name: Option<String>` and
/// `on_rotate: Option<RotationHook>`.
macro_rules! rotation_settings {
    () => {
        /// The name of the form parameter that carries the refresh token:
        /// `refresh_token` (RFC 6749) by default, `code` for Orange Logic.
        pub fn refresh_token_param(mut self, name: impl Into<String>) -> Self {
            self.param_name = Some(name.into());
            self
        }

        /// Calls `hook` with each new refresh token the server issues, right
        /// after it replaces the old one. A [`TokenStore`](crate::TokenStore)
        /// on the cache is the sturdier way to keep it: its saves are async,
        /// can fail and are retried, and happen before the new token is used.
        pub fn on_refresh_token(
            mut self,
            hook: impl Fn(&secrecy::SecretString) + Send + Sync + 'static,
        ) -> Self {
            self.on_rotate = Some(std::sync::Arc::new(hook));
            self
        }
    };
}
pub(crate) use rotation_settings;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_split_on_any_whitespace() {
        let mut scopes = Vec::new();
        push_scopes(&mut scopes, " officernd.api.write\tofficernd.api.read  ");
        assert_eq!(scopes, ["officernd.api.write", "officernd.api.read"]);
    }

    #[test]
    fn scope_characters() {
        assert!(check_scopes(&["a&b=c#d+e".into(), "https://x/.default".into()]).is_ok());
        assert!(check_scopes(&["quo\"te".into()]).is_err());
        assert!(check_scopes(&["é".into()]).is_err());
    }
}
