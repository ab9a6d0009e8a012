use std::{fmt, sync::Arc};

use secrecy::SecretString;

use crate::{
    endpoint::{endpoint_settings, EndpointSettings, TokenEndpoint},
    grant::{check_scopes, rotation_settings, scope_settings},
    token::expose,
    Error, Token, TokenSource,
};

/// Called with every refresh token the server issues; see
/// [`RefreshTokenBuilder::on_refresh_token`].
pub(crate) type RotationHook = Arc<dyn Fn(&SecretString) + Send + Sync>;

/// The refresh token grant (RFC 6749 §6).
///
/// Each refresh sends the newest refresh token. When the server rotates it
/// (a new `refresh_token` in the answer), the new one replaces the old one
/// before the token is returned, and the old one is never sent again: servers
/// that detect reuse revoke the whole family. When the answer carries no
/// refresh token, the old one stays in use. `invalid_grant` becomes
/// [`ErrorKind::ReauthorizationRequired`](crate::ErrorKind::ReauthorizationRequired).
///
/// Orange Logic's documented refresh request names the parameter `code`:
///
/// ```
/// use tower_oauth2::RefreshToken;
///
/// let grant = RefreshToken::builder()
///     .token_url("https://example.orangelogic.com/oauth2/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .refresh_token("stored-refresh-token")
///     .refresh_token_param("code")
///     .on_refresh_token(|new| {
///         // Persist `new` (it is a `secrecy::SecretString`) before it is needed again.
///         let _ = new;
///     })
///     .build()?;
/// # Ok::<(), tower_oauth2::Error>(())
/// ```
pub struct RefreshToken {
    pub(crate) rotation: Rotation,
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("endpoint", &self.rotation.endpoint)
            .field("refresh_token", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl RefreshToken {
    /// Starts configuring the grant.
    pub fn builder() -> RefreshTokenBuilder {
        RefreshTokenBuilder::default()
    }

    /// Exchanges the current refresh token for a new access token.
    pub async fn refresh(&mut self) -> Result<Token, Error> {
        self.rotation.refresh().await
    }

    /// The refresh token the next refresh will send.
    pub fn current_refresh_token(&self) -> Option<&SecretString> {
        self.rotation.refresh_token.as_ref()
    }

    /// Keeps this grant's stored state apart from that of other grants of
    /// the same client: one partition per end user (`"user-42"`), say, so
    /// their refresh tokens do not overwrite each other in a shared
    /// [`TokenStore`](crate::TokenStore). It goes into the
    /// [`StoreKey`](crate::StoreKey) only as part of a digest.
    ///
    /// For the grants of an [`OAuthClient`](crate::OAuthClient):
    /// `client.refresh_token(None).store_partition("user-42")`.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.rotation.partition = Some(partition.into());
        self
    }
}

impl TokenSource for RefreshToken {
    async fn fetch(&mut self) -> Result<Token, Error> {
        self.refresh().await
    }

    fn store_key(&self) -> Option<crate::StoreKey> {
        Some(self.rotation.store_key())
    }

    fn refresh_token(&self) -> Option<&SecretString> {
        self.rotation.refresh_token.as_ref()
    }

    fn resume(&mut self, refresh_token: SecretString) {
        self.rotation.refresh_token = Some(refresh_token);
    }

    fn needs_authorization(&self) -> bool {
        self.rotation.refresh_token.is_none()
    }

    async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        self.rotation.revoke(access_token).await
    }
}

/// The refresh half shared by [`RefreshToken`] and
/// [`AuthorizationCode`](crate::AuthorizationCode): holds the newest refresh
/// token and swaps in rotated ones.
#[derive(Clone)]
pub(crate) struct Rotation {
    pub(crate) endpoint: TokenEndpoint,
    pub(crate) refresh_token: Option<SecretString>,
    pub(crate) param_name: String,
    pub(crate) scopes: Vec<String>,
    pub(crate) on_rotate: Option<RotationHook>,
    /// Keeps this grant's stored state apart (one per end user, say).
    pub(crate) partition: Option<String>,
}

impl Rotation {
    /// [`TokenSource::revoke`]: the refresh token, kept if the server
    /// refuses; without one, the access token.
    pub(crate) async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        let Some(refresh_token) = &self.refresh_token else {
            return self.endpoint.revoke_access_token(access_token).await;
        };
        self.endpoint
            .revoke(refresh_token, Some(crate::TokenTypeHint::RefreshToken))
            .await?;
        self.refresh_token = None;
        Ok(())
    }

    pub(crate) async fn refresh(&mut self) -> Result<Token, Error> {
        let Some(current) = &self.refresh_token else {
            return Err(Error::reauthorization_required(
                "no refresh token is available: re-authorization required",
            ));
        };
        let scope = self.scopes.join(" ");
        let mut params = vec![
            ("grant_type", "refresh_token"),
            (self.param_name.as_str(), expose(current)),
        ];
        if !scope.is_empty() {
            params.push(("scope", &scope));
        }
        match self.endpoint.request(&params, &self.scopes).await {
            Ok(token) => Ok(self.absorb(token)),
            Err(refused) => {
                // The server rotated even though its answer was refused: the
                // refresh token just sent is dead, the new one is all there is.
                if let Some(new) = refused.refresh_token {
                    self.keep(new);
                }
                Err(refused.error.into_reauthorization())
            }
        }
    }

    /// Records the refresh token an answer carried, or puts the kept one on
    /// the token when it carried none.
    pub(crate) fn absorb(&mut self, token: Token) -> Token {
        match token.refresh_token() {
            Some(new) => {
                self.keep(new.clone());
                token
            }
            None => token.with_refresh_token(self.refresh_token.clone()),
        }
    }

    /// The key both refresh grants store their state under.
    pub(crate) fn store_key(&self) -> crate::StoreKey {
        let key = self.endpoint.store_key("refresh_token", &self.scopes);
        match &self.partition {
            Some(partition) => key.partition(partition),
            None => key,
        }
        .build()
    }

    /// Replaces the refresh token with one the server just issued.
    pub(crate) fn keep(&mut self, new: SecretString) {
        if let Some(hook) = &self.on_rotate {
            hook(&new);
        }
        self.refresh_token = Some(new);
    }
}

/// Builds a [`RefreshToken`] grant. Made by [`RefreshToken::builder`].
#[derive(Default)]
pub struct RefreshTokenBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    refresh_token: Option<SecretString>,
    param_name: Option<String>,
    on_rotate: Option<RotationHook>,
    partition: Option<String>,
}

impl fmt::Debug for RefreshTokenBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshTokenBuilder")
            .field("token_url", &self.endpoint.token_url)
            .finish_non_exhaustive()
    }
}

impl RefreshTokenBuilder {
    endpoint_settings!();
    scope_settings!();
    rotation_settings!();

    /// The refresh token to start from. Optional with a
    /// [`TokenStore`](crate::TokenStore) that holds one: a stored refresh
    /// token is newer and replaces this one. Without either, every fetch
    /// reports [`ErrorKind::ReauthorizationRequired`](crate::ErrorKind::ReauthorizationRequired).
    pub fn refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(SecretString::from(refresh_token.into()));
        self
    }

    /// Keeps this grant's stored state apart from that of other grants of
    /// the same client: one partition per end user (`"user-42"`), say, so
    /// their refresh tokens do not overwrite each other in a shared
    /// [`TokenStore`](crate::TokenStore). It goes into the
    /// [`StoreKey`](crate::StoreKey) only as part of a digest.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Checks the settings and builds the grant.
    pub fn build(self) -> Result<RefreshToken, Error> {
        if self
            .refresh_token
            .as_ref()
            .is_some_and(|t| expose(t).is_empty())
        {
            return Err(Error::config("refresh_token must not be empty"));
        }
        let mut rotation = Rotation::new(
            self.endpoint,
            self.scopes,
            self.refresh_token,
            self.param_name,
            self.on_rotate,
        )?;
        rotation.partition = self.partition;
        Ok(RefreshToken { rotation })
    }
}

impl Rotation {
    pub(crate) fn new(
        endpoint: EndpointSettings,
        scopes: Vec<String>,
        refresh_token: Option<SecretString>,
        param_name: Option<String>,
        on_rotate: Option<RotationHook>,
    ) -> Result<Self, Error> {
        check_scopes(&scopes)?;
        let param_name = param_name.unwrap_or_else(|| "refresh_token".to_owned());
        if param_name.is_empty() || param_name == "grant_type" || param_name == "scope" {
            return Err(Error::config(
                "refresh_token_param must be a non-empty name other than grant_type or scope",
            ));
        }
        Ok(Self {
            endpoint: endpoint.build()?,
            refresh_token,
            param_name,
            scopes,
            on_rotate,
            partition: None,
        })
    }
}
