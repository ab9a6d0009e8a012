use crate::{
    endpoint::{endpoint_settings, EndpointSettings, TokenEndpoint},
    grant::{check_scopes, scope_settings},
    Error, Token, TokenSource,
};

/// The client credentials grant (RFC 6749 §4.4): the application asks for a
/// token on its own behalf. OfficeRnD's API uses this.
///
/// ```
/// use tower_oauth2::{AuthMethod, ClientCredentials};
///
/// let grant = ClientCredentials::builder()
///     .token_url("https://identity.officernd.com/oauth/token")
///     .client_id("my-app")
///     .client_secret("s3cret")
///     .auth_method(AuthMethod::ClientSecretPost)
///     .scope("officernd.api.read officernd.api.write")
///     .build()?;
/// # Ok::<(), tower_oauth2::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    endpoint: TokenEndpoint,
    scopes: Vec<String>,
    scope_param: Option<String>,
    resources: Vec<String>,
    audience: Option<String>,
    partition: Option<String>,
}

impl ClientCredentials {
    /// Starts configuring the grant.
    pub fn builder() -> ClientCredentialsBuilder {
        ClientCredentialsBuilder::default()
    }

    pub(crate) fn new(endpoint: TokenEndpoint, scopes: Vec<String>) -> Self {
        let scope_param = (!scopes.is_empty()).then(|| scopes.join(" "));
        ClientCredentials {
            endpoint,
            scopes,
            scope_param,
            resources: Vec::new(),
            audience: None,
            partition: None,
        }
    }

    /// Keeps this grant's stored state apart from that of other grants of
    /// the same client: one partition per end user (`"user-42"`), say, so
    /// their tokens do not overwrite each other in a shared
    /// [`TokenStore`](crate::TokenStore). It goes into the
    /// [`StoreKey`](crate::StoreKey) only as part of a digest.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Requests a token.
    pub async fn request_token(&self) -> Result<Token, Error> {
        let mut params = vec![("grant_type", "client_credentials")];
        if let Some(scope) = &self.scope_param {
            params.push(("scope", scope));
        }
        for resource in &self.resources {
            params.push(("resource", resource));
        }
        if let Some(audience) = &self.audience {
            params.push(("audience", audience));
        }
        self.endpoint.exchange(&params, &self.scopes).await
    }
}

impl TokenSource for ClientCredentials {
    async fn fetch(&mut self) -> Result<Token, Error> {
        self.request_token().await
    }

    fn store_key(&self) -> Option<crate::StoreKey> {
        let mut key = self.endpoint.store_key("client_credentials", &self.scopes);
        if let Some(audience) = &self.audience {
            key = key.audience(audience);
        }
        for resource in &self.resources {
            key = key.resource(resource);
        }
        if let Some(partition) = &self.partition {
            key = key.partition(partition);
        }
        Some(key.build())
    }

    async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        self.endpoint.revoke_access_token(access_token).await
    }
}

/// Builds a [`ClientCredentials`] grant. Made by [`ClientCredentials::builder`].
#[derive(Default)]
pub struct ClientCredentialsBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    resources: Vec<String>,
    audience: Option<String>,
    partition: Option<String>,
}

impl std::fmt::Debug for ClientCredentialsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCredentialsBuilder")
            .field("token_url", &self.endpoint.token_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl ClientCredentialsBuilder {
    endpoint_settings!();
    scope_settings!();

    /// Adds a `resource` indicator (RFC 8707); may be called several times.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Sets the `audience` parameter some servers (Auth0, for one) expect.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Keeps this grant's stored state apart from that of other grants of
    /// the same client: one partition per end user (`"user-42"`), say, so
    /// their tokens do not overwrite each other in a shared
    /// [`TokenStore`](crate::TokenStore). It goes into the
    /// [`StoreKey`](crate::StoreKey) only as part of a digest.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Checks the settings and builds the grant.
    pub fn build(self) -> Result<ClientCredentials, Error> {
        check_scopes(&self.scopes)?;
        let mut grant = ClientCredentials::new(self.endpoint.build()?, self.scopes);
        grant.resources = self.resources;
        grant.audience = self.audience;
        grant.partition = self.partition;
        Ok(grant)
    }
}
