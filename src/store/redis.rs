//! Token state shared by a fleet, in Redis.

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex, OnceLock, Weak},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    ChaCha20Poly1305, Key, Nonce,
};
use futures_util::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Notify;

use super::{Expect, Lease, Saved, StoreKey, TokenState, TokenStore};
use crate::{token::expose, Error, ErrorKind, StoreErrorKind};

/// Marks an encrypted value: `enc1:` + base64(nonce ‖ ciphertext).
const ENCRYPTED: &str = "enc1:";

/// Releases the lease only for its owner.
const RELEASE: &str =
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

/// Takes the lease, or renews it for the owner that holds it (so a `SET`
/// applied whose answer was lost is recognised as its own). A new holder is
/// announced on the `changed` channel: the other replicas look at the store
/// at once, and repair it if they hold a newer state than it does.
const ACQUIRE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('PUBLISH', ARGV[3], 0)
return 1
";

/// The fenced save: writes only over the generation the writer read, and
/// only while it holds the lease when it says it does. Answers
/// `{2}` written, `{1}` not the lease holder, `{0, current}` a conflict.
const SAVE: &str = r"
local current = redis.call('GET', KEYS[1])
local generation = 0
if current then
  generation = tonumber(string.match(current, '^g(%d+):') or '0')
end
if generation ~= tonumber(ARGV[1]) then
  if current then return {0, current} end
  return {0}
end
if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[2] then return {1} end
redis.call('SET', KEYS[1], ARGV[3])
redis.call('PUBLISH', ARGV[4], 1)
return {2}
";

/// Keeps token state in Redis, shared by every replica of a service, and
/// gives one replica at a time the right to ask the token endpoint (a lease:
/// `SET … NX PX` with an owner, released only by that owner).
///
/// ```no_run
/// # async fn run() -> Result<(), tower_oauth2::Error> {
/// use tower_oauth2::{ClientCredentials, RedisStore, TokenCache};
///
/// # let grant = ClientCredentials::builder().token_url("https://a.example/t").client_id("x").build()?;
/// let store = RedisStore::new("redis://10.0.0.5:6379/")?
///     .encryption_key([7; 32]); // from your secret manager, the same for every replica
/// let cache = TokenCache::builder(grant).store(store).build();
/// # Ok(())
/// # }
/// ```
///
/// A save is one Lua script: it writes only over the generation its writer
/// read and only while the writer holds the lease, so a holder that paused
/// past its lease, or a save that lands late, is refused instead of
/// overwriting a newer state (see [`TokenStore`]'s contract). A value is
/// `g<generation>:` and the document. The lease is short and renewed while
/// held; taking it and saving publish on `…:changed`, so the other replicas
/// look at the store at once (adopting a new token, or repairing a store
/// that came back older than what they hold).
///
/// Durability: for a rotating refresh token, a Redis that loses its last
/// writes (no persistence, or snapshots only) can lose the newest refresh
/// token when it restarts while no replica holds it. Run it with
/// `appendonly yes` (`appendfsync everysec` loses at most a second); the
/// store logs a warning once when Redis says it keeps no append-only file.
///
/// Keys are `tower-oauth2:<store key>:state` and `…:lease`, where the
/// [`StoreKey`] names the flow, client id, token URL and scopes, and carries
/// a digest of the audience, resources, extra parameters and partition;
/// never a secret. A state that an earlier release saved under its shorter
/// key ([`StoreKey::legacy`]) is read when nothing is stored under the new
/// one, and the next save writes the new one; the old one is left as it
/// is. Replicas of the earlier release take their lease under the old key:
/// with a rotating refresh token, stop them all before the new ones start.
/// Redis is never on a request's path: requests read the cache's
/// in-process copy.
/// When Redis is unreachable, a replica fetches for itself only when it has
/// no refresh token to send (client credentials): a refresh token is sent
/// only under the lease, since two replicas sending one rotating refresh
/// token get it revoked. Such a replica serves its valid token, then fails
/// with [`StoreErrorKind::Unavailable`](crate::StoreErrorKind::Unavailable)
/// until Redis is back.
///
/// Without [`encryption_key`](Self::encryption_key) the state is stored in
/// clear: whoever can read those keys in Redis (its users, its backups, a
/// replica of it) can act as the application. With it, the state is sealed
/// with ChaCha20-Poly1305 under that key, bound to its store key.
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    namespace: String,
    cipher: Option<ChaCha20Poly1305>,
    watch: Arc<Watch>,
    durability_checked: Arc<OnceLock<()>>,
}

/// Who waits for which credential's `changed` channel, and the subscriber
/// that wakes them: one pattern subscription per store, started on first
/// use, reconnecting by itself, ended when the last clone of the store goes.
struct Watch {
    client: redis::Client,
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    started: OnceLock<()>,
    closed: Arc<Notify>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.closed.notify_one();
    }
}

impl Watch {
    fn waiter(&self, channel: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.entry(channel.to_owned()).or_default().clone()
    }

    fn start(self: &Arc<Self>, pattern: String) {
        self.started.get_or_init(|| {
            tokio::spawn(subscribe(
                Arc::downgrade(self),
                self.client.clone(),
                pattern,
                self.closed.clone(),
            ));
        });
    }
}

/// Wakes the waiters of every channel a message arrives on, until the store
/// is gone; reconnects after a second when Redis goes away.
async fn subscribe(
    watch: Weak<Watch>,
    client: redis::Client,
    pattern: String,
    closed: Arc<Notify>,
) {
    loop {
        let listen = async {
            let Ok(mut pubsub) = client.get_async_pubsub().await else {
                return;
            };
            if pubsub.psubscribe(&pattern).await.is_err() {
                return;
            }
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Some(watch) = watch.upgrade() else {
                    return;
                };
                let waiters = watch.waiters.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(waiter) = waiters.get(message.get_channel_name()) {
                    waiter.notify_waiters();
                }
            }
        };
        tokio::select! {
            () = closed.notified() => return,
            () = listen => {}
        }
        if watch.strong_count() == 0 {
            return;
        }
        tokio::select! {
            () = closed.notified() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("namespace", &self.namespace)
            .field("encrypted", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`). Connects
    /// lazily, and reconnects by itself: a Redis that is down at start is
    /// not an error here.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn new(url: &str) -> Result<Self, Error> {
        let client = redis::Client::open(url)
            .map_err(|e| Error::config("not a Redis URL").with_source(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let watch = Arc::new(Watch {
            client: client.clone(),
            waiters: Mutex::default(),
            started: OnceLock::new(),
            closed: Arc::default(),
        });
        let connection = ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
            Error::config("cannot set up the Redis connection").with_source(e.to_string())
        })?;
        Ok(Self {
            connection,
            namespace: "tower-oauth2".to_owned(),
            cipher: None,
            watch,
            durability_checked: Arc::default(),
        })
    }

    /// Prefixes every key with `namespace` instead of `tower-oauth2`.
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// Encrypts the state at rest with this 256-bit key. Every replica needs
    /// the same key; a state sealed under another key (or stored in clear)
    /// reads as a `Corrupt` store error.
    pub fn encryption_key(mut self, key: [u8; 32]) -> Self {
        self.cipher = Some(ChaCha20Poly1305::new(Key::from_slice(&key)));
        self
    }

    fn key(&self, key: &StoreKey, what: &str) -> String {
        self.name(key.as_str(), what)
    }

    fn name(&self, key: &str, what: &str) -> String {
        format!("{}:{key}:{what}", self.namespace)
    }

    fn seal(&self, key: &StoreKey, text: &str) -> String {
        let Some(cipher) = &self.cipher else {
            return text.to_owned();
        };
        let nonce: [u8; 12] = rand::random();
        let payload = Payload {
            msg: text.as_bytes(),
            aad: key.as_str().as_bytes(),
        };
        // Encryption with a fresh nonce cannot fail for inputs this size.
        let sealed = cipher
            .encrypt(Nonce::from_slice(&nonce), payload)
            .unwrap_or_default();
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        format!("{ENCRYPTED}{}", STANDARD.encode(bytes))
    }

    /// Opens a value sealed under the store key `key` (as text: a legacy
    /// key's too).
    fn open(&self, key: &str, stored: &str) -> Result<String, Error> {
        let corrupt = |what: &'static str| Error::store(StoreErrorKind::Corrupt, what);
        match (&self.cipher, stored.strip_prefix(ENCRYPTED)) {
            (None, None) => Ok(stored.to_owned()),
            (None, Some(_)) => Err(corrupt(
                "the stored token state is encrypted and no key was given",
            )),
            (Some(_), None) => Err(corrupt("the stored token state is not encrypted")),
            (Some(cipher), Some(sealed)) => {
                let bytes = STANDARD
                    .decode(sealed)
                    .map_err(|_| corrupt("the stored token state is not valid base64"))?;
                if bytes.len() < 12 {
                    return Err(corrupt("the stored token state is truncated"));
                }
                let (nonce, sealed) = bytes.split_at(12);
                let payload = Payload {
                    msg: sealed,
                    aad: key.as_bytes(),
                };
                let text = cipher
                    .decrypt(Nonce::from_slice(nonce), payload)
                    .map_err(|_| corrupt("the stored token state does not open with this key"))?;
                String::from_utf8(text).map_err(|_| corrupt("the stored token state is not text"))
            }
        }
    }
}

fn unreachable(what: &'static str, error: redis::RedisError) -> Error {
    let kind = if error.is_timeout() {
        StoreErrorKind::TimedOut
    } else if error.is_io_error() || error.is_connection_dropped() || error.is_connection_refusal()
    {
        StoreErrorKind::Unavailable
    } else if what == "save" {
        StoreErrorKind::WriteFailed
    } else {
        StoreErrorKind::Unreadable
    };
    // Redis errors name commands and addresses, never values.
    Error::store(kind, format!("Redis {what} failed")).with_source(error.to_string())
}

impl RedisStore {
    /// The stored value for `state`: its generation, then the (sealed) document.
    fn value(&self, key: &StoreKey, state: &TokenState) -> String {
        let sealed = self.seal(key, expose(&state.encode(key)));
        format!("g{}:{sealed}", state.generation())
    }

    /// Reads a value stored under `name` (the key's text, or its legacy
    /// text); one written before generations is generation 0.
    fn read(&self, key: &StoreKey, name: &str, stored: &str) -> Result<TokenState, Error> {
        let (generation, rest) = match stored
            .strip_prefix('g')
            .and_then(|rest| rest.split_once(':'))
            .and_then(|(n, rest)| Some((n.parse::<u64>().ok()?, rest)))
        {
            Some((generation, rest)) => (generation, rest),
            None => (0, stored),
        };
        Ok(TokenState::decode(key, &self.open(name, rest)?)?.with_generation(generation))
    }

    /// Once per store: warns when Redis keeps no append-only file, where a
    /// restart can bring back an older refresh token than the newest one.
    async fn check_durability(&self) {
        if self.durability_checked.set(()).is_err() {
            return;
        }
        let mut connection = self.connection.clone();
        // Managed services often refuse CONFIG: then nothing can be said.
        let answer: Result<Vec<String>, _> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut connection)
            .await;
        if let Ok(answer) = answer {
            if answer.get(1).is_some_and(|v| v == "no") {
                tracing::warn!(
                    target: "tower_oauth2",
                    "Redis keeps no append-only file (appendonly no): a restart can lose the newest rotated refresh token; set appendonly yes"
                );
            }
        }
    }
}

impl TokenStore for RedisStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<TokenState>, Error> {
        let mut connection = self.connection.clone();
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.key(key, "state"))
            .query_async(&mut connection)
            .await
            .map_err(|e| unreachable("load", e))?;
        self.check_durability().await;
        if let Some(stored) = stored {
            return self.read(key, key.as_str(), &stored).map(Some);
        }
        // Saved by an earlier release, sealed under that key.
        let Some(legacy) = key.legacy().filter(|legacy| *legacy != key.as_str()) else {
            return Ok(None);
        };
        let stored: Option<String> = redis::cmd("GET")
            .arg(self.name(legacy, "state"))
            .query_async(&mut connection)
            .await
            .map_err(|e| unreachable("load", e))?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        match self.read(key, legacy, &stored) {
            // This release's state of another credential whose key is
            // spelled like this one's legacy key: not ours, and not an error.
            Err(error) if error.kind() == &ErrorKind::Store(StoreErrorKind::OtherCredential) => {
                Ok(None)
            }
            decoded => decoded.map(Some),
        }
    }

    async fn save(
        &self,
        key: &StoreKey,
        state: &TokenState,
        expect: Expect<'_>,
    ) -> Result<Saved, Error> {
        let mut connection = self.connection.clone();
        let answer: Vec<redis::Value> = redis::cmd("EVAL")
            .arg(SAVE)
            .arg(2)
            .arg(self.key(key, "state"))
            .arg(self.key(key, "lease"))
            .arg(expect.generation)
            .arg(expect.owner.unwrap_or(""))
            .arg(self.value(key, state))
            .arg(self.key(key, "changed"))
            .query_async(&mut connection)
            .await
            .map_err(|e| unreachable("save", e))?;
        match answer.as_slice() {
            [redis::Value::Int(2)] => Ok(Saved::Written),
            [redis::Value::Int(1)] => Ok(Saved::NotLeaseHolder),
            [redis::Value::Int(0)] => Ok(Saved::Conflict(None)),
            [redis::Value::Int(0), redis::Value::BulkString(current)] => {
                let current = std::str::from_utf8(current).map_err(|_| {
                    Error::store(
                        StoreErrorKind::Corrupt,
                        "the stored token state is not text",
                    )
                })?;
                Ok(Saved::Conflict(Some(self.read(
                    key,
                    key.as_str(),
                    current,
                )?)))
            }
            _ => Err(Error::store(
                StoreErrorKind::WriteFailed,
                "Redis answered the save script with something unexpected",
            )),
        }
    }

    async fn changed(&self, key: &StoreKey, within: Duration) {
        self.watch.start(format!("{}:*:changed", self.namespace));
        let waiter = self.watch.waiter(&self.key(key, "changed"));
        let notified = waiter.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let _ = tokio::time::timeout(within, notified).await;
    }

    async fn acquire(&self, key: &StoreKey, owner: &str, ttl: Duration) -> Result<Lease, Error> {
        let mut connection = self.connection.clone();
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let held: i64 = redis::cmd("EVAL")
            .arg(ACQUIRE)
            .arg(1)
            .arg(self.key(key, "lease"))
            .arg(owner)
            .arg(millis)
            .arg(self.key(key, "changed"))
            .query_async(&mut connection)
            .await
            .map_err(|e| unreachable("lease", e))?;
        Ok(if held == 1 {
            Lease::Acquired
        } else {
            Lease::Busy
        })
    }

    async fn release(&self, key: &StoreKey, owner: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        redis::cmd("EVAL")
            .arg(RELEASE)
            .arg(1)
            .arg(self.key(key, "lease"))
            .arg(owner)
            .query_async::<i64>(&mut connection)
            .await
            .map(drop)
            .map_err(|e| unreachable("release", e))
    }
}
