//! Authorization server discovery: a grant from an issuer URL.
//!
//! ```no_run
//! use tower_oauth2::{discovery::Discovery, ClientCredentials, TokenCache};
//!
//! # async fn run() -> Result<(), tower_oauth2::Error> {
//! let metadata = Discovery::default()
//!     .metadata("https://login.example.com/tenant-a")
//!     .await?;
//! let grant = ClientCredentials::builder()
//!     .metadata(&metadata) // the token endpoint, and how to authenticate
//!     .client_id("my-app")
//!     .client_secret("s3cret")
//!     .build()?;
//! let cache = TokenCache::new(grant);
//! # Ok(()) }
//! ```
//!
//! [`Discovery::metadata`] reads the issuer's OpenID Provider Configuration
//! (`/.well-known/openid-configuration`, which Entra ID, Okta, Keycloak and
//! Auth0 serve) and, where that is not found, the OAuth 2.0 Authorization
//! Server Metadata of RFC 8414 (`/.well-known/oauth-authorization-server`).
//! The document is accepted only when:
//! - its `issuer` is the issuer asked for (RFC 8414 §3.3; a trailing `/` is
//!   the only difference tolerated), so a server cannot name itself another;
//! - it has a `token_endpoint`, `https` or `http` to loopback like every URL
//!   the crate sends credentials to (or `http` to a host listed with
//!   [`DiscoveryBuilder::danger_allow_http_hosts`], for test setups);
//! - it arrived without a redirect, within the timeout, and is no larger than
//!   the bound (1 MiB by default).
//!
//! Each failure is an [`ErrorKind::Discovery`] (or the transport's own kind:
//! [`ErrorKind::Network`], [`ErrorKind::Timeout`], [`ErrorKind::Redirect`],
//! [`ErrorKind::Status`], [`ErrorKind::ResponseTooLarge`]).
//!
//! Documents are cached per issuer for [`DiscoveryBuilder::ttl`] (1 h by
//! default), so every grant of a process built from one issuer costs one
//! request; clones of a [`Discovery`] share the cache. Callers asking for
//! one issuer at once wait for a single fetch; a failure is not cached, so
//! the next caller tries again.
//!
//! When the grant's builder is given no [`AuthMethod`],
//! the metadata's `token_endpoint_auth_methods_supported` chooses it from what
//! the client has, instead of trying methods one after another (which would
//! send a secret to a server that did not ask for it in that form): with a
//! secret, `client_secret_basic` when listed, else `client_secret_post`;
//! without one, `none`. An absent list means `client_secret_basic` (RFC 8414
//! §2). A builder given a private key or an assertion callback uses
//! `private_key_jwt`, whatever the list; one given a client certificate and
//! no secret uses `tls_client_auth` when listed, else
//! `self_signed_tls_client_auth` (RFC 8705). Any builder given a client
//! certificate (or a mutual-TLS method) uses the document's
//! `mtls_endpoint_aliases` in place of the endpoints they name. A key whose
//! algorithm the document's `token_endpoint_auth_signing_alg_values_supported`
//! leaves out is refused by `build` (the server would refuse every assertion
//! it signs).
//!
//! [`ErrorKind::Discovery`]: crate::ErrorKind::Discovery
//! [`ErrorKind::Network`]: crate::ErrorKind::Network
//! [`ErrorKind::Timeout`]: crate::ErrorKind::Timeout
//! [`ErrorKind::Redirect`]: crate::ErrorKind::Redirect
//! [`ErrorKind::Status`]: crate::ErrorKind::Status
//! [`ErrorKind::ResponseTooLarge`]: crate::ErrorKind::ResponseTooLarge

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{header, HeaderValue, StatusCode};
use serde_json::{Map, Value};
use url::Url;

use crate::{
    clock::{self, Instant},
    endpoint::{
        transport, validate_url_allowing, HttpHosts, HttpService, Transport,
        DEFAULT_MAX_RESPONSE_BYTES,
    },
    AuthMethod, DiscoveryErrorKind, Error,
};

/// Default time a document is reused.
pub const DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// Default timeout of one discovery request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

const OPENID: &str = ".well-known/openid-configuration";
const RFC8414: &str = ".well-known/oauth-authorization-server";

/// What an authorization server says about itself (RFC 8414 §2, OpenID
/// Connect Discovery §3). Cheap to clone.
#[derive(Clone)]
pub struct ServerMetadata {
    inner: Arc<Document>,
}

struct Document {
    issuer: String,
    token_endpoint: Url,
    authorization_endpoint: Option<Url>,
    revocation_endpoint: Option<Url>,
    par_endpoint: Option<Url>,
    device_endpoint: Option<Url>,
    auth_methods: Option<Vec<String>>,
    /// `mtls_endpoint_aliases` (RFC 8705 §5), each checked like an endpoint.
    mtls_aliases: Vec<(String, Url)>,
    fields: Map<String, Value>,
    /// The hosts allowed over plain http when the document was read.
    http_hosts: HttpHosts,
}

impl fmt::Debug for ServerMetadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetadata")
            .field("issuer", &self.inner.issuer)
            .field("token_endpoint", &self.inner.token_endpoint.as_str())
            .finish_non_exhaustive()
    }
}

impl ServerMetadata {
    /// Reads a metadata document fetched by other means; `issuer` is the
    /// issuer it must name. The same checks as [`Discovery::metadata`].
    pub fn from_json(issuer: &str, document: &[u8]) -> Result<Self, Error> {
        Self::read(issuer, document, HttpHosts::default())
    }

    /// [`from_json`](Self::from_json), accepting plain `http` endpoints to
    /// the hosts in `http_hosts` as well.
    fn read(issuer: &str, document: &[u8], http_hosts: HttpHosts) -> Result<Self, Error> {
        let invalid =
            |message: &'static str| Error::discovery(DiscoveryErrorKind::Invalid, message);
        let fields = match serde_json::from_slice(document) {
            Ok(Value::Object(fields)) => fields,
            _ => return Err(invalid("the metadata document is not a JSON object")),
        };
        let named = fields
            .get("issuer")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the metadata document has no `issuer`"))?;
        if named.trim_end_matches('/') != issuer.trim_end_matches('/') {
            return Err(Error::discovery(
                DiscoveryErrorKind::IssuerMismatch,
                "the metadata document names another issuer",
            ));
        }
        let endpoint = |name: &str| -> Result<Option<Url>, Error> {
            let Some(value) = fields.get(name) else {
                return Ok(None);
            };
            let raw = value
                .as_str()
                .ok_or_else(|| invalid("an endpoint in the metadata document is not a string"))?;
            validate_url_allowing(raw, name, &http_hosts)
                .map(Some)
                .map_err(|error| {
                    Error::discovery(
                        DiscoveryErrorKind::InsecureEndpoint,
                        format!("in the metadata document: {error}"),
                    )
                })
        };
        let token_endpoint = endpoint("token_endpoint")?.ok_or_else(|| {
            Error::discovery(
                DiscoveryErrorKind::NoTokenEndpoint,
                "the metadata document has no `token_endpoint`",
            )
        })?;
        let authorization_endpoint = endpoint("authorization_endpoint")?;
        let revocation_endpoint = endpoint("revocation_endpoint")?;
        let par_endpoint = endpoint("pushed_authorization_request_endpoint")?;
        let device_endpoint = endpoint("device_authorization_endpoint")?;
        let mtls_aliases = match fields.get("mtls_endpoint_aliases") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Object(aliases)) => {
                let mut checked = Vec::with_capacity(aliases.len());
                for (name, value) in aliases {
                    let raw = value.as_str().ok_or_else(|| {
                        invalid("an endpoint in `mtls_endpoint_aliases` is not a string")
                    })?;
                    let url = validate_url_allowing(raw, name, &http_hosts).map_err(|error| {
                        Error::discovery(
                            DiscoveryErrorKind::InsecureEndpoint,
                            format!("in the metadata document's mtls_endpoint_aliases: {error}"),
                        )
                    })?;
                    checked.push((name.clone(), url));
                }
                checked
            }
            Some(_) => return Err(invalid("`mtls_endpoint_aliases` is not an object")),
        };
        let auth_methods = match fields.get("token_endpoint_auth_methods_supported") {
            None => None,
            Some(Value::Array(methods)) => Some(
                methods
                    .iter()
                    .map(|m| m.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid("`token_endpoint_auth_methods_supported` holds a non-string")
                    })?,
            ),
            Some(_) => {
                return Err(invalid(
                    "`token_endpoint_auth_methods_supported` is not a list",
                ))
            }
        };
        Ok(Self {
            inner: Arc::new(Document {
                issuer: named.to_owned(),
                token_endpoint,
                authorization_endpoint,
                revocation_endpoint,
                par_endpoint,
                device_endpoint,
                auth_methods,
                mtls_aliases,
                fields,
                http_hosts,
            }),
        })
    }

    /// The hosts the document's endpoints could name over plain http.
    pub(crate) fn http_hosts(&self) -> &HttpHosts {
        &self.inner.http_hosts
    }

    /// The issuer, as the document names it.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// The token endpoint.
    pub fn token_endpoint(&self) -> &Url {
        &self.inner.token_endpoint
    }

    /// The authorization endpoint, for
    /// [`AuthorizationRequest`](crate::grant::AuthorizationRequest).
    pub fn authorization_endpoint(&self) -> Option<&Url> {
        self.inner.authorization_endpoint.as_ref()
    }

    /// The revocation endpoint (RFC 7009), which the grants'
    /// [`revoke`](crate::TokenEndpoint::revoke) uses unless given a
    /// `revocation_url`.
    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.inner.revocation_endpoint.as_ref()
    }

    /// The pushed authorization request endpoint (RFC 9126), which
    /// [`push`](crate::grant::AuthorizationRequestBuilder::push) uses unless
    /// given a `par_url`.
    pub fn pushed_authorization_request_endpoint(&self) -> Option<&Url> {
        self.inner.par_endpoint.as_ref()
    }

    /// The device authorization endpoint (RFC 8628), which
    /// [`DeviceAuthorization::start`](crate::DeviceAuthorization::start)
    /// uses unless given a `device_authorization_url`.
    pub fn device_authorization_endpoint(&self) -> Option<&Url> {
        self.inner.device_endpoint.as_ref()
    }

    /// The mutual-TLS alias of endpoint `name` (`"token_endpoint"`,
    /// `"revocation_endpoint"`, ...) from `mtls_endpoint_aliases`
    /// (RFC 8705 §5), checked like every endpoint. A grant given a client
    /// certificate, or a mutual-TLS [`AuthMethod`], uses the aliases in place
    /// of the endpoints they stand for.
    pub fn mtls_endpoint_alias(&self, name: &str) -> Option<&Url> {
        self.inner
            .mtls_aliases
            .iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, url)| url)
    }

    /// `token_endpoint_auth_methods_supported`, when the document lists them.
    pub fn token_endpoint_auth_methods(&self) -> Option<&[String]> {
        self.inner.auth_methods.as_deref()
    }

    /// Any other field of the document (`grant_types_supported`,
    /// `scopes_supported`, ...).
    pub fn field(&self, name: &str) -> Option<&Value> {
        self.inner.fields.get(name)
    }

    /// Refuses a client assertion algorithm the server does not list in
    /// `token_endpoint_auth_signing_alg_values_supported` (it would answer
    /// `invalid_client` to every token request); no list accepts any.
    pub(crate) fn check_signing_alg(&self, alg: &str) -> Result<(), Error> {
        let Some(listed) = self.field("token_endpoint_auth_signing_alg_values_supported") else {
            return Ok(());
        };
        let listed = listed.as_array().map(Vec::as_slice).unwrap_or_default();
        if listed.iter().any(|a| a.as_str() == Some(alg)) {
            return Ok(());
        }
        Err(Error::config(format!(
            "the server does not accept client assertions signed with {alg} \
             (token_endpoint_auth_signing_alg_values_supported); use a key of a listed algorithm"
        )))
    }

    /// The mutual-TLS client authentication of a client with a certificate
    /// and no secret: `tls_client_auth` when listed (or with no list),
    /// else `self_signed_tls_client_auth` (the requests are the same; the
    /// server's registration tells them apart).
    pub(crate) fn choose_mtls_auth_method(&self) -> Result<AuthMethod, Error> {
        let Some(methods) = &self.inner.auth_methods else {
            return Ok(AuthMethod::TlsClientAuth);
        };
        let listed = |method: AuthMethod| methods.iter().any(|m| m == method.as_str());
        [
            AuthMethod::TlsClientAuth,
            AuthMethod::SelfSignedTlsClientAuth,
        ]
        .into_iter()
        .find(|method| listed(*method))
        .ok_or_else(|| {
            Error::config(
                "the server lists no mutual-TLS client authentication \
                     (token_endpoint_auth_methods_supported); choose one with auth_method",
            )
        })
    }

    /// The client authentication a client with (or without) a secret should
    /// use here; see the [module docs](self).
    pub fn choose_auth_method(&self, has_secret: bool) -> Result<AuthMethod, Error> {
        let listed = |name: &str| {
            self.inner
                .auth_methods
                .as_ref()
                .is_none_or(|methods| methods.iter().any(|m| m == name))
        };
        let basic_by_default = self.inner.auth_methods.is_none();
        let choice = if has_secret {
            if basic_by_default || listed("client_secret_basic") {
                Some(AuthMethod::ClientSecretBasic)
            } else if listed("client_secret_post") {
                Some(AuthMethod::ClientSecretPost)
            } else {
                None
            }
        } else if !basic_by_default && listed("none") {
            Some(AuthMethod::None)
        } else {
            None
        };
        choice.ok_or_else(|| {
            Error::config(
                "the server supports none of the client authentication methods this client can use; \
                 choose one with auth_method",
            )
        })
    }
}

/// Fetches and caches authorization server metadata. Clones share the cache.
#[derive(Clone)]
pub struct Discovery {
    transport: Option<Transport>,
    timeout: Duration,
    max_body: usize,
    ttl: Duration,
    http_hosts: HttpHosts,
    cache: Arc<Mutex<HashMap<String, Entry>>>,
}

/// One issuer's cached document. Callers asking at once take turns on its
/// lock, so one of them fetches and the others find the document.
type Entry = Arc<tokio::sync::Mutex<Option<(Instant, ServerMetadata)>>>;

impl Default for Discovery {
    /// reqwest (with the `reqwest` feature), 10 s timeout, 1 MiB, 1 h cache.
    fn default() -> Self {
        Self::builder().build()
    }
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("timeout", &self.timeout)
            .field("max_body", &self.max_body)
            .field("ttl", &self.ttl)
            .field("danger_allow_http_hosts", &self.http_hosts)
            .finish_non_exhaustive()
    }
}

impl Discovery {
    /// Starts configuring a discovery client.
    pub fn builder() -> DiscoveryBuilder {
        DiscoveryBuilder {
            transport: None,
            timeout: DEFAULT_TIMEOUT,
            max_body: DEFAULT_MAX_RESPONSE_BYTES,
            ttl: DEFAULT_TTL,
            http_hosts: HttpHosts::default(),
        }
    }

    /// The metadata of `issuer`, from the cache while it is fresh.
    pub async fn metadata(&self, issuer: &str) -> Result<ServerMetadata, Error> {
        let issuer_url = validate_url_allowing(issuer, "issuer URL", &self.http_hosts)?;
        if issuer_url.query().is_some() {
            return Err(Error::config("an issuer URL has no query string"));
        }
        let entry = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(issuer.to_owned())
            .or_default()
            .clone();
        let mut cached = entry.lock().await;
        if let Some((until, metadata)) = &*cached {
            if clock::now() < *until {
                return Ok(metadata.clone());
            }
        }
        let transport = match &self.transport {
            Some(transport) => transport.clone(),
            None => Transport::default_client()?,
        };
        let body = match self
            .fetch(&transport, &well_known_url(&issuer_url, OPENID))
            .await
        {
            // Not served here: the RFC 8414 document may be.
            Err(error) if is_absent(&error) => self
                .fetch(&transport, &well_known_url(&issuer_url, RFC8414))
                .await
                .map_err(|other| if is_absent(&other) { error } else { other })?,
            body => body?,
        };
        let metadata = ServerMetadata::read(issuer, &body, self.http_hosts.clone())?;
        *cached = Some((clock::now() + self.ttl, metadata.clone()));
        Ok(metadata)
    }

    async fn fetch(&self, transport: &Transport, url: &Url) -> Result<bytes::Bytes, Error> {
        let mut request = transport::get(transport::to_uri(url)?);
        request
            .headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        tracing::debug!(target: "tower_oauth2", %url, "discovery request");
        let answer = match transport.send(request, self.timeout, self.max_body).await {
            Ok(answer) => answer,
            Err(transport::Failure::TooLarge { status, .. }) => {
                return Err(if status.is_success() {
                    Error::too_large(self.max_body).with_status(status)
                } else {
                    Error::http_status(status)
                })
            }
            Err(transport::Failure::Error(error)) => return Err(error),
        };
        if !answer.status.is_success() {
            return Err(Error::http_status(answer.status));
        }
        Ok(answer.body)
    }
}

fn is_absent(error: &Error) -> bool {
    error.status().is_some_and(|s| {
        matches!(
            s,
            StatusCode::NOT_FOUND
                | StatusCode::BAD_REQUEST
                | StatusCode::FORBIDDEN
                | StatusCode::METHOD_NOT_ALLOWED
                | StatusCode::GONE
        )
    })
}

/// OpenID appends the well-known path to the issuer's path; RFC 8414 §3.1
/// puts it between the host and the issuer's path.
fn well_known_url(issuer: &Url, well_known: &str) -> Url {
    let path = issuer.path().trim_end_matches('/');
    let mut url = issuer.clone();
    if well_known == OPENID {
        url.set_path(&format!("{path}/{well_known}"));
    } else {
        url.set_path(&format!("/{well_known}{path}"));
    }
    url
}

/// Builds a [`Discovery`]. Made by [`Discovery::builder`].
pub struct DiscoveryBuilder {
    transport: Option<Transport>,
    timeout: Duration,
    max_body: usize,
    ttl: Duration,
    http_hosts: HttpHosts,
}

impl fmt::Debug for DiscoveryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DiscoveryBuilder")
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .field("danger_allow_http_hosts", &self.http_hosts)
            .finish_non_exhaustive()
    }
}

impl DiscoveryBuilder {
    /// Fetches documents with this reqwest client (built to follow no redirect).
    #[cfg(reqwest_client)]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(
            feature = "reqwest",
            feature = "reqwest-rustls-ring",
            feature = "reqwest-native-tls"
        )))
    )]
    pub fn http_client(mut self, client: reqwest::Client) -> Self {
        self.transport = Some(Transport::reqwest(client));
        self
    }

    /// Fetches documents through any tower service, as the grants'
    /// `transport` does; the same rules apply.
    pub fn transport<B>(mut self, service: impl HttpService<B>) -> Self {
        self.transport = Some(Transport::new(service));
        self
    }

    /// Timeout of one request (default 10 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Largest document read, in bytes (default 1 MiB).
    pub fn max_response_bytes(mut self, limit: usize) -> Self {
        self.max_body = limit;
        self
    }

    /// How long a document is reused before it is fetched again (default 1 h).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// **Dangerous: for test setups only.** Allows a plain `http` issuer
    /// URL, and `http` endpoints in its document, to these hosts (a Keycloak
    /// container reached as `http://keycloak:8080` in a CI's
    /// docker-compose, say). A grant built from such a document with
    /// `metadata(...)` accepts its `http` token endpoint without being told
    /// again; client secrets and tokens then travel unencrypted.
    ///
    /// Each entry is a host name or IP address, matched exactly and
    /// case-insensitively; no scheme, port or path, else
    /// [`Discovery::metadata`] fails with
    /// [`ErrorKind::Config`](crate::ErrorKind::Config). Any other host keeps
    /// the rule: `https`, or `http` to loopback. The first use of each listed
    /// host logs a `tracing` warning. Replaces an earlier list.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::{discovery::Discovery, ClientCredentials};
    ///
    /// let metadata = Discovery::builder()
    ///     .danger_allow_http_hosts(["keycloak"])
    ///     .build()
    ///     .metadata("http://keycloak:8080/realms/ci")
    ///     .await?;
    /// let grant = ClientCredentials::builder()
    ///     .metadata(&metadata)
    ///     .client_id("ci-client")
    ///     .client_secret("ci-secret")
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn danger_allow_http_hosts<I>(mut self, hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.http_hosts = HttpHosts::new(hosts);
        self
    }

    /// The discovery client.
    pub fn build(self) -> Discovery {
        Discovery {
            transport: self.transport,
            timeout: self.timeout,
            max_body: self.max_body,
            ttl: self.ttl,
            http_hosts: self.http_hosts,
            cache: Arc::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls() {
        let issuer = Url::parse("https://example.com/tenant/").unwrap();
        assert_eq!(
            well_known_url(&issuer, OPENID).as_str(),
            "https://example.com/tenant/.well-known/openid-configuration"
        );
        assert_eq!(
            well_known_url(&issuer, RFC8414).as_str(),
            "https://example.com/.well-known/oauth-authorization-server/tenant"
        );
        let root = Url::parse("https://example.com").unwrap();
        assert_eq!(
            well_known_url(&root, RFC8414).as_str(),
            "https://example.com/.well-known/oauth-authorization-server"
        );
    }

    fn metadata(methods: Option<&[&str]>) -> ServerMetadata {
        let mut document = serde_json::json!({
            "issuer": "https://as.example.com",
            "token_endpoint": "https://as.example.com/token",
        });
        if let Some(methods) = methods {
            document["token_endpoint_auth_methods_supported"] = methods.into();
        }
        ServerMetadata::from_json("https://as.example.com/", document.to_string().as_bytes())
            .unwrap()
    }

    #[test]
    fn the_auth_method_follows_the_list() {
        let choose = |methods, secret| metadata(methods).choose_auth_method(secret).ok();
        assert_eq!(choose(None, true), Some(AuthMethod::ClientSecretBasic));
        assert_eq!(choose(None, false), None, "basic needs a secret");
        assert_eq!(
            choose(Some(&["client_secret_post"]), true),
            Some(AuthMethod::ClientSecretPost)
        );
        assert_eq!(
            choose(Some(&["client_secret_post", "client_secret_basic"]), true),
            Some(AuthMethod::ClientSecretBasic)
        );
        assert_eq!(
            choose(Some(&["none", "client_secret_post"]), false),
            Some(AuthMethod::None)
        );
        assert_eq!(choose(Some(&["private_key_jwt"]), true), None);
    }

    #[test]
    fn documents_are_checked() {
        let kind = |issuer: &str, document: Value| {
            ServerMetadata::from_json(issuer, document.to_string().as_bytes())
                .unwrap_err()
                .kind()
                .clone()
        };
        let issuer = "https://as.example.com";
        let token = "https://as.example.com/token";
        use crate::ErrorKind::Discovery as D;
        use DiscoveryErrorKind::*;
        assert_eq!(
            kind(
                issuer,
                serde_json::json!({"issuer": "https://evil.example.com", "token_endpoint": token})
            ),
            D(IssuerMismatch)
        );
        assert_eq!(
            kind(issuer, serde_json::json!({"issuer": issuer})),
            D(NoTokenEndpoint)
        );
        assert_eq!(
            kind(
                issuer,
                serde_json::json!({"issuer": issuer, "token_endpoint": "http://as.example.com/token"})
            ),
            D(InsecureEndpoint)
        );
        assert_eq!(
            kind(issuer, serde_json::json!(["not", "an", "object"])),
            D(Invalid)
        );
        assert_eq!(
            kind(issuer, serde_json::json!({"token_endpoint": token})),
            D(Invalid)
        );
        assert_eq!(
            kind(
                issuer,
                serde_json::json!({"issuer": issuer, "token_endpoint": token, "token_endpoint_auth_methods_supported": "client_secret_basic"})
            ),
            D(Invalid)
        );
    }
}
