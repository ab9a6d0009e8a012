//! Client assertions: `private_key_jwt` client authentication (RFC 7523 §2.2,
//! OpenID Connect Core §9).
//!
//! The client proves who it is with a short-lived signed JWT, sent as
//! `client_assertion` beside `client_assertion_type`. Every token request
//! gets a fresh one, retries included: servers refuse a `jti` they have seen.
//! The assertion comes from a [`PrivateKey`] the crate signs with (the
//! `private-key-jwt` feature) or from a callback of the application's (a
//! Kubernetes service-account token file, a KMS signer).

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use secrecy::SecretString;
use url::Url;

use crate::Error;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Default lifetime of a signed assertion.
#[cfg(signing)]
const DEFAULT_LIFETIME: Duration = Duration::from_secs(120);
/// Longest lifetime accepted for a signed assertion.
#[cfg(signing)]
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Callback = dyn Fn(AssertionContext) -> BoxFuture<Result<String, BoxError>> + Send + Sync;

/// What a `client_assertion_with` callback is told about the token request
/// its assertion is for. Holds nothing secret.
///
/// An assertion made from it should have `iss` and `sub` equal to
/// [`client_id`](Self::client_id) and `aud` equal to
/// [`audience`](Self::audience) (RFC 7523 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionContext {
    token_url: Url,
    client_id: String,
    audience: String,
}

impl AssertionContext {
    pub(crate) fn new(token_url: Url, client_id: String, audience: String) -> Self {
        Self {
            token_url,
            client_id,
            audience,
        }
    }

    /// The token endpoint the request goes to.
    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The client id sent beside the assertion.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The `aud` the assertion should carry: the builder's
    /// `client_assertion_audience` when set, the token URL otherwise.
    pub fn audience(&self) -> &str {
        &self.audience
    }
}

/// Where assertions come from, as the builder was told.
#[derive(Clone)]
pub(crate) enum AssertionSource {
    /// Signed by the crate with this key.
    #[cfg(signing)]
    Key(PrivateKey),
    /// Made by the application, once per token request. `reads_context`:
    /// given with `client_assertion_with`, so it sees the audience setting.
    Callback {
        callback: Arc<Callback>,
        reads_context: bool,
    },
}

impl AssertionSource {
    /// Wraps the zero-argument callback given to the builder's
    /// `client_assertion`.
    pub(crate) fn callback<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::Callback {
            callback: Arc::new(move |_| {
                let future = f();
                Box::pin(async move { future.await.map_err(Into::into) })
            }),
            reads_context: false,
        }
    }

    /// Wraps the callback given to the builder's `client_assertion_with`.
    pub(crate) fn callback_with<F, Fut, E>(f: F) -> Self
    where
        F: Fn(AssertionContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::Callback {
            callback: Arc::new(move |context| {
                let future = f(context);
                Box::pin(async move { future.await.map_err(Into::into) })
            }),
            reads_context: true,
        }
    }
}

/// The builder's assertion settings (a field of `EndpointSettings`).
#[derive(Clone, Default)]
pub(crate) struct AssertionSettings {
    pub(crate) source: Option<AssertionSource>,
    pub(crate) audience: Option<String>,
    pub(crate) lifetime: Option<Duration>,
}

impl AssertionSettings {
    /// Checks the settings; `None` when no assertion source was given.
    ///
    /// A setting nothing would read is refused rather than ignored: the
    /// lifetime next to any callback (the callback dates its assertions),
    /// the audience next to a `client_assertion` callback (which is told
    /// nothing), either of them without any assertion source.
    pub(crate) fn build(self, client_id: &str) -> Result<Option<Assertion>, Error> {
        if self.audience.as_deref() == Some("") {
            return Err(Error::config("client assertion audience must not be empty"));
        }
        let Some(source) = self.source else {
            if self.audience.is_some() || self.lifetime.is_some() {
                return Err(Error::config(
                    "client_assertion_audience and client_assertion_lifetime need \
                     private_key_jwt (or, for the audience, client_assertion_with)",
                ));
            }
            return Ok(None);
        };
        match source {
            #[cfg(signing)]
            AssertionSource::Key(key) => {
                let lifetime = self.lifetime.unwrap_or(DEFAULT_LIFETIME);
                if lifetime < Duration::from_secs(1) || lifetime > MAX_LIFETIME {
                    return Err(Error::config(
                        "client assertion lifetime must be between 1 second and 1 hour",
                    ));
                }
                Ok(Some(Assertion::Signed(Arc::new(Signed {
                    key,
                    client_id: client_id.to_owned(),
                    audience: self.audience,
                    lifetime,
                }))))
            }
            AssertionSource::Callback {
                callback,
                reads_context,
            } => {
                if self.lifetime.is_some() {
                    return Err(Error::config(
                        "client_assertion_lifetime applies to assertions the crate signs \
                         (private_key_jwt); a client_assertion callback sets its own `exp`",
                    ));
                }
                if self.audience.is_some() && !reads_context {
                    return Err(Error::config(
                        "client_assertion_audience would be ignored: a client_assertion \
                         callback is told nothing; use client_assertion_with and read \
                         the context's audience",
                    ));
                }
                Ok(Some(Assertion::Callback(Arc::new(FromCallback {
                    callback,
                    client_id: client_id.to_owned(),
                    audience: self.audience,
                }))))
            }
        }
    }
}

/// A checked assertion source, ready to make one assertion per request.
#[derive(Clone)]
pub(crate) enum Assertion {
    #[cfg(signing)]
    Signed(Arc<Signed>),
    Callback(Arc<FromCallback>),
}

#[cfg(signing)]
pub(crate) struct Signed {
    key: PrivateKey,
    client_id: String,
    /// `None`: the token URL.
    audience: Option<String>,
    lifetime: Duration,
}

pub(crate) struct FromCallback {
    callback: Arc<Callback>,
    client_id: String,
    /// `None`: the token URL.
    audience: Option<String>,
}

impl Assertion {
    /// The JWS algorithm the crate signs with; `None` for a callback's
    /// assertions, which the crate does not see inside.
    pub(crate) fn algorithm(&self) -> Option<&'static str> {
        match self {
            #[cfg(signing)]
            Self::Signed(signed) => Some(signed.key.algorithm().as_str()),
            Self::Callback(_) => None,
        }
    }

    /// A fresh assertion for one request to `token_url`.
    pub(crate) async fn make(&self, token_url: &Url) -> Result<SecretString, Error> {
        match self {
            #[cfg(signing)]
            Self::Signed(signed) => {
                let audience = signed.audience.as_deref().unwrap_or(token_url.as_str());
                signed
                    .key
                    .assertion(&signed.client_id, audience, signed.lifetime)
            }
            Self::Callback(made) => {
                let context = AssertionContext {
                    token_url: token_url.clone(),
                    client_id: made.client_id.clone(),
                    audience: made
                        .audience
                        .clone()
                        .unwrap_or_else(|| token_url.as_str().to_owned()),
                };
                let assertion = (made.callback)(context).await.map_err(|e| {
                    Error::client_assertion("the client_assertion callback failed", Some(e), true)
                })?;
                let trimmed = assertion.trim();
                if trimmed.is_empty() {
                    return Err(Error::client_assertion(
                        "the client_assertion callback returned an empty assertion",
                        None,
                        true,
                    ));
                }
                Ok(SecretString::from(if trimmed.len() == assertion.len() {
                    assertion
                } else {
                    trimmed.to_owned()
                }))
            }
        }
    }
}

#[cfg(signing)]
pub use key::{JwsAlgorithm, PrivateKey};

#[cfg(signing)]
mod key {
    use std::{
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use base64::{
        engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
        Engine as _,
    };
    use secrecy::{zeroize::Zeroizing, SecretString};
    use serde_json::{json, Map, Value};
    use sha2::Sha256;

    use crate::{
        clock,
        crypto::{self, Rejected, RsaPadding, RsaParts, SigningKey},
        Error,
    };

    /// Smallest RSA modulus accepted, in bits (RFC 7518 §3.3).
    const MIN_RSA_BITS: usize = 2048;

    /// A JWS signature algorithm a [`PrivateKey`] signs with.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    #[non_exhaustive]
    pub enum JwsAlgorithm {
        /// `RS256`: RSASSA-PKCS1-v1_5 with SHA-256. The one every server accepts.
        Rs256,
        /// `PS256`: RSASSA-PSS with SHA-256 (FAPI profiles require it or ES256).
        Ps256,
        /// `ES256`: ECDSA on P-256 with SHA-256.
        Es256,
    }

    impl JwsAlgorithm {
        /// The name in a JWS header (`RS256`, `PS256`, `ES256`).
        pub fn as_str(self) -> &'static str {
            match self {
                Self::Rs256 => "RS256",
                Self::Ps256 => "PS256",
                Self::Es256 => "ES256",
            }
        }
    }

    impl std::fmt::Display for JwsAlgorithm {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.as_str())
        }
    }

    /// A private key that signs `private_key_jwt` client assertions
    /// (RFC 7523 §2.2). Cheap to clone. Needs the `private-key-jwt` feature
    /// and a signing backend: aws-lc-rs (the `aws-lc-rs` feature, which the
    /// default `reqwest` turns on) or ring (the `ring` feature, which
    /// `reqwest-rustls-ring` turns on); aws-lc-rs signs when both are on.
    ///
    /// Load it from PEM ([`from_pem`](Self::from_pem)) or from a private JWK
    /// ([`from_jwk`](Self::from_jwk)), both `(algorithm, key text or bytes)`;
    /// register its [`public_jwk`](Self::public_jwk) with the server (a
    /// [`thumbprint`](Self::thumbprint) makes a good `kid`); and give it to a
    /// grant's builder with `private_key_jwt`. Each token request then carries a fresh assertion:
    /// `iss` and `sub` are the client id, `aud` is the token URL (or the
    /// builder's `client_assertion_audience`), `jti` is 128 random bits, and
    /// `exp` is `iat` plus two minutes (the builder's
    /// `client_assertion_lifetime`).
    ///
    /// Its `Debug` output names the algorithm and the key id, never the key.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), tower_oauth2::Error> {
    /// use tower_oauth2::{ClientCredentials, JwsAlgorithm, PrivateKey};
    ///
    /// let pem = std::fs::read("client-key.pem").expect("readable key file");
    /// let key = PrivateKey::from_pem(JwsAlgorithm::Rs256, pem)?.with_kid("2024-01");
    /// let grant = ClientCredentials::builder()
    ///     .token_url("https://auth.example.com/oauth2/token")
    ///     .client_id("my-service")
    ///     .private_key_jwt(key)          // AuthMethod::PrivateKeyJwt
    ///     .scope("api.read")
    ///     .build()?;
    /// # drop(grant);
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Clone)]
    pub struct PrivateKey {
        alg: JwsAlgorithm,
        kid: Option<String>,
        signer: Arc<SigningKey>,
    }

    impl std::fmt::Debug for PrivateKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("PrivateKey")
                .field("alg", &self.alg)
                .field("kid", &self.kid)
                .finish_non_exhaustive()
        }
    }

    impl PrivateKey {
        /// Loads a PEM private key to sign with `alg`.
        ///
        /// RSA keys (for [`Rs256`](JwsAlgorithm::Rs256) and
        /// [`Ps256`](JwsAlgorithm::Ps256)) may be PKCS#8 (`BEGIN PRIVATE KEY`)
        /// or PKCS#1 (`BEGIN RSA PRIVATE KEY`) and must have at least 2048
        /// bits (and at most 4096 with ring, 8192 with aws-lc-rs); P-256 keys
        /// (for [`Es256`](JwsAlgorithm::Es256)) PKCS#8 or SEC1 (`BEGIN EC
        /// PRIVATE KEY`), with the public key inside, as OpenSSL writes them
        /// (ring needs it). Encrypted keys are not supported. An RSA key must
        /// sign a probe that its public key verifies before it is accepted.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the PEM is not
        /// such a key, or not one for `alg`. The error never quotes the input.
        pub fn from_pem(alg: JwsAlgorithm, pem: impl AsRef<[u8]>) -> Result<Self, Error> {
            let pem = std::str::from_utf8(pem.as_ref())
                .map_err(|_| Error::config("the private key PEM is not text"))?
                .trim();
            let label = pem_label(pem).ok_or_else(|| {
                Error::config("the private key is not PEM (no `-----BEGIN ...-----` line)")
            })?;
            let signer = match (alg, label) {
                (_, "ENCRYPTED PRIVATE KEY") => {
                    return Err(Error::config(
                        "encrypted private keys are not supported; decrypt the PEM first",
                    ))
                }
                (JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256, "PRIVATE KEY" | "RSA PRIVATE KEY") => {
                    let der = pem_body(pem, label)?;
                    let padding = rsa_padding(alg)?;
                    if label == "PRIVATE KEY" {
                        SigningKey::rsa_pkcs8(&der, padding)
                    } else {
                        SigningKey::rsa_pkcs1(&der, padding)
                    }
                    .map_err(|rejected| {
                        rsa_rejected(
                            alg,
                            rejected,
                            format!("the PEM is not an RSA private key ({alg} needs one)"),
                        )
                    })?
                }
                (JwsAlgorithm::Es256, "PRIVATE KEY" | "EC PRIVATE KEY") => {
                    let der = pem_body(pem, label)?;
                    if label == "PRIVATE KEY" {
                        SigningKey::p256_pkcs8(&der)
                    } else {
                        SigningKey::p256_sec1(&der)
                    }
                    .map_err(|_| {
                        Error::config(
                            "the PEM is not a P-256 private key with its public key \
                             (ES256 needs one)",
                        )
                    })?
                }
                _ => {
                    return Err(Error::config(format!(
                        "the PEM holds no private key usable with {alg}"
                    )))
                }
            };
            Ok(Self {
                alg,
                kid: None,
                signer: Arc::new(signer),
            })
        }

        /// Loads a private JWK (RFC 7517) to sign with `alg`: an RSA key
        /// (`kty` `RSA`, with `d` and the CRT members `p`, `q`, `dp`, `dq`,
        /// `qi`, which JWK libraries write by default; at least 2048 bits)
        /// for [`Rs256`](JwsAlgorithm::Rs256) or
        /// [`Ps256`](JwsAlgorithm::Ps256), a P-256 key (`kty` `EC`, `crv`
        /// `P-256`, with `d`) for [`Es256`](JwsAlgorithm::Es256).
        ///
        /// The same shape as [`from_pem`](Self::from_pem): the algorithm is
        /// always the caller's, so a key file never picks it. A JWK that
        /// names one (`alg`) must name `alg`. The JWK's `kid`, if any,
        /// becomes the assertions' `kid` header.
        ///
        /// Earlier versions took the JWK alone and used its `alg` (RS256 or
        /// ES256 by key type without one): pass that algorithm first now.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the text is
        /// not such a JWK (a public key alone, another curve, a key or an
        /// `alg` member that does not fit `alg`). The error never quotes the
        /// input.
        pub fn from_jwk(alg: JwsAlgorithm, jwk: impl AsRef<[u8]>) -> Result<Self, Error> {
            let value: Value = serde_json::from_slice(jwk.as_ref())
                .map_err(|_| Error::config("the JWK is not a JSON object"))?;
            let object = value
                .as_object()
                .ok_or_else(|| Error::config("the JWK is not a JSON object"))?;
            let field = |name: &str| -> Result<Option<&str>, Error> {
                match object.get(name) {
                    None => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(_) => Err(Error::config(format!("the JWK's `{name}` is not a string"))),
                }
            };
            if field("d")?.is_none() {
                return Err(Error::config(
                    "the JWK has no private part (`d`): it is a public key",
                ));
            }
            match field("alg")? {
                None => {}
                Some(own) if own == alg.as_str() => {}
                Some("RS256" | "PS256" | "ES256") => {
                    return Err(Error::config(format!(
                        "the JWK's `alg` is not {alg}, the algorithm it was loaded for"
                    )))
                }
                Some(_) => {
                    return Err(Error::config(
                        "the JWK's `alg` is not supported (RS256, PS256 or ES256)",
                    ))
                }
            }
            let signer = match field("kty")? {
                Some("RSA") => {
                    if alg == JwsAlgorithm::Es256 {
                        return Err(Error::config(
                            "the JWK is an RSA key; ES256 needs a P-256 key",
                        ));
                    }
                    rsa_from_jwk(alg, object)?
                }
                Some("EC") => {
                    if field("crv")? != Some("P-256") {
                        return Err(Error::config(
                            "the JWK's curve is not supported (only P-256)",
                        ));
                    }
                    if alg != JwsAlgorithm::Es256 {
                        return Err(Error::config(format!(
                            "the JWK is a P-256 key; {alg} needs an RSA key"
                        )));
                    }
                    p256_from_jwk(object)?
                }
                _ => {
                    return Err(Error::config(
                        "the JWK's `kty` is not supported (RSA or EC)",
                    ))
                }
            };
            Ok(Self {
                alg,
                kid: field("kid")?.map(str::to_owned),
                signer: Arc::new(signer),
            })
        }

        /// Sets the `kid` header of the assertions: the id under which the
        /// server knows the public key. Replaces a JWK's own `kid`.
        pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
            self.kid = Some(kid.into());
            self
        }

        /// The algorithm this key signs with.
        pub fn algorithm(&self) -> JwsAlgorithm {
            self.alg
        }

        /// The `kid` header of the assertions, if any.
        pub fn kid(&self) -> Option<&str> {
            self.kid.as_deref()
        }

        /// The public half of this key as a JWK (RFC 7517), the text to
        /// register with the authorization server (inside a JWKS:
        /// `{"keys":[...]}`): `kty` and the public members (RSA: `n`, `e`;
        /// P-256: `crv`, `x`, `y`), plus `alg`, `use` (`sig`) and the `kid`
        /// when one is set. Never a private member.
        ///
        /// ```
        /// use tower_oauth2::{JwsAlgorithm, PrivateKey};
        ///
        /// # let pem = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec.pem"));
        /// let key = PrivateKey::from_pem(JwsAlgorithm::Es256, pem)?.with_kid("k1");
        /// let jwk: serde_json::Value = serde_json::from_str(&key.public_jwk()).unwrap();
        /// assert_eq!(jwk["kty"], "EC");
        /// assert_eq!(jwk["kid"], "k1");
        /// assert!(jwk.get("d").is_none());
        /// # Ok::<(), tower_oauth2::Error>(())
        /// ```
        pub fn public_jwk(&self) -> String {
            let mut jwk: Map<String, Value> = self
                .public_members()
                .into_iter()
                .map(|(name, value)| (name.to_owned(), Value::String(value)))
                .collect();
            jwk.insert("alg".into(), self.alg.as_str().into());
            jwk.insert("use".into(), "sig".into());
            if let Some(kid) = &self.kid {
                jwk.insert("kid".into(), kid.as_str().into());
            }
            Value::Object(jwk).to_string()
        }

        /// The JWK thumbprint of the public key (RFC 7638): SHA-256 over the
        /// required members (RSA: `e`, `kty`, `n`; P-256: `crv`, `kty`, `x`,
        /// `y`) as compact JSON in that order, base64url without padding.
        /// The same for a key however it was loaded and whatever its `kid`
        /// or `alg`; a common choice of `kid`.
        pub fn thumbprint(&self) -> String {
            thumbprint(&self.public_members())
        }

        /// A new random P-256 key for ES256 (a DPoP key that lives as long
        /// as the process).
        #[cfg(dpop)]
        pub(crate) fn generate_es256() -> Result<Self, Error> {
            let signer = SigningKey::generate_p256()
                .map_err(|_| Error::config("the signing backend could not make a P-256 key"))?;
            Ok(Self {
                alg: JwsAlgorithm::Es256,
                kid: None,
                signer: Arc::new(signer),
            })
        }

        /// The JWS signature of `signing_input` (ES256: `r || s`).
        #[cfg(dpop)]
        pub(crate) fn sign_input(&self, signing_input: &[u8]) -> Option<impl AsRef<[u8]>> {
            self.signer.sign(signing_input).ok()
        }

        /// The members RFC 7638 requires, `kty` included, in any order.
        pub(crate) fn public_members(&self) -> Vec<(&'static str, String)> {
            match self.signer.public() {
                crypto::PublicKey::Rsa { n, e } => vec![
                    ("kty", "RSA".to_owned()),
                    ("n", URL_SAFE_NO_PAD.encode(n)),
                    ("e", URL_SAFE_NO_PAD.encode(e)),
                ],
                crypto::PublicKey::P256 { x, y } => vec![
                    ("kty", "EC".to_owned()),
                    ("crv", "P-256".to_owned()),
                    ("x", URL_SAFE_NO_PAD.encode(x)),
                    ("y", URL_SAFE_NO_PAD.encode(y)),
                ],
            }
        }

        /// A fresh assertion: `iss` = `sub` = `client_id`, `aud` = `audience`,
        /// a random `jti`, `iat` now and `exp` after `lifetime`.
        pub(crate) fn assertion(
            &self,
            client_id: &str,
            audience: &str,
            lifetime: Duration,
        ) -> Result<SecretString, Error> {
            self.jwt_with(client_id, client_id, audience, lifetime, &Map::new())
        }

        /// A fresh JWT with these `iss`, `sub` and `aud`, a random `jti`,
        /// `iat` now, `exp` after `lifetime` and the `extra` claims: a
        /// client assertion, or the assertion of the JWT bearer grant
        /// (RFC 7523 §2.1).
        pub(crate) fn jwt_with(
            &self,
            issuer: &str,
            subject: &str,
            audience: &str,
            lifetime: Duration,
            extra: &Map<String, Value>,
        ) -> Result<SecretString, Error> {
            let iat = clock::wall_now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let jti = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
            let claims = json!({
                "iss": issuer,
                "sub": subject,
                "aud": audience,
                "jti": jti,
                "iat": iat,
                "exp": iat + lifetime.as_secs().max(1),
            });
            let mut claims = claims;
            if let Value::Object(map) = &mut claims {
                for (name, value) in extra {
                    map.entry(name.clone()).or_insert_with(|| value.clone());
                }
            }
            self.sign(&claims).map(SecretString::from)
        }

        /// A compact JWS of `claims`.
        fn sign(&self, claims: &Value) -> Result<String, Error> {
            let mut header = Map::new();
            header.insert("alg".into(), self.alg.as_str().into());
            header.insert("typ".into(), "JWT".into());
            if let Some(kid) = &self.kid {
                header.insert("kid".into(), kid.as_str().into());
            }
            let mut jws = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(Value::Object(header).to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string()),
            );
            let signature = self.signer.sign(jws.as_bytes()).map_err(|_| {
                Error::client_assertion("signing the client assertion failed", None, false)
            })?;
            jws.push('.');
            jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
            Ok(jws)
        }
    }

    /// The padding of an RSA algorithm.
    fn rsa_padding(alg: JwsAlgorithm) -> Result<RsaPadding, Error> {
        match alg {
            JwsAlgorithm::Rs256 => Ok(RsaPadding::Pkcs1),
            JwsAlgorithm::Ps256 => Ok(RsaPadding::Pss),
            JwsAlgorithm::Es256 => Err(Error::config("ES256 needs a P-256 key, not an RSA key")),
        }
    }

    /// The error for an RSA key the backend refused: its size when that was
    /// the reason, `otherwise` when not.
    fn rsa_rejected(alg: JwsAlgorithm, rejected: Rejected, otherwise: String) -> Error {
        match rejected {
            Rejected::TooSmall => Error::config(format!(
                "the RSA key is too short for {alg}: at least {MIN_RSA_BITS} bits"
            )),
            Rejected::TooLarge => Error::config(format!(
                "the RSA key is too long for the signing backend ({})",
                if cfg!(feature = "aws-lc-rs") {
                    "aws-lc-rs: at most 8192 bits"
                } else {
                    "ring: at most 4096 bits"
                }
            )),
            Rejected::Invalid => Error::config(otherwise),
        }
    }

    /// RFC 7638 §3: the members sorted by name, as JSON without whitespace,
    /// hashed with SHA-256 and base64url-encoded without padding.
    fn thumbprint(members: &[(&str, String)]) -> String {
        use sha2::Digest as _;
        let mut sorted: Vec<&(&str, String)> = members.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let mut canonical = String::from("{");
        for (i, (name, value)) in sorted.into_iter().enumerate() {
            if i > 0 {
                canonical.push(',');
            }
            canonical.push_str(&Value::from(*name).to_string());
            canonical.push(':');
            canonical.push_str(&Value::from(value.as_str()).to_string());
        }
        canonical.push('}');
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }

    /// The label of the first PEM block (`PRIVATE KEY`, `RSA PRIVATE KEY`, ...).
    fn pem_label(pem: &str) -> Option<&str> {
        let rest = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
        Some(&rest[..rest.find("-----")?])
    }

    /// The DER inside the PEM block labelled `label` (RFC 7468): base64
    /// between its `BEGIN` and `END` lines. A block with headers (the
    /// `Proc-Type: 4,ENCRYPTED` of OpenSSL's legacy encrypted keys) is
    /// refused.
    fn pem_body(pem: &str, label: &str) -> Result<Zeroizing<Vec<u8>>, Error> {
        let begin = format!("-----BEGIN {label}-----");
        let end = format!("-----END {label}-----");
        let rest = pem
            .find(&begin)
            .map(|at| &pem[at + begin.len()..])
            .ok_or_else(|| Error::config("the private key is not PEM"))?;
        let body = rest
            .find(&end)
            .map(|at| &rest[..at])
            .ok_or_else(|| Error::config("the private key PEM has no `-----END` line"))?;
        if body.contains(':') {
            return Err(Error::config(
                "encrypted private keys are not supported; decrypt the PEM first",
            ));
        }
        let base64: Zeroizing<String> =
            Zeroizing::new(body.chars().filter(|c| !c.is_ascii_whitespace()).collect());
        STANDARD
            .decode(base64.as_bytes())
            .map(Zeroizing::new)
            .map_err(|_| Error::config("the private key PEM is not valid base64"))
    }

    /// A JWK member holding an unsigned big-endian number (RFC 7518 §2,
    /// `Base64urlUInt`); `None` when absent.
    fn jwk_number(
        object: &Map<String, Value>,
        name: &str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        let Some(value) = object.get(name) else {
            return Ok(None);
        };
        value
            .as_str()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .map(|bytes| Some(Zeroizing::new(bytes)))
            .ok_or_else(|| Error::config(format!("the JWK's `{name}` is not base64url")))
    }

    /// A P-256 key from a JWK's `d`, checked against its `x` and `y`.
    fn p256_from_jwk(object: &Map<String, Value>) -> Result<SigningKey, Error> {
        let invalid = || Error::config("the JWK is not a valid P-256 private key");
        let coordinate = |name: &str| {
            jwk_number(object, name)
                .ok()
                .flatten()
                .filter(|bytes| bytes.len() == 32)
                .ok_or_else(invalid)
        };
        let (d, x, y) = (coordinate("d")?, coordinate("x")?, coordinate("y")?);
        SigningKey::p256_parts(&d, &x, &y).map_err(|_| {
            Error::config(
                "the JWK is not a valid P-256 private key, or its `x` and `y` are not the \
                 public half of its `d`",
            )
        })
    }

    /// An RSA key from a JWK's `n`, `e`, `d` and CRT members (`p`, `q`,
    /// `dp`, `dq`, `qi`).
    fn rsa_from_jwk(alg: JwsAlgorithm, object: &Map<String, Value>) -> Result<SigningKey, Error> {
        let required = |name: &str| {
            jwk_number(object, name)?
                .ok_or_else(|| Error::config(format!("the RSA JWK has no `{name}`")))
        };
        let (n, e, d) = (required("n")?, required("e")?, required("d")?);
        let crt = |name: &str| {
            jwk_number(object, name)?.ok_or_else(|| {
                Error::config(format!(
                    "the RSA JWK has no `{name}`: the signing backends need the CRT members \
                     (p, q, dp, dq, qi) beside `d`, which JWK libraries write by default"
                ))
            })
        };
        let (p, q, dp, dq, qi) = (crt("p")?, crt("q")?, crt("dp")?, crt("dq")?, crt("qi")?);
        let parts = RsaParts {
            n: &n,
            e: &e,
            d: &d,
            p: &p,
            q: &q,
            dp: &dp,
            dq: &dq,
            qi: &qi,
        };
        SigningKey::rsa_parts(&parts, rsa_padding(alg)?).map_err(|rejected| {
            rsa_rejected(
                alg,
                rejected,
                "the JWK is not a valid RSA private key".to_owned(),
            )
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const RSA_PEM: &str = include_str!("../../tests/keys/rsa.pem");
        const RSA_PKCS1_PEM: &str = include_str!("../../tests/keys/rsa-pkcs1.pem");
        const RSA_JWK: &str = include_str!("../../tests/keys/rsa.jwk.json");
        const RSA_1024_PEM: &str = include_str!("../../tests/keys/rsa-1024.pem");
        const EC_PEM: &str = include_str!("../../tests/keys/ec.pem");
        const EC_SEC1_PEM: &str = include_str!("../../tests/keys/ec-sec1.pem");
        const EC_JWK: &str = include_str!("../../tests/keys/ec.jwk.json");

        fn b64_json(part: &str) -> Value {
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
        }

        /// Header, claims, signing input and signature of a compact JWS.
        fn split(jws: &str) -> (Value, Value, String, Vec<u8>) {
            let parts: Vec<&str> = jws.split('.').collect();
            assert_eq!(parts.len(), 3, "{jws}");
            (
                b64_json(parts[0]),
                b64_json(parts[1]),
                format!("{}.{}", parts[0], parts[1]),
                URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
            )
        }

        fn assertion(key: &PrivateKey) -> String {
            use secrecy::ExposeSecret as _;
            key.assertion(
                "my-client",
                "https://as.example/token",
                Duration::from_secs(120),
            )
            .unwrap()
            .expose_secret()
            .to_owned()
        }

        /// Verifies `jws` as `alg` with the public members of the fixture
        /// JWK `jwk` (its `n` and `e`, or `x` and `y`).
        fn verify(alg: JwsAlgorithm, jwk: &str, jws: &str) {
            let (header, _, input, signature) = split(jws);
            assert_eq!(header["alg"], alg.as_str());
            let jwk: Value = serde_json::from_str(jwk).unwrap();
            let member = |name: &str| URL_SAFE_NO_PAD.decode(jwk[name].as_str().unwrap()).unwrap();
            let public = match alg {
                JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256 => crypto::PublicKey::Rsa {
                    n: member("n"),
                    e: member("e"),
                },
                JwsAlgorithm::Es256 => {
                    assert_eq!(signature.len(), 64, "ES256 is r || s, 32 bytes each");
                    crypto::PublicKey::P256 {
                        x: member("x"),
                        y: member("y"),
                    }
                }
            };
            assert!(
                crypto::verify(&public, alg.as_str(), input.as_bytes(), &signature),
                "{alg} signature verifies"
            );
            assert!(!crypto::verify(&public, alg.as_str(), b"other", &signature));
        }

        #[tokio::test(start_paused = true)]
        async fn claims_and_header() {
            let key = PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_PEM)
                .unwrap()
                .with_kid("key-1");
            let now = clock::wall_now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let (header, claims, _, _) = split(&assertion(&key));
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["typ"], "JWT");
            assert_eq!(header["kid"], "key-1");
            assert_eq!(claims["iss"], "my-client");
            assert_eq!(claims["sub"], "my-client");
            assert_eq!(claims["aud"], "https://as.example/token");
            let iat = claims["iat"].as_u64().unwrap();
            assert!(iat.abs_diff(now) <= 1, "iat {iat}, now {now}");
            assert_eq!(claims["exp"].as_u64().unwrap(), iat + 120);
            let jti = URL_SAFE_NO_PAD
                .decode(claims["jti"].as_str().unwrap())
                .unwrap();
            assert_eq!(jti.len(), 16, "128 random bits");
            assert_eq!(
                claims.as_object().unwrap().len(),
                6,
                "iss sub aud jti iat exp: {claims}"
            );

            // Time comes from the crate's (Tokio's) clock.
            tokio::time::advance(Duration::from_secs(1000)).await;
            let (_, later, _, _) = split(&assertion(&key));
            assert_eq!(later["iat"].as_u64().unwrap(), iat + 1000);

            let no_kid = PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_PEM).unwrap();
            let (header, _, _, _) = split(&assertion(&no_kid));
            assert!(header.get("kid").is_none(), "{header}");
        }

        #[test]
        fn every_assertion_has_its_own_jti() {
            let key = PrivateKey::from_pem(JwsAlgorithm::Es256, EC_PEM).unwrap();
            let jtis: std::collections::HashSet<String> = (0..50)
                .map(|_| {
                    split(&assertion(&key)).1["jti"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect();
            assert_eq!(jtis.len(), 50);
        }

        #[test]
        fn signatures_verify_with_the_public_key() {
            for (alg, pem, jwk) in [
                (JwsAlgorithm::Rs256, RSA_PEM, RSA_JWK),
                (JwsAlgorithm::Ps256, RSA_PEM, RSA_JWK),
                (JwsAlgorithm::Es256, EC_PEM, EC_JWK),
            ] {
                let key = PrivateKey::from_pem(alg, pem).unwrap();
                assert_eq!(key.algorithm(), alg);
                verify(alg, jwk, &assertion(&key));
            }
        }

        #[test]
        fn pkcs1_sec1_and_jwk_load_the_same_keys() {
            for alg in [JwsAlgorithm::Rs256, JwsAlgorithm::Ps256] {
                let key = PrivateKey::from_pem(alg, RSA_PKCS1_PEM).unwrap();
                verify(alg, RSA_JWK, &assertion(&key));
            }
            let key = PrivateKey::from_pem(JwsAlgorithm::Es256, EC_SEC1_PEM).unwrap();
            verify(JwsAlgorithm::Es256, EC_JWK, &assertion(&key));

            // The fixtures' JWKs name PS256 / ES256 and a kid.
            let key = PrivateKey::from_jwk(JwsAlgorithm::Ps256, RSA_JWK).unwrap();
            assert_eq!(
                (key.algorithm(), key.kid()),
                (JwsAlgorithm::Ps256, Some("rsa-jwk"))
            );
            let jws = assertion(&key);
            assert_eq!(split(&jws).0["kid"], "rsa-jwk");
            verify(JwsAlgorithm::Ps256, RSA_JWK, &jws);
            let key = PrivateKey::from_jwk(JwsAlgorithm::Es256, EC_JWK)
                .unwrap()
                .with_kid("other");
            assert_eq!(
                (key.algorithm(), key.kid()),
                (JwsAlgorithm::Es256, Some("other"))
            );
            verify(JwsAlgorithm::Es256, EC_JWK, &assertion(&key));

            // Without its own `alg`, a JWK signs with the one it is loaded
            // for.
            let mut jwk: Map<String, Value> = serde_json::from_str(RSA_JWK).unwrap();
            jwk.remove("alg");
            let full = Value::Object(jwk.clone()).to_string();
            for alg in [JwsAlgorithm::Rs256, JwsAlgorithm::Ps256] {
                let key = PrivateKey::from_jwk(alg, &full).unwrap();
                assert_eq!(key.algorithm(), alg);
                verify(alg, RSA_JWK, &assertion(&key));
            }
            // Without a CRT member, the key is refused, by name: the backends
            // sign with p, q, dp, dq and qi, and do not recover them.
            for name in ["p", "q", "dp", "dq", "qi"] {
                let mut partial = jwk.clone();
                partial.remove(name);
                let error =
                    PrivateKey::from_jwk(JwsAlgorithm::Rs256, Value::Object(partial).to_string())
                        .expect_err(name);
                assert_eq!(error.kind(), &crate::ErrorKind::Config);
                assert!(
                    error.to_string().contains(&format!("no `{name}`")),
                    "{error}"
                );
            }
        }

        #[test]
        fn bad_keys_are_config_errors_without_key_material() {
            let mut public_jwk: Map<String, Value> = serde_json::from_str(EC_JWK).unwrap();
            let d = public_jwk.remove("d").unwrap();
            let d = d.as_str().unwrap();
            let mut wrong_alg: Map<String, Value> = serde_json::from_str(EC_JWK).unwrap();
            wrong_alg.insert("alg".into(), "RS256".into());
            let mut other_curve: Map<String, Value> = serde_json::from_str(EC_JWK).unwrap();
            other_curve.insert("crv".into(), "P-384".into());
            let mut bad_d: Map<String, Value> = serde_json::from_str(RSA_JWK).unwrap();
            bad_d.insert("d".into(), "AQAB".into());
            let ec_body: String = EC_PEM.lines().nth(1).unwrap().to_owned();
            let truncated =
                format!("-----BEGIN PRIVATE KEY-----\n{ec_body}\n-----END PRIVATE KEY-----\n");

            use JwsAlgorithm::{Es256, Ps256, Rs256};
            let results = [
                PrivateKey::from_pem(JwsAlgorithm::Rs256, EC_PEM),
                PrivateKey::from_pem(JwsAlgorithm::Es256, RSA_PEM),
                PrivateKey::from_pem(JwsAlgorithm::Es256, RSA_PKCS1_PEM),
                PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_1024_PEM),
                PrivateKey::from_pem(JwsAlgorithm::Es256, &truncated),
                PrivateKey::from_pem(JwsAlgorithm::Rs256, "not a key"),
                PrivateKey::from_pem(JwsAlgorithm::Rs256, [0xff, 0xfe]),
                PrivateKey::from_pem(
                    JwsAlgorithm::Rs256,
                    "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----",
                ),
                // OpenSSL's legacy encryption: headers inside the block.
                PrivateKey::from_pem(
                    JwsAlgorithm::Rs256,
                    "-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\n\
                     DEK-Info: AES-128-CBC,00\n\nAAAA\n-----END RSA PRIVATE KEY-----",
                ),
                PrivateKey::from_jwk(Es256, Value::Object(public_jwk).to_string()),
                PrivateKey::from_jwk(Es256, Value::Object(wrong_alg).to_string()),
                PrivateKey::from_jwk(Es256, Value::Object(other_curve).to_string()),
                PrivateKey::from_jwk(Ps256, Value::Object(bad_d).to_string()),
                PrivateKey::from_jwk(Es256, EC_JWK.replace("P-256\"", "P-256\",")),
                PrivateKey::from_jwk(Rs256, r#"{"kty":"oct","k":"c2VjcmV0","d":"x"}"#),
                // The key, or the JWK's own `alg`, does not fit the one asked for.
                PrivateKey::from_jwk(Rs256, RSA_JWK),
                PrivateKey::from_jwk(Es256, RSA_JWK),
                PrivateKey::from_jwk(Rs256, EC_JWK),
                PrivateKey::from_jwk(Es256, "[1]"),
            ];
            for (i, result) in results.into_iter().enumerate() {
                let error = result.expect_err(&format!("case {i} is refused"));
                assert_eq!(error.kind(), &crate::ErrorKind::Config, "case {i}: {error}");
                let text = format!("{error} {error:?}");
                assert!(!text.contains(d), "case {i}: {text}");
                assert!(!text.contains(&ec_body[10..40]), "case {i}: {text}");
                assert!(!text.contains("c2VjcmV0"), "case {i}: {text}");
            }
        }

        #[test]
        fn thumbprint_of_the_rfc_7638_example() {
            // RFC 7638 §3.1, members given out of order (and `alg`, `kid`
            // absent: only the required members count).
            let members = [
                ("n", "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".to_owned()),
                ("kty", "RSA".to_owned()),
                ("e", "AQAB".to_owned()),
            ];
            assert_eq!(
                thumbprint(&members),
                "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
            );
        }

        #[test]
        fn public_members_match_the_fixture_jwks() {
            for (key, jwk, names) in [
                (
                    PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_PKCS1_PEM).unwrap(),
                    RSA_JWK,
                    &["kty", "n", "e"][..],
                ),
                (
                    PrivateKey::from_pem(JwsAlgorithm::Es256, EC_SEC1_PEM).unwrap(),
                    EC_JWK,
                    &["kty", "crv", "x", "y"][..],
                ),
            ] {
                let fixture: Value = serde_json::from_str(jwk).unwrap();
                let members = key.public_members();
                assert_eq!(members.len(), names.len());
                for (name, value) in members {
                    assert!(names.contains(&name), "{name}");
                    assert_eq!(fixture[name], value.as_str(), "{name}");
                }
            }
        }

        #[test]
        fn debug_shows_no_key() {
            let key = PrivateKey::from_jwk(JwsAlgorithm::Es256, EC_JWK).unwrap();
            let d = serde_json::from_str::<Value>(EC_JWK).unwrap()["d"]
                .as_str()
                .unwrap()
                .to_owned();
            let debug = format!("{key:?}");
            assert_eq!(
                debug,
                r#"PrivateKey { alg: Es256, kid: Some("ec-jwk"), .. }"#
            );
            assert!(!debug.contains(&d));
        }
    }
}
