use std::{future::Future, pin::Pin, sync::Arc};

#[cfg(signing)]
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

use crate::{
    endpoint::{endpoint_settings, AssertionContext, EndpointSettings, TokenEndpoint},
    grant::{check_scopes, scope_settings},
    Error, Token, TokenSource,
};

/// The `grant_type` of the JWT bearer grant (RFC 7523 §2.1).
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

#[cfg(signing)]
const DEFAULT_LIFETIME: Duration = Duration::from_secs(120);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Callback = dyn Fn(AssertionContext) -> Pin<Box<dyn Future<Output = Result<String, BoxError>> + Send>>
    + Send
    + Sync;

/// The JWT bearer grant (RFC 7523 §2.1): a signed JWT is the grant. Google
/// service accounts, Salesforce's server-to-server flow and many B2B APIs
/// use it. Every token request carries a fresh assertion.
///
/// The crate signs the assertion with a [`PrivateKey`](crate::PrivateKey)
/// (feature `private-key-jwt`): `iss` is the
/// [`issuer`](JwtBearerBuilder::issuer) (the client id unless set), `sub`
/// the [`subject`](JwtBearerBuilder::subject) (the issuer unless set), `aud`
/// the token URL unless [`audience`](JwtBearerBuilder::audience) is set, and
/// a fresh `jti`, `iat` and `exp`. Or the application makes it, with
/// [`assertion_with`](JwtBearerBuilder::assertion_with) (a KMS signer, a
/// workload identity file).
///
/// ```
/// # #[cfg(feature = "private-key-jwt")]
/// # fn example(pem: &[u8]) -> Result<(), tower_oauth2::Error> {
/// use tower_oauth2::{JwsAlgorithm, JwtBearer, PrivateKey};
///
/// let grant = JwtBearer::builder()
///     .token_url("https://oauth2.googleapis.com/token")
///     .client_id("robot@project.iam.gserviceaccount.com")
///     .signing_key(PrivateKey::from_pem(JwsAlgorithm::Rs256, pem)?)
///     .claim("scope", "https://www.googleapis.com/auth/cloud-platform")
///     .build()?;
/// # Ok(()) }
/// ```
///
/// Client authentication is optional (RFC 7523 §3.2.1): without a secret or
/// client assertion only `client_id` is sent beside the assertion; any of
/// the methods of the other grants may be set.
#[derive(Clone)]
pub struct JwtBearer {
    endpoint: TokenEndpoint,
    scopes: Vec<String>,
    scope_param: Option<String>,
    assertion: GrantAssertion,
    partition: Option<String>,
}

/// Where the grant's assertions come from.
#[derive(Clone)]
enum GrantAssertion {
    #[cfg(signing)]
    Key(Arc<Signed>),
    Callback(Arc<Callback>, AssertionContext),
}

#[cfg(signing)]
struct Signed {
    key: crate::PrivateKey,
    issuer: String,
    subject: String,
    audience: String,
    lifetime: Duration,
    claims: serde_json::Map<String, serde_json::Value>,
}

impl GrantAssertion {
    async fn make(&self) -> Result<SecretString, Error> {
        match self {
            #[cfg(signing)]
            Self::Key(signed) => signed.key.jwt_with(
                &signed.issuer,
                &signed.subject,
                &signed.audience,
                signed.lifetime,
                &signed.claims,
            ),
            Self::Callback(callback, context) => {
                let assertion = callback(context.clone()).await.map_err(|e| {
                    Error::client_assertion(
                        "the JWT bearer assertion callback failed",
                        Some(e),
                        true,
                    )
                })?;
                let trimmed = assertion.trim();
                if trimmed.is_empty() {
                    return Err(Error::client_assertion(
                        "the JWT bearer assertion callback returned an empty assertion",
                        None,
                        true,
                    ));
                }
                Ok(SecretString::from(trimmed.to_owned()))
            }
        }
    }

    /// What names the assertion in a store key (nothing secret).
    fn key_parts(&self) -> (String, String) {
        match self {
            #[cfg(signing)]
            Self::Key(signed) => (signed.issuer.clone(), signed.subject.clone()),
            Self::Callback(_, context) => (context.client_id().to_owned(), String::new()),
        }
    }
}

impl std::fmt::Debug for JwtBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBearer")
            .field("endpoint", &self.endpoint)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl JwtBearer {
    /// Starts configuring the grant.
    pub fn builder() -> JwtBearerBuilder {
        JwtBearerBuilder::default()
    }

    /// Requests a token with a fresh assertion.
    pub async fn request_token(&self) -> Result<Token, Error> {
        let assertion = self.assertion.make().await?;
        let mut params = vec![
            ("grant_type", JWT_BEARER),
            ("assertion", assertion.expose_secret()),
        ];
        if let Some(scope) = &self.scope_param {
            params.push(("scope", scope));
        }
        self.endpoint.exchange(&params, &self.scopes).await
    }
}

impl TokenSource for JwtBearer {
    async fn fetch(&mut self) -> Result<Token, Error> {
        self.request_token().await
    }

    /// Flow `jwt_bearer`, with the assertion's issuer and subject (for a
    /// callback's assertions, which the crate does not read, the client id).
    fn store_key(&self) -> Option<crate::StoreKey> {
        let (issuer, subject) = self.assertion.key_parts();
        let mut key = self
            .endpoint
            .store_key("jwt_bearer", &self.scopes)
            .param("iss", issuer)
            .param("sub", subject);
        if let Some(partition) = &self.partition {
            key = key.partition(partition);
        }
        Some(key.build())
    }

    async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        self.endpoint.revoke_access_token(access_token).await
    }
}

/// Builds a [`JwtBearer`] grant. Made by [`JwtBearer::builder`].
#[derive(Default)]
pub struct JwtBearerBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    #[cfg(signing)]
    key: Option<crate::PrivateKey>,
    callback: Option<Arc<Callback>>,
    issuer: Option<String>,
    subject: Option<String>,
    audience: Option<String>,
    #[cfg(signing)]
    lifetime: Option<Duration>,
    claims: serde_json::Map<String, serde_json::Value>,
    partition: Option<String>,
}

impl std::fmt::Debug for JwtBearerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtBearerBuilder")
            .field("token_url", &self.endpoint.token_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl JwtBearerBuilder {
    endpoint_settings!();
    scope_settings!();

    /// Signs each assertion with `key` (its `kid`, if set, goes into the
    /// header). Replaces an [`assertion_with`](Self::assertion_with)
    /// callback.
    #[cfg(signing)]
    #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
    pub fn signing_key(mut self, key: crate::PrivateKey) -> Self {
        self.key = Some(key);
        self.callback = None;
        self
    }

    /// Makes each assertion with `assertion`, called once before every
    /// token request with an [`AssertionContext`]: the token URL, the
    /// issuer as `client_id` (the client id unless [`issuer`](Self::issuer)
    /// is set) and the audience (the token URL, or
    /// [`audience`](Self::audience)). An error or an
    /// empty string fails the request with a transient
    /// [`ErrorKind::ClientAssertion`](crate::ErrorKind::ClientAssertion)
    /// without sending it. Replaces a [`signing_key`](Self::signing_key).
    pub fn assertion_with<F, Fut, E>(mut self, assertion: F) -> Self
    where
        F: Fn(AssertionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.callback = Some(Arc::new(move |context| {
            let future = assertion(context);
            Box::pin(async move { future.await.map_err(Into::into) })
        }));
        #[cfg(signing)]
        {
            self.key = None;
        }
        self
    }

    /// The assertion's `iss`; the client id by default.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// The assertion's `sub`: the principal the token is for (a user to
    /// impersonate, say); the issuer by default.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// The assertion's `aud`; the token URL by default. Some servers want
    /// their issuer identifier.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// How long a signed assertion is valid (`exp` - `iat`): between 1 s and
    /// 1 h, 120 s by default.
    #[cfg(signing)]
    #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
    pub fn assertion_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    /// Adds a claim to each signed assertion (Google wants `scope` there).
    /// The registered claims `iss`, `sub`, `aud`, `exp`, `iat` and `jti` are
    /// the crate's: `build` refuses them here.
    pub fn claim(mut self, name: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.claims.insert(name.into(), value.into());
        self
    }

    /// Keeps this grant's stored state apart from that of other grants of
    /// the same client and subject. It goes into the
    /// [`StoreKey`](crate::StoreKey) only as part of a digest.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Checks the settings and builds the grant.
    pub fn build(self) -> Result<JwtBearer, Error> {
        check_scopes(&self.scopes)?;
        if let Some(name) = ["iss", "sub", "aud", "exp", "iat", "jti"]
            .into_iter()
            .find(|name| self.claims.contains_key(*name))
        {
            return Err(Error::config(format!(
                "the claim `{name}` is set by the crate; use the builder method for it"
            )));
        }
        if self.audience.as_deref() == Some("") {
            return Err(Error::config("the assertion audience must not be empty"));
        }
        let endpoint = self.endpoint.build()?;
        let issuer = self
            .issuer
            .unwrap_or_else(|| endpoint.client_id().to_owned());
        let audience = self
            .audience
            .unwrap_or_else(|| endpoint.url().as_str().to_owned());
        #[cfg(signing)]
        if let Some(key) = self.key {
            let lifetime = self.lifetime.unwrap_or(DEFAULT_LIFETIME);
            if lifetime < Duration::from_secs(1) || lifetime > Duration::from_secs(3600) {
                return Err(Error::config(
                    "the assertion lifetime must be between 1 second and 1 hour",
                ));
            }
            let subject = self.subject.unwrap_or_else(|| issuer.clone());
            return Ok(JwtBearer::new(
                endpoint,
                self.scopes,
                GrantAssertion::Key(Arc::new(Signed {
                    key,
                    issuer,
                    subject,
                    audience,
                    lifetime,
                    claims: self.claims,
                })),
                self.partition,
            ));
        }
        let Some(callback) = self.callback else {
            return Err(Error::config(
                "the JWT bearer grant needs a signing_key or an assertion_with callback",
            ));
        };
        #[cfg(signing)]
        if self.lifetime.is_some() {
            return Err(Error::config(
                "assertion_lifetime applies to assertions the crate signs; the callback sets `exp`",
            ));
        }
        if self.subject.is_some() || !self.claims.is_empty() {
            return Err(Error::config(
                "subject and claim apply to assertions the crate signs; the callback makes its own",
            ));
        }
        let context = AssertionContext::new(endpoint.url().clone(), issuer, audience);
        Ok(JwtBearer::new(
            endpoint,
            self.scopes,
            GrantAssertion::Callback(callback, context),
            self.partition,
        ))
    }
}

impl JwtBearer {
    fn new(
        endpoint: TokenEndpoint,
        scopes: Vec<String>,
        assertion: GrantAssertion,
        partition: Option<String>,
    ) -> Self {
        let scope_param = (!scopes.is_empty()).then(|| scopes.join(" "));
        JwtBearer {
            endpoint,
            scopes,
            scope_param,
            assertion,
            partition,
        }
    }
}
