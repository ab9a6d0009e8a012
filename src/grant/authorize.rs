//! The one-time authorization request of the code flow (RFC 6749 §4.1.1),
//! with PKCE (RFC 7636) and `state`, and the check of its callback.

use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use url::Url;

use crate::{Error, OAuthErrorCode};

/// Where to send the person who authorizes the application, and how to check
/// what comes back.
///
/// Made fresh for every authorization: it generates a PKCE verifier (32
/// random bytes) with its S256 challenge, and a random `state`. Keep it until
/// the callback arrives, then hand the callback URL to
/// [`callback`](Self::callback), which checks the `state` and returns the
/// code, and build the grant with
/// [`AuthorizationCodeBuilder::authorized`](crate::grant::AuthorizationCodeBuilder::authorized).
///
/// ```
/// use tower_oauth2::grant::AuthorizationRequest;
///
/// let request = AuthorizationRequest::builder("https://auth.example.com/authorize")
///     .client_id("my-app")
///     .redirect_uri("http://127.0.0.1:8123/callback")
///     .scope("openid offline_access api.read")
///     .build()?;
/// println!("open {}", request.url());
/// // ... the browser comes back to the redirect URI ...
/// let callback = format!("http://127.0.0.1:8123/callback?code=abc&state={}", request.state());
/// let code = request.callback(&callback)?;
/// # drop(code);
/// # Ok::<(), tower_oauth2::Error>(())
/// ```
pub struct AuthorizationRequest {
    url: Url,
    state: String,
    verifier: SecretString,
    redirect_uri: Option<String>,
    expires_in: Option<std::time::Duration>,
}

impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("url", &self.url.as_str())
            .field("code_verifier", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl AuthorizationRequest {
    /// Starts an authorization request to the server's authorization
    /// endpoint, `authorization_url` (https, or http to loopback).
    pub fn builder(authorization_url: impl Into<String>) -> AuthorizationRequestBuilder {
        AuthorizationRequestBuilder {
            authorization_url: authorization_url.into(),
            client_id: None,
            redirect_uri: None,
            scopes: Vec::new(),
            params: Vec::new(),
            dpop_jkt: None,
            authorization_details: None,
            par: None,
        }
    }

    /// The URL to open in the browser.
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The `state` sent, which the callback must carry back.
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The PKCE verifier, sent with the code exchange.
    pub fn code_verifier(&self) -> &SecretString {
        &self.verifier
    }

    /// How long the `request_uri` of a [pushed](AuthorizationRequestBuilder::push)
    /// request is valid, as the server said; `None` when not pushed.
    pub fn expires_in(&self) -> Option<std::time::Duration> {
        self.expires_in
    }

    /// The `redirect_uri` sent, if any; the code exchange repeats it.
    pub fn redirect_uri(&self) -> Option<&str> {
        self.redirect_uri.as_deref()
    }

    /// Reads the callback: the URL the browser was redirected to (absolute,
    /// or its path and query). Returns the authorization code.
    ///
    /// Errors: [`ErrorKind::Callback`](crate::ErrorKind::Callback) when the
    /// `state` is missing or differs (the callback answers another request,
    /// or was forged) or the `code` is missing; the server's refusal
    /// (`access_denied`, ...) as [`ErrorKind::OAuth`](crate::ErrorKind::OAuth).
    pub fn callback(&self, callback_url: &str) -> Result<SecretString, Error> {
        let base = Url::parse("http://callback.invalid/").expect("a valid URL");
        let url = Url::options()
            .base_url(Some(&base))
            .parse(callback_url)
            .map_err(|_| Error::callback("the callback is not a URL"))?;
        let (mut code, mut state, mut error, mut description) = (None, None, None, None);
        for (name, value) in url.query_pairs() {
            let slot = match name.as_ref() {
                "code" => &mut code,
                "state" => &mut state,
                "error" => &mut error,
                "error_description" => &mut description,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(Error::callback("the callback repeats a parameter"));
            }
        }
        let matches = state.as_deref().is_some_and(|s| {
            // Compared in full whatever the first difference.
            s.len() == self.state.len()
                && s.bytes()
                    .zip(self.state.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0
        });
        if !matches {
            return Err(Error::callback(
                "the callback's state does not match the request's: it answers another request",
            ));
        }
        if let Some(error) = error {
            return Err(Error::oauth(
                OAuthErrorCode::parse(&error),
                description.as_deref(),
            ));
        }
        match code {
            Some(code) if !code.is_empty() => Ok(SecretString::from(code)),
            _ => Err(Error::callback("the callback has no code")),
        }
    }
}

/// Builds an [`AuthorizationRequest`]. Made by [`AuthorizationRequest::builder`].
#[derive(Debug)]
pub struct AuthorizationRequestBuilder {
    authorization_url: String,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scopes: Vec<String>,
    params: Vec<(String, String)>,
    dpop_jkt: Option<String>,
    authorization_details: Option<String>,
    /// The client's endpoints and authentication, for [`push`](Self::push):
    /// set by [`OAuthClient::authorization_request`](crate::OAuthClient::authorization_request).
    pub(crate) par: Option<crate::TokenEndpoint>,
}

impl AuthorizationRequestBuilder {
    /// Binds the authorization code to `key` (RFC 9449 §10): the request
    /// carries `dpop_jkt`, its thumbprint, and the server issues the code
    /// only for a token request proved with that key. Give the same key to
    /// the [`AuthorizationCode`](crate::AuthorizationCode) grant's `dpop`.
    #[cfg(dpop)]
    #[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
    pub fn dpop(mut self, key: &crate::DpopKey) -> Self {
        self.dpop_jkt = Some(key.thumbprint().to_owned());
        self
    }

    /// The client identifier (required).
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Where the server sends the browser back. For a native app, a loopback
    /// address such as `http://127.0.0.1:<port>/callback` (RFC 8252 §7.3).
    pub fn redirect_uri(mut self, uri: impl Into<String>) -> Self {
        self.redirect_uri = Some(uri.into());
        self
    }

    /// Adds scopes from a space-separated string.
    pub fn scope(mut self, scope: impl AsRef<str>) -> Self {
        super::push_scopes(&mut self.scopes, scope.as_ref());
        self
    }

    /// Asks for `authorization_details` (RFC 9396): a JSON array of objects,
    /// each with a `type` the server knows. Sent as the parameter's JSON
    /// text, in the URL or in the [pushed](Self::push) request; the code
    /// exchange's token carries what the server granted. `build` refuses
    /// anything but a non-empty array of objects.
    pub fn authorization_details(mut self, details: &serde_json::Value) -> Self {
        self.authorization_details = Some(details.to_string());
        self
    }

    /// Adds a query parameter (`prompt`, `resource`, `audience`, ...).
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Generates the verifier, challenge and state, and builds the URL.
    pub fn build(self) -> Result<AuthorizationRequest, Error> {
        let (request, _) = self.prepare()?;
        Ok(request)
    }

    /// A pushed authorization request (RFC 9126): generates the verifier,
    /// challenge and state, POSTs every parameter to the server's pushed
    /// authorization request endpoint with the client's authentication, and
    /// builds a URL with only `client_id` and the `request_uri` the server
    /// answered. Nothing of the request travels through the browser, and
    /// the server has checked it (and the client) before a person sees it.
    ///
    /// Needs a builder from
    /// [`OAuthClient::authorization_request`](crate::OAuthClient::authorization_request)
    /// whose client has a `par_url` (set, or from discovery metadata's
    /// `pushed_authorization_request_endpoint`); else
    /// [`ErrorKind::Config`](crate::ErrorKind::Config). The server's refusal
    /// is [`ErrorKind::OAuth`](crate::ErrorKind::OAuth). The `request_uri`
    /// expires quickly (the server says when:
    /// [`AuthorizationRequest::expires_in`]); push right before sending the
    /// person.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::OAuthClient;
    ///
    /// let client = OAuthClient::builder()
    ///     .token_url("https://auth.example.com/token")
    ///     .par_url("https://auth.example.com/par")
    ///     .client_id("my-app")
    ///     .client_secret("s3cret")
    ///     .build()?;
    /// let request = client
    ///     .authorization_request("https://auth.example.com/authorize")
    ///     .redirect_uri("https://app.example.com/callback")
    ///     .push()
    ///     .await?;
    /// println!("open {}", request.url()); // ...?client_id=my-app&request_uri=urn:...
    /// # Ok(())
    /// # }
    /// ```
    pub async fn push(mut self) -> Result<AuthorizationRequest, Error> {
        let endpoint = self.par.take().ok_or_else(|| {
            Error::config("push needs a builder made by OAuthClient::authorization_request")
        })?;
        let (mut request, base) = self.prepare()?;
        let params: Vec<(String, String)> = request.url.query_pairs().into_owned().collect();
        // The authorization URL's own query (a tenant, say) stays in the URL.
        let own: Vec<(String, String)> = base.query_pairs().into_owned().collect();
        let pushed: Vec<(&str, &str)> = params[own.len()..]
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let (request_uri, expires_in) = endpoint.push_authorization(&pushed).await?;
        let mut url = base;
        url.query_pairs_mut()
            .append_pair("client_id", endpoint.client_id())
            .append_pair("request_uri", &request_uri);
        request.url = url;
        request.expires_in = Some(expires_in);
        Ok(request)
    }

    /// The request with its URL, and the authorization URL as given.
    fn prepare(self) -> Result<(AuthorizationRequest, Url), Error> {
        let mut url = crate::endpoint::validate_url(&self.authorization_url, "authorization URL")?;
        let base = url.clone();
        let client_id = self
            .client_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| Error::config("client_id is required"))?;
        super::check_scopes(&self.scopes)?;
        if let Some(details) = &self.authorization_details {
            let valid = serde_json::from_str::<serde_json::Value>(details)
                .ok()
                .and_then(|v| {
                    v.as_array()
                        .map(|a| !a.is_empty() && a.iter().all(|d| d.is_object()))
                })
                .unwrap_or(false);
            if !valid {
                return Err(Error::config(
                    "authorization_details must be a non-empty JSON array of objects",
                ));
            }
        }
        const SET: &[&str] = &[
            "response_type",
            "client_id",
            "redirect_uri",
            "scope",
            "state",
            "code_challenge",
            "code_challenge_method",
            "dpop_jkt",
            "authorization_details",
            "request_uri",
        ];
        if let Some((name, _)) = self.params.iter().find(|(n, _)| SET.contains(&n.as_str())) {
            return Err(Error::config(format!(
                "authorization parameter `{name}` is set by the crate itself"
            )));
        }
        let verifier = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let state = random_token();
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &client_id);
            if let Some(uri) = &self.redirect_uri {
                query.append_pair("redirect_uri", uri);
            }
            if !self.scopes.is_empty() {
                query.append_pair("scope", &self.scopes.join(" "));
            }
            query
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            if let Some(jkt) = &self.dpop_jkt {
                query.append_pair("dpop_jkt", jkt);
            }
            if let Some(details) = &self.authorization_details {
                query.append_pair("authorization_details", details);
            }
            for (name, value) in &self.params {
                query.append_pair(name, value);
            }
        }
        Ok((
            AuthorizationRequest {
                url,
                state,
                verifier: SecretString::from(verifier),
                redirect_uri: self.redirect_uri,
                expires_in: None,
            },
            base,
        ))
    }
}

/// 32 random bytes, base64url without padding: 43 characters, a valid PKCE
/// verifier (RFC 7636 §4.1) and an unguessable state.
fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl AuthorizationRequest {
    #[cfg(test)]
    fn challenge(&self) -> String {
        self.url
            .query_pairs()
            .find(|(n, _)| n == "code_challenge")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{token::expose, ErrorKind};

    fn request() -> AuthorizationRequest {
        AuthorizationRequest::builder("https://auth.example.com/authorize?tenant=a")
            .client_id("app")
            .redirect_uri("http://127.0.0.1:9/callback")
            .scope(" openid  api.read")
            .param("prompt", "consent")
            .build()
            .unwrap()
    }

    #[test]
    fn the_url_carries_every_parameter_once() {
        let request = request();
        let pairs: Vec<(String, String)> = request.url().query_pairs().into_owned().collect();
        let get = |name: &str| {
            let found: Vec<_> = pairs.iter().filter(|(n, _)| n == name).collect();
            assert_eq!(found.len(), 1, "{name}");
            found[0].1.clone()
        };
        assert_eq!(get("tenant"), "a");
        assert_eq!(get("response_type"), "code");
        assert_eq!(get("client_id"), "app");
        assert_eq!(get("redirect_uri"), "http://127.0.0.1:9/callback");
        assert_eq!(get("scope"), "openid api.read");
        assert_eq!(get("code_challenge_method"), "S256");
        assert_eq!(get("prompt"), "consent");
        assert_eq!(get("state"), request.state());
        assert_eq!(request.state().len(), 43);
        // RFC 7636 appendix B's check: challenge = BASE64URL(SHA256(verifier)).
        let verifier = expose(request.code_verifier());
        assert_eq!(verifier.len(), 43);
        assert_eq!(
            request.challenge(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
        );
        assert!(!format!("{request:?}").contains(verifier));
    }

    #[test]
    fn rfc7636_example_challenge() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn every_request_is_new() {
        let (a, b) = (request(), request());
        assert_ne!(a.state(), b.state());
        assert_ne!(expose(a.code_verifier()), expose(b.code_verifier()));
    }

    #[test]
    fn callbacks() {
        let request = request();
        let state = request.state().to_owned();
        let code = request
            .callback(&format!(
                "http://127.0.0.1:9/callback?code=c%2B1&state={state}"
            ))
            .unwrap();
        assert_eq!(expose(&code), "c+1");
        let relative = request.callback(&format!("/callback?state={state}&code=x"));
        assert_eq!(expose(&relative.unwrap()), "x");
        for bad in [
            "/callback?code=x".to_owned(),
            "/callback?code=x&state=other".to_owned(),
            format!("/callback?state={state}"),
            format!("/callback?code=x&code=y&state={state}"),
        ] {
            assert_eq!(
                request.callback(&bad).unwrap_err().kind(),
                &ErrorKind::Callback,
                "{bad}"
            );
        }
        let denied = request
            .callback(&format!(
                "/callback?error=access_denied&error_description=no&state={state}"
            ))
            .unwrap_err();
        assert_eq!(
            denied.kind(),
            &ErrorKind::OAuth(OAuthErrorCode::AccessDenied)
        );
        // A refusal with the wrong state is a forged callback first.
        let forged = request.callback("/callback?error=access_denied&state=x");
        assert_eq!(forged.unwrap_err().kind(), &ErrorKind::Callback);
    }

    #[test]
    fn bad_settings() {
        assert!(
            AuthorizationRequest::builder("http://example.com/authorize")
                .client_id("a")
                .build()
                .is_err()
        );
        assert!(
            AuthorizationRequest::builder("https://example.com/authorize")
                .build()
                .is_err()
        );
        assert!(
            AuthorizationRequest::builder("https://example.com/authorize")
                .client_id("a")
                .param("state", "fixed")
                .build()
                .is_err()
        );
    }
}
