//! DPoP (RFC 9449): access tokens bound to a key the client holds.
//!
//! A stolen bearer token works for whoever holds it. A DPoP-bound token works
//! only next to a fresh proof signed with the client's key: give a grant's
//! builder a [`DpopKey`] and every token request carries a proof (the server
//! binds the token to the key's thumbprint and answers `token_type: DPoP`),
//! and [`BearerAuth`](crate::BearerAuth) sends every API request with
//! `Authorization: DPoP <token>` and a `DPoP` proof header for that request.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_oauth2::Error> {
//! # let inner = tower::service_fn(|_: http::Request<String>| async {
//! #     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! # });
//! use tower::ServiceBuilder;
//! use tower_oauth2::{BearerAuthLayer, ClientCredentials, DpopKey, Replay, TokenCache};
//!
//! let key = DpopKey::generate()?;            // ES256, for this process
//! let grant = ClientCredentials::builder()
//!     .token_url("https://auth.example.com/oauth2/token")
//!     .client_id("my-service")
//!     .client_secret("s3cret")
//!     .dpop(key)
//!     .build()?;
//! let cache = TokenCache::new(grant);
//! let client = ServiceBuilder::new()
//!     .retry(Replay::new())                  // replays once after a `use_dpop_nonce` answer
//!     .layer(BearerAuthLayer::new(cache))
//!     .service(inner);
//! # drop(client);
//! # Ok(())
//! # }
//! ```
//!
//! What each proof holds (RFC 9449 §4.2): the header `typ: dpop+jwt`, `alg`
//! and the public `jwk`, encoded once per key; the claims `jti` (128 random
//! bits), `htm`, `htu` (scheme, authority and path: no query, no fragment),
//! `iat` from the system clock, `ath` (the access token's SHA-256, computed
//! once per token) on API requests, and the origin's `nonce` once it gave
//! one. Nonces (`DPoP-Nonce` answers) are remembered per origin and per key.
//!
//! A fleet shares one key: load it on every replica with
//! [`DpopKey::from_private_key`]. A stored token state records the key's
//! thumbprint, and a replica never adopts a token bound to another key.
//! A key in an HSM signs through a [`DpopSigner`] of your own.

mod nonce;
mod proof;

use std::{
    fmt,
    sync::{Arc, Mutex, Weak},
};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use http::HeaderValue;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

pub(crate) use proof::Htu;

use crate::{Error, JwsAlgorithm, PrivateKey};

/// The error a [`DpopSigner`] may return.
pub type SignError = Box<dyn std::error::Error + Send + Sync>;

/// A key that signs DPoP proofs somewhere else: an HSM, a KMS, a TPM.
///
/// Called once per proof, on the request path and synchronously: a signer
/// that takes a network round trip per request makes every request that much
/// slower. A [`PrivateKey`] is one.
pub trait DpopSigner: Send + Sync + 'static {
    /// The algorithm of the signatures.
    fn algorithm(&self) -> JwsAlgorithm;

    /// The public key as a JWK (RFC 7517), JSON text: `kty` `EC` with
    /// `crv` `P-256`, `x`, `y`, or `kty` `RSA` with `n`, `e`. Read once.
    /// Other members are left out of proofs; a private member is refused.
    fn public_jwk(&self) -> String;

    /// The JWS signature of `signing_input` (RFC 7515 §5.1; for ES256 the
    /// 64 bytes `r || s`, not DER).
    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError>;
}

impl DpopSigner for PrivateKey {
    fn algorithm(&self) -> JwsAlgorithm {
        PrivateKey::algorithm(self)
    }

    fn public_jwk(&self) -> String {
        PrivateKey::public_jwk(self)
    }

    fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, SignError> {
        self.sign_input(signing_input)
            .map(|signature| signature.as_ref().to_vec())
            .ok_or_else(|| "the signing backend failed".into())
    }
}

/// The key a client proves possession of. Cheap to clone; every clone shares
/// the nonces servers gave. Its `Debug` output shows the thumbprint only.
#[derive(Clone)]
pub struct DpopKey {
    inner: Arc<KeyInner>,
}

struct KeyInner {
    signer: Signer,
    alg: JwsAlgorithm,
    /// The proof header, base64url: the same for every proof.
    header: String,
    /// The public JWK (required members only), JSON text.
    jwk: String,
    /// RFC 7638 thumbprint, base64url.
    jkt: String,
    nonces: nonce::Nonces,
}

/// Every key alive in this process, to adopt stored tokens with.
static KEYS: Mutex<Vec<Weak<KeyInner>>> = Mutex::new(Vec::new());

enum Signer {
    Key(PrivateKey),
    Custom(Box<dyn DpopSigner>),
}

impl fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpopKey")
            .field("alg", &self.inner.alg)
            .field("jkt", &self.inner.jkt)
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new random ES256 key. It lives as long as the process: tokens bound
    /// to it are useless to another process, so a fleet sharing a store
    /// loads one key everywhere with [`from_private_key`](Self::from_private_key).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) if the signing
    /// backend cannot make a key.
    pub fn generate() -> Result<Self, Error> {
        Self::from_private_key(PrivateKey::generate_es256()?)
    }

    /// A key loaded with [`PrivateKey::from_pem`] or
    /// [`PrivateKey::from_jwk`] (ES256, RS256 or PS256).
    pub fn from_private_key(key: PrivateKey) -> Result<Self, Error> {
        let members = key.public_members();
        Self::build(key.algorithm(), members, Signer::Key(key))
    }

    /// A key that signs through `signer` (an HSM, a KMS).
    ///
    /// # Errors
    ///
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) when its public JWK
    /// is not one (or holds a private member), or does not fit its algorithm.
    pub fn from_signer(signer: impl DpopSigner) -> Result<Self, Error> {
        let alg = signer.algorithm();
        let members = public_members(alg, &signer.public_jwk())?;
        Self::build(alg, members, Signer::Custom(Box::new(signer)))
    }

    fn build(
        alg: JwsAlgorithm,
        mut members: Vec<(&'static str, String)>,
        signer: Signer,
    ) -> Result<Self, Error> {
        members.sort_by(|a, b| a.0.cmp(b.0));
        // RFC 7638 §3: the required members sorted, no whitespace.
        let mut jwk = String::from("{");
        for (i, (name, value)) in members.iter().enumerate() {
            if i > 0 {
                jwk.push(',');
            }
            jwk.push_str(&Value::from(*name).to_string());
            jwk.push(':');
            jwk.push_str(&Value::from(value.as_str()).to_string());
        }
        jwk.push('}');
        let jkt = URL_SAFE_NO_PAD.encode(Sha256::digest(jwk.as_bytes()));
        let header = format!(
            r#"{{"typ":"dpop+jwt","alg":"{}","jwk":{jwk}}}"#,
            alg.as_str()
        );
        let key = Self {
            inner: Arc::new(KeyInner {
                signer,
                alg,
                header: URL_SAFE_NO_PAD.encode(header),
                jwk,
                jkt,
                nonces: nonce::Nonces::default(),
            }),
        };
        let mut keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        keys.retain(|weak| weak.strong_count() > 0);
        keys.push(Arc::downgrade(&key.inner));
        Ok(key)
    }

    /// A key of this process with thumbprint `jkt`, if one is alive: the
    /// only keys a token from a store may be adopted with.
    pub(crate) fn with_thumbprint(jkt: &str) -> Option<DpopKey> {
        let keys = KEYS.lock().unwrap_or_else(|e| e.into_inner());
        keys.iter()
            .filter_map(Weak::upgrade)
            .find(|inner| inner.jkt == jkt)
            .map(|inner| DpopKey { inner })
    }

    /// The algorithm of the proofs.
    pub fn algorithm(&self) -> JwsAlgorithm {
        self.inner.alg
    }

    /// The public key as a JWK, as proofs carry it: the members RFC 7638
    /// requires, nothing private.
    pub fn public_jwk(&self) -> &str {
        &self.inner.jwk
    }

    /// The RFC 7638 thumbprint of the public key: what a server binds
    /// tokens to (`cnf.jkt`) and what `dpop_jkt` on an authorization
    /// request names.
    pub fn thumbprint(&self) -> &str {
        &self.inner.jkt
    }

    /// The last nonce `origin` (`scheme://authority`) gave.
    pub(crate) fn nonce(&self, origin: &str) -> Option<Arc<str>> {
        self.inner.nonces.get(origin)
    }

    /// Remembers the `DPoP-Nonce` answers in `headers` for `origin`;
    /// whether there was a new one.
    pub(crate) fn remember_nonce(&self, origin: &str, headers: &http::HeaderMap) -> bool {
        match headers.get(DPOP_NONCE) {
            Some(value) => self.inner.nonces.remember(origin, value),
            None => false,
        }
    }

    /// A proof for a request to the token endpoint (no `ath`), with the
    /// endpoint's nonce if it gave one.
    pub(crate) fn token_request_proof(&self, htu: &Htu) -> Result<HeaderValue, Error> {
        let nonce = self.nonce(htu.origin());
        self.proof("POST", &htu.htu, None, nonce.as_deref())
    }
}

/// The `DPoP-Nonce` header.
pub(crate) const DPOP_NONCE: &str = "dpop-nonce";
/// The `DPoP` header.
pub(crate) const DPOP: &str = "dpop";

/// What a DPoP-bound token carries: the key, and the token's hash for `ath`,
/// computed once.
pub(crate) struct Binding {
    pub(crate) key: DpopKey,
    pub(crate) ath: String,
}

impl Binding {
    pub(crate) fn new(key: DpopKey, access_token: &str) -> Self {
        Self {
            key,
            ath: URL_SAFE_NO_PAD.encode(Sha256::digest(access_token.as_bytes())),
        }
    }

    /// The proof for one API request: `ath`, and the origin's nonce.
    pub(crate) fn proof(&self, htm: &str, htu: &Htu) -> Result<HeaderValue, Error> {
        let nonce = self.key.nonce(htu.origin());
        self.key
            .proof(htm, &htu.htu, Some(&self.ath), nonce.as_deref())
    }
}

/// A response extension: the API refused the DPoP proof this request carried
/// (`WWW-Authenticate: DPoP error="invalid_dpop_proof"`: a wrong `htu`, a
/// replayed `jti`, a stale `iat`), or asked for a nonce
/// (`error="use_dpop_nonce"`, see [`nonce`](Self::nonce)). The token itself
/// was not rejected and stays in the cache.
///
/// A `use_dpop_nonce` answer is also marked
/// [`TokenRejected`](crate::TokenRejected), so that [`Replay`](crate::Replay)
/// sends the request once more, with the nonce the answer carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DpopRejected {
    nonce: bool,
}

impl DpopRejected {
    pub(crate) fn new(nonce: bool) -> Self {
        Self { nonce }
    }

    /// Whether the server asked for a nonce (`use_dpop_nonce`), rather than
    /// refusing the proof (`invalid_dpop_proof`).
    pub fn nonce(&self) -> bool {
        self.nonce
    }
}

/// The members RFC 7638 requires of the public JWK `text`, for `alg`.
fn public_members(alg: JwsAlgorithm, text: &str) -> Result<Vec<(&'static str, String)>, Error> {
    let invalid = |why: &str| Error::config(format!("the DPoP signer's public JWK {why}"));
    let value: Value = serde_json::from_str(text).map_err(|_| invalid("is not JSON"))?;
    let object = value
        .as_object()
        .ok_or_else(|| invalid("is not a JSON object"))?;
    for private in ["d", "p", "q", "dp", "dq", "qi", "oth", "k"] {
        if object.contains_key(private) {
            return Err(invalid("holds a private member"));
        }
    }
    let field = |name: &'static str| -> Result<(&'static str, String), Error> {
        match object.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok((name, s.clone())),
            _ => Err(Error::config(format!(
                "the DPoP signer's public JWK has no `{name}`"
            ))),
        }
    };
    let kty = field("kty")?;
    match (alg, kty.1.as_str()) {
        (JwsAlgorithm::Es256, "EC") => {
            let crv = field("crv")?;
            if crv.1 != "P-256" {
                return Err(invalid("is not on P-256 (ES256 needs it)"));
            }
            Ok(vec![kty, crv, field("x")?, field("y")?])
        }
        (JwsAlgorithm::Rs256 | JwsAlgorithm::Ps256, "RSA") => {
            Ok(vec![kty, field("n")?, field("e")?])
        }
        _ => Err(invalid(&format!("does not fit {alg}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(part: &str) -> Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn proof_shape() {
        let key = DpopKey::generate().unwrap();
        let htu = Htu::of_uri(&"https://api.example.com/r?q=1".parse().unwrap()).unwrap();
        let binding = Binding::new(key.clone(), "tok");
        let proof = binding.proof("GET", &htu).unwrap();
        assert!(proof.is_sensitive());
        let parts: Vec<&str> = proof.to_str().unwrap().split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["jwk"]["kty"], "EC");
        assert!(header["jwk"].get("d").is_none());
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example.com/r");
        assert_eq!(
            claims["ath"],
            URL_SAFE_NO_PAD.encode(Sha256::digest(b"tok"))
        );
        assert!(claims.get("nonce").is_none());
        assert_eq!(URL_SAFE_NO_PAD.decode(parts[2]).unwrap().len(), 64);
        let again = decode(
            binding
                .proof("GET", &htu)
                .unwrap()
                .to_str()
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap(),
        );
        assert_ne!(claims["jti"], again["jti"], "a fresh jti per proof");

        let mut headers = http::HeaderMap::new();
        headers.insert(DPOP_NONCE, HeaderValue::from_static("n-1"));
        assert!(key.remember_nonce("https://api.example.com", &headers));
        let proof = binding.proof("GET", &htu).unwrap();
        let claims = decode(proof.to_str().unwrap().split('.').nth(1).unwrap());
        assert_eq!(claims["nonce"], "n-1");
    }

    #[test]
    fn thumbprint_matches_the_private_key() {
        let pem = include_str!("../../tests/keys/ec.pem");
        let private = PrivateKey::from_pem(JwsAlgorithm::Es256, pem).unwrap();
        let key = DpopKey::from_private_key(private.clone()).unwrap();
        assert_eq!(key.thumbprint(), private.thumbprint());
        let custom = DpopKey::from_signer(private.clone()).unwrap();
        assert_eq!(custom.thumbprint(), private.thumbprint());
        assert!(!format!("{key:?}").contains(&private.public_jwk()));
    }

    #[test]
    fn signer_with_a_private_member_is_refused() {
        struct Leaky;
        impl DpopSigner for Leaky {
            fn algorithm(&self) -> JwsAlgorithm {
                JwsAlgorithm::Es256
            }
            fn public_jwk(&self) -> String {
                r#"{"kty":"EC","crv":"P-256","x":"a","y":"b","d":"c"}"#.into()
            }
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignError> {
                Ok(vec![0; 64])
            }
        }
        assert_eq!(
            DpopKey::from_signer(Leaky).unwrap_err().kind(),
            &crate::ErrorKind::Config
        );
    }
}
