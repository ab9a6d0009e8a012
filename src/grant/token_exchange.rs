use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};

use crate::{
    endpoint::{endpoint_settings, EndpointSettings, TokenEndpoint},
    grant::{check_scopes, scope_settings},
    Error, Token, TokenSource,
};

/// The `grant_type` of a token exchange (RFC 8693 §2.1).
pub const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// Token type identifiers of RFC 8693 §3, for `subject_token_type`,
/// `actor_token_type` and `requested_token_type`.
pub mod token_types {
    /// An OAuth 2.0 access token.
    pub const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
    /// An OAuth 2.0 refresh token.
    pub const REFRESH_TOKEN: &str = "urn:ietf:params:oauth:token-type:refresh_token";
    /// An OpenID Connect ID token.
    pub const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
    /// A JWT (a workload identity token, say).
    pub const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
    /// A base64url-encoded SAML 1.1 assertion.
    pub const SAML1: &str = "urn:ietf:params:oauth:token-type:saml1";
    /// A base64url-encoded SAML 2.0 assertion.
    pub const SAML2: &str = "urn:ietf:params:oauth:token-type:saml2";
}

/// The token exchange grant (RFC 8693): trades a token the application holds
/// (its caller's access token, a workload identity JWT) for one the next
/// service accepts. A proxy calling an upstream on behalf of each caller
/// holds one grant, and one [`TokenCache`](crate::TokenCache), per caller.
///
/// ```
/// use tower_oauth2::{secrecy::SecretString, token_types, TokenCache, TokenExchange};
///
/// # async fn example(callers_token: SecretString) -> Result<(), tower_oauth2::Error> {
/// let grant = TokenExchange::builder()
///     .token_url("https://auth.example.com/oauth2/token")
///     .client_id("gateway")
///     .client_secret("s3cret")
///     .subject_token(callers_token, token_types::ACCESS_TOKEN)
///     .audience("https://orders.example.com")
///     .scope("orders.read")
///     .build()?;
/// let cache = TokenCache::new(grant);
/// # Ok(()) }
/// ```
///
/// The grant holds one subject token. Once the server no longer accepts it
/// (it expired, it was revoked), every exchange fails with `invalid_grant`:
/// build a new grant, and cache, for the caller's new token.
///
/// The subject and actor tokens are secrets: they are never shown by
/// `Debug`, and go into the [`StoreKey`](crate::StoreKey) only as a SHA-256
/// digest, so that stored tokens of different subjects never mix.
///
/// The answer's `issued_token_type` is not checked. When
/// [`requested_token_type`](TokenExchangeBuilder::requested_token_type) names
/// something other than an access token, `token_type: N_A` is accepted: the
/// cache then holds the issued token like any other (refreshed before its
/// `expires_in` runs out, by a new exchange) and the layer sends it as
/// `Authorization: Bearer`. Read it with
/// [`TokenCache::token`](crate::TokenCache::token) if the upstream wants it
/// elsewhere.
#[derive(Clone)]
pub struct TokenExchange {
    endpoint: TokenEndpoint,
    scopes: Vec<String>,
    scope_param: Option<String>,
    params: ExchangeParams,
}

/// What a token exchange sends besides the client authentication and scope.
#[derive(Clone, Default)]
struct ExchangeParams {
    subject: Option<(SecretString, String)>,
    actor: Option<(SecretString, String)>,
    requested_token_type: Option<String>,
    audiences: Vec<String>,
    resources: Vec<String>,
    partition: Option<String>,
}

impl ExchangeParams {
    fn check(&self) -> Result<(), Error> {
        let Some((subject, subject_type)) = &self.subject else {
            return Err(Error::config("token exchange needs a subject_token"));
        };
        if subject.expose_secret().is_empty() || subject_type.is_empty() {
            return Err(Error::config(
                "subject_token and subject_token_type must not be empty",
            ));
        }
        if let Some((actor, actor_type)) = &self.actor {
            if actor.expose_secret().is_empty() || actor_type.is_empty() {
                return Err(Error::config(
                    "actor_token and actor_token_type must not be empty",
                ));
            }
        }
        Ok(())
    }

    /// Whether the answer may say `token_type: N_A`.
    fn not_access_token(&self) -> bool {
        self.requested_token_type
            .as_deref()
            .is_some_and(|t| t != token_types::ACCESS_TOKEN)
    }
}

/// A digest naming a token in a store key: the token itself is a secret.
fn token_digest(token_type: &str, token: &SecretString) -> String {
    let mut hash = Sha256::new();
    hash.update(token_type.as_bytes());
    hash.update([0]);
    hash.update(token.expose_secret().as_bytes());
    hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl std::fmt::Debug for TokenExchange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchange")
            .field("endpoint", &self.endpoint)
            .field("scopes", &self.scopes)
            .field(
                "subject_token_type",
                &self.params.subject.as_ref().map(|(_, t)| t),
            )
            .field(
                "actor_token_type",
                &self.params.actor.as_ref().map(|(_, t)| t),
            )
            .field("requested_token_type", &self.params.requested_token_type)
            .field("audiences", &self.params.audiences)
            .field("resources", &self.params.resources)
            .finish_non_exhaustive()
    }
}

/// The target settings the grant and its builder share (both hold
/// `params: ExchangeParams`).
macro_rules! exchange_targets {
    () => {
        /// Adds an `audience` (the logical name of the target service); may
        /// be called several times.
        pub fn audience(mut self, audience: impl Into<String>) -> Self {
            self.params.audiences.push(audience.into());
            self
        }

        /// Adds a `resource` (the URI of the target service, RFC 8707); may
        /// be called several times.
        pub fn resource(mut self, resource: impl Into<String>) -> Self {
            self.params.resources.push(resource.into());
            self
        }

        /// Keeps this grant's stored state apart from that of other grants
        /// with the same subject. It goes into the
        /// [`StoreKey`](crate::StoreKey) only as part of a digest.
        pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
            self.params.partition = Some(partition.into());
            self
        }
    };
}

impl TokenExchange {
    /// Starts configuring the grant.
    pub fn builder() -> TokenExchangeBuilder {
        TokenExchangeBuilder::default()
    }

    pub(crate) fn new(
        endpoint: TokenEndpoint,
        scopes: Vec<String>,
        subject_token: SecretString,
        subject_token_type: String,
    ) -> Self {
        let params = ExchangeParams {
            subject: Some((subject_token, subject_token_type)),
            ..ExchangeParams::default()
        };
        Self::with(endpoint, scopes, params)
    }

    fn with(mut endpoint: TokenEndpoint, scopes: Vec<String>, params: ExchangeParams) -> Self {
        endpoint.accept_not_applicable(params.not_access_token());
        let scope_param = (!scopes.is_empty()).then(|| scopes.join(" "));
        TokenExchange {
            endpoint,
            scopes,
            scope_param,
            params,
        }
    }

    /// Sends an `actor_token` (the party acting on the subject's behalf) of
    /// type `token_type`, for delegation (RFC 8693 §1.1).
    pub fn actor_token(mut self, token: SecretString, token_type: impl Into<String>) -> Self {
        self.params.actor = Some((token, token_type.into()));
        self
    }

    /// The `requested_token_type`; the server chooses when unset. Anything
    /// but an access token allows a `token_type: N_A` answer.
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.params.requested_token_type = Some(token_type.into());
        self.endpoint
            .accept_not_applicable(self.params.not_access_token());
        self
    }

    exchange_targets!();

    /// Requests a token.
    pub async fn request_token(&self) -> Result<Token, Error> {
        self.params.check()?;
        let mut params = vec![("grant_type", TOKEN_EXCHANGE)];
        if let Some((token, token_type)) = &self.params.subject {
            params.push(("subject_token", token.expose_secret()));
            params.push(("subject_token_type", token_type));
        }
        if let Some((token, token_type)) = &self.params.actor {
            params.push(("actor_token", token.expose_secret()));
            params.push(("actor_token_type", token_type));
        }
        if let Some(requested) = &self.params.requested_token_type {
            params.push(("requested_token_type", requested));
        }
        for audience in &self.params.audiences {
            params.push(("audience", audience));
        }
        for resource in &self.params.resources {
            params.push(("resource", resource));
        }
        if let Some(scope) = &self.scope_param {
            params.push(("scope", scope));
        }
        self.endpoint.exchange(&params, &self.scopes).await
    }
}

impl TokenSource for TokenExchange {
    async fn fetch(&mut self) -> Result<Token, Error> {
        self.request_token().await
    }

    /// Flow `token_exchange`, with the audiences and resources, the
    /// requested token type, and the subject and actor tokens as SHA-256
    /// digests (in the key's own digest).
    fn store_key(&self) -> Option<crate::StoreKey> {
        let mut key = self.endpoint.store_key("token_exchange", &self.scopes);
        for audience in &self.params.audiences {
            key = key.param("audience", audience);
        }
        for resource in &self.params.resources {
            key = key.resource(resource);
        }
        if let Some(requested) = &self.params.requested_token_type {
            key = key.param("requested_token_type", requested);
        }
        if let Some((token, token_type)) = &self.params.subject {
            key = key.param("subject_token", token_digest(token_type, token));
        }
        if let Some((token, token_type)) = &self.params.actor {
            key = key.param("actor_token", token_digest(token_type, token));
        }
        if let Some(partition) = &self.params.partition {
            key = key.partition(partition);
        }
        Some(key.build())
    }

    async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        self.endpoint.revoke_access_token(access_token).await
    }
}

/// Builds a [`TokenExchange`] grant. Made by [`TokenExchange::builder`].
#[derive(Default)]
pub struct TokenExchangeBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    params: ExchangeParams,
}

impl std::fmt::Debug for TokenExchangeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenExchangeBuilder")
            .field("token_url", &self.endpoint.token_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl TokenExchangeBuilder {
    endpoint_settings!();
    scope_settings!();

    /// The `subject_token` (required): the token the new one is issued
    /// for, of type `token_type` (one of [`token_types`], or any URI the
    /// server knows).
    pub fn subject_token(
        mut self,
        token: impl Into<SecretString>,
        token_type: impl Into<String>,
    ) -> Self {
        self.params.subject = Some((token.into(), token_type.into()));
        self
    }

    /// Sends an `actor_token` (the party acting on the subject's behalf) of
    /// type `token_type`, for delegation (RFC 8693 §1.1).
    pub fn actor_token(
        mut self,
        token: impl Into<SecretString>,
        token_type: impl Into<String>,
    ) -> Self {
        self.params.actor = Some((token.into(), token_type.into()));
        self
    }

    /// The `requested_token_type`; the server chooses when unset. Anything
    /// but an access token allows a `token_type: N_A` answer.
    pub fn requested_token_type(mut self, token_type: impl Into<String>) -> Self {
        self.params.requested_token_type = Some(token_type.into());
        self
    }

    exchange_targets!();

    /// Checks the settings and builds the grant.
    pub fn build(self) -> Result<TokenExchange, Error> {
        check_scopes(&self.scopes)?;
        self.params.check()?;
        let endpoint = self.endpoint.build()?;
        Ok(TokenExchange::with(endpoint, self.scopes, self.params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(subject: &str) -> TokenExchange {
        TokenExchange::builder()
            .token_url("https://auth.example.com/token")
            .client_id("gateway")
            .client_secret("gateway-secret")
            .subject_token(subject.to_owned(), token_types::ACCESS_TOKEN)
            .audience("orders")
            .build()
            .unwrap()
    }

    #[test]
    fn store_keys_differ_per_subject_and_hold_no_token() {
        let alice = grant("alice-token").store_key().unwrap();
        let bob = grant("bob-token").store_key().unwrap();
        assert_ne!(alice, bob);
        assert_eq!(alice, grant("alice-token").store_key().unwrap());
        for key in [&alice, &bob] {
            let text = format!("{key} {key:?} {}", key.credential());
            assert!(!text.contains("alice-token") && !text.contains("bob-token"));
            assert!(text.starts_with("token_exchange:gateway@"), "{text}");
        }
        let with_actor = grant("alice-token")
            .actor_token("actor".to_owned().into(), token_types::JWT)
            .store_key()
            .unwrap();
        assert_ne!(alice, with_actor);
    }

    #[test]
    fn debug_shows_no_token() {
        let grant = grant("alice-token").actor_token("actor-secret".to_owned().into(), "t");
        let text = format!("{grant:?}");
        assert!(!text.contains("alice-token") && !text.contains("actor-secret"));
        assert!(text.contains("orders"));
    }

    #[test]
    fn subject_is_required() {
        let builder = || {
            TokenExchange::builder()
                .token_url("https://auth.example.com/token")
                .client_id("gateway")
        };
        assert_eq!(
            builder().build().unwrap_err().kind(),
            &crate::ErrorKind::Config
        );
        let empty = builder().subject_token(String::new(), token_types::JWT);
        assert_eq!(empty.build().unwrap_err().kind(), &crate::ErrorKind::Config);
    }
}
