//! The device authorization grant (RFC 8628), for a CLI or a device
//! without a browser.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_oauth2::Error> {
//! use tower_oauth2::{DeviceAuthorization, TokenCache};
//!
//! let device = DeviceAuthorization::builder()
//!     .token_url("https://idp.example/oauth2/token")
//!     .device_authorization_url("https://idp.example/oauth2/device")
//!     .client_id("my-cli")
//!     .scope("openid offline_access")
//!     .build()?;
//! let code = device.start().await?;
//! println!("Open {} and enter {}", code.verification_uri(), code.user_code());
//! let grant = code.wait().await?;
//! let cache = TokenCache::builder(grant).build();
//! cache.token().await?;
//! # Ok(())
//! # }
//! ```

use std::{fmt, time::Duration};

use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::{
    clock::{self, Instant},
    endpoint::{endpoint_settings, EndpointSettings},
    grant::{refresh_token::Rotation, rotation_settings, scope_settings},
    token::expose,
    Error, ErrorKind, OAuthErrorCode, Token, TokenSource,
};

/// The `grant_type` of the device access token request (RFC 8628 §3.4).
pub const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// RFC 8628 §3.2: the interval when the server names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: what `slow_down` adds to the interval, for good.
const SLOW_DOWN: Duration = Duration::from_secs(5);
/// The longest wait between polls after network failures.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// The device authorization grant (RFC 8628): [`start`](Self::start) asks
/// for a user code, the person approves it on another device, and
/// [`DeviceCode::wait`] polls the token endpoint until they have. What it
/// returns refreshes like [`RefreshToken`](crate::RefreshToken), with the
/// same store key, so later runs carry on with
/// [`OAuthClient::refresh_token(None)`](crate::OAuthClient::refresh_token).
///
/// See the [module](crate::grant::device) for an example.
#[derive(Clone)]
pub struct DeviceAuthorization {
    rotation: Rotation,
}

impl fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorization")
            .field("endpoint", &self.rotation.endpoint)
            .finish_non_exhaustive()
    }
}

impl DeviceAuthorization {
    /// Starts configuring the grant.
    pub fn builder() -> DeviceAuthorizationBuilder {
        DeviceAuthorizationBuilder::default()
    }

    pub(crate) fn new(rotation: Rotation) -> Self {
        DeviceAuthorization { rotation }
    }

    /// Keeps the resulting grant's stored state apart from that of other
    /// grants of the same client (one partition per person, say). It goes
    /// into the [`StoreKey`](crate::StoreKey) only as part of a digest.
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.rotation.partition = Some(partition.into());
        self
    }

    /// Asks the device authorization endpoint for a user code (RFC 8628
    /// §3.1), with this client's authentication and scopes. Show the answer
    /// to the person, then [`wait`](DeviceCode::wait).
    ///
    /// An OAuth error answer is [`ErrorKind::OAuth`], a malformed one
    /// [`ErrorKind::InvalidResponse`]; without a device authorization
    /// endpoint, [`ErrorKind::Config`].
    pub async fn start(&self) -> Result<DeviceCode, Error> {
        let scope = self.rotation.scopes.join(" ");
        let mut params = Vec::new();
        if !scope.is_empty() {
            params.push(("scope", scope.as_str()));
        }
        let started = clock::now();
        let fields = self.rotation.endpoint.device_authorization(&params).await?;
        let answer = read_answer(&fields)?;
        tracing::debug!(
            target: "tower_oauth2",
            expires_in = ?answer.expires_in,
            interval = ?answer.interval,
            "device authorization started"
        );
        Ok(DeviceCode {
            deadline: started + answer.expires_in,
            answer,
            rotation: self.rotation.clone(),
        })
    }
}

struct Answer {
    device_code: SecretString,
    user_code: String,
    verification_uri: String,
    verification_uri_complete: Option<String>,
    expires_in: Duration,
    interval: Duration,
}

fn read_answer(fields: &Map<String, Value>) -> Result<Answer, Error> {
    let text = |name: &str| {
        fields
            .get(name)
            .and_then(Value::as_str)
            .filter(|value| !value.is_empty())
            .map(str::to_owned)
    };
    let invalid = Error::invalid_response;
    let device_code = text("device_code")
        .ok_or_else(|| invalid("the device authorization response has no `device_code`"))?;
    let user_code = text("user_code")
        .ok_or_else(|| invalid("the device authorization response has no `user_code`"))?;
    // Some servers (Google's) spell it `verification_url`.
    let verification_uri = text("verification_uri")
        .or_else(|| text("verification_url"))
        .ok_or_else(|| invalid("the device authorization response has no `verification_uri`"))?;
    let expires_in = fields
        .get("expires_in")
        .and_then(Value::as_u64)
        .filter(|secs| *secs > 0)
        .ok_or_else(|| invalid("the device authorization response has no `expires_in`"))?;
    let interval = match fields.get("interval") {
        None | Some(Value::Null) => DEFAULT_INTERVAL,
        Some(value) => value.as_u64().map(Duration::from_secs).ok_or_else(|| {
            invalid("the device authorization response's `interval` is not a number")
        })?,
    };
    Ok(Answer {
        device_code: SecretString::from(device_code),
        user_code,
        verification_uri,
        verification_uri_complete: text("verification_uri_complete"),
        expires_in: Duration::from_secs(expires_in),
        interval,
    })
}

/// A started device authorization: what to show the person, and the
/// device code to poll with. Made by [`DeviceAuthorization::start`].
pub struct DeviceCode {
    answer: Answer,
    deadline: Instant,
    rotation: Rotation,
}

impl fmt::Debug for DeviceCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceCode")
            .field("verification_uri", &self.answer.verification_uri)
            .field("expires_in", &self.answer.expires_in)
            .field("interval", &self.answer.interval)
            .finish_non_exhaustive()
    }
}

impl DeviceCode {
    /// The code the person enters at [`verification_uri`](Self::verification_uri).
    pub fn user_code(&self) -> &str {
        &self.answer.user_code
    }

    /// Where the person goes, on any device with a browser.
    pub fn verification_uri(&self) -> &str {
        &self.answer.verification_uri
    }

    /// The verification URI with the user code in it, when the server gives
    /// one: for a link or a QR code, so the person need not type the code.
    pub fn verification_uri_complete(&self) -> Option<&str> {
        self.answer.verification_uri_complete.as_deref()
    }

    /// How long the codes are valid, from the start.
    pub fn expires_in(&self) -> Duration {
        self.answer.expires_in
    }

    /// When the codes expire.
    pub fn expires_at(&self) -> Instant {
        self.deadline
    }

    /// The wait between polls the server asked for (5 seconds if it named
    /// none); `slow_down` answers lengthen it.
    pub fn interval(&self) -> Duration {
        self.answer.interval
    }

    /// Polls the token endpoint (RFC 8628 §3.4) every
    /// [`interval`](Self::interval) until the person approves, then returns
    /// the grant that hands out the token and refreshes it.
    ///
    /// `authorization_pending` polls again; `slow_down` adds 5 seconds to
    /// the interval for every later poll; a failed connection doubles it (up
    /// to a minute). `access_denied`, `expired_token` and every other error
    /// end the wait as [`ErrorKind::OAuth`] with that code; so does reaching
    /// [`expires_at`](Self::expires_at), as `expired_token`, without a
    /// poll past it. Time runs on tokio's clock.
    pub async fn wait(mut self) -> Result<DeviceGrant, Error> {
        loop {
            let next = clock::now() + self.answer.interval;
            if next >= self.deadline {
                tokio::time::sleep_until(self.deadline).await;
                return Err(Error::oauth(
                    OAuthErrorCode::ExpiredToken,
                    Some("the device code expired before the person approved it"),
                ));
            }
            tokio::time::sleep_until(next).await;
            let params = [
                ("grant_type", DEVICE_CODE),
                ("device_code", expose(&self.answer.device_code)),
            ];
            let result = self
                .rotation
                .endpoint
                .request(&params, &self.rotation.scopes)
                .await;
            let error = match result {
                Ok(token) => {
                    let origin = origin_of(&self.answer.device_code);
                    let first = self.rotation.absorb(token);
                    return Ok(DeviceGrant {
                        first: Some(first),
                        origin,
                        rotation: self.rotation,
                    });
                }
                Err(refused) => refused.error,
            };
            match error.oauth_code().map(OAuthErrorCode::as_str) {
                Some("authorization_pending") => {}
                Some("slow_down") => self.answer.interval += SLOW_DOWN,
                _ if matches!(error.kind(), ErrorKind::Network | ErrorKind::Timeout) => {
                    self.answer.interval = (self.answer.interval * 2).min(MAX_INTERVAL);
                }
                _ => return Err(error),
            }
        }
    }
}

/// Names the authorization a device code starts: a digest, never the code.
fn origin_of(device_code: &SecretString) -> String {
    use sha2::{Digest as _, Sha256};
    let digest = Sha256::digest(format!("device_code:{}", expose(device_code)).as_bytes());
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// An approved device authorization, as a [`TokenSource`]: the first fetch
/// hands out the token the approval brought, later ones refresh, exactly
/// like [`RefreshToken`](crate::RefreshToken). Made by [`DeviceCode::wait`].
pub struct DeviceGrant {
    first: Option<Token>,
    origin: String,
    rotation: Rotation,
}

impl fmt::Debug for DeviceGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceGrant")
            .field("endpoint", &self.rotation.endpoint)
            .finish_non_exhaustive()
    }
}

impl DeviceGrant {
    /// The token the approval brought, until the first fetch takes it.
    pub fn token(&self) -> Option<&Token> {
        self.first.as_ref()
    }

    /// The refresh token the next refresh will send.
    pub fn current_refresh_token(&self) -> Option<&SecretString> {
        self.rotation.refresh_token.as_ref()
    }

    /// Hands out the approval's token while it is valid, then refreshes.
    pub async fn request_token(&mut self) -> Result<Token, Error> {
        if let Some(token) = self.first.take() {
            if token.expires_at().is_none_or(|at| at > clock::now()) {
                return Ok(token);
            }
        }
        self.rotation.refresh().await
    }
}

impl TokenSource for DeviceGrant {
    async fn fetch(&mut self) -> Result<Token, Error> {
        self.request_token().await
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

    fn origin(&self) -> Option<String> {
        Some(self.origin.clone())
    }

    fn needs_authorization(&self) -> bool {
        self.first.is_none() && self.rotation.refresh_token.is_none()
    }

    async fn revoke(&mut self, access_token: Option<&Token>) -> Result<(), Error> {
        self.rotation.revoke(access_token).await
    }
}

/// Builds a [`DeviceAuthorization`]. Made by [`DeviceAuthorization::builder`].
#[derive(Default)]
pub struct DeviceAuthorizationBuilder {
    endpoint: EndpointSettings,
    scopes: Vec<String>,
    param_name: Option<String>,
    on_rotate: Option<crate::grant::refresh_token::RotationHook>,
    partition: Option<String>,
}

impl fmt::Debug for DeviceAuthorizationBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceAuthorizationBuilder")
            .field("token_url", &self.endpoint.token_url)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl DeviceAuthorizationBuilder {
    endpoint_settings!();
    scope_settings!();
    rotation_settings!();

    /// Keeps the resulting grant's stored state apart from that of other
    /// grants of the same client; see [`DeviceAuthorization::store_partition`].
    pub fn store_partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// Checks the settings and builds the grant. A device authorization
    /// endpoint, set or discovered, is required.
    pub fn build(self) -> Result<DeviceAuthorization, Error> {
        let mut rotation = Rotation::new(
            self.endpoint,
            self.scopes,
            None,
            self.param_name,
            self.on_rotate,
        )?;
        if rotation.endpoint.device_authorization_url().is_none() {
            return Err(Error::config(
                "no device authorization endpoint: set device_authorization_url, or give metadata naming one",
            ));
        }
        rotation.partition = self.partition;
        Ok(DeviceAuthorization::new(rotation))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: Value) -> Result<Answer, Error> {
        match json {
            Value::Object(fields) => read_answer(&fields),
            _ => unreachable!(),
        }
    }

    #[test]
    fn answers_as_servers_send_them() {
        // Google's spelling, and an explicit null interval.
        let answer = read(serde_json::json!({
            "device_code": "d", "user_code": "U", "verification_url": "https://g.example/device",
            "expires_in": 1800, "interval": null,
        }))
        .unwrap();
        assert_eq!(answer.verification_uri, "https://g.example/device");
        assert_eq!(answer.interval, DEFAULT_INTERVAL);
        assert_eq!(answer.verification_uri_complete, None);

        let bad = |json| {
            read(json)
                .err()
                .map_or(ErrorKind::Closed, |error| error.kind().clone())
        };
        let base = |field: &str, value: Value| {
            let mut json = serde_json::json!({
                "device_code": "d", "user_code": "U", "verification_uri": "https://x/d",
                "expires_in": 600,
            });
            json[field] = value;
            json
        };
        assert_eq!(
            bad(base("interval", "5".into())),
            ErrorKind::InvalidResponse
        );
        assert_eq!(
            bad(base("expires_in", 0.into())),
            ErrorKind::InvalidResponse
        );
        assert_eq!(
            bad(base("user_code", "".into())),
            ErrorKind::InvalidResponse
        );
        assert_eq!(
            bad(base("device_code", Value::Null)),
            ErrorKind::InvalidResponse
        );
    }
}
