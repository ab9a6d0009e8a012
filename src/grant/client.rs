//! One client's configuration, shared by every grant it makes.

use std::fmt;

use secrecy::SecretString;

use crate::{
    endpoint::{endpoint_settings, EndpointSettings},
    grant::{
        authorization_code::CodeExchange, refresh_token::Rotation, rotation_settings,
        scope_settings, AuthorizationRequest, AuthorizationRequestBuilder,
    },
    AuthorizationCode, ClientCredentials, DeviceAuthorization, Error, RefreshToken, TokenExchange,
};

/// An OAuth client, configured once: the token endpoint, the client
/// authentication, the scopes and the refresh settings. The grants it makes
/// share all of it, so the code exchange of the first start and the
/// refreshes of every later one cannot drift apart.
///
/// ```no_run
/// # async fn run(callback_url: &str) -> Result<(), tower_oauth2::Error> {
/// use tower_oauth2::{FileStore, OAuthClient, TokenCache};
///
/// let client = OAuthClient::builder()
///     .token_url("https://example.orangelogic.com/oauth2/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .refresh_token_param("code")
///     .build()?;
/// let store = FileStore::new("orange-logic.json");
///
/// // Once, with a person: the authorization request, then the code.
/// let request = client
///     .authorization_request("https://example.orangelogic.com/oauth2/authorize")
///     .redirect_uri("http://127.0.0.1:8123/callback")
///     .build()?;
/// println!("open {}", request.url());
/// let code = request.callback(callback_url)?;
/// let cache = TokenCache::builder(client.authorization_code(&request, code))
///     .store(store.clone())
///     .build();
/// cache.token().await?;
/// cache.shutdown().await?;
///
/// // Every start after that: the refresh token comes from the store.
/// let cache = TokenCache::builder(client.refresh_token(None)).store(store).build();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct OAuthClient {
    template: Rotation,
}

impl fmt::Debug for OAuthClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClient")
            .field("endpoint", &self.template.endpoint)
            .finish_non_exhaustive()
    }
}

impl OAuthClient {
    /// Starts configuring a client.
    pub fn builder() -> OAuthClientBuilder {
        OAuthClientBuilder::default()
    }

    /// An authorization request of this client to `authorization_url`, with
    /// its client id and scopes filled in.
    pub fn authorization_request(
        &self,
        authorization_url: impl Into<String>,
    ) -> AuthorizationRequestBuilder {
        let template = &self.template;
        let mut request = AuthorizationRequest::builder(authorization_url)
            .client_id(template.endpoint.client_id());
        request.par = Some(template.endpoint.clone());
        match template.scopes.is_empty() {
            true => request,
            false => request.scope(template.scopes.join(" ")),
        }
    }

    /// The grant that exchanges `code`, the answer to `request`, then
    /// refreshes.
    pub fn authorization_code(
        &self,
        request: &AuthorizationRequest,
        code: SecretString,
    ) -> AuthorizationCode {
        AuthorizationCode {
            origin: super::authorization_code::origin_of(&code),
            exchange: Some(CodeExchange {
                code,
                redirect_uri: request.redirect_uri().map(str::to_owned),
                code_verifier: Some(request.code_verifier().clone()),
            }),
            rotation: self.template.clone(),
        }
    }

    /// The grant that refreshes `refresh_token`, or, with `None`, the one a
    /// [`TokenStore`](crate::TokenStore) holds.
    pub fn refresh_token(&self, refresh_token: Option<SecretString>) -> RefreshToken {
        let mut rotation = self.template.clone();
        rotation.refresh_token = refresh_token;
        RefreshToken { rotation }
    }

    /// Gives `token` back to the server's revocation endpoint (RFC 7009),
    /// with this client's authentication: on logout, or when an installation
    /// is removed. See [`TokenEndpoint::revoke`](crate::TokenEndpoint::revoke);
    /// a token the server does not know counts as revoked.
    ///
    /// ```no_run
    /// # async fn run(client: tower_oauth2::OAuthClient, refresh_token: secrecy::SecretString) -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::TokenTypeHint;
    /// client.revoke(&refresh_token, Some(TokenTypeHint::RefreshToken)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke(
        &self,
        token: &SecretString,
        hint: Option<crate::TokenTypeHint>,
    ) -> Result<(), Error> {
        self.template.endpoint.revoke(token, hint).await
    }

    /// The device authorization grant (RFC 8628) of this client, with its
    /// scopes and refresh settings: its result refreshes like
    /// [`refresh_token`](Self::refresh_token), under the same store key.
    /// [`start`](DeviceAuthorization::start) needs a device authorization
    /// endpoint (`device_authorization_url`, or the metadata's).
    pub fn device_authorization(&self) -> DeviceAuthorization {
        DeviceAuthorization::new(self.template.clone())
    }

    /// The client credentials grant of this client, with its scopes.
    pub fn client_credentials(&self) -> ClientCredentials {
        ClientCredentials::new(self.template.endpoint.clone(), self.template.scopes.clone())
    }

    /// A token exchange (RFC 8693) of this client, with its scopes, for
    /// `subject_token` of type `subject_token_type` (see
    /// [`token_types`](crate::token_types)): one per caller in a proxy.
    /// Add the audience and the rest with the grant's own methods
    /// ([`TokenExchange::audience`], ...).
    pub fn token_exchange(
        &self,
        subject_token: SecretString,
        subject_token_type: impl Into<String>,
    ) -> TokenExchange {
        TokenExchange::new(
            self.template.endpoint.clone(),
            self.template.scopes.clone(),
            subject_token,
            subject_token_type.into(),
        )
    }
}

/// Builds an [`OAuthClient`]. Made by [`OAuthClient::builder`].
#[derive(Default)]
pub struct OAuthClientBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    param_name: Option<String>,
    on_rotate: Option<super::refresh_token::RotationHook>,
}

impl fmt::Debug for OAuthClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthClientBuilder")
            .field("token_url", &self.endpoint.token_url)
            .finish_non_exhaustive()
    }
}

impl OAuthClientBuilder {
    endpoint_settings!();
    scope_settings!();
    rotation_settings!();

    /// Checks the settings and builds the client.
    pub fn build(self) -> Result<OAuthClient, Error> {
        Ok(OAuthClient {
            template: Rotation::new(
                self.endpoint,
                self.scopes,
                None,
                self.param_name,
                self.on_rotate,
            )?,
        })
    }
}
