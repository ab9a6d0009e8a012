//! Where token state lives between processes: the [`TokenStore`] trait and
//! the [`FileStore`] that ships with the crate.
//!
//! ```no_run
//! # async fn run() -> Result<(), tower_oauth2::Error> {
//! use tower_oauth2::{FileStore, RefreshToken, TokenCache};
//!
//! // The refresh token comes from the store once it holds one; the one given
//! // here is only used on the very first start.
//! let grant = RefreshToken::builder()
//!     .token_url("https://example.orangelogic.com/oauth2/token")
//!     .client_id("my-app")
//!     .client_secret("s3cret")
//!     .refresh_token_param("code")
//!     .refresh_token("from-the-one-time-authorization")
//!     .build()?;
//! let cache = TokenCache::builder(grant)
//!     .store(FileStore::new("/var/lib/my-app/orange-logic.json"))
//!     .build();
//! let token = cache.token().await?; // no token request if the stored one is valid
//! // ... serve ...
//! cache.shutdown().await?;          // waits for a refresh under way and its save
//! # drop(token);
//! # Ok(())
//! # }
//! ```
//!
//! Each credential's state is stored under its [`StoreKey`]: the flow,
//! token URL, client id, scopes, audience, resources, extra parameters and
//! an optional partition (`store_partition` on the grants: one refresh
//! token per end user), in one canonical spelling and without secrets. Two
//! caches share state only when all of these are equal. A custom
//! [`TokenSource`](crate::TokenSource) names its key, or the cache is given
//! one with [`CacheBuilder::store_key`](crate::CacheBuilder::store_key).
//! State saved by an earlier release under its shorter key is still found
//! (see [`StoreKey::legacy`]).
//!
//! What the cache does with a store:
//! - **At start** it loads the state: a stored access token that is still
//!   valid is handed out at once (no token request); a stored refresh token
//!   replaces the one the grant was built with, unless the grant holds a new
//!   authorization code (see [`TokenSource::origin`](crate::TokenSource::origin)).
//!   A state it must not write over (empty, truncated, of another version or
//!   credential, a missing directory) stops the cache with a typed
//!   [`ErrorKind::Store`](crate::ErrorKind::Store) error. A load that may
//!   pass (I/O, a timeout, Redis not up yet) is tried again with backoff; a
//!   credential without a refresh token serves meanwhile.
//! - **After every token request** whose answer changed the state (a new
//!   access token, a rotated refresh token, even one from an answer that was
//!   refused) it saves the state *before* the new token serves any request,
//!   as a new generation, fenced (see [`TokenStore`]). A failed save keeps
//!   the token in memory and in use, is logged, counted in
//!   [`CacheStats::save_failures`](crate::CacheStats::save_failures),
//!   reported by [`TokenCache::store_error`](crate::TokenCache::store_error),
//!   and retried with backoff, even after every handle is gone (the task
//!   stays until the save succeeds). `shutdown` tries once more and reports
//!   a failure instead of waiting; the save is still retried after that,
//!   and a later `shutdown` says when it has succeeded.
//! - **Every call** is bounded by
//!   [`RefreshPolicy::store_timeout`](crate::RefreshPolicy::store_timeout).
//! - **On `invalid_grant`** it reads the store once more before it reports
//!   that a person must authorize again: another process may have rotated
//!   the refresh token.

mod file;
mod key;
#[cfg(feature = "redis")]
mod redis;

use std::{
    future::Future,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use secrecy::SecretString;
use serde_json::{json, Value};

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use file::FileStore;
pub use key::{StoreKey, StoreKeyBuilder};

use crate::{
    clock::{self, Instant},
    token::expose,
    Error, StoreErrorKind, Token,
};

/// The format version [`TokenState::encode`] writes. Version 1 (no
/// generation) is still read, as generation 0.
pub const FORMAT_VERSION: u64 = 2;

/// Loads and saves a credential's [`TokenState`]. Implement it for the
/// storage you have (a database, a secret manager); [`FileStore`] and
/// `RedisStore` ship with the crate.
///
/// The cache calls it from its background task only (and, for a shared
/// store, from the task that keeps its lease alive), never on a request's
/// path, and bounds every call by
/// [`RefreshPolicy::store_timeout`](crate::RefreshPolicy::store_timeout).
/// Errors should be typed ([`Error::store`]) and must not carry a token.
///
/// # The contract: generations and fencing
///
/// Every state has a [`generation`](TokenState::generation) that only grows
/// (0 is "nothing stored"). A [`save`](Self::save) is conditional: the store
/// writes the state only if it still holds the generation the writer expects
/// and, when the writer names a lease owner, only while that owner holds the
/// lease; the checks and the write happen atomically (one transaction, one
/// script, one conditional update). Otherwise it writes nothing and answers
/// [`Saved::Conflict`] with what it holds, or [`Saved::NotLeaseHolder`].
/// A paused writer whose lease lapsed, or a late save, is refused this way
/// instead of overwriting a newer state: a lease alone cannot stop a writer
/// that wakes up after it expired, a check at the store can. The generation
/// is that check (a fencing token, as etcd's revisions and Kubernetes'
/// `resourceVersion`); the cache names its owner while it holds the lease,
/// and when the store answers that the lease lapsed, writes on the
/// generation alone: the store then holds exactly what it read, so its
/// state is the newest there is, and may be the only copy of a rotated
/// refresh token. The lease guards what the store cannot: sending a refresh
/// token.
///
/// For Postgres: `UPDATE … SET state = $1, generation = $2 WHERE key = $3
/// AND generation = $4` (an `INSERT … ON CONFLICT DO NOTHING` for
/// generation 0), with the lease in a row of its own checked in the same
/// transaction.
pub trait TokenStore: Send + Sync + 'static {
    /// The state stored under `key`, with its generation, or `None` when
    /// there is none yet.
    fn load(
        &self,
        key: &StoreKey,
    ) -> impl Future<Output = Result<Option<TokenState>, Error>> + Send;

    /// Stores `state` (whose generation is higher than `expect.generation`)
    /// under `key` if the store still holds `expect.generation` (0: nothing)
    /// and, when `expect.owner` is set, that owner holds the lease. When
    /// this returns [`Saved::Written`], the state must survive a crash of
    /// the process.
    fn save(
        &self,
        key: &StoreKey,
        state: &TokenState,
        expect: Expect<'_>,
    ) -> impl Future<Output = Result<Saved, Error>> + Send;

    /// For a store shared by several processes: takes the lease on `key`
    /// for `owner`, for `ttl`, unless another owner holds it. An owner that
    /// already holds it gets [`Lease::Acquired`] again with a new `ttl`: that
    /// is how the cache renews it, and how a call whose answer was lost
    /// (a timeout after the store applied it) is recognised as its own. Only
    /// the holder asks the token endpoint; the others wait and adopt what it
    /// stores. The default, for a store of one process, is
    /// [`Lease::Unshared`].
    fn acquire(
        &self,
        key: &StoreKey,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Lease, Error>> + Send {
        let _ = (key, owner, ttl);
        async { Ok(Lease::Unshared) }
    }

    /// Returns when the state under `key` may have changed (another replica
    /// saved), or after `within` at the latest. A store that cannot tell
    /// (the default) just waits `within`: the caller then looks anyway.
    fn changed(&self, key: &StoreKey, within: Duration) -> impl Future<Output = ()> + Send {
        let _ = key;
        tokio::time::sleep(within)
    }

    /// Gives the lease on `key` back, if `owner` still holds it.
    fn release(
        &self,
        key: &StoreKey,
        owner: &str,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        let _ = (key, owner);
        async { Ok(()) }
    }
}

/// What a [`TokenStore::save`] must find before it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Expect<'a> {
    /// The generation the store must still hold (0: nothing stored).
    pub generation: u64,
    /// The owner that must hold the lease, for a shared store; `None` when
    /// the writer holds none (a store of one process).
    pub owner: Option<&'a str>,
}

impl<'a> Expect<'a> {
    /// Expects `generation`, and the lease held by `owner` if given.
    pub fn new(generation: u64, owner: Option<&'a str>) -> Self {
        Self { generation, owner }
    }
}

/// The answer to [`TokenStore::save`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Saved {
    /// The state is stored.
    Written,
    /// The store holds another generation than the one expected: nothing
    /// was written. Carries what it holds (`None`: nothing).
    Conflict(Option<TokenState>),
    /// The writer does not hold the lease (it expired, or another owner took
    /// it): nothing was written.
    NotLeaseHolder,
}

/// The answer to [`TokenStore::acquire`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Lease {
    /// This owner holds the lease: it may ask the token endpoint.
    Acquired,
    /// Another owner holds it: wait, then adopt what it stores.
    Busy,
    /// The store is not shared: no lease is needed.
    Unshared,
}

/// What a credential needs to resume after a restart: its newest refresh
/// token, and its current access token with when it was issued and how long
/// it lives. `Debug` shows no secret.
#[derive(Clone, Default)]
pub struct TokenState {
    generation: u64,
    /// The authorization the refresh token descends from (a digest).
    origin: Option<String>,
    refresh_token: Option<SecretString>,
    access: Option<StoredAccess>,
}

#[derive(Clone)]
struct StoredAccess {
    token: SecretString,
    issued_at: SystemTime,
    expires_in: Option<Duration>,
    scopes: Vec<String>,
    /// The thumbprint of the key a DPoP token is bound to (`None`: bearer).
    dpop_jkt: Option<String>,
    /// The thumbprint of the client certificate its token request presented
    /// (mutual TLS, RFC 8705).
    x5t_s256: Option<String>,
}

impl std::fmt::Debug for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenState")
            .field("generation", &self.generation)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[REDACTED]"),
            )
            .field("access_token", &self.access.as_ref().map(|_| "[REDACTED]"))
            .field("expires_at", &self.expires_at())
            .finish()
    }
}

impl TokenState {
    /// The state of `token`, with `refresh_token` (the newest one the source
    /// holds, which may be newer than the token's).
    pub(crate) fn of(token: Option<&Token>, refresh_token: Option<&SecretString>) -> Self {
        let now = clock::now();
        let wall = clock::wall_now();
        Self {
            generation: 0,
            origin: None,
            refresh_token: refresh_token.cloned(),
            access: token.map(|token| StoredAccess {
                token: token.access_token().clone(),
                issued_at: wall - now.saturating_duration_since(token.issued_at()),
                expires_in: token.expires_in(),
                scopes: token.scopes().to_vec(),
                dpop_jkt: dpop_jkt(token),
                x5t_s256: token.x5t_s256().map(str::to_owned),
            }),
        }
    }

    /// Its generation: grows with every write, 0 for nothing stored (or a
    /// state written before generations existed).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The same state as generation `generation`.
    pub fn with_generation(mut self, generation: u64) -> Self {
        self.generation = generation;
        self
    }

    /// The same state with `refresh_token` (to seed a store with a refresh
    /// token obtained elsewhere).
    pub fn with_refresh_token(mut self, refresh_token: impl Into<String>) -> Self {
        self.refresh_token = Some(SecretString::from(refresh_token.into()));
        self
    }

    /// The authorization its refresh token descends from, as named by
    /// [`TokenSource::origin`](crate::TokenSource::origin).
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    /// The same state, from the authorization named `origin`.
    pub fn with_origin(mut self, origin: Option<String>) -> Self {
        self.origin = origin;
        self
    }

    /// The refresh token, if any.
    pub fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    /// When the stored access token expires, if there is one and its
    /// lifetime is known.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let access = self.access.as_ref()?;
        Some(access.issued_at + access.expires_in?)
    }

    /// The stored access token as a [`Token`] on this process's clock, with
    /// `default_lifetime` when its lifetime is unknown; `None` when there is
    /// none or it has expired.
    pub(crate) fn access_token(&self, default_lifetime: Duration) -> Option<Token> {
        let access = self.access.as_ref()?;
        let age = clock::wall_now()
            .duration_since(access.issued_at)
            .unwrap_or_default();
        if age >= access.expires_in.unwrap_or(default_lifetime) {
            return None;
        }
        let issued_at = clock::now().checked_sub(age).unwrap_or_else(Instant::now);
        let mut builder = Token::builder(expose(&access.token))
            .issued_at(issued_at)
            .scopes(access.scopes.iter().cloned());
        if let Some(lifetime) = access.expires_in {
            builder = builder.expires_in(lifetime);
        }
        if let Some(refresh_token) = &self.refresh_token {
            builder = builder.refresh_token(expose(refresh_token));
        }
        let certificate = |token: Token| match &access.x5t_s256 {
            Some(x5t) => token.bind_certificate(x5t.as_str().into()),
            None => token,
        };
        match &access.dpop_jkt {
            None => builder.build().ok().map(certificate),
            // Bound to a key: usable only by a process that holds that key.
            #[cfg(dpop)]
            Some(jkt) => {
                let key = crate::DpopKey::with_thumbprint(jkt)?;
                Some(certificate(
                    builder.dpop_type().build().ok()?.bind_dpop(&key),
                ))
            }
            #[cfg(not(dpop))]
            Some(_) => None,
        }
    }

    /// The thumbprint of the key the stored access token is bound to, for
    /// a DPoP token (RFC 9449).
    pub fn dpop_jkt(&self) -> Option<&str> {
        self.access.as_ref()?.dpop_jkt.as_deref()
    }

    /// Whether `self` and `other` hold the same tokens.
    pub(crate) fn same_as(&self, other: &TokenState) -> bool {
        let secret = |s: Option<&SecretString>| s.map(expose).map(str::to_owned);
        secret(self.refresh_token.as_ref()) == secret(other.refresh_token.as_ref())
            && secret(self.access.as_ref().map(|a| &a.token))
                == secret(other.access.as_ref().map(|a| &a.token))
    }

    /// The state as a versioned JSON document for `key`, for stores that keep
    /// text. It holds the tokens: keep it where only the service can read it.
    pub fn encode(&self, key: &StoreKey) -> SecretString {
        let access = self.access.as_ref().map(|access| {
            let mut value = json!({
                "token": expose(&access.token),
                "issued_at": unix_seconds(access.issued_at),
                "expires_in": access.expires_in.map(|d| d.as_secs_f64()),
                "scopes": access.scopes,
            });
            // Only for DPoP: a bearer document stays what older releases wrote.
            if let (Some(jkt), Value::Object(object)) = (&access.dpop_jkt, &mut value) {
                object.insert("token_type".into(), "DPoP".into());
                object.insert("dpop_jkt".into(), jkt.as_str().into());
            }
            // Only with mutual TLS, likewise.
            if let (Some(x5t), Value::Object(object)) = (&access.x5t_s256, &mut value) {
                object.insert("x5t_s256".into(), x5t.as_str().into());
            }
            value
        });
        let document = json!({
            "version": FORMAT_VERSION,
            "generation": self.generation,
            "origin": self.origin,
            "key": key.as_str(),
            "credential": key.credential(),
            "refresh_token": self.refresh_token.as_ref().map(expose),
            "access_token": access,
        });
        SecretString::from(document.to_string())
    }

    /// Reads a document written by [`encode`](Self::encode) for `key`.
    ///
    /// Errors ([`ErrorKind::Store`](crate::ErrorKind::Store)): `Corrupt` for
    /// anything that is not such a document (empty, truncated),
    /// `UnsupportedVersion` for another format version, `OtherCredential`
    /// (saying what differs) when it was written for another credential. A
    /// document of an earlier release, written under
    /// [`StoreKey::legacy`], is read; its access token only when that key
    /// named the credential completely.
    pub fn decode(key: &StoreKey, text: &str) -> Result<Self, Error> {
        let corrupt = |what: &'static str| Error::store(StoreErrorKind::Corrupt, what);
        let Ok(Value::Object(document)) = serde_json::from_str::<Value>(text) else {
            return Err(corrupt(
                "the stored token state is not a JSON object (empty or truncated?)",
            ));
        };
        let generation = match document.get("version").and_then(Value::as_u64) {
            Some(1) => 0,
            Some(FORMAT_VERSION) => document
                .get("generation")
                .and_then(Value::as_u64)
                .ok_or_else(|| corrupt("the stored token state has no generation"))?,
            Some(_) => {
                return Err(Error::store(
                    StoreErrorKind::UnsupportedVersion,
                    "the stored token state was written by another format version",
                ))
            }
            None => return Err(corrupt("the stored token state has no version")),
        };
        let recognised = key.recognise(&document)?;
        let secret = |value: Option<&Value>, what: &'static str| match value {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(SecretString::from(s.clone()))),
            Some(_) => Err(corrupt(what)),
        };
        let refresh_token = secret(document.get("refresh_token"), "bad refresh_token")?;
        let access = match document.get("access_token") {
            None | Some(Value::Null) => None,
            Some(Value::Object(access)) => {
                let token = secret(access.get("token"), "bad access token")?
                    .ok_or_else(|| corrupt("access token without a token"))?;
                let issued_at = access
                    .get("issued_at")
                    .and_then(Value::as_f64)
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| corrupt("bad issued_at"))?;
                let expires_in = match access.get("expires_in") {
                    None | Some(Value::Null) => None,
                    Some(value) => Some(
                        value
                            .as_f64()
                            .filter(|s| s.is_finite() && *s >= 0.0)
                            .map(|s| Duration::from_secs_f64(s.min(1e10)))
                            .ok_or_else(|| corrupt("bad expires_in"))?,
                    ),
                };
                let scopes = match access.get("scopes") {
                    None | Some(Value::Null) => Vec::new(),
                    Some(Value::Array(scopes)) => scopes
                        .iter()
                        .map(|s| s.as_str().map(str::to_owned))
                        .collect::<Option<_>>()
                        .ok_or_else(|| corrupt("bad scopes"))?,
                    Some(_) => return Err(corrupt("bad scopes")),
                };
                let dpop_jkt = match (access.get("token_type"), access.get("dpop_jkt")) {
                    (None | Some(Value::Null), _) => None,
                    (Some(Value::String(kind)), Some(Value::String(jkt)))
                        if kind.eq_ignore_ascii_case("dpop") && !jkt.is_empty() =>
                    {
                        Some(jkt.clone())
                    }
                    (Some(Value::String(kind)), _) if kind.eq_ignore_ascii_case("bearer") => None,
                    _ => return Err(corrupt("bad token_type or dpop_jkt")),
                };
                let x5t_s256 = match access.get("x5t_s256") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(x5t)) if !x5t.is_empty() => Some(x5t.clone()),
                    Some(_) => return Err(corrupt("bad x5t_s256")),
                };
                Some(StoredAccess {
                    token,
                    issued_at: UNIX_EPOCH + Duration::from_secs_f64(issued_at.min(1e10)),
                    expires_in,
                    scopes,
                    dpop_jkt,
                    x5t_s256,
                })
            }
            Some(_) => return Err(corrupt("bad access_token")),
        };
        let access = access.filter(|_| recognised.access);
        let origin = match document.get("origin") {
            None | Some(Value::Null) => None,
            Some(Value::String(origin)) => Some(origin.clone()),
            Some(_) => return Err(corrupt("bad origin")),
        };
        Ok(Self {
            generation,
            origin,
            refresh_token,
            access,
        })
    }
}

/// The thumbprint a token is bound to, when it is a DPoP token.
fn dpop_jkt(token: &Token) -> Option<String> {
    #[cfg(dpop)]
    {
        token.dpop_jkt().map(str::to_owned)
    }
    #[cfg(not(dpop))]
    {
        // Without the feature no token is bound.
        let _ = token;
        None
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// The store of a cache without one: nothing is loaded or saved.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStore;

impl TokenStore for NoStore {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        Ok(None)
    }

    async fn save(&self, _: &StoreKey, _: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        Ok(Saved::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn key() -> StoreKey {
        StoreKey::new(
            "refresh_token",
            "app",
            "https://a.example/token",
            &["x".into()],
        )
    }

    #[tokio::test]
    async fn round_trip() {
        let token = Token::builder("SENTINEL-ACCESS")
            .expires_in(Duration::from_secs(3600))
            .scopes(["a", "b"])
            .build()
            .unwrap();
        let rt = SecretString::from("SENTINEL-REFRESH");
        let state = TokenState::of(Some(&token), Some(&rt));
        let text = state.encode(&key());
        let back = TokenState::decode(&key(), expose(&text)).unwrap();
        assert!(back.same_as(&state));
        let restored = back.access_token(Duration::from_secs(60)).unwrap();
        assert_eq!(expose(restored.access_token()), "SENTINEL-ACCESS");
        assert_eq!(restored.scopes(), ["a", "b"]);
        assert!(!format!("{back:?}").contains("SENTINEL"));
    }

    #[tokio::test]
    async fn bad_documents_are_typed() {
        let kind = |text: &str| match TokenState::decode(&key(), text).unwrap_err().kind() {
            ErrorKind::Store(kind) => *kind,
            other => panic!("{other:?}"),
        };
        let good = expose(&TokenState::default().encode(&key())).to_owned();
        assert_eq!(kind(""), StoreErrorKind::Corrupt);
        assert_eq!(kind(&good[..good.len() / 2]), StoreErrorKind::Corrupt);
        assert_eq!(kind("[]"), StoreErrorKind::Corrupt);
        assert_eq!(
            kind(&good.replace("\"version\":2", "\"version\":3")),
            StoreErrorKind::UnsupportedVersion
        );
        let other = StoreKey::new("refresh_token", "other", "https://a.example/token", &[]);
        assert_eq!(
            TokenState::decode(&other, &good).unwrap_err().kind(),
            &ErrorKind::Store(StoreErrorKind::OtherCredential)
        );
    }

    /// A DPoP token's state names its key; a bearer document stays as older
    /// releases wrote and read it; a DPoP token is restored only by a
    /// process holding the key.
    #[cfg(dpop)]
    #[tokio::test]
    async fn dpop_state() {
        let bearer = Token::builder("at").build().unwrap();
        let text = TokenState::of(Some(&bearer), None).encode(&key());
        assert!(!expose(&text).contains("token_type"), "bearer: as before");

        let dpop_key = crate::DpopKey::generate().unwrap();
        let bound = Token::builder("at")
            .dpop_type()
            .build()
            .unwrap()
            .bind_dpop(&dpop_key);
        let text = TokenState::of(Some(&bound), None).encode(&key());
        let back = TokenState::decode(&key(), expose(&text)).unwrap();
        assert_eq!(back.dpop_jkt(), Some(dpop_key.thumbprint()));
        let restored = back.access_token(Duration::from_secs(60)).unwrap();
        assert_eq!(restored.dpop_jkt(), Some(dpop_key.thumbprint()));
        assert_eq!(restored.header_value(), "DPoP at");

        let jkt = dpop_key.thumbprint().to_owned();
        drop((dpop_key, bound, restored));
        assert!(
            back.access_token(Duration::from_secs(60)).is_none(),
            "no key with that thumbprint in this process"
        );

        let odd = expose(&text).replace(&format!("\"dpop_jkt\":\"{jkt}\""), "\"dpop_jkt\":7");
        assert_eq!(
            TokenState::decode(&key(), &odd).unwrap_err().kind(),
            &ErrorKind::Store(StoreErrorKind::Corrupt)
        );
    }

    /// A token obtained over mutual TLS keeps the certificate's thumbprint
    /// through the store; a bearer document is written as before.
    #[tokio::test]
    async fn certificate_thumbprint_state() {
        let bearer = Token::builder("at").build().unwrap();
        let text = TokenState::of(Some(&bearer), None).encode(&key());
        assert!(!expose(&text).contains("x5t_s256"), "as before");

        let bound = Token::builder("at")
            .build()
            .unwrap()
            .bind_certificate("x5t-of-the-cert".into());
        let text = TokenState::of(Some(&bound), None).encode(&key());
        let back = TokenState::decode(&key(), expose(&text)).unwrap();
        let restored = back.access_token(Duration::from_secs(60)).unwrap();
        assert_eq!(restored.x5t_s256(), Some("x5t-of-the-cert"));
        assert_eq!(restored.header_value(), "Bearer at");

        let odd = expose(&text).replace("\"x5t-of-the-cert\"", "[]");
        assert_eq!(
            TokenState::decode(&key(), &odd).unwrap_err().kind(),
            &ErrorKind::Store(StoreErrorKind::Corrupt)
        );
    }
}
