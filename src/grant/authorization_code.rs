use std::fmt;

use secrecy::SecretString;

use crate::{
    endpoint::{endpoint_settings, EndpointSettings, Refused},
    grant::{refresh_token::Rotation, rotation_settings, scope_settings},
    token::expose,
    Error, Token, TokenSource,
};

/// The authorization code grant (RFC 6749 §4.1.3), with optional PKCE
/// (RFC 7636): exchanges the code once, then refreshes with the refresh
/// token it got, exactly like [`RefreshToken`](crate::RefreshToken).
///
/// The code is sent at most until the server gives a definite answer: after
/// a success, or a permanent error, it is never sent again (codes are single
/// use). Without a refresh token in the answer, the next fetch reports
/// [`ErrorKind::ReauthorizationRequired`](crate::ErrorKind::ReauthorizationRequired).
///
/// ```
/// use tower_oauth2::AuthorizationCode;
///
/// let grant = AuthorizationCode::builder()
///     .token_url("https://example.orangelogic.com/oauth2/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .code("code-from-the-redirect")
///     .redirect_uri("https://my-app.example/callback")
///     .code_verifier("the-pkce-verifier-you-generated-for-this-authorization")
///     .refresh_token_param("code")
///     .build()?;
/// # Ok::<(), tower_oauth2::Error>(())
/// ```
pub struct AuthorizationCode {
    pub(crate) exchange: Option<CodeExchange>,
    /// A digest of the code: names the authorization in the store.
    pub(crate) origin: String,
    pub(crate) rotation: Rotation,
}

pub(crate) struct CodeExchange {
    pub(crate) code: SecretString,
    pub(crate) redirect_uri: Option<String>,
    pub(crate) code_verifier: Option<SecretString>,
}

impl fmt::Debug for AuthorizationCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCode")
            .field("endpoint", &self.rotation.endpoint)
            .field("code_exchanged", &self.exchange.is_none())
            .finish_non_exhaustive()
    }
}

impl AuthorizationCode {
    /// Starts configuring the grant.
    pub fn builder() -> AuthorizationCodeBuilder {
        AuthorizationCodeBuilder::default()
    }

    /// Exchanges the code on the first call, refreshes on later ones.
    pub async fn request_token(&mut self) -> Result<Token, Error> {
        let Some(exchange) = &self.exchange else {
            return self.rotation.refresh().await;
        };
        let mut params = vec![
            ("grant_type", "authorization_code"),
            ("code", expose(&exchange.code)),
        ];
        if let Some(uri) = &exchange.redirect_uri {
            params.push(("redirect_uri", uri));
        }
        if let Some(verifier) = &exchange.code_verifier {
            params.push(("code_verifier", expose(verifier)));
        }
        let result = self
            .rotation
            .endpoint
            .request(&params, &self.rotation.scopes)
            .await;
        match result {
            Ok(token) => {
                self.exchange = None;
                Ok(self.rotation.absorb(token))
            }
            // The server may not have seen the code: it may be tried again.
            Err(refused) if refused.error.is_transient() => Err(refused.error),
            // A success answer, refused, that still carries a refresh token:
            // the code is spent, and the next fetch refreshes with that token.
            Err(Refused {
                error,
                refresh_token: Some(new),
            }) => {
                self.exchange = None;
                self.rotation.keep(new);
                Err(error)
            }
            Err(refused) => {
                self.exchange = None;
                Err(refused.error.into_reauthorization())
            }
        }
    }

    /// The refresh token the next refresh will send, once the code is exchanged.
    pub fn current_refresh_token(&self) -> Option<&SecretString> {
        self.rotation.refresh_token.as_ref()
    }

    /// Keeps this grant's stored state apart from that of other grants of
    /// the same client: one partition per end user (`"user-42"`), say, so
    /// their refresh tokens do not overwrite each other in a shared
    /// [`TokenStore`](crate::TokenStore). It goes into the
    /// [`StoreKey`](crate::StoreKey) only as part of a digest.
    ///
    /// For the grants of an [`OAuthClient`](crate::OAuthClient): the same
    /// partition on its `authorization_code` and `refresh_token` grants.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.rotation.partition = Some(partition.into());
        self
    }
}

impl TokenSource for AuthorizationCode {
    async fn fetch(&mut self) -> Result<Token, Error> {
        self.request_token().await
    }

    fn store_key(&self) -> Option<crate::StoreKey> {
        Some(self.rotation.store_key())
    }

    fn refresh_token(&self) -> Option<&SecretString> {
        self.rotation.refresh_token.as_ref()
    }

    /// A stored refresh token of this code's authorization (the cache
    /// checks [`origin`](TokenSource::origin)) means the code was exchanged
    /// by an earlier run: it is not sent again (codes are single use).
    fn resume(&mut self, refresh_token: SecretString) {
        self.exchange = None;
        self.rotation.refresh_token = Some(refresh_token);
    }

    fn origin(&self) -> Option<String> {
        Some(self.origin.clone())
    }

    fn needs_authorization(&self) -> bool {
        self.exchange.is_none() && self.rotation.refresh_token.is_none()
    }

    async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        self.rotation.revoke(access_token).await
    }
}

/// Names the authorization a code starts: a digest, never the code.
pub(crate) fn origin_of(code: &SecretString) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(format!("authorization_code:{}", expose(code)).as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds an [`AuthorizationCode`] grant. Made by [`AuthorizationCode::builder`].
#[derive(Default)]
pub struct AuthorizationCodeBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    code: Option<SecretString>,
    redirect_uri: Option<String>,
    code_verifier: Option<SecretString>,
    param_name: Option<String>,
    on_rotate: Option<crate::grant::refresh_token::RotationHook>,
    partition: Option<String>,
}

impl fmt::Debug for AuthorizationCodeBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeBuilder")
            .field("token_url", &self.endpoint.token_url)
            .field("redirect_uri", &self.redirect_uri)
            .finish_non_exhaustive()
    }
}

impl AuthorizationCodeBuilder {
    endpoint_settings!();
    scope_settings!();
    rotation_settings!();

    /// The code, redirect URI and PKCE verifier of a completed
    /// [`AuthorizationRequest`](crate::grant::AuthorizationRequest): `code`
    /// is what its [`callback`](crate::grant::AuthorizationRequest::callback)
    /// returned.
    pub fn authorized(
        mut self,
        request: &crate::grant::AuthorizationRequest,
        code: secrecy::SecretString,
    ) -> Self {
        self.code = Some(code);
        self.redirect_uri = request.redirect_uri().map(str::to_owned);
        self.code_verifier = Some(request.code_verifier().clone());
        self
    }

    /// The authorization code from the redirect.
    pub fn code(mut self, code: impl Into<String>) -> Self {
        self.code = Some(SecretString::from(code.into()));
        self
    }

    /// The `redirect_uri` used in the authorization request, if it had one.
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }

    /// The PKCE `code_verifier` whose challenge went into the authorization request.
    pub fn code_verifier(mut self, verifier: impl Into<String>) -> Self {
        self.code_verifier = Some(SecretString::from(verifier.into()));
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
    pub fn build(self) -> Result<AuthorizationCode, Error> {
        let code = self
            .code
            .filter(|c| !expose(c).is_empty())
            .ok_or_else(|| Error::config("code is required"))?;
        if let Some(verifier) = &self.code_verifier {
            // RFC 7636 §4.1: 43 to 128 unreserved characters.
            let v = expose(verifier);
            let unreserved = |c: char| c.is_ascii_alphanumeric() || "-._~".contains(c);
            if !(43..=128).contains(&v.len()) || !v.chars().all(unreserved) {
                return Err(Error::config(
                    "code_verifier must be 43 to 128 characters of [A-Za-z0-9-._~]",
                ));
            }
        }
        let mut rotation = Rotation::new(
            self.endpoint,
            self.scopes,
            None,
            self.param_name,
            self.on_rotate,
        )?;
        rotation.partition = self.partition;
        Ok(AuthorizationCode {
            origin: origin_of(&code),
            exchange: Some(CodeExchange {
                code,
                redirect_uri: self.redirect_uri,
                code_verifier: self.code_verifier,
            }),
            rotation,
        })
    }
}
