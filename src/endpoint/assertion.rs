//! Client assertions: `private_key_jwt` client authentication (RFC 7523 §2.2,
//! OpenID Connect Core §9).
//!
//! The client proves who it is with a short-lived signed JWT, sent as
//! `client_assertion` beside `client_assertion_type`. Every token request
//! gets a fresh one, retries included: servers refuse a `jti` they have seen.
//! The assertion comes from a [`PrivateKey`] the crate signs with (the
//! `private-key-jwt` feature) or from a callback of the application's (a
//! Kubernetes service-account token file, a KMS signer).

use std::{future::Future, pin::Pin, sync::Arc};

use secrecy::SecretString;
use url::Url;

use crate::Error;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 §2.2).
pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

#[cfg(feature = "private-key-jwt")]
use std::time::Duration;

/// Default lifetime of a signed assertion.
#[cfg(feature = "private-key-jwt")]
const DEFAULT_LIFETIME: Duration = Duration::from_secs(120);
/// Longest lifetime accepted for a signed assertion.
#[cfg(feature = "private-key-jwt")]
const MAX_LIFETIME: Duration = Duration::from_secs(3600);

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Callback = dyn Fn() -> BoxFuture<Result<String, BoxError>> + Send + Sync;

/// Where assertions come from, as the builder was told.
#[derive(Clone)]
pub(crate) enum AssertionSource {
    /// Signed by the crate with this key.
    #[cfg(feature = "private-key-jwt")]
    Key(PrivateKey),
    /// Made by the application, once per token request.
    Callback(Arc<Callback>),
}

impl AssertionSource {
    /// Wraps the callback given to the builder's `client_assertion`.
    pub(crate) fn callback<F, Fut, E>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        Self::Callback(Arc::new(move || {
            let future = f();
            Box::pin(async move { future.await.map_err(Into::into) })
        }))
    }
}

/// The builder's assertion settings (a field of `EndpointSettings`).
#[derive(Clone, Default)]
pub(crate) struct AssertionSettings {
    pub(crate) source: Option<AssertionSource>,
    #[cfg(feature = "private-key-jwt")]
    pub(crate) audience: Option<String>,
    #[cfg(feature = "private-key-jwt")]
    pub(crate) lifetime: Option<Duration>,
}

impl AssertionSettings {
    /// Checks the settings; `None` when no assertion source was given.
    #[cfg_attr(not(feature = "private-key-jwt"), allow(unused_variables))]
    pub(crate) fn build(self, client_id: &str) -> Result<Option<Assertion>, Error> {
        let Some(source) = self.source else {
            return Ok(None);
        };
        match source {
            #[cfg(feature = "private-key-jwt")]
            AssertionSource::Key(key) => {
                let lifetime = self.lifetime.unwrap_or(DEFAULT_LIFETIME);
                if lifetime < Duration::from_secs(1) || lifetime > MAX_LIFETIME {
                    return Err(Error::config(
                        "client assertion lifetime must be between 1 second and 1 hour",
                    ));
                }
                if self.audience.as_deref() == Some("") {
                    return Err(Error::config("client assertion audience must not be empty"));
                }
                Ok(Some(Assertion::Signed(Arc::new(Signed {
                    key,
                    client_id: client_id.to_owned(),
                    audience: self.audience,
                    lifetime,
                }))))
            }
            AssertionSource::Callback(callback) => Ok(Some(Assertion::Callback(callback))),
        }
    }
}

/// A checked assertion source, ready to make one assertion per request.
#[derive(Clone)]
pub(crate) enum Assertion {
    #[cfg(feature = "private-key-jwt")]
    Signed(Arc<Signed>),
    Callback(Arc<Callback>),
}

#[cfg(feature = "private-key-jwt")]
pub(crate) struct Signed {
    key: PrivateKey,
    client_id: String,
    /// `None`: the token URL.
    audience: Option<String>,
    lifetime: Duration,
}

impl Assertion {
    /// The JWS algorithm the crate signs with; `None` for a callback's
    /// assertions, which the crate does not see inside.
    pub(crate) fn algorithm(&self) -> Option<&'static str> {
        match self {
            #[cfg(feature = "private-key-jwt")]
            Self::Signed(signed) => Some(signed.key.algorithm().as_str()),
            Self::Callback(_) => None,
        }
    }

    /// A fresh assertion for one request to `token_url`.
    #[cfg_attr(not(feature = "private-key-jwt"), allow(unused_variables))]
    pub(crate) async fn make(&self, token_url: &Url) -> Result<SecretString, Error> {
        match self {
            #[cfg(feature = "private-key-jwt")]
            Self::Signed(signed) => {
                let audience = signed.audience.as_deref().unwrap_or(token_url.as_str());
                signed
                    .key
                    .assertion(&signed.client_id, audience, signed.lifetime)
            }
            Self::Callback(callback) => {
                let assertion = callback().await.map_err(|e| {
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

#[cfg(feature = "private-key-jwt")]
pub use key::{JwsAlgorithm, PrivateKey};

#[cfg(feature = "private-key-jwt")]
mod key {
    use std::{
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    use p256::{
        elliptic_curve::{sec1::ToEncodedPoint as _, zeroize::Zeroizing},
        pkcs8::DecodePrivateKey as _,
    };
    use rsa::{
        pkcs1::DecodeRsaPrivateKey as _,
        rand_core::OsRng,
        signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _},
        traits::PublicKeyParts as _,
        BigUint, RsaPrivateKey,
    };
    use secrecy::SecretString;
    use serde_json::{json, Map, Value};
    use sha2::Sha256;

    use crate::{clock, Error};

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

    enum Signer {
        Rs256(rsa::pkcs1v15::SigningKey<Sha256>),
        Ps256(rsa::pss::BlindedSigningKey<Sha256>),
        Es256(p256::ecdsa::SigningKey),
    }

    /// A private key that signs `private_key_jwt` client assertions
    /// (RFC 7523 §2.2). Cheap to clone. Needs the `private-key-jwt` feature.
    ///
    /// Load it from PEM ([`from_pem`](Self::from_pem)) or from a private JWK
    /// ([`from_jwk`](Self::from_jwk)) and give it to a grant's builder with
    /// `private_key_jwt`. Each token request then carries a fresh assertion:
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
        signer: Arc<Signer>,
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
        /// bits; P-256 keys (for [`Es256`](JwsAlgorithm::Es256)) PKCS#8 or
        /// SEC1 (`BEGIN EC PRIVATE KEY`). Encrypted keys are not supported.
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
                    let key = if label == "PRIVATE KEY" {
                        RsaPrivateKey::from_pkcs8_pem(pem).ok()
                    } else {
                        RsaPrivateKey::from_pkcs1_pem(pem).ok()
                    }
                    .ok_or_else(|| {
                        Error::config(format!(
                            "the PEM is not an RSA private key ({alg} needs one)"
                        ))
                    })?;
                    rsa_signer(alg, key)?
                }
                (JwsAlgorithm::Es256, "PRIVATE KEY" | "EC PRIVATE KEY") => {
                    let key = if label == "PRIVATE KEY" {
                        p256::SecretKey::from_pkcs8_pem(pem).ok()
                    } else {
                        p256::SecretKey::from_sec1_pem(pem).ok()
                    }
                    .ok_or_else(|| {
                        Error::config("the PEM is not a P-256 private key (ES256 needs one)")
                    })?;
                    Signer::Es256(key.into())
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

        /// Loads a private JWK (RFC 7517): an RSA key (`kty` `RSA`, with `d`,
        /// and `p`, `q` when present) or a P-256 key (`kty` `EC`, `crv`
        /// `P-256`, with `d`).
        ///
        /// The algorithm is the JWK's `alg` (`RS256`, `PS256` or `ES256`);
        /// without one, RSA keys sign with RS256 and P-256 keys with ES256.
        /// The JWK's `kid`, if any, becomes the assertions' `kid` header.
        ///
        /// # Errors
        ///
        /// [`ErrorKind::Config`](crate::ErrorKind::Config) when the text is
        /// not such a JWK (a public key alone, another curve, an `alg` that
        /// does not fit the key). The error never quotes the input.
        pub fn from_jwk(jwk: &str) -> Result<Self, Error> {
            let value: Value = serde_json::from_str(jwk)
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
            let alg = match field("alg")? {
                None => None,
                Some("RS256") => Some(JwsAlgorithm::Rs256),
                Some("PS256") => Some(JwsAlgorithm::Ps256),
                Some("ES256") => Some(JwsAlgorithm::Es256),
                Some(_) => {
                    return Err(Error::config(
                        "the JWK's `alg` is not supported (RS256, PS256 or ES256)",
                    ))
                }
            };
            let (alg, signer) = match field("kty")? {
                Some("RSA") => {
                    let alg = alg.unwrap_or(JwsAlgorithm::Rs256);
                    if alg == JwsAlgorithm::Es256 {
                        return Err(Error::config(
                            "the JWK is an RSA key but its `alg` is ES256",
                        ));
                    }
                    (alg, rsa_signer(alg, rsa_from_jwk(object)?)?)
                }
                Some("EC") => {
                    if field("crv")? != Some("P-256") {
                        return Err(Error::config(
                            "the JWK's curve is not supported (only P-256)",
                        ));
                    }
                    let alg = alg.unwrap_or(JwsAlgorithm::Es256);
                    if alg != JwsAlgorithm::Es256 {
                        return Err(Error::config(format!(
                            "the JWK is a P-256 key but its `alg` is {alg}"
                        )));
                    }
                    (alg, Signer::Es256(p256_from_jwk(object)?.into()))
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

        /// A fresh assertion: `iss` = `sub` = `client_id`, `aud` = `audience`,
        /// a random `jti`, `iat` now and `exp` after `lifetime`.
        pub(crate) fn assertion(
            &self,
            client_id: &str,
            audience: &str,
            lifetime: Duration,
        ) -> Result<SecretString, Error> {
            let iat = clock::wall_now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let jti = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>());
            let claims = json!({
                "iss": client_id,
                "sub": client_id,
                "aud": audience,
                "jti": jti,
                "iat": iat,
                "exp": iat + lifetime.as_secs().max(1),
            });
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
            let failed =
                |_| Error::client_assertion("signing the client assertion failed", None, false);
            let signature = match &*self.signer {
                Signer::Rs256(key) => key
                    .try_sign_with_rng(&mut OsRng, jws.as_bytes())
                    .map_err(failed)?
                    .to_vec(),
                Signer::Ps256(key) => key
                    .try_sign_with_rng(&mut OsRng, jws.as_bytes())
                    .map_err(failed)?
                    .to_vec(),
                Signer::Es256(key) => {
                    let signature: p256::ecdsa::Signature =
                        key.try_sign(jws.as_bytes()).map_err(failed)?;
                    signature.to_bytes().to_vec()
                }
            };
            jws.push('.');
            jws.push_str(&URL_SAFE_NO_PAD.encode(signature));
            Ok(jws)
        }
    }

    /// The label of the first PEM block (`PRIVATE KEY`, `RSA PRIVATE KEY`, ...).
    fn pem_label(pem: &str) -> Option<&str> {
        let rest = &pem[pem.find("-----BEGIN ")? + "-----BEGIN ".len()..];
        Some(&rest[..rest.find("-----")?])
    }

    fn rsa_signer(alg: JwsAlgorithm, key: RsaPrivateKey) -> Result<Signer, Error> {
        if key.size() * 8 < MIN_RSA_BITS {
            return Err(Error::config(format!(
                "the RSA key is too short for {alg}: at least {MIN_RSA_BITS} bits"
            )));
        }
        Ok(match alg {
            JwsAlgorithm::Rs256 => Signer::Rs256(rsa::pkcs1v15::SigningKey::new(key)),
            JwsAlgorithm::Ps256 => Signer::Ps256(rsa::pss::BlindedSigningKey::new(key)),
            JwsAlgorithm::Es256 => {
                return Err(Error::config("ES256 needs a P-256 key, not an RSA key"))
            }
        })
    }

    /// A P-256 private key from a JWK's `d`, checked against its `x` and `y`.
    fn p256_from_jwk(object: &Map<String, Value>) -> Result<p256::SecretKey, Error> {
        let invalid = || Error::config("the JWK is not a valid P-256 private key");
        let coordinate = |name: &str| {
            object
                .get(name)
                .and_then(Value::as_str)
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .filter(|bytes| bytes.len() == 32)
                .ok_or_else(invalid)
        };
        let d = Zeroizing::new(coordinate("d")?);
        let key = p256::SecretKey::from_slice(&d).map_err(|_| invalid())?;
        let point = key.public_key().to_encoded_point(false);
        if point.x().map(|x| x.as_slice()) != Some(&coordinate("x")?[..])
            || point.y().map(|y| y.as_slice()) != Some(&coordinate("y")?[..])
        {
            return Err(Error::config(
                "the JWK's `x` and `y` are not the public half of its `d`",
            ));
        }
        Ok(key)
    }

    /// An RSA private key from a JWK's `n`, `e`, `d` (and `p`, `q`).
    fn rsa_from_jwk(object: &Map<String, Value>) -> Result<RsaPrivateKey, Error> {
        let number = |name: &str| -> Result<Option<BigUint>, Error> {
            let Some(value) = object.get(name) else {
                return Ok(None);
            };
            let bytes = value
                .as_str()
                .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
                .map(Zeroizing::new)
                .ok_or_else(|| Error::config(format!("the JWK's `{name}` is not base64url")))?;
            Ok(Some(BigUint::from_bytes_be(&bytes)))
        };
        let required = |name: &str| {
            number(name)?.ok_or_else(|| Error::config(format!("the RSA JWK has no `{name}`")))
        };
        let (n, e, d) = (required("n")?, required("e")?, required("d")?);
        let primes = match (number("p")?, number("q")?) {
            (Some(p), Some(q)) => vec![p, q],
            _ => Vec::new(),
        };
        let mut key = RsaPrivateKey::from_components(n, e, d, primes)
            .map_err(|_| Error::config("the JWK is not a valid RSA private key"))?;
        key.validate()
            .map_err(|_| Error::config("the JWK is not a valid RSA private key"))?;
        key.precompute()
            .map_err(|_| Error::config("the JWK is not a valid RSA private key"))?;
        Ok(key)
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use p256::ecdsa::signature::Verifier as _;

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

        /// Verifies `jws` with the public half of `pem`, as `alg`.
        fn verify(alg: JwsAlgorithm, pem: &str, jws: &str) {
            let (header, _, input, signature) = split(jws);
            assert_eq!(header["alg"], alg.as_str());
            match alg {
                JwsAlgorithm::Rs256 => {
                    let public = RsaPrivateKey::from_pkcs8_pem(pem).unwrap().to_public_key();
                    let signature = rsa::pkcs1v15::Signature::try_from(&signature[..]).unwrap();
                    rsa::pkcs1v15::VerifyingKey::<Sha256>::new(public)
                        .verify(input.as_bytes(), &signature)
                        .expect("RS256 signature verifies");
                }
                JwsAlgorithm::Ps256 => {
                    let public = RsaPrivateKey::from_pkcs8_pem(pem).unwrap().to_public_key();
                    let signature = rsa::pss::Signature::try_from(&signature[..]).unwrap();
                    rsa::pss::VerifyingKey::<Sha256>::new(public)
                        .verify(input.as_bytes(), &signature)
                        .expect("PS256 signature verifies");
                }
                JwsAlgorithm::Es256 => {
                    assert_eq!(signature.len(), 64, "ES256 is r || s, 32 bytes each");
                    let secret = p256::SecretKey::from_pkcs8_pem(pem).unwrap();
                    let public = p256::ecdsa::VerifyingKey::from(secret.public_key());
                    let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
                    public
                        .verify(input.as_bytes(), &signature)
                        .expect("ES256 signature verifies");
                }
            }
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
            for (alg, pem) in [
                (JwsAlgorithm::Rs256, RSA_PEM),
                (JwsAlgorithm::Ps256, RSA_PEM),
                (JwsAlgorithm::Es256, EC_PEM),
            ] {
                let key = PrivateKey::from_pem(alg, pem).unwrap();
                assert_eq!(key.algorithm(), alg);
                verify(alg, pem, &assertion(&key));
            }
        }

        #[test]
        fn pkcs1_sec1_and_jwk_load_the_same_keys() {
            let key = PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_PKCS1_PEM).unwrap();
            verify(JwsAlgorithm::Rs256, RSA_PEM, &assertion(&key));
            let key = PrivateKey::from_pem(JwsAlgorithm::Es256, EC_SEC1_PEM).unwrap();
            verify(JwsAlgorithm::Es256, EC_PEM, &assertion(&key));

            // The fixtures' JWKs name PS256 / ES256 and a kid.
            let key = PrivateKey::from_jwk(RSA_JWK).unwrap();
            assert_eq!(
                (key.algorithm(), key.kid()),
                (JwsAlgorithm::Ps256, Some("rsa-jwk"))
            );
            let jws = assertion(&key);
            assert_eq!(split(&jws).0["kid"], "rsa-jwk");
            verify(JwsAlgorithm::Ps256, RSA_PEM, &jws);
            let key = PrivateKey::from_jwk(EC_JWK).unwrap().with_kid("other");
            assert_eq!(
                (key.algorithm(), key.kid()),
                (JwsAlgorithm::Es256, Some("other"))
            );
            verify(JwsAlgorithm::Es256, EC_PEM, &assertion(&key));

            // Without `alg`, an RSA JWK signs RS256; without p and q, the
            // primes are recovered.
            let mut jwk: Map<String, Value> = serde_json::from_str(RSA_JWK).unwrap();
            jwk.remove("alg");
            for name in ["p", "q", "dp", "dq", "qi"] {
                jwk.remove(name);
            }
            let key = PrivateKey::from_jwk(&Value::Object(jwk).to_string()).unwrap();
            assert_eq!(key.algorithm(), JwsAlgorithm::Rs256);
            verify(JwsAlgorithm::Rs256, RSA_PEM, &assertion(&key));
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
                PrivateKey::from_jwk(&Value::Object(public_jwk).to_string()),
                PrivateKey::from_jwk(&Value::Object(wrong_alg).to_string()),
                PrivateKey::from_jwk(&Value::Object(other_curve).to_string()),
                PrivateKey::from_jwk(&Value::Object(bad_d).to_string()),
                PrivateKey::from_jwk(&EC_JWK.replace("P-256\"", "P-256\",")),
                PrivateKey::from_jwk(r#"{"kty":"oct","k":"c2VjcmV0","d":"x"}"#),
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
        fn debug_shows_no_key() {
            let key = PrivateKey::from_jwk(EC_JWK).unwrap();
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
