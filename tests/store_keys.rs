//! Store keys that name the whole credential: caches that differ only by
//! audience, resource, extra parameter or end user keep apart; one
//! credential spelled two ways shares its state; a custom source names its
//! key or the cache refuses to touch the store; state written by the
//! earlier key format (fixtures in `tests/fixtures`) is still found.

mod support;

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use secrecy::{ExposeSecret, SecretString};
use support::redis::RedisServer;
use tower_oauth2::{
    endpoint::HttpService, ClientCredentials, Error, ErrorKind, Expect, FileStore, OAuthClient,
    RedisStore, RefreshToken, Saved, StoreErrorKind, StoreKey, Token, TokenCache, TokenSource,
    TokenState, TokenStore,
};

/// One token request's form.
type Form = Vec<(String, String)>;

/// An authorization server behind a stand-in transport: its tokens name
/// what the request asked for, and it rotates refresh tokens.
#[derive(Clone, Default)]
struct Server {
    requests: Arc<Mutex<Vec<Form>>>,
}

impl Server {
    fn transport(&self) -> impl HttpService<String> {
        let requests = self.requests.clone();
        tower::service_fn(move |request: http::Request<String>| {
            let form: Form = form_urlencoded::parse(request.body().as_bytes())
                .into_owned()
                .collect();
            let n = {
                let mut requests = requests.lock().unwrap();
                requests.push(form.clone());
                requests.len()
            };
            let get = |name: &str| {
                form.iter()
                    .filter(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
                    .collect::<Vec<_>>()
                    .join("+")
            };
            let body = match get("grant_type").as_str() {
                "refresh_token" => {
                    // Orange Logic names the parameter `code`.
                    let sent = get("refresh_token") + &get("code");
                    serde_json::json!({
                        "access_token": format!("access-of-{sent}"),
                        "token_type": "Bearer",
                        "expires_in": 3600,
                        "refresh_token": format!("{sent}.{n}"),
                    })
                }
                _ => serde_json::json!({
                    "access_token": format!(
                        "cc-{n}-aud[{}]-res[{}]-tenant[{}]",
                        get("audience"),
                        get("resource"),
                        get("tenant")
                    ),
                    "token_type": "Bearer",
                    "expires_in": 3600,
                }),
            };
            async move {
                Ok::<_, Infallible>(
                    http::Response::builder()
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .unwrap(),
                )
            }
        })
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// The refresh tokens sent, in order.
    fn refresh_tokens_sent(&self, param: &str) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|form| form.iter().filter(|(k, _)| k == param))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

fn access(token: &Token) -> String {
    token.access_token().expose_secret().to_owned()
}

fn cc(server: &Server) -> tower_oauth2::grant::ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth/token")
        .client_id("reporting")
        .client_secret("s3cret")
        .scope("read write")
        .transport(server.transport())
}

/// Two caches on one shared store, built one after the other: what the
/// second one serves.
async fn second_of_two(
    redis: &RedisServer,
    namespace: &str,
    first: ClientCredentials,
    second: ClientCredentials,
) -> (String, String) {
    let store = || RedisStore::new(&redis.url).unwrap().namespace(namespace);
    let cache = TokenCache::builder(first).store(store()).build();
    let first = access(&cache.token().await.unwrap());
    cache.shutdown().await.unwrap();
    let cache = TokenCache::builder(second).store(store()).build();
    let second = access(&cache.token().await.unwrap());
    cache.shutdown().await.unwrap();
    (first, second)
}

#[tokio::test]
async fn audience_resource_and_parameters_keep_credentials_apart() {
    let redis = RedisServer::start();
    let server = Server::default();
    let cases = [
        (
            "audience",
            cc(&server).audience("https://api-1.example"),
            cc(&server).audience("https://api-2.example"),
        ),
        (
            "resource",
            cc(&server).resource("https://api-1.example"),
            cc(&server).resource("https://api-2.example"),
        ),
        (
            "param",
            cc(&server).param("tenant", "acme"),
            cc(&server).param("tenant", "globex"),
        ),
        (
            "resources",
            cc(&server).resource("https://api-1.example"),
            cc(&server)
                .resource("https://api-1.example")
                .resource("https://api-2.example"),
        ),
    ];
    for (what, first, second) in cases {
        let (first, second) = second_of_two(
            &redis,
            what,
            first.build().unwrap(),
            second.build().unwrap(),
        )
        .await;
        // Today's main: the second cache served the first one's token (a
        // token for api-1 sent to api-2).
        assert_ne!(
            first, second,
            "{what}: one credential's token served to another"
        );
        match what {
            "audience" => assert!(second.contains("aud[https://api-2.example]"), "{second}"),
            "param" => assert!(second.contains("tenant[globex]"), "{second}"),
            _ => assert!(second.contains("api-2"), "{what}: {second}"),
        }
    }
    // Nothing secret in the key names: the parameter values are digested.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.starts_with("param:")), "{keys:?}");
    for key in &keys {
        assert!(
            !key.contains("acme") && !key.contains("globex") && !key.contains("s3cret"),
            "{key}"
        );
    }
}

#[tokio::test]
async fn each_end_user_keeps_their_own_refresh_token() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let server = Server::default();
    let client = OAuthClient::builder()
        .token_url("https://auth.example.com/oauth/token")
        .client_id("per-user-app")
        .client_secret("s3cret")
        .transport(server.transport())
        .build()
        .unwrap();
    let store = || RedisStore::new(&redis.url).unwrap();
    for user in ["alice", "bob"] {
        let grant = client
            .refresh_token(Some(SecretString::from(format!("rt-{user}"))))
            .store_partition(user);
        let cache = TokenCache::builder(grant).store(store()).build();
        assert_eq!(
            access(&cache.token().await.unwrap()),
            format!("access-of-rt-{user}")
        );
        cache.shutdown().await.unwrap();
    }
    // Restarts: each user's grant resumes from that user's rotated token.
    for user in ["alice", "bob"] {
        let cache = TokenCache::builder(client.refresh_token(None).store_partition(user))
            .store(store())
            .build();
        let token = cache.token().await.unwrap();
        assert_eq!(
            access(&token),
            format!("access-of-rt-{user}"),
            "the stored one"
        );
        cache.invalidate(&token);
        let token = cache.token().await.unwrap();
        assert!(
            access(&token).starts_with(&format!("access-of-rt-{user}.")),
            "{}",
            access(&token)
        );
        cache.shutdown().await.unwrap();
    }
    let sent = server.refresh_tokens_sent("refresh_token");
    assert_eq!(sent.len(), 4, "{sent:?}");
    assert!(
        sent[2].starts_with("rt-alice.") && sent[3].starts_with("rt-bob."),
        "{sent:?}"
    );

    // In one file, two users are two credentials, and the error says so.
    let path = dir.path().join("state.json");
    let cache = TokenCache::builder(
        client
            .refresh_token(Some(SecretString::from("rt-carol")))
            .store_partition("carol"),
    )
    .store(FileStore::new(&path))
    .build();
    cache.token().await.unwrap();
    cache.shutdown().await.unwrap();
    let cache = TokenCache::builder(client.refresh_token(None).store_partition("dave"))
        .store(FileStore::new(&path))
        .build();
    let error = cache.token().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(StoreErrorKind::OtherCredential)
    );
    assert!(
        error.to_string().ends_with("what differs: partition"),
        "{error}"
    );
    assert!(!error.to_string().contains("carol") && !error.to_string().contains("dave"));
}

#[tokio::test]
async fn one_credential_spelled_two_ways_shares_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let server = Server::default();
    let first = ClientCredentials::builder()
        .token_url("HTTPS://Auth.Example.COM:443/oauth/token")
        .client_id("reporting")
        .scope("write read")
        .resource("https://b.example")
        .resource("https://a.example")
        .param("y", "2")
        .param("x", "1")
        .transport(server.transport())
        .build()
        .unwrap();
    let cache = TokenCache::builder(first)
        .store(FileStore::new(&path))
        .build();
    let token = access(&cache.token().await.unwrap());
    cache.shutdown().await.unwrap();

    let second = ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth/token")
        .client_id("reporting")
        .scopes(["read", "write", "read"])
        .resource("https://a.example")
        .resource("https://b.example")
        .param("x", "1")
        .param("y", "2")
        .transport(server.transport())
        .build()
        .unwrap();
    let cache = TokenCache::builder(second)
        .store(FileStore::new(&path))
        .build();
    // Today's main: Store(OtherCredential), and the cache stops.
    assert_eq!(access(&cache.token().await.unwrap()), token);
    assert_eq!(
        server.count(),
        1,
        "the stored token is served, not fetched again"
    );
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn other_credential_says_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let server = Server::default();
    let cache = TokenCache::builder(
        cc(&server)
            .audience("https://api-1.example")
            .build()
            .unwrap(),
    )
    .store(FileStore::new(&path))
    .build();
    cache.token().await.unwrap();
    cache.shutdown().await.unwrap();

    let other = cc(&server)
        .audience("https://api-2.example")
        .param("tenant", "SENTINEL-VALUE")
        .build()
        .unwrap();
    let cache = TokenCache::builder(other)
        .store(FileStore::new(&path))
        .build();
    // Today's main: the same key, and api-1's token served for api-2.
    let error = cache.token().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(StoreErrorKind::OtherCredential)
    );
    let message = error.to_string();
    assert!(
        message.ends_with(
            "what differs: audience (stored `https://api-1.example`, this cache `https://api-2.example`); extra parameters"
        ),
        "{message}"
    );
    assert!(
        !message.contains("SENTINEL") && !message.contains("s3cret"),
        "{message}"
    );
    assert_eq!(server.count(), 1);
}

/// A source of one's own, without a store key.
struct Custom(Arc<AtomicUsize>);

impl TokenSource for Custom {
    async fn fetch(&mut self) -> Result<Token, Error> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Token::builder(format!("custom-{n}"))
            .expires_in(Duration::from_secs(3600))
            .build()
    }
}

/// A store that counts its calls and keeps states by key.
#[derive(Clone, Default)]
struct Counting {
    calls: Arc<AtomicUsize>,
    states: Arc<Mutex<Vec<(String, String)>>>,
}

impl TokenStore for Counting {
    async fn load(&self, key: &StoreKey) -> Result<Option<TokenState>, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let states = self.states.lock().unwrap();
        match states.iter().find(|(k, _)| k == key.as_str()) {
            Some((_, text)) => TokenState::decode(key, text).map(Some),
            None => Ok(None),
        }
    }

    async fn save(
        &self,
        key: &StoreKey,
        state: &TokenState,
        _: Expect<'_>,
    ) -> Result<Saved, Error> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let text = state.encode(key).expose_secret().to_owned();
        let mut states = self.states.lock().unwrap();
        states.retain(|(k, _)| k != key.as_str());
        states.push((key.as_str().to_owned(), text));
        Ok(Saved::Written)
    }
}

#[tokio::test]
async fn a_custom_source_without_a_key_does_not_touch_the_store() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let store = Counting::default();
    let cache = TokenCache::builder(Custom(fetches.clone()))
        .store(store.clone())
        .build();
    // Today's main: a token, stored under `custom:@` with every other such source's.
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config);
    assert!(error.to_string().contains("store_key"), "{error}");
    assert!(cache.token().await.is_err());
    assert_eq!(fetches.load(Ordering::SeqCst), 0, "nothing fetched");
    assert_eq!(store.calls.load(Ordering::SeqCst), 0, "store untouched");
    assert!(cache.shutdown().await.is_ok());
}

#[tokio::test]
async fn a_custom_source_names_its_key_on_the_cache() {
    let store = Counting::default();
    let key = |user: &str| {
        StoreKey::builder("sidecar")
            .client_id("my-app")
            .token_url("http://127.0.0.1:15000/token")
            .partition(user)
            .build()
    };
    for user in ["alice", "bob"] {
        let fetches = Arc::new(AtomicUsize::new(0));
        let cache = TokenCache::builder(Custom(fetches.clone()))
            .store(store.clone())
            .store_key(key(user))
            .build();
        assert_eq!(access(&cache.token().await.unwrap()), "custom-1");
        cache.shutdown().await.unwrap();
    }
    let mut keys: Vec<String> = store
        .states
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _)| k.clone())
        .collect();
    keys.sort();
    let mut expected = [key("alice"), key("bob")].map(|k| k.as_str().to_owned());
    expected.sort();
    assert_eq!(keys, expected);
    // The key overrides the grant's own.
    let server = Server::default();
    let grant = cc(&server).build().unwrap();
    let cache = TokenCache::builder(grant)
        .store(store.clone())
        .store_key(key("carol"))
        .build();
    cache.token().await.unwrap();
    cache.shutdown().await.unwrap();
    assert!(store
        .states
        .lock()
        .unwrap()
        .iter()
        .any(|(k, _)| k == key("carol").as_str()));
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of a fixture file, in a directory of its own.
fn copy_of(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(fixture(name), &path).unwrap();
    (dir, path)
}

fn orange(server: &Server, client_id: &str, scope: &str, token_url: &str) -> RefreshToken {
    RefreshToken::builder()
        .token_url(token_url)
        .client_id(client_id)
        .client_secret("s3cret")
        .refresh_token_param("code")
        .scope(scope)
        .refresh_token("configured-rt")
        .transport(server.transport())
        .build()
        .unwrap()
}

#[tokio::test]
async fn file_states_of_the_earlier_format_are_found() {
    // The refresh token grant, configured as when it was written, then with
    // its scopes in another order and its URL spelled otherwise (today's
    // main: OtherCredential for the second).
    for (scope, url) in [
        (
            "offline_access api",
            "https://Example.OrangeLogic.com:443/oauth2/token",
        ),
        (
            "api offline_access",
            "https://example.orangelogic.com/oauth2/token",
        ),
    ] {
        let (_dir, path) = copy_of("v1-refresh-token.json");
        let server = Server::default();
        let grant = orange(&server, "orange-app", scope, url);
        let key = grant.store_key().unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(
            !written.contains(&format!("\"{}\"", key.as_str())),
            "{written}"
        );
        let cache = TokenCache::builder(grant)
            .store(FileStore::new(&path))
            .build();
        let token = cache.token().await.unwrap();
        assert_eq!(access(&token), "fixture-access-rt", "served from the file");
        assert_eq!(server.count(), 0);
        cache.invalidate(&token);
        assert_eq!(
            access(&cache.token().await.unwrap()),
            "access-of-fixture-rt-2"
        );
        assert_eq!(server.refresh_tokens_sent("code"), ["fixture-rt-2"]);
        cache.shutdown().await.unwrap();
        // Saved under the new key, and found there by the next start.
        let state = FileStore::new(&path).load(&key).await.unwrap().unwrap();
        assert_eq!(
            state.refresh_token().unwrap().expose_secret(),
            "fixture-rt-2.1"
        );
        let document = std::fs::read_to_string(&path).unwrap();
        assert!(document.contains(&serde_json::json!(key.as_str()).to_string()));
        assert!(document.contains("\"credential\""));
    }

    // A client id with `@`, scopes in another order: the stored access
    // token is served (today's main: OtherCredential).
    let (_dir, path) = copy_of("v1-client-credentials-plain.json");
    let server = Server::default();
    let grant = ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth/token")
        .client_id("svc@tenant")
        .client_secret("s3cret")
        .scope("read write")
        .transport(server.transport())
        .build()
        .unwrap();
    let cache = TokenCache::builder(grant)
        .store(FileStore::new(&path))
        .build();
    assert_eq!(
        access(&cache.token().await.unwrap()),
        "fixture-access-plain"
    );
    assert_eq!(server.count(), 0);
    cache.shutdown().await.unwrap();

    // With an audience, resources and a param: the earlier key did not name
    // them, so the file is this credential's, but its access token may have
    // been issued for another audience and is not served (today's main
    // serves it).
    let (_dir, path) = copy_of("v1-client-credentials-audience.json");
    let server = Server::default();
    let grant = cc(&server)
        .scope("write read")
        .audience("https://api.example.com")
        .resource("https://api.example.com/v1")
        .resource("https://files.example.com")
        .param("tenant", "acme")
        .build()
        .unwrap();
    let cache = TokenCache::builder(grant)
        .store(FileStore::new(&path))
        .build();
    let token = access(&cache.token().await.unwrap());
    assert!(
        token.starts_with("cc-1-aud[https://api.example.com]"),
        "{token}"
    );
    assert_eq!(server.count(), 1);
    cache.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_redis_state_under_the_earlier_key_is_found() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let legacy_name = std::fs::read_to_string(fixture("v1-redis-refresh-token.key")).unwrap();
    let sealed = std::fs::read_to_string(fixture("v1-redis-refresh-token.sealed")).unwrap();
    redis::cmd("SET")
        .arg(&legacy_name)
        .arg(&sealed)
        .query_async::<()>(&mut connection)
        .await
        .unwrap();

    let server = Server::default();
    let grant = orange(
        &server,
        "orange-fleet",
        "offline_access api",
        "https://Example.OrangeLogic.com:443/oauth2/token",
    );
    let key = grant.store_key().unwrap();
    let new_name = format!("tower-oauth2:{}:state", key.as_str());
    assert_ne!(new_name, legacy_name);
    let store = RedisStore::new(&redis.url).unwrap().encryption_key([7; 32]);
    let cache = TokenCache::builder(grant).store(store.clone()).build();
    let token = cache.token().await.unwrap();
    assert_eq!(access(&token), "fixture-access-rt", "served from Redis");
    assert_eq!(server.count(), 0);
    cache.invalidate(&token);
    assert_eq!(
        access(&cache.token().await.unwrap()),
        "access-of-fixture-rt-2"
    );
    cache.shutdown().await.unwrap();

    // The next save went under the new name (today's main: the old one).
    let exists: bool = redis::cmd("EXISTS")
        .arg(&new_name)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(exists, "{new_name}");
    let state = store.load(&key).await.unwrap().unwrap();
    assert_eq!(
        state.refresh_token().unwrap().expose_secret(),
        "fixture-rt-2.1"
    );
    assert!(!new_name.contains("fixture") && !new_name.contains("s3cret"));
}
