//! The token endpoint: one form POST, answered by a token or a precise error.
//!
//! The grants in [`crate::grant`] build a [`TokenEndpoint`] from their builder
//! settings. A custom [`TokenSource`](crate::TokenSource) for a grant this
//! crate does not ship (JWT bearer, token exchange, ...) can build one with
//! [`TokenEndpoint::builder`] and call [`TokenEndpoint::exchange`].
//!
//! What every exchange guarantees:
//! - `POST`, `application/x-www-form-urlencoded`, `Accept: application/json`,
//!   each parameter once, nothing in the query string;
//! - `https` only, except to loopback hosts (for tests and local servers) and
//!   to the hosts a builder lists in `danger_allow_http_hosts` (for test
//!   setups such as a Keycloak container reached as `http://keycloak:8080`);
//! - redirects are never followed (the target would see the credentials);
//! - a per-request timeout and a bounded response body;
//! - the answer is read leniently where real servers differ and strictly
//!   where a mistake would be dangerous (see [`TokenEndpoint::exchange`]).
//!
//! These hold whatever carries the bytes: reqwest by default (the `reqwest`
//! feature), or any tower service given to a builder's `transport`, such as
//! a hyper-util client with your proxy and TLS settings:
//!
//! ```
//! use hyper_util::{client::legacy::{connect::HttpConnector, Client}, rt::TokioExecutor};
//! use tower_oauth2::ClientCredentials;
//!
//! let hyper: Client<HttpConnector, String> = Client::builder(TokioExecutor::new()).build_http();
//! let grant = ClientCredentials::builder()
//!     .token_url("http://127.0.0.1:8080/oauth/token")
//!     .client_id("my-app")
//!     .client_secret("s3cret")
//!     .transport(hyper)
//!     .build()?;
//! # Ok::<(), tower_oauth2::Error>(())
//! ```

mod assertion;
mod auth;
mod mtls;
mod response;
pub(crate) mod transport;

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{header, HeaderValue, Method, StatusCode};
use secrecy::SecretString;
use url::{Host, Url};

pub use assertion::AssertionContext;
pub(crate) use assertion::{AssertionSettings, AssertionSource};
#[cfg(signing)]
#[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
pub use assertion::{JwsAlgorithm, PrivateKey};
pub use auth::AuthMethod;
pub(crate) use auth::ClientAuth;
pub use mtls::ClientIdentity;
use response::Leniency;
pub(crate) use response::Refused;
use transport::Failure;
pub use transport::HttpService;
pub(crate) use transport::Transport;

use crate::{clock, Error, Token};

/// Default bound on a token response body.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// Default timeout of one token request.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Parameter names the crate sets itself; extra parameters may not repeat them.
const RESERVED_PARAMS: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "refresh_token",
    "code",
    "code_verifier",
    "redirect_uri",
    "resource",
    "audience",
    "client_assertion",
    "client_assertion_type",
    "assertion",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "device_code",
];

/// A configured token endpoint. Cheap to clone: every grant of an
/// [`OAuthClient`](crate::OAuthClient) (one per caller in a proxy) shares
/// its settings.
#[derive(Clone)]
pub struct TokenEndpoint {
    settings: Arc<Settings>,
}

#[derive(Clone)]
struct Settings {
    url: Url,
    client_id: String,
    uri: http::Uri,
    auth: ClientAuth,
    transport: Transport,
    timeout: Duration,
    max_body: usize,
    extra_params: Vec<(String, String)>,
    leniency: Leniency,
    /// The revocation endpoint (RFC 7009), if configured or discovered.
    revocation: Option<(Url, http::Uri)>,
    /// The pushed authorization request endpoint (RFC 9126), likewise.
    par: Option<(Url, http::Uri)>,
    /// The device authorization endpoint (RFC 8628), likewise.
    device: Option<(Url, http::Uri)>,
    /// The DPoP key every token request proves possession of, and the
    /// token URL as its proofs name it.
    #[cfg(dpop)]
    dpop: Option<(crate::DpopKey, crate::dpop::Htu)>,
    /// The thumbprint of the client certificate the token requests present
    /// (RFC 8705 §3), when the builder was given one.
    x5t_s256: Option<Arc<str>>,
}

impl std::fmt::Debug for TokenEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpoint")
            .field("url", &self.settings.url.as_str())
            .field("timeout", &self.settings.timeout)
            .field("max_body", &self.settings.max_body)
            .finish_non_exhaustive()
    }
}

impl TokenEndpoint {
    /// Starts configuring an endpoint for a custom grant.
    pub fn builder() -> TokenEndpointBuilder {
        TokenEndpointBuilder::default()
    }

    /// The token URL.
    pub fn url(&self) -> &Url {
        &self.settings.url
    }

    /// The client identifier.
    pub fn client_id(&self) -> &str {
        &self.settings.client_id
    }

    /// The SHA-256 thumbprint (`x5t#S256`) of the client certificate the
    /// builder was given (`client_certificate`), which the token requests
    /// present; see [`Token::x5t_s256`].
    pub fn client_certificate_x5t_s256(&self) -> Option<&str> {
        self.settings.x5t_s256.as_deref()
    }

    /// Accepts `token_type: N_A` answers (RFC 8693 §2.2.1), for a token
    /// exchange that asks for something other than an access token.
    pub(crate) fn accept_not_applicable(&mut self, accept: bool) {
        // Copied only when it changes: the grants of one client share them.
        if self.settings.leniency.not_applicable != accept {
            Arc::make_mut(&mut self.settings).leniency.not_applicable = accept;
        }
    }

    /// The store key of `flow` with `scopes` at this endpoint, with its
    /// extra parameters: the grant adds what else it sends.
    pub(crate) fn store_key(&self, flow: &str, scopes: &[String]) -> crate::store::StoreKeyBuilder {
        let mut key = crate::StoreKey::builder(flow)
            .client_id(&self.settings.client_id)
            .token_url(self.settings.url.as_str())
            .scopes(scopes);
        for (name, value) in &self.settings.extra_params {
            key = key.param(name, value);
        }
        // Tokens bound to one client certificate are no use to a process
        // presenting another (a certificate being rotated): apart in a store.
        if let Some(x5t) = &self.settings.x5t_s256 {
            key = key.param("x5t#S256", &**x5t);
        }
        key
    }

    /// The revocation endpoint, when one was set or discovered.
    pub fn revocation_url(&self) -> Option<&Url> {
        self.settings.revocation.as_ref().map(|(url, _)| url)
    }

    /// The pushed authorization request endpoint, when one was set or
    /// discovered.
    pub fn par_url(&self) -> Option<&Url> {
        self.settings.par.as_ref().map(|(url, _)| url)
    }

    /// The device authorization endpoint (RFC 8628), when one was set or
    /// discovered.
    pub fn device_authorization_url(&self) -> Option<&Url> {
        self.settings.device.as_ref().map(|(url, _)| url)
    }

    /// Posts a device authorization request (RFC 8628 §3.1) and returns the
    /// success answer's JSON object.
    pub(crate) async fn device_authorization(
        &self,
        params: &[(&str, &str)],
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        let (url, uri) = self.settings.device.as_ref().ok_or_else(|| {
            Error::config(
                "no device authorization endpoint: set device_authorization_url, or give metadata naming one",
            )
        })?;
        let answer = self
            .post_form(url, uri, params, "device authorization")
            .await?;
        if let Some(error) = oauth_error(&answer.status, &answer.body) {
            tracing::warn!(target: "tower_oauth2", %error, "device authorization refused");
            return Err(error);
        }
        if !answer.status.is_success() {
            return Err(Error::http_status(answer.status)
                .with_retry_after_opt(retry_after(&answer.headers)));
        }
        match serde_json::from_slice(&answer.body) {
            Ok(serde_json::Value::Object(fields)) => Ok(fields),
            _ => Err(Error::invalid_response(
                "the device authorization response is not a JSON object",
            )
            .with_status(answer.status)),
        }
    }

    /// Gives `token` back to the server (RFC 7009): a form POST of `token`
    /// and `token_type_hint` to the revocation endpoint, with this client's
    /// authentication, timeout and transport. Revoking a refresh token
    /// usually ends the access tokens issued with it too.
    ///
    /// A 200 is success, also for a token the server does not know
    /// (RFC 7009 §2.2: it is as good as revoked). An OAuth error body
    /// (`unsupported_token_type`, `invalid_client`, ...) is
    /// [`ErrorKind::OAuth`](crate::ErrorKind::OAuth), another status
    /// [`ErrorKind::Status`](crate::ErrorKind::Status); without a revocation
    /// endpoint, [`ErrorKind::Config`](crate::ErrorKind::Config).
    pub async fn revoke(
        &self,
        token: &SecretString,
        hint: Option<TokenTypeHint>,
    ) -> Result<(), Error> {
        let (url, uri) = self.settings.revocation.as_ref().ok_or_else(|| {
            Error::config("no revocation endpoint: set revocation_url, or give metadata naming one")
        })?;
        let mut params = vec![("token", crate::token::expose(token))];
        if let Some(hint) = hint {
            params.push(("token_type_hint", hint.as_str()));
        }
        let answer = self.post_form(url, uri, &params, "revocation").await?;
        if let Some(error) = oauth_error(&answer.status, &answer.body) {
            tracing::warn!(target: "tower_oauth2", %error, "revocation refused");
            return Err(error);
        }
        if !answer.status.is_success() {
            return Err(Error::http_status(answer.status)
                .with_retry_after_opt(retry_after(&answer.headers)));
        }
        tracing::debug!(target: "tower_oauth2", "token revoked");
        Ok(())
    }

    /// [`revoke`](Self::revoke) for an access token, if there is one.
    pub(crate) async fn revoke_access_token(&self, token: Option<&Token>) -> Result<(), Error> {
        match token {
            Some(token) => {
                self.revoke(token.access_token(), Some(TokenTypeHint::AccessToken))
                    .await
            }
            None => Ok(()),
        }
    }

    /// Pushes authorization parameters (RFC 9126 §2.1) and returns the
    /// `request_uri` with its lifetime.
    pub(crate) async fn push_authorization(
        &self,
        params: &[(&str, &str)],
    ) -> Result<(String, Duration), Error> {
        let (url, uri) = self.settings.par.as_ref().ok_or_else(|| {
            Error::config(
                "no pushed authorization request endpoint: set par_url, or give metadata naming one",
            )
        })?;
        let answer = self
            .post_form(url, uri, params, "pushed authorization")
            .await?;
        if let Some(error) = oauth_error(&answer.status, &answer.body) {
            tracing::warn!(target: "tower_oauth2", %error, "pushed authorization request refused");
            return Err(error);
        }
        if !answer.status.is_success() {
            return Err(Error::http_status(answer.status)
                .with_retry_after_opt(retry_after(&answer.headers)));
        }
        let invalid = |message| Error::invalid_response(message).with_status(answer.status);
        let json: serde_json::Value = serde_json::from_slice(&answer.body)
            .map_err(|_| invalid("the pushed authorization response is not JSON"))?;
        let request_uri = json
            .get("request_uri")
            .and_then(serde_json::Value::as_str)
            .filter(|uri| !uri.is_empty())
            .ok_or_else(|| invalid("the pushed authorization response has no `request_uri`"))?;
        let expires_in = json
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid("the pushed authorization response has no `expires_in`"))?;
        Ok((request_uri.to_owned(), Duration::from_secs(expires_in)))
    }

    /// One form POST to another endpoint of the server (revocation, PAR)
    /// with the client authentication, under the token request's rules.
    async fn post_form(
        &self,
        url: &Url,
        uri: &http::Uri,
        params: &[(&str, &str)],
        what: &'static str,
    ) -> Result<transport::Answer, Error> {
        // The assertion's audience stays the token URL (or the configured
        // one): servers accept it at every endpoint that authenticates.
        let auth = tokio::time::timeout(
            self.settings.timeout,
            self.settings.auth.for_request(&self.settings.url),
        )
        .await
        .unwrap_or_else(|_| Err(Error::timeout(self.settings.timeout)))?;
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(params);
            auth.append_to(&mut form);
            form.finish()
        };
        let mut request = http::Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(value) = auth.header() {
            headers.insert(header::AUTHORIZATION, value.clone());
        }
        tracing::debug!(target: "tower_oauth2", %url, what, "request");
        match self
            .settings
            .transport
            .send(request, self.settings.timeout, self.settings.max_body)
            .await
        {
            Ok(answer) => Ok(answer),
            Err(Failure::TooLarge { status, headers }) => Err(too_large(
                status,
                self.settings.max_body,
                retry_after(&headers),
            )),
            Err(Failure::Error(error)) => Err(error),
        }
    }

    /// Sends one token request with `params` (plus the client authentication
    /// and any configured extra parameters) and reads the answer.
    ///
    /// `requested_scopes` are reported as the token's scopes when the server
    /// does not name them. The lifetime counts from the moment the request is
    /// sent. An OAuth error body becomes [`ErrorKind::OAuth`] whatever the
    /// HTTP status; any other non-success status becomes [`ErrorKind::Status`];
    /// a success body that is not a usable bearer token becomes
    /// [`ErrorKind::InvalidResponse`].
    ///
    /// [`ErrorKind::OAuth`]: crate::ErrorKind::OAuth
    /// [`ErrorKind::Status`]: crate::ErrorKind::Status
    /// [`ErrorKind::InvalidResponse`]: crate::ErrorKind::InvalidResponse
    pub async fn exchange(
        &self,
        params: &[(&str, &str)],
        requested_scopes: &[String],
    ) -> Result<Token, Error> {
        self.request(params, requested_scopes)
            .await
            .map_err(|refused| refused.error)
    }

    /// [`exchange`](Self::exchange), handing back the refresh token of a
    /// success answer that was refused, for the grants that rotate.
    pub(crate) async fn request(
        &self,
        params: &[(&str, &str)],
        requested_scopes: &[String],
    ) -> Result<Token, Refused> {
        #[cfg(dpop)]
        if let Some((key, htu)) = &self.settings.dpop {
            let sent_nonce = key.nonce(htu.origin());
            let result = match self.attempt(params, requested_scopes).await {
                // RFC 9449 §8: the server wants a nonce, and gave a new one.
                // Once: a server that keeps asking is refusing.
                Err(refused)
                    if refused.refresh_token.is_none()
                        && asks_for_nonce(&refused.error)
                        && key
                            .nonce(htu.origin())
                            .is_some_and(|now| sent_nonce.as_deref() != Some(&*now)) =>
                {
                    tracing::debug!(target: "tower_oauth2", "token request retried with the server's DPoP nonce");
                    self.attempt(params, requested_scopes).await
                }
                other => other,
            };
            return result.map(|token| token.bind_dpop(key));
        }
        self.attempt(params, requested_scopes).await
    }

    /// One token request.
    async fn attempt(
        &self,
        params: &[(&str, &str)],
        requested_scopes: &[String],
    ) -> Result<Token, Refused> {
        let grant_type = params
            .iter()
            .find(|(name, _)| *name == "grant_type")
            .map_or("", |(_, value)| *value);
        // Per request: a client assertion is fresh every time, retries too.
        // A callback that hangs is bounded like the request it is for.
        let auth = tokio::time::timeout(
            self.settings.timeout,
            self.settings.auth.for_request(&self.settings.url),
        )
        .await
        .unwrap_or_else(|_| Err(Error::timeout(self.settings.timeout)));
        let auth = match auth {
            Ok(auth) => auth,
            Err(error) => {
                tracing::warn!(target: "tower_oauth2", grant_type, %error, "token request not sent");
                return Err(error.into());
            }
        };
        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.extend_pairs(params);
            form.extend_pairs(&self.settings.extra_params);
            auth.append_to(&mut form);
            form.finish()
        };

        let mut request = http::Request::new(body);
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.settings.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Some(value) = auth.header() {
            headers.insert(header::AUTHORIZATION, value.clone());
        }
        #[cfg(dpop)]
        if let Some((key, htu)) = &self.settings.dpop {
            match key.token_request_proof(htu) {
                Ok(proof) => {
                    headers.insert(crate::dpop::DPOP, proof);
                }
                Err(error) => return Err(error.into()),
            }
        }

        let sent_at = clock::now();
        tracing::debug!(target: "tower_oauth2", url = %self.settings.url, grant_type, "token request");
        let result = self
            .send(request, sent_at, requested_scopes)
            .await
            .map(|token| match &self.settings.x5t_s256 {
                Some(x5t) => token.bind_certificate(x5t.clone()),
                None => token,
            });
        match &result {
            Ok(token) => tracing::debug!(
                target: "tower_oauth2",
                grant_type,
                expires_in = ?token.expires_in(),
                "token received"
            ),
            // RFC 8628 §3.5: the expected answers while a person decides.
            Err(Refused { error, .. })
                if matches!(
                    error.oauth_code().map(crate::OAuthErrorCode::as_str),
                    Some("authorization_pending" | "slow_down")
                ) =>
            {
                tracing::debug!(target: "tower_oauth2", grant_type, %error, "authorization pending")
            }
            Err(Refused {
                error,
                refresh_token,
            }) => tracing::warn!(
                target: "tower_oauth2",
                grant_type,
                %error,
                refresh_token_kept = refresh_token.is_some(),
                "token request failed"
            ),
        }
        result
    }

    async fn send(
        &self,
        request: http::Request<String>,
        sent_at: clock::Instant,
        requested_scopes: &[String],
    ) -> Result<Token, Refused> {
        let answer = match self
            .settings
            .transport
            .send(request, self.settings.timeout, self.settings.max_body)
            .await
        {
            Ok(answer) => answer,
            Err(Failure::TooLarge { status, headers }) => {
                let retry_after = retry_after(&headers);
                return Err(too_large(status, self.settings.max_body, retry_after).into());
            }
            Err(Failure::Error(error)) => return Err(error.into()),
        };
        let retry_after = retry_after(&answer.headers);
        #[cfg(dpop)]
        if let Some((key, htu)) = &self.settings.dpop {
            key.remember_nonce(htu.origin(), &answer.headers);
        }
        response::parse(
            answer.status,
            &answer.body,
            sent_at,
            requested_scopes,
            self.settings.leniency,
        )
        .map_err(|refused| Refused {
            error: refused.error.with_retry_after_opt(retry_after),
            ..refused
        })
    }
}

/// What a [`TokenEndpoint::revoke`] gives back (RFC 7009 §2.1): a hint for
/// the server, which looks the token up faster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenTypeHint {
    /// `refresh_token`.
    RefreshToken,
    /// `access_token`.
    AccessToken,
}

impl TokenTypeHint {
    /// The value sent as `token_type_hint`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RefreshToken => "refresh_token",
            Self::AccessToken => "access_token",
        }
    }
}

/// An OAuth error body (RFC 6749 §5.2), whatever the status.
fn oauth_error(status: &StatusCode, body: &[u8]) -> Option<Error> {
    let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = json.get("error")?.as_str().filter(|c| !c.is_empty())?;
    let description = json
        .get("error_description")
        .and_then(serde_json::Value::as_str);
    Some(Error::oauth(crate::OAuthErrorCode::parse(code), description).with_status(*status))
}

/// Whether a token endpoint error is `use_dpop_nonce` (RFC 9449 §8).
#[cfg(dpop)]
fn asks_for_nonce(error: &Error) -> bool {
    matches!(
        error.oauth_code(),
        Some(crate::OAuthErrorCode::UseDpopNonce)
    )
}

fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    headers.get(header::RETRY_AFTER).and_then(parse_retry_after)
}

/// An oversized error page is still an error status; an oversized success is not.
fn too_large(status: StatusCode, limit: usize, retry_after: Option<Duration>) -> Error {
    let error = if status.is_success() {
        Error::too_large(limit).with_status(status)
    } else {
        Error::http_status(status)
    };
    error.with_retry_after_opt(retry_after)
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = httpdate::parse_http_date(text).ok()?;
    Some(
        when.duration_since(clock::wall_now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Checks a URL the crate sends credentials or users to (`what` names it in
/// errors: "token URL", "issuer URL", ...): absolute, `https` (or `http` to
/// loopback), no fragment, no credentials in it.
pub(crate) fn validate_url(raw: &str, what: &str) -> Result<Url, Error> {
    validate_url_allowing(raw, what, &HttpHosts::default())
}

/// [`validate_url`], also accepting plain `http` to the hosts in `http`
/// (the user's `danger_allow_http_hosts`).
pub(crate) fn validate_url_allowing(raw: &str, what: &str, http: &HttpHosts) -> Result<Url, Error> {
    http.check()?;
    let url =
        Url::parse(raw).map_err(|e| Error::config(format!("{what} is not a valid URL: {e}")))?;
    if url.fragment().is_some() {
        return Err(Error::config(format!("{what} must not have a #fragment")));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::config(format!("{what} must not carry credentials")));
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        "http" if http.allows(&url) => Ok(url),
        "http" => Err(Error::config(format!(
            "{what} must use https (plain http is allowed only to loopback hosts, \
             and to test hosts listed with `danger_allow_http_hosts`)"
        ))),
        _ => Err(Error::config(format!("{what} must be an https URL"))),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Domain(domain)) => domain.eq_ignore_ascii_case("localhost"),
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// The hosts a user allowed to be reached over plain `http`
/// (`danger_allow_http_hosts`): matched exactly, case-insensitively, port
/// and path aside. Empty by default. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct HttpHosts {
    hosts: Arc<[Host]>,
    /// The position (from 1) of the first entry that is not a host name or
    /// IP address, refused when the list is used. Not the entry itself: a
    /// URL pasted by mistake may carry credentials.
    invalid: Option<usize>,
}

impl std::fmt::Debug for HttpHosts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.hosts.iter().map(|h| h.to_string()))
            .finish()
    }
}

/// The hosts already warned about, once per process each.
static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

impl HttpHosts {
    pub(crate) fn new<I>(hosts: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut parsed = Vec::new();
        let mut invalid = None;
        for (position, entry) in hosts.into_iter().enumerate() {
            match parse_host(&entry.into()) {
                Some(host) => parsed.push(host),
                None => {
                    invalid.get_or_insert(position + 1);
                }
            }
        }
        Self {
            hosts: parsed.into(),
            invalid,
        }
    }

    /// Both lists: a grant's own and the one its server metadata was read with.
    pub(crate) fn union(&self, other: &Self) -> Self {
        if other.hosts.is_empty() && other.invalid.is_none() {
            return self.clone();
        }
        Self {
            hosts: self
                .hosts
                .iter()
                .chain(other.hosts.iter())
                .cloned()
                .collect(),
            invalid: self.invalid.or(other.invalid),
        }
    }

    /// Refuses a list with an entry that is not a host.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match &self.invalid {
            None => Ok(()),
            Some(position) => Err(Error::config(format!(
                "danger_allow_http_hosts: entry {position} is not a host name or IP address \
                 (give `keycloak`, not `http://keycloak:8080`)"
            ))),
        }
    }

    /// Whether `url`'s host is listed; warns the first time a host is used.
    fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host() else {
            return false;
        };
        let listed = self.hosts.iter().any(|listed| match (listed, &host) {
            (Host::Domain(a), Host::Domain(b)) => a.eq_ignore_ascii_case(b),
            (Host::Ipv4(a), Host::Ipv4(b)) => a == b,
            (Host::Ipv6(a), Host::Ipv6(b)) => a == b,
            _ => false,
        });
        if listed {
            let host = host.to_string();
            let first = WARNED
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(host.clone());
            if first {
                tracing::warn!(
                    target: "tower_oauth2",
                    %host,
                    "plain http allowed by danger_allow_http_hosts: credentials and tokens \
                     sent to this host travel unencrypted; use it for test setups only"
                );
            }
        }
        listed
    }
}

/// A host name or IP address as a URL would hold it (lowercased, IPv6 with
/// or without brackets); `None` for anything else (a scheme, port, path).
fn parse_host(entry: &str) -> Option<Host> {
    let entry = entry.trim();
    if let Ok(ip) = entry.parse::<Ipv6Addr>() {
        return Some(Host::Ipv6(ip));
    }
    // `Host::parse` refuses `:`, `/`, `@`, spaces and the like.
    Host::parse(entry).ok()
}

/// The settings every grant shares; each grant's builder wraps one.
#[derive(Default, Clone)]
pub(crate) struct EndpointSettings {
    pub(crate) token_url: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<SecretString>,
    pub(crate) auth_method: Option<AuthMethod>,
    pub(crate) transport: Option<Transport>,
    pub(crate) metadata: Option<crate::discovery::ServerMetadata>,
    pub(crate) assertion: AssertionSettings,
    pub(crate) timeout: Option<Duration>,
    pub(crate) max_body: Option<usize>,
    pub(crate) extra_params: Vec<(String, String)>,
    pub(crate) leniency: Leniency,
    pub(crate) http_hosts: HttpHosts,
    pub(crate) revocation_url: Option<String>,
    pub(crate) par_url: Option<String>,
    pub(crate) device_url: Option<String>,
    #[cfg(dpop)]
    pub(crate) dpop: Option<crate::DpopKey>,
    pub(crate) client_identity: Option<ClientIdentity>,
    pub(crate) tls_roots: Option<Vec<u8>>,
}

impl EndpointSettings {
    pub(crate) fn build(self) -> Result<TokenEndpoint, Error> {
        self.http_hosts.check()?;
        // A client that presents a certificate uses the server's mutual-TLS
        // endpoints where it names them (RFC 8705 §5).
        let mtls =
            self.client_identity.is_some() || self.auth_method.is_some_and(AuthMethod::is_mtls);
        let discovered = |name: &str, plain: Option<&Url>| -> Option<Url> {
            let metadata = self.metadata.as_ref()?;
            match mtls {
                true => metadata.mtls_endpoint_alias(name).or(plain).cloned(),
                false => plain.cloned(),
            }
        };
        let (raw_url, http_hosts) = match (self.token_url, &self.metadata) {
            (Some(url), _) => (url, self.http_hosts),
            // Discovery read the document allowing these hosts over http:
            // its token endpoint may name one of them.
            (None, Some(metadata)) => (
                discovered("token_endpoint", Some(metadata.token_endpoint()))
                    .map(String::from)
                    .unwrap_or_default(),
                self.http_hosts.union(metadata.http_hosts()),
            ),
            (None, None) => return Err(Error::config("token_url is required")),
        };
        let url = validate_url_allowing(&raw_url, "token URL", &http_hosts)?;
        // Set, or else discovered: checked by the token URL's rules.
        let side = |set: Option<String>, discovered: Option<Url>, what: &str| {
            let raw = set.or_else(|| discovered.map(String::from));
            raw.map(|raw| {
                let url = validate_url_allowing(&raw, what, &http_hosts)?;
                let uri = transport::to_uri(&url)?;
                Ok::<_, Error>((url, uri))
            })
            .transpose()
        };
        let metadata = self.metadata.as_ref();
        let revocation = side(
            self.revocation_url.clone(),
            discovered(
                "revocation_endpoint",
                metadata.and_then(|m| m.revocation_endpoint()),
            ),
            "revocation URL",
        )?;
        let par = side(
            self.par_url.clone(),
            discovered(
                "pushed_authorization_request_endpoint",
                metadata.and_then(|m| m.pushed_authorization_request_endpoint()),
            ),
            "pushed authorization request URL",
        )?;
        let device = side(
            self.device_url.clone(),
            discovered(
                "device_authorization_endpoint",
                metadata.and_then(|m| m.device_authorization_endpoint()),
            ),
            "device authorization URL",
        )?;
        let client_id = self
            .client_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::config("client_id is required"))?;
        let assertion = self.assertion.build(&client_id)?;
        if let (Some(metadata), Some(alg)) = (
            &self.metadata,
            assertion.as_ref().and_then(|a| a.algorithm()),
        ) {
            metadata.check_signing_alg(alg)?;
        }
        let has_secret = self.client_secret.is_some();
        let method = match (self.auth_method, &self.metadata) {
            (Some(method), _) => method,
            // A key or an assertion source was given: that is the choice.
            (None, _) if assertion.is_some() => AuthMethod::PrivateKeyJwt,
            // A certificate and nothing else to authenticate with.
            (None, Some(metadata)) if self.client_identity.is_some() && !has_secret => {
                metadata.choose_mtls_auth_method()?
            }
            (None, None) if self.client_identity.is_some() && !has_secret => {
                AuthMethod::TlsClientAuth
            }
            (None, Some(metadata)) => metadata.choose_auth_method(has_secret)?,
            (None, None) if has_secret => AuthMethod::ClientSecretBasic,
            (None, None) => AuthMethod::None,
        };
        let auth = ClientAuth::new(method, client_id.clone(), self.client_secret, assertion)?;
        for (name, _) in &self.extra_params {
            if name.is_empty() || RESERVED_PARAMS.contains(&name.as_str()) {
                return Err(Error::config(format!(
                    "extra parameter `{name}` is set by the crate itself; use the builder method for it"
                )));
            }
        }
        let uri = transport::to_uri(&url)?;
        let transport = match self.transport {
            Some(_) if self.tls_roots.is_some() => {
                return Err(Error::config(
                    "tls_root_certificates_pem configures the crate's own HTTP client; \
                     add the roots to the client given to transport or http_client instead",
                ))
            }
            // The user's client presents the certificate (or not: the
            // crate cannot see its TLS configuration).
            Some(transport) => transport,
            None => {
                if method.is_mtls() && self.client_identity.is_none() {
                    return Err(Error::config(format!(
                        "{} needs the client certificate: set client_certificate, \
                         or give a transport that presents it",
                        method.as_str()
                    )));
                }
                Transport::default_client_with(
                    self.client_identity.as_ref(),
                    self.tls_roots.as_deref(),
                )?
            }
        };
        let timeout = self.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err(Error::config("timeout must be greater than zero"));
        }
        #[cfg(dpop)]
        let dpop = match self.dpop {
            Some(key) => {
                let htu = crate::dpop::Htu::of_url(&url)
                    .ok_or_else(|| Error::config("the token URL names no origin for DPoP"))?;
                Some((key, htu))
            }
            None => None,
        };
        #[cfg_attr(not(dpop), allow(unused_mut))]
        let mut leniency = self.leniency;
        #[cfg(dpop)]
        {
            leniency.dpop = dpop.is_some();
        }
        Ok(TokenEndpoint {
            settings: Arc::new(Settings {
                #[cfg(dpop)]
                dpop,
                url,
                uri,
                client_id,
                auth,
                transport,
                timeout,
                max_body: self.max_body.unwrap_or(DEFAULT_MAX_RESPONSE_BYTES),
                extra_params: self.extra_params,
                leniency,
                revocation,
                par,
                device,
                x5t_s256: self
                    .client_identity
                    .as_ref()
                    .map(|identity| Arc::from(identity.x5t_s256())),
            }),
        })
    }
}

/// Writes the builder methods every grant shares, documented once here.
/// Each builder using it has a field `endpoint: EndpointSettings`.
macro_rules! endpoint_settings {
    () => {
        /// The token endpoint URL. Must be `https`, or `http` to a loopback
        /// host or to a host listed with
        /// [`danger_allow_http_hosts`](Self::danger_allow_http_hosts).
        pub fn token_url(mut self, url: impl Into<String>) -> Self {
            self.endpoint.token_url = Some(url.into());
            self
        }

        /// Takes the token endpoint from discovered server metadata and, unless
        /// [`auth_method`](Self::auth_method) is set, lets the metadata choose
        /// the client authentication (see [`discovery`](crate::discovery)). A
        /// [`token_url`](Self::token_url) set as well wins.
        pub fn metadata(mut self, metadata: &crate::discovery::ServerMetadata) -> Self {
            self.endpoint.metadata = Some(metadata.clone());
            self
        }

        /// The client identifier.
        pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
            self.endpoint.client_id = Some(client_id.into());
            self
        }

        /// The client secret. Without one the client is public
        /// ([`AuthMethod::None`](crate::AuthMethod::None)).
        pub fn client_secret(mut self, secret: impl Into<String>) -> Self {
            self.endpoint.client_secret = Some(secrecy::SecretString::from(secret.into()));
            self
        }

        /// How the client authenticates; defaults to
        /// [`AuthMethod::PrivateKeyJwt`](crate::AuthMethod::PrivateKeyJwt)
        /// with a key or assertion callback,
        /// [`AuthMethod::ClientSecretBasic`](crate::AuthMethod::ClientSecretBasic)
        /// with a secret and [`AuthMethod::None`](crate::AuthMethod::None)
        /// with neither.
        pub fn auth_method(mut self, method: crate::AuthMethod) -> Self {
            self.endpoint.auth_method = Some(method);
            self
        }

        /// Authenticates with `private_key_jwt` (RFC 7523 §2.2): every token
        /// request carries a fresh assertion signed with `key`. Implies
        /// [`AuthMethod::PrivateKeyJwt`](crate::AuthMethod::PrivateKeyJwt);
        /// replaces a [`client_assertion`](Self::client_assertion) callback.
        #[cfg(signing)]
        #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
        pub fn private_key_jwt(mut self, key: crate::PrivateKey) -> Self {
            self.endpoint.assertion.source = Some(crate::endpoint::AssertionSource::Key(key));
            self
        }

        /// The `aud` of the client assertions. Defaults to the token URL;
        /// some servers want their issuer identifier instead. Used by
        /// `private_key_jwt` and handed to a
        /// [`client_assertion_with`](Self::client_assertion_with) callback
        /// as [`AssertionContext::audience`](crate::endpoint::AssertionContext::audience);
        /// `build` refuses it next to a
        /// [`client_assertion`](Self::client_assertion) callback, which would
        /// never see it, or without any assertion source.
        pub fn client_assertion_audience(mut self, audience: impl Into<String>) -> Self {
            self.endpoint.assertion.audience = Some(audience.into());
            self
        }

        /// How long a signed assertion is valid (`exp` - `iat`): between 1 s
        /// and 1 h, 120 s by default. Only for
        /// [`private_key_jwt`](Self::private_key_jwt): `build` refuses it
        /// next to a callback, which dates its own assertions.
        #[cfg(signing)]
        #[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
        pub fn client_assertion_lifetime(mut self, lifetime: std::time::Duration) -> Self {
            self.endpoint.assertion.lifetime = Some(lifetime);
            self
        }

        /// Authenticates with a client assertion the application makes:
        /// `assertion` is called once before every token request, retries
        /// included, and its answer is sent as `client_assertion` (type
        /// `jwt-bearer`) beside `client_id`. For a Kubernetes projected
        /// service-account token, re-read each time because the kubelet
        /// rotates it:
        /// `.client_assertion(|| tokio::fs::read_to_string("/var/run/secrets/tokens/oauth"))`.
        /// A callback that signs the assertion itself (a KMS, say) wants
        /// the request's token URL, client id and audience:
        /// [`client_assertion_with`](Self::client_assertion_with).
        ///
        /// Surrounding whitespace is trimmed. An error, or an empty string,
        /// fails the token request with a transient
        /// [`ErrorKind::ClientAssertion`](crate::ErrorKind::ClientAssertion)
        /// (the error is its source) without sending it. Implies
        /// [`AuthMethod::PrivateKeyJwt`](crate::AuthMethod::PrivateKeyJwt);
        /// replaces a key given to `private_key_jwt` or an earlier callback.
        /// `client_assertion_audience` and `client_assertion_lifetime` would
        /// be ignored, so `build` refuses them.
        pub fn client_assertion<F, Fut, E>(mut self, assertion: F) -> Self
        where
            F: Fn() -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = Result<String, E>> + Send + 'static,
            E: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            self.endpoint.assertion.source =
                Some(crate::endpoint::AssertionSource::callback(assertion));
            self
        }

        /// Like [`client_assertion`](Self::client_assertion), with the
        /// request's [`AssertionContext`](crate::endpoint::AssertionContext):
        /// the token URL, the client id (the assertion's `iss` and `sub`)
        /// and the audience (its `aud`: the token URL, or
        /// [`client_assertion_audience`](Self::client_assertion_audience)).
        /// For a signer of the application's own, such as a KMS:
        ///
        /// ```no_run
        /// # async fn sign_with_kms(iss: &str, aud: &str) -> Result<String, std::io::Error> { unimplemented!() }
        /// let grant = tower_oauth2::ClientCredentials::builder()
        ///     .token_url("https://auth.example.com/oauth2/token")
        ///     .client_id("my-service")
        ///     .client_assertion_with(|ctx| async move {
        ///         sign_with_kms(ctx.client_id(), ctx.audience()).await
        ///     })
        ///     .build()?;
        /// # Ok::<(), tower_oauth2::Error>(())
        /// ```
        ///
        /// `build` refuses `client_assertion_lifetime` next to it: the
        /// callback sets `exp` itself.
        pub fn client_assertion_with<F, Fut, E>(mut self, assertion: F) -> Self
        where
            F: Fn(crate::endpoint::AssertionContext) -> Fut + Send + Sync + 'static,
            Fut: std::future::Future<Output = Result<String, E>> + Send + 'static,
            E: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            self.endpoint.assertion.source =
                Some(crate::endpoint::AssertionSource::callback_with(assertion));
            self
        }

        /// Asks for DPoP-bound tokens (RFC 9449): every token request carries
        /// a proof signed with `key`, the server's `token_type: DPoP` answer
        /// is accepted, and [`BearerAuth`](crate::BearerAuth) sends a proof
        /// with every request that carries such a token. A `use_dpop_nonce`
        /// answer is retried once with the server's nonce (and a fresh
        /// client assertion). See [`dpop`](crate::dpop).
        #[cfg(dpop)]
        #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
        pub fn dpop(mut self, key: crate::DpopKey) -> Self {
            self.endpoint.dpop = Some(key);
            self
        }

        /// Presents this client certificate to the authorization server
        /// (RFC 8705): mutual-TLS client authentication
        /// ([`AuthMethod::TlsClientAuth`](crate::AuthMethod::TlsClientAuth),
        /// the default for a client with no secret and no assertion, or
        /// [`AuthMethod::SelfSignedTlsClientAuth`](crate::AuthMethod::SelfSignedTlsClientAuth)),
        /// and access tokens bound to the certificate where the server binds
        /// them (RFC 8705 §3), whatever the auth method. Discovered
        /// [`metadata`](Self::metadata)'s `mtls_endpoint_aliases` are used in
        /// place of its endpoints.
        ///
        /// The crate's own reqwest client presents it (an identity made by
        /// [`ClientIdentity::from_pem`](crate::endpoint::ClientIdentity::from_pem)).
        /// With [`transport`](Self::transport) or `http_client`, that client
        /// must present it itself (on its TLS configuration), and the
        /// identity only names the certificate, for
        /// [`Token::x5t_s256`](crate::Token::x5t_s256);
        /// [`ClientIdentity::from_certificate_pem`](crate::endpoint::ClientIdentity::from_certificate_pem)
        /// then does without the key.
        pub fn client_certificate(mut self, identity: crate::endpoint::ClientIdentity) -> Self {
            self.endpoint.client_identity = Some(identity);
            self
        }

        /// Trusts these CA certificates (PEM, one or more), beside the
        /// platform's, for the authorization server's TLS certificate: a
        /// server on a private PKI. Only for the crate's own reqwest
        /// client: `build` refuses it next to [`transport`](Self::transport)
        /// or `http_client` (give those clients the roots), and without a
        /// reqwest TLS feature.
        pub fn tls_root_certificates_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
            self.endpoint.tls_roots = Some(pem.as_ref().to_vec());
            self
        }

        /// The revocation endpoint (RFC 7009), for
        /// [`TokenEndpoint::revoke`](crate::TokenEndpoint::revoke) and
        /// [`OAuthClient::revoke`](crate::OAuthClient::revoke). Defaults to
        /// the [`metadata`](Self::metadata)'s `revocation_endpoint`. Same
        /// URL rules as the token URL.
        pub fn revocation_url(mut self, url: impl Into<String>) -> Self {
            self.endpoint.revocation_url = Some(url.into());
            self
        }

        /// The pushed authorization request endpoint (RFC 9126), for
        /// [`AuthorizationRequestBuilder::push`](crate::grant::AuthorizationRequestBuilder::push).
        /// Defaults to the [`metadata`](Self::metadata)'s
        /// `pushed_authorization_request_endpoint`. Same URL rules as the
        /// token URL.
        pub fn par_url(mut self, url: impl Into<String>) -> Self {
            self.endpoint.par_url = Some(url.into());
            self
        }

        /// The device authorization endpoint (RFC 8628), for
        /// [`DeviceAuthorization::start`](crate::DeviceAuthorization::start).
        /// Defaults to the [`metadata`](Self::metadata)'s
        /// `device_authorization_endpoint`. Same URL rules as the token URL.
        pub fn device_authorization_url(mut self, url: impl Into<String>) -> Self {
            self.endpoint.device_url = Some(url.into());
            self
        }

        /// Adds a form parameter to every token request (sent once, encoded).
        /// Names the crate sets itself (`grant_type`, `scope`, ...) are refused
        /// by `build`.
        pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
            self.endpoint.extra_params.push((name.into(), value.into()));
            self
        }

        /// Sends token requests with this reqwest client. Build it with
        /// `redirect(reqwest::redirect::Policy::none())`: a client that follows
        /// redirects may send the credentials to the redirect target before the
        /// crate can refuse the answer.
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
            self.endpoint.transport = Some(crate::endpoint::Transport::reqwest(client));
            self
        }

        /// Sends token requests through any tower service: a hyper-util
        /// client with your proxy, TLS and DNS settings, say. The crate still
        /// requires `https` (except to loopback and to the hosts in
        /// [`danger_allow_http_hosts`](Self::danger_allow_http_hosts)),
        /// refuses redirect answers, applies [`timeout`](Self::timeout) and
        /// reads at most
        /// [`max_response_bytes`](Self::max_response_bytes); the service must
        /// not follow redirects itself. The request body is built from a
        /// `String`, so `String`, `Full<Bytes>` and most body types fit.
        /// The service's errors become the source of an
        /// [`ErrorKind::Network`](crate::ErrorKind::Network) error: use one
        /// whose errors never quote the request body (hyper-util's do not),
        /// since the form may hold the client secret or a refresh token.
        pub fn transport<B>(mut self, service: impl crate::endpoint::HttpService<B>) -> Self {
            self.endpoint.transport = Some(crate::endpoint::Transport::new(service));
            self
        }

        /// Timeout of one token request (default 30 s): sending it and
        /// reading the answer, and apart from that, the
        /// [`client_assertion`](Self::client_assertion) callback.
        pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
            self.endpoint.timeout = Some(timeout);
            self
        }

        /// Largest response body read, in bytes (default 1 MiB).
        pub fn max_response_bytes(mut self, limit: usize) -> Self {
            self.endpoint.max_body = Some(limit);
            self
        }

        /// **Dangerous: for test setups only.** Allows a plain `http` token
        /// URL to these hosts (a Keycloak container reached as
        /// `http://keycloak:8080` in a CI's docker-compose, say), where the
        /// client secret, assertions and tokens travel unencrypted.
        ///
        /// Each entry is a host name or IP address, matched exactly and
        /// case-insensitively (`"keycloak"` allows `http://KEYCLOAK:8080/...`
        /// but not `http://keycloak.example`); no scheme, port or path, else
        /// `build` fails with [`ErrorKind::Config`](crate::ErrorKind::Config).
        /// Any other host keeps the rule: `https`, or `http` to loopback. The
        /// first use of each listed host logs a `tracing` warning. Replaces
        /// an earlier list. With [`metadata`](Self::metadata), the hosts the
        /// [`Discovery`](crate::discovery::Discovery) that read it allowed
        /// count as listed too.
        ///
        /// ```
        /// # use tower_oauth2::ClientCredentials;
        /// let grant = ClientCredentials::builder()
        ///     .token_url("http://keycloak:8080/realms/ci/protocol/openid-connect/token")
        ///     .client_id("ci-client")
        ///     .client_secret("ci-secret")
        ///     .danger_allow_http_hosts(["keycloak"])
        ///     .build()?;
        /// # Ok::<(), tower_oauth2::Error>(())
        /// ```
        pub fn danger_allow_http_hosts<I>(mut self, hosts: I) -> Self
        where
            I: IntoIterator,
            I::Item: Into<String>,
        {
            self.endpoint.http_hosts = crate::endpoint::HttpHosts::new(hosts);
            self
        }

        /// Accepts a success response without `token_type` as a bearer token.
        /// Off by default: RFC 6749 requires the field.
        pub fn allow_missing_token_type(mut self, allow: bool) -> Self {
            self.endpoint.leniency.missing_token_type = allow;
            self
        }
    };
}
pub(crate) use endpoint_settings;

/// Builds a [`TokenEndpoint`]. Made by [`TokenEndpoint::builder`].
#[derive(Default)]
pub struct TokenEndpointBuilder {
    endpoint: EndpointSettings,
}

impl std::fmt::Debug for TokenEndpointBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenEndpointBuilder")
            .field("token_url", &self.endpoint.token_url)
            .finish_non_exhaustive()
    }
}

impl TokenEndpointBuilder {
    endpoint_settings!();

    /// Checks the settings and builds the endpoint.
    pub fn build(self) -> Result<TokenEndpoint, Error> {
        self.endpoint.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_rules() {
        for good in [
            "https://identity.officernd.com/oauth/token",
            "http://127.0.0.1:8080/token",
            "http://localhost/token",
            "http://[::1]:9/token",
            "https://example.com/token?tenant=a",
        ] {
            assert!(validate_url(good, "token URL").is_ok(), "{good}");
        }
        for bad in [
            "http://example.com/token",
            "http://10.0.0.1/token",
            "https://example.com/token#frag",
            "ftp://example.com/token",
            "https://user:pw@example.com/token",
            "not a url",
            "/relative",
        ] {
            assert_eq!(
                validate_url(bad, "token URL").unwrap_err().kind(),
                &crate::ErrorKind::Config,
                "{bad}"
            );
        }
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(
            parse_retry_after(&HeaderValue::from_static("120")),
            Some(Duration::from_secs(120))
        );
        let past = HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT");
        assert_eq!(parse_retry_after(&past), Some(Duration::ZERO));
        assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    }

    #[test]
    fn reserved_params_are_refused() {
        let err = TokenEndpoint::builder()
            .token_url("https://example.com/token")
            .client_id("id")
            .param("grant_type", "password")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), &crate::ErrorKind::Config);
    }
}
