//! Interop with a real, certified authorization server: oidc-provider, run by
//! `tests/interop/server.mjs` on loopback.
//!
//! Needs Node.js and npm. The first test to start the server installs its
//! npm packages (`npm ci` in `tests/interop`, from the lock file) when they
//! are missing, so `cargo test` on a fresh clone runs these tests for real.
//! When Node.js is missing or the install fails, the tests fail, saying which
//! command installs what is missing: a test that did not run never passes.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use axum::{extract::State, http::HeaderMap, routing::get, Router};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use http::{header::AUTHORIZATION, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use secrecy::ExposeSecret;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::{Service, ServiceExt};
use tower_oauth2::{
    discovery::Discovery, AuthMethod, AuthorizationCode, BearerAuthLayer, ClientCredentials,
    ClientIdentity, ErrorKind, OAuthErrorCode, RefreshPolicy, TokenCache, TokenSource,
};

const AUDIENCE: &str = "urn:tower-oauth2:api";
const REDIRECT_URI: &str = "http://127.0.0.1/callback";

/// A running oidc-provider; killed on drop.
struct Provider {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Provider {
    /// Starts a fresh server, installing its npm packages first if needed.
    fn start() -> Provider {
        Self::start_with(None)
    }

    /// [`start`](Self::start), with the mutual-TLS listener and clients
    /// when `mtls` holds the certificates (`MTLS_DIR`, see the server's README).
    fn start_with(mtls: Option<&Pki>) -> Provider {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
        install(&dir);
        // Once, a server started (it was listening) but never got as far as
        // READY, nor as far as exiting when its stdin closed; forty starts
        // in a row since have not done it again. A second start gets the
        // test going, and the first one's stderr is printed to find out why.
        match Self::spawn(&dir, mtls) {
            Ok(provider) => provider,
            Err(stderr) => {
                eprintln!("the interop server did not say READY within 90 s; starting another. Its stderr:\n{stderr}");
                Self::spawn(&dir, mtls)
                    .unwrap_or_else(|stderr| panic!("the interop server did not say READY within 90 s, twice. Its stderr:\n{stderr}"))
            }
        }
    }

    /// One start: the server, or what it wrote to stderr when it did not
    /// say READY in time (it is killed then).
    fn spawn(dir: &std::path::Path, mtls: Option<&Pki>) -> Result<Provider, String> {
        let mut command = Command::new("node");
        if let Some(pki) = mtls {
            command.env("MTLS_DIR", pki.dir.path());
        }
        let stderr_file = tempfile::NamedTempFile::new().expect("a temporary file");
        let mut child = command
            .arg("server.mjs")
            .current_dir(dir)
            .env("PORT", "0")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The provider warns about development keys and Node versions on
            // every start; TOWER_OAUTH2_INTEROP_LOG=1 shows its stderr.
            .stderr(if std::env::var_os("TOWER_OAUTH2_INTEROP_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::from(stderr_file.reopen().expect("the temporary file"))
            })
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let first = lines.next().and_then(Result::ok).unwrap_or_default();
            let _ = tx.send(first);
            // Keep reading, so the server never writes into a closed pipe.
            for _ in lines {}
        });
        // Seconds normally; a fresh `npm ci` on a loaded 2-core machine has
        // once taken longer than 30 s to a first READY.
        let Ok(line) = rx.recv_timeout(Duration::from_secs(90)) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::fs::read_to_string(stderr_file.path()).unwrap_or_default());
        };
        let port: u16 = line
            .trim()
            .strip_prefix("READY ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the interop server: {line:?}"));
        Ok(Provider {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        })
    }

    fn token_url(&self) -> String {
        format!("{}/token", self.base)
    }

    fn client_credentials(
        &self,
        id: &str,
        secret: &str,
        method: AuthMethod,
        scope: &str,
    ) -> ClientCredentials {
        ClientCredentials::builder()
            .token_url(self.token_url())
            .client_id(id)
            .client_secret(secret)
            .auth_method(method)
            .scope(scope)
            .build()
            .unwrap()
    }

    /// Token requests the server has seen from `client_id`.
    async fn token_requests(&self, client_id: &str) -> u64 {
        let stats: Value = self.get_json("/test/stats").await;
        stats["token_requests"][client_id].as_u64().unwrap_or(0)
    }

    async fn token_requests_by_grant(&self, grant: &str) -> u64 {
        let stats: Value = self.get_json("/test/stats").await;
        stats["token_requests_by_grant"][grant]
            .as_u64()
            .unwrap_or(0)
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    /// What the provider says about `token`, asked as the resource server.
    async fn introspect(&self, token: &str) -> Value {
        self.http
            .post(format!("{}/token/introspection", self.base))
            .basic_auth("resource-server", Some("rs-secret"))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn revoke(&self, token: &str, client_id: &str, secret: &str) {
        let response = self
            .http
            .post(format!("{}/token/revocation", self.base))
            .basic_auth(client_id, Some(secret))
            .form(&[("token", token)])
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "revocation: {}",
            response.status()
        );
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs the interop server's npm packages from its lock file, once per
/// test run, unless a previous `npm ci` left them in place.
fn install(dir: &std::path::Path) {
    static INSTALLED: Mutex<bool> = Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return;
    }
    if Command::new("node").arg("--version").output().is_err() {
        panic!(
            "the interop tests need Node.js 20 or later and npm, which are not installed \
             (on Debian: `apt-get install nodejs npm`)"
        );
    }
    // `npm ci` writes this file last; without it the install is missing or partial.
    if !dir.join("node_modules/.package-lock.json").is_file() {
        let _ = writeln!(
            std::io::stderr(),
            "installing the interop server's npm packages (npm ci in tests/interop)"
        );
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(dir)
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("could not run npm (install it with Node.js): {e}"));
        assert!(
            status.success(),
            "`npm ci` in tests/interop failed ({status}); run it there by hand to see why"
        );
    }
    *installed = true;
}

fn secret_of(token: &tower_oauth2::Token) -> String {
    token.access_token().expose_secret().to_owned()
}

#[tokio::test]
async fn client_credentials_with_basic_and_post() {
    let provider = Provider::start();
    for (id, secret, method) in [
        ("cc-basic", "basic-secret", AuthMethod::ClientSecretBasic),
        ("cc-post", "post-secret", AuthMethod::ClientSecretPost),
    ] {
        let mut grant = provider.client_credentials(id, secret, method, "api.read api.write");
        let token = grant.fetch().await.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(token.scopes(), ["api.read", "api.write"], "{id}");
        assert_eq!(token.expires_in(), Some(Duration::from_secs(300)));
        let info = provider.introspect(&secret_of(&token)).await;
        assert_eq!(info["active"], true, "{id}: {info}");
        assert_eq!(info["client_id"], id);
        assert_eq!(info["aud"], AUDIENCE, "{info}");

        let mut narrow = provider.client_credentials(id, secret, method, "api.read");
        let token = narrow.fetch().await.unwrap();
        assert_eq!(token.scopes(), ["api.read"]);
        let info = provider.introspect(&secret_of(&token)).await;
        assert_eq!(info["scope"], "api.read", "{info}");
    }
}

/// Discovery of the real server's OpenID configuration, and a grant built
/// from it, both through a hyper-util client given as the transport.
#[tokio::test]
async fn discovery_and_a_hyper_util_transport() {
    let provider = Provider::start();
    let hyper: Client<HttpConnector, String> = Client::builder(TokioExecutor::new()).build_http();
    let metadata = Discovery::builder()
        .transport(hyper.clone())
        .build()
        .metadata(&provider.base)
        .await
        .unwrap();
    assert_eq!(metadata.issuer(), provider.base);
    assert_eq!(metadata.token_endpoint().as_str(), provider.token_url());
    let methods = metadata.token_endpoint_auth_methods().unwrap();
    assert!(
        methods.iter().any(|m| m == "client_secret_basic"),
        "{methods:?}"
    );

    // No auth method given: the metadata lists basic, which `cc-basic` uses.
    let mut grant = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("cc-basic")
        .client_secret("basic-secret")
        .scope("api.read")
        .transport(hyper)
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    let info = provider.introspect(&secret_of(&token)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "cc-basic");
    assert_eq!(provider.token_requests("cc-basic").await, 1);
}

#[tokio::test]
async fn a_secret_with_special_characters_is_encoded_for_basic_auth() {
    let provider = Provider::start();
    let secret = "p@ss:w/rd+&=% ~x";
    let mut encoded = provider.client_credentials(
        "cc-special",
        secret,
        AuthMethod::ClientSecretBasic,
        "api.read",
    );
    encoded
        .fetch()
        .await
        .expect("form-urlencoded Basic credentials are accepted");
    let mut raw = provider.client_credentials(
        "cc-special",
        secret,
        AuthMethod::ClientSecretBasicUnencoded,
        "api.read",
    );
    // Sent raw, `%` and `+` do not decode: the server refuses the credentials.
    let error = raw.fetch().await.unwrap_err();
    assert!(
        matches!(
            error.kind(),
            ErrorKind::OAuth(OAuthErrorCode::InvalidClient | OAuthErrorCode::InvalidRequest)
        ),
        "{error}"
    );
    assert!(!error.is_transient());
}

/// A permanent error through the cache: the server sees one token request,
/// however many callers ask.
async fn assert_no_retry_storm(
    provider: &Provider,
    grant: ClientCredentials,
    client_id: &str,
    code: OAuthErrorCode,
) {
    let cache = TokenCache::new(grant);
    for _ in 0..100 {
        let error = cache.token().await.unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::OAuth(code.clone()), "{error}");
        assert!(!error.is_transient());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(provider.token_requests(client_id).await, 1);
    assert_eq!(cache.stats().token_requests, 1);
}

#[tokio::test]
async fn invalid_client_and_invalid_scope_are_typed_and_not_retried() {
    let provider = Provider::start();
    let wrong_secret = provider.client_credentials(
        "cc-basic",
        "wrong",
        AuthMethod::ClientSecretBasic,
        "api.read",
    );
    assert_no_retry_storm(
        &provider,
        wrong_secret,
        "cc-basic",
        OAuthErrorCode::InvalidClient,
    )
    .await;
    // OfficeRnD's documented case: a scope the application was not granted.
    let not_granted = provider.client_credentials(
        "cc-post",
        "post-secret",
        AuthMethod::ClientSecretPost,
        "api.admin",
    );
    assert_no_retry_storm(
        &provider,
        not_granted,
        "cc-post",
        OAuthErrorCode::InvalidScope,
    )
    .await;
}

/// A resource server that asks the provider about every token it is shown.
#[derive(Clone)]
struct ResourceServer {
    provider_base: String,
    http: reqwest::Client,
    served: Arc<AtomicUsize>,
    rejected: Arc<AtomicUsize>,
}

async fn protected(
    State(rs): State<ResourceServer>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, &'static str) {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let info: Value = rs
        .http
        .post(format!("{}/token/introspection", rs.provider_base))
        .basic_auth("resource-server", Some("rs-secret"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scopes = info["scope"].as_str().unwrap_or_default();
    let ok = info["active"] == true
        && info["aud"] == AUDIENCE
        && scopes.split(' ').any(|s| s == "api.read");
    if ok {
        rs.served.fetch_add(1, Ordering::SeqCst);
        (StatusCode::OK, HeaderMap::new(), "data")
    } else {
        rs.rejected.fetch_add(1, Ordering::SeqCst);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        (StatusCode::UNAUTHORIZED, headers, "")
    }
}

impl ResourceServer {
    async fn start(provider: &Provider) -> (ResourceServer, String) {
        let rs = ResourceServer {
            provider_base: provider.base.clone(),
            http: reqwest::Client::new(),
            served: Arc::default(),
            rejected: Arc::default(),
        };
        let app = Router::new()
            .route("/data", get(protected))
            .with_state(rs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/data", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (rs, url)
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// The recommended stack: `Replay` outside the layer sends a request whose
/// token was rejected once more.
type ApiClient = tower::retry::Retry<tower_oauth2::Replay, tower_oauth2::BearerAuth<HttpClient>>;

fn api_client(cache: &TokenCache) -> ApiClient {
    let http: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    tower::ServiceBuilder::new()
        .retry(tower_oauth2::Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(http)
}

async fn call(client: &mut ApiClient, url: &str) -> StatusCode {
    let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status();
    let _ = response.into_body().collect().await;
    status
}

#[tokio::test]
async fn the_layer_recovers_from_a_revoked_token_with_one_refresh_and_one_replay() {
    let provider = Provider::start();
    let (rs, url) = ResourceServer::start(&provider).await;
    let grant = provider.client_credentials(
        "cc-basic",
        "basic-secret",
        AuthMethod::ClientSecretBasic,
        "api.read",
    );
    let cache = TokenCache::new(grant);
    let mut client = api_client(&cache);
    for _ in 0..20 {
        assert_eq!(call(&mut client, &url).await, StatusCode::OK);
    }
    assert_eq!(provider.token_requests("cc-basic").await, 1);

    let revoked = cache.token().await.unwrap();
    provider
        .revoke(&secret_of(&revoked), "cc-basic", "basic-secret")
        .await;
    assert_eq!(
        call(&mut client, &url).await,
        StatusCode::OK,
        "replayed with a new token"
    );
    assert_eq!(
        rs.rejected.load(Ordering::SeqCst),
        1,
        "one 401, for the revoked token"
    );
    assert_eq!(provider.token_requests("cc-basic").await, 2, "one refresh");
    assert_eq!(cache.stats().invalidations, 1);
    assert!(!cache.token().await.unwrap().same_as(&revoked));
    assert_eq!(call(&mut client, &url).await, StatusCode::OK);
}

#[tokio::test]
async fn short_lived_tokens_under_concurrent_traffic() {
    let provider = Provider::start();
    let (rs, url) = ResourceServer::start(&provider).await;
    let grant = provider.client_credentials(
        "cc-short",
        "short-secret",
        AuthMethod::ClientSecretBasic,
        "api.read",
    );
    let cache = TokenCache::new(grant);
    let lifetimes = 10;
    let run_for = Duration::from_secs(2 * lifetimes + 1);
    let clients = (0..4).map(|_| api_client(&cache)).collect();
    let (ok, failed) = traffic_through(clients, &url, run_for).await;
    let token_requests = provider.token_requests("cc-short").await;
    let stats = cache.stats();
    println!("{ok} requests, {failed} failed, {token_requests} token requests, {stats:?}");
    assert!(ok > 100, "traffic was continuous: {ok}");
    assert_eq!(failed, 0);
    assert_eq!(
        rs.rejected.load(Ordering::SeqCst),
        0,
        "no request carried an expired token"
    );
    assert!(
        stats.waits <= 4,
        "only each worker's first request waited: {stats:?}"
    );
    // The server rounds expiry to whole seconds, so a "2 s" token may be
    // valid for just over 1 s: the policy refreshes every 0.75 s.
    assert!(
        (lifetimes..=3 * lifetimes + 2).contains(&token_requests),
        "{token_requests} token requests over {lifetimes} lifetimes"
    );
}

fn pkce_pair() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand_bytes());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = (std::process::id() as u8)
            .wrapping_mul(31)
            .wrapping_add(i as u8 * 7);
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    bytes[0] ^= nanos as u8;
    bytes[1] ^= (nanos >> 8) as u8;
    bytes
}

#[tokio::test]
async fn authorization_code_with_pkce_then_rotating_refresh_tokens() {
    let provider = Provider::start();
    let (verifier, challenge) = pkce_pair();
    let code: Value = provider
        .get_json(&format!(
            "/test/code?client_id=web-app&redirect_uri={REDIRECT_URI}&scope=openid%20offline_access%20api.read\
             &code_challenge={challenge}&code_challenge_method=S256&resource={AUDIENCE}&state=xyz"
        ))
        .await;
    let code = code["code"].as_str().expect("a code").to_owned();

    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = issued.clone();
    let grant = AuthorizationCode::builder()
        .token_url(provider.token_url())
        .client_id("web-app")
        .client_secret("web-secret")
        .code(code)
        .redirect_uri(REDIRECT_URI)
        .code_verifier(verifier)
        .on_refresh_token(move |rt| record.lock().unwrap().push(rt.expose_secret().to_owned()))
        .build()
        .unwrap();
    // Every round below invalidates a token just issued, which the cache
    // takes for an API that refuses new tokens and answers with backoff:
    // keep that backoff within the wait a request gives the next attempt.
    let policy = RefreshPolicy::new().max_backoff(Duration::from_millis(20));
    let cache = TokenCache::with_policy(grant, policy);
    let first = cache.token().await.unwrap();
    let info = provider.introspect(&secret_of(&first)).await;
    assert_eq!(info["active"], true, "{info}");

    // Refresh pressure from many callers at once: each round invalidates the
    // current token from 50 tasks; one refresh per round must follow, always
    // with the newest refresh token (reusing an old one would revoke them all).
    for _ in 0..5 {
        let current = cache.token().await.unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (cache, current) = (cache.clone(), current.clone());
                tokio::spawn(async move {
                    cache.invalidate(&current);
                    cache.token().await
                })
            })
            .collect();
        for task in tasks {
            task.await
                .unwrap()
                .expect("no refresh failed: no old refresh token was reused");
        }
    }
    let issued = issued.lock().unwrap().clone();
    assert_eq!(
        issued.len(),
        6,
        "one refresh token from the code, one per refresh"
    );
    let mut distinct = issued.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 6, "every refresh rotated the refresh token");
    assert_eq!(
        provider.token_requests_by_grant("authorization_code").await,
        1
    );
    assert_eq!(provider.token_requests_by_grant("refresh_token").await, 5);
    assert_eq!(cache.stats().failures, 0);

    // Revoked at the provider: the next refresh says a person must come back.
    let response = provider
        .http
        .post(format!(
            "{}/test/revoke-grants?client_id=web-app",
            provider.base
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let current = cache.token().await.unwrap();
    cache.invalidate(&current);
    let error = cache.token().await.unwrap_err();
    assert!(error.is_reauthorization_required(), "{error}");
    assert_eq!(error.oauth_code(), Some(&OAuthErrorCode::InvalidGrant));
    for _ in 0..10 {
        assert!(cache
            .token()
            .await
            .unwrap_err()
            .is_reauthorization_required());
    }
    assert_eq!(
        provider.token_requests_by_grant("refresh_token").await,
        6,
        "no retries after invalid_grant"
    );
}

// `examples/authorize.rs`, compiled into this test as it is.
#[path = "../examples/authorize.rs"]
#[allow(dead_code)]
mod authorize_example;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorize_example_runs_a_native_app_from_authorization_to_the_store() {
    let provider = Provider::start();
    let dir = tempfile::tempdir().unwrap();
    let settings = authorize_example::Settings {
        authorize_url: format!("{}/auth", provider.base),
        token_url: provider.token_url(),
        client_id: "native-app".into(),
        client_secret: None,
        scope: Some("openid offline_access api.read".into()),
        prompt: Some("consent".into()),
        refresh_token_param: None,
        store: dir.path().join("native-app.json"),
    };
    // The person: opens the printed URL in a browser, logs in, consents.
    let browser = provider.http.clone();
    let browse = format!("{}/test/browse", provider.base);
    let (opened, clicked) = tokio::sync::oneshot::channel();
    authorize_example::authorize_once(&settings, move |url| {
        let (browser, url) = (browser.clone(), url.to_owned());
        tokio::spawn(async move {
            let query: String = form_urlencoded::Serializer::new(String::new())
                .append_pair("url", &url)
                .finish();
            let answer = browser.get(format!("{browse}?{query}")).send().await;
            let _ = opened.send(answer.map(|r| r.status()));
        });
    })
    .await
    .expect("authorized");
    assert_eq!(clicked.await.unwrap().unwrap(), StatusCode::OK);
    assert_eq!(
        provider.token_requests_by_grant("authorization_code").await,
        1
    );

    // Every later start: from the store, without a token request.
    let token = authorize_example::run_from_store(&settings).await.unwrap();
    let active = provider.introspect(&secret_of(&token)).await;
    assert_eq!(active["active"], true, "{active}");
    assert_eq!(active["client_id"], "native-app");
    assert_eq!(provider.token_requests_by_grant("refresh_token").await, 0);

    // And it refreshes with the stored, rotating refresh token.
    let cache = TokenCache::builder(
        tower_oauth2::OAuthClient::builder()
            .token_url(provider.token_url())
            .client_id("native-app")
            .build()
            .unwrap()
            .refresh_token(None),
    )
    .store(tower_oauth2::FileStore::new(&settings.store))
    .build();
    let stored = cache.token().await.unwrap();
    cache.invalidate(&stored);
    let refreshed = cache.token().await.unwrap();
    cache.shutdown().await.unwrap();
    assert_ne!(secret_of(&refreshed), secret_of(&stored));
    assert_eq!(provider.token_requests_by_grant("refresh_token").await, 1);
    let again = authorize_example::run_from_store(&settings).await.unwrap();
    assert_eq!(
        secret_of(&again),
        secret_of(&refreshed),
        "the refreshed state was saved"
    );
}

// -- private_key_jwt (RFC 7523 §2.2) ------------------------------------------

fn key(alg: tower_oauth2::JwsAlgorithm, file: &str) -> tower_oauth2::PrivateKey {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(file);
    tower_oauth2::PrivateKey::from_pem(alg, std::fs::read(path).unwrap()).unwrap()
}

impl Provider {
    fn private_key_jwt(&self, id: &str, key: tower_oauth2::PrivateKey) -> ClientCredentials {
        ClientCredentials::builder()
            .token_url(self.token_url())
            .client_id(id)
            .private_key_jwt(key)
            .scope("api.read")
            .build()
            .unwrap()
    }
}

#[tokio::test]
async fn private_key_jwt_with_rs256_ps256_and_es256() {
    use tower_oauth2::JwsAlgorithm::{Es256, Ps256, Rs256};
    let provider = Provider::start();
    for (id, key) in [
        ("jwt-rs256", key(Rs256, "rsa.pem").with_kid("rsa-1")),
        ("jwt-ps256", key(Ps256, "rsa-pkcs1.pem")),
        ("jwt-es256", key(Es256, "ec-sec1.pem")),
    ] {
        let mut grant = provider.private_key_jwt(id, key);
        // Twice: the server refuses a jti it has seen, so the second success
        // shows the assertion was made anew.
        for attempt in 1..=2 {
            let token = grant
                .fetch()
                .await
                .unwrap_or_else(|e| panic!("{id}, request {attempt}: {e}"));
            assert_eq!(token.scopes(), ["api.read"], "{id}");
            let info = provider.introspect(&secret_of(&token)).await;
            assert_eq!(info["active"], true, "{id}: {info}");
            assert_eq!(info["client_id"], id, "{info}");
        }
        assert_eq!(provider.token_requests(id).await, 2, "{id}");
    }

    // The issuer identifier as the audience is accepted too.
    let mut issuer_aud = ClientCredentials::builder()
        .token_url(provider.token_url())
        .client_id("jwt-es256")
        .private_key_jwt(key(Es256, "ec.pem"))
        .client_assertion_audience(provider.base.clone())
        .build()
        .unwrap();
    issuer_aud.fetch().await.expect("aud = issuer is accepted");
}

#[tokio::test]
async fn private_key_jwt_with_the_wrong_key_is_invalid_client() {
    use tower_oauth2::JwsAlgorithm::{Ps256, Rs256};
    let provider = Provider::start();
    let wrong_key = provider.private_key_jwt("jwt-rs256", key(Rs256, "rsa-other.pem"));
    assert_no_retry_storm(
        &provider,
        wrong_key,
        "jwt-rs256",
        OAuthErrorCode::InvalidClient,
    )
    .await;
    // The right key with an algorithm the client did not register.
    let mut wrong_alg = provider.private_key_jwt("jwt-rs256", key(Ps256, "rsa.pem"));
    let error = wrong_alg.fetch().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::InvalidClient),
        "{error}"
    );
}

#[tokio::test]
async fn a_client_assertion_callback_is_called_once_per_token_request() {
    let provider = Provider::start();
    let calls = Arc::new(AtomicUsize::new(0));
    let (counter, http, url) = (
        calls.clone(),
        provider.http.clone(),
        format!("{}/test/assertion?client_id=jwt-callback", provider.base),
    );
    // What a workload does with a projected service-account token: fetch the
    // current one for every token request (here from the test issuer).
    let grant = ClientCredentials::builder()
        .token_url(provider.token_url())
        .client_id("jwt-callback")
        .client_assertion(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let (http, url) = (http.clone(), url.clone());
            async move { http.get(url).send().await?.error_for_status()?.text().await }
        })
        .scope("api.read")
        .build()
        .unwrap();
    let mut grant_again = grant.clone();
    let cache = TokenCache::new(grant);
    let token = cache
        .token()
        .await
        .expect("the callback's assertion is accepted");
    let info = provider.introspect(&secret_of(&token)).await;
    assert_eq!(info["client_id"], "jwt-callback", "{info}");
    for _ in 0..2 {
        grant_again
            .fetch()
            .await
            .expect("a fresh assertion each time");
    }
    assert_eq!(provider.token_requests("jwt-callback").await, 3);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "one call per token request"
    );
}

// -- DPoP (RFC 9449) ------------------------------------------------------------

/// DPoP-bound tokens from the real server, nonces required: the first
/// request of each grant is answered `use_dpop_nonce` and retried once with
/// the nonce (and, for private_key_jwt, a fresh assertion, since the server
/// refuses a replayed one); introspection shows the binding (`cnf.jkt`).
#[tokio::test]
async fn dpop_bound_tokens_for_client_credentials_with_nonces() {
    use tower_oauth2::{DpopKey, JwsAlgorithm::Es256};
    let provider = Provider::start();
    // A key each: nonces are remembered per key, and each grant is to meet
    // the server's first use_dpop_nonce answer itself.
    let grant = |builder: tower_oauth2::grant::ClientCredentialsBuilder| {
        let dpop_key = DpopKey::generate().unwrap();
        (builder.dpop(dpop_key.clone()).build().unwrap(), dpop_key)
    };
    let secret = ClientCredentials::builder()
        .token_url(provider.token_url())
        .client_id("cc-basic")
        .client_secret("basic-secret")
        .scope("api.read");
    let jwt = ClientCredentials::builder()
        .token_url(provider.token_url())
        .client_id("jwt-es256")
        .private_key_jwt(key(Es256, "ec.pem"))
        .scope("api.read");
    for (id, builder) in [("cc-basic", secret), ("jwt-es256", jwt)] {
        let (mut grant, dpop_key) = grant(builder);
        for attempt in 1..=2 {
            let token = grant
                .fetch()
                .await
                .unwrap_or_else(|e| panic!("{id}, request {attempt}: {e}"));
            assert_eq!(token.token_type(), "DPoP", "{id}");
            assert_eq!(token.dpop_jkt(), Some(dpop_key.thumbprint()));
            let info = provider.introspect(&secret_of(&token)).await;
            assert_eq!(info["active"], true, "{id}: {info}");
            assert_eq!(info["token_type"], "DPoP", "{id}: {info}");
            assert_eq!(info["cnf"]["jkt"], dpop_key.thumbprint(), "{id}: {info}");
        }
        // One use_dpop_nonce answer and its retry, then the nonce is known
        // (one more pair if the server's nonce window turned in between).
        let requests = provider.token_requests(id).await;
        assert!((3..=4).contains(&requests), "{id}: {requests}");
    }
}

/// The code flow with DPoP: `dpop_jkt` on the authorization request binds
/// the code to the key; the exchange and every refresh carry proofs (each
/// meeting the server's nonce), every access token is bound to the key, and
/// the refresh tokens rotate.
#[tokio::test]
async fn dpop_code_flow_with_rotating_refresh_tokens() {
    use tower_oauth2::{grant::AuthorizationRequest, DpopKey};
    let provider = Provider::start();
    let dpop_key = DpopKey::generate().unwrap();
    let request = AuthorizationRequest::builder(format!("{}/auth", provider.base))
        .client_id("web-app")
        .redirect_uri(REDIRECT_URI)
        .scope("openid offline_access api.read")
        .param("resource", AUDIENCE)
        .dpop(&dpop_key)
        .build()
        .unwrap();
    let query = request.url().query().unwrap().to_owned();
    assert!(query.contains(&format!("dpop_jkt={}", dpop_key.thumbprint())));
    let code: Value = provider.get_json(&format!("/test/code?{query}")).await;
    let code = code["code"].as_str().expect("a code").to_owned();

    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = issued.clone();
    let grant = AuthorizationCode::builder()
        .token_url(provider.token_url())
        .client_id("web-app")
        .client_secret("web-secret")
        .code(code)
        .redirect_uri(REDIRECT_URI)
        .code_verifier(request.code_verifier().expose_secret())
        .on_refresh_token(move |rt| record.lock().unwrap().push(rt.expose_secret().to_owned()))
        .dpop(dpop_key.clone())
        .build()
        .unwrap();
    let cache = TokenCache::new(grant);
    let mut tokens = vec![cache.token().await.unwrap()];
    for _ in 0..3 {
        tokens.push(cache.refresh_now().await.unwrap());
    }
    for token in &tokens {
        assert_eq!(token.token_type(), "DPoP");
        let info = provider.introspect(&secret_of(token)).await;
        assert_eq!(info["active"], true, "{info}");
        assert_eq!(info["cnf"]["jkt"], dpop_key.thumbprint(), "{info}");
    }
    let mut issued = issued.lock().unwrap().clone();
    assert_eq!(issued.len(), 4, "one from the code, one per refresh");
    issued.sort();
    issued.dedup();
    assert_eq!(issued.len(), 4, "every refresh rotated the refresh token");
    assert_eq!(cache.stats().failures, 0);
}

// ---------------------------------------------- PAR, RAR and revocation --

/// `web-app` with its endpoints from discovery: token, revocation and PAR.
async fn web_app_from_discovery(
    provider: &Provider,
    issued: Arc<Mutex<Vec<String>>>,
) -> tower_oauth2::OAuthClient {
    let metadata = Discovery::builder()
        .build()
        .metadata(&provider.base)
        .await
        .unwrap();
    assert_eq!(
        metadata.revocation_endpoint().map(|u| u.as_str()),
        Some(format!("{}/token/revocation", provider.base).as_str())
    );
    assert!(metadata.pushed_authorization_request_endpoint().is_some());
    tower_oauth2::OAuthClient::builder()
        .metadata(&metadata)
        .client_id("web-app")
        .client_secret("web-secret")
        .scope("openid offline_access api.read")
        .on_refresh_token(move |rt| issued.lock().unwrap().push(rt.expose_secret().to_owned()))
        .build()
        .unwrap()
}

/// A pushed authorization request through a person's browser: returns the
/// request and the code its callback carried (state checked).
async fn pushed_code_flow(
    provider: &Provider,
    client: &tower_oauth2::OAuthClient,
    details: Option<&Value>,
) -> (
    tower_oauth2::grant::AuthorizationRequest,
    secrecy::SecretString,
) {
    let mut builder = client
        .authorization_request(format!("{}/auth", provider.base))
        .redirect_uri(REDIRECT_URI)
        .param("resource", AUDIENCE)
        // oidc-provider keeps offline_access only with a consent prompt.
        .param("prompt", "consent");
    if let Some(details) = details {
        builder = builder.authorization_details(details);
    }
    let request = builder.push().await.unwrap();
    let names: Vec<String> = request
        .url()
        .query_pairs()
        .map(|(n, _)| n.into_owned())
        .collect();
    assert_eq!(names, ["client_id", "request_uri"], "{}", request.url());
    assert!(request.expires_in().is_some_and(|e| e > Duration::ZERO));
    let url = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("url", request.url().as_str())
        .append_pair("redirect_uri", REDIRECT_URI)
        .finish();
    let answer = provider.get_json(&format!("/test/authorize?{url}")).await;
    let callback = answer["callback"].as_str().expect("a callback").to_owned();
    let code = request.callback(&callback).unwrap();
    (request, code)
}

/// PAR (RFC 9126) and RAR (RFC 9396) in one code flow: the parameters and
/// `authorization_details` are pushed with the client's authentication, the
/// browser sees only `client_id` and `request_uri`, and the details granted
/// reach the access token, and the refreshed one.
#[tokio::test]
async fn pushed_authorization_request_with_authorization_details() {
    let provider = Provider::start();
    let client = web_app_from_discovery(&provider, Arc::default()).await;
    let details = serde_json::json!([{"type": "tower-oauth2:test", "action": "read"}]);
    let (request, code) = pushed_code_flow(&provider, &client, Some(&details)).await;
    let cache = TokenCache::new(client.authorization_code(&request, code));
    let first = cache.token().await.unwrap();
    let info = provider.introspect(&secret_of(&first)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["authorization_details"], details, "{info}");
    let refreshed = cache.refresh_now().await.unwrap();
    let info = provider.introspect(&secret_of(&refreshed)).await;
    assert_eq!(info["authorization_details"], details, "{info}");

    // A type the server does not know is refused at the push, typed.
    let refused = client
        .authorization_request(format!("{}/auth", provider.base))
        .redirect_uri(REDIRECT_URI)
        .authorization_details(&serde_json::json!([{"type": "unknown"}]))
        .push()
        .await
        .unwrap_err();
    assert_eq!(
        refused.oauth_code(),
        Some(&OAuthErrorCode::Other(
            "invalid_authorization_details".into()
        )),
        "{refused}"
    );
}

/// Revocation (RFC 7009) of the refresh token: the server forgets it
/// (introspection says inactive) and the next refresh is `invalid_grant`,
/// asking for a person. An unknown token revokes fine (§2.2).
#[tokio::test]
async fn revoking_the_refresh_token_ends_the_next_refresh() {
    let provider = Provider::start();
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = web_app_from_discovery(&provider, issued.clone()).await;
    let (request, code) = pushed_code_flow(&provider, &client, None).await;
    let cache = TokenCache::new(client.authorization_code(&request, code));
    let token = cache.token().await.unwrap();
    let refresh_token = issued
        .lock()
        .unwrap()
        .last()
        .cloned()
        .expect("a refresh token");
    let info = provider.introspect(&refresh_token).await;
    assert_eq!(info["active"], true, "{info}");

    client
        .revoke(
            &secrecy::SecretString::from(refresh_token.clone()),
            Some(tower_oauth2::TokenTypeHint::RefreshToken),
        )
        .await
        .unwrap();
    let info = provider.introspect(&refresh_token).await;
    assert_eq!(info["active"], false, "{info}");

    cache.invalidate(&token);
    let error = cache.token().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidGrant),
        "{error}"
    );
    assert!(error.is_reauthorization_required());

    client
        .revoke(&secrecy::SecretString::from("never-issued"), None)
        .await
        .unwrap();
}

/// `shutdown_and_revoke` after a refresh: the rotated refresh token is the
/// one given back (oidc-provider says it is inactive), and the store keeps
/// nothing a restart would resume.
#[tokio::test]
async fn shutdown_and_revoke_gives_the_rotated_refresh_token_back() {
    use tower_oauth2::{FileStore, TokenSource, TokenStore};
    let provider = Provider::start();
    let issued = Arc::new(Mutex::new(Vec::<String>::new()));
    let client = web_app_from_discovery(&provider, issued.clone()).await;
    let (request, code) = pushed_code_flow(&provider, &client, None).await;
    let dir = tempfile::tempdir().unwrap();
    let grant = client.authorization_code(&request, code);
    let key = grant.store_key().unwrap();
    let cache = TokenCache::builder(grant)
        .store(FileStore::new(dir.path().join("tokens.json")))
        .build();
    let first = cache.token().await.unwrap();
    // One refresh: the server rotates the refresh token.
    cache.refresh_now().await.unwrap();
    let issued = issued.lock().unwrap().clone();
    assert_eq!(issued.len(), 2, "a code exchange and one refresh");
    let newest = issued.last().unwrap();
    assert_eq!(provider.introspect(newest).await["active"], true);

    cache.shutdown_and_revoke().await.unwrap();
    let info = provider.introspect(newest).await;
    assert_eq!(info["active"], false, "{info}");
    let info = provider.introspect(&secret_of(&first)).await;
    assert_eq!(
        info["active"], false,
        "the access tokens of the grant: {info}"
    );
    let state = FileStore::new(dir.path().join("tokens.json"))
        .load(&key)
        .await
        .unwrap()
        .expect("a state");
    assert!(state.refresh_token().is_none());
}

/// `authorization_details` on a client credentials token request: sent as a
/// form parameter, and the token carries it.
#[tokio::test]
async fn client_credentials_with_authorization_details() {
    let provider = Provider::start();
    let details = serde_json::json!([{"type": "tower-oauth2:test", "action": "write"}]);
    let mut grant = ClientCredentials::builder()
        .token_url(provider.token_url())
        .client_id("cc-basic")
        .client_secret("basic-secret")
        .scope("api.read")
        .param("authorization_details", details.to_string())
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    let info = provider.introspect(&secret_of(&token)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["authorization_details"], details, "{info}");
}

// ------------------------------------------ token exchange and JWT bearer --
//
// The grants server.mjs registers with provider.registerGrantType: clients
// te-client/te-short (token exchange) and jb-client/jb-short (JWT bearer,
// trusting rsa.pem as kid rsa-1 and ec.pem as kid ec-1); -short tokens live
// 2 s.

const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Calls `url` through the layer from two tasks for `run_for`: (ok, failed).
async fn traffic(cache: &TokenCache, url: &str, run_for: Duration) -> (usize, usize) {
    traffic_through((0..2).map(|_| api_client(cache)).collect(), url, run_for).await
}

/// An API client the traffic tests drive: the status of one GET.
trait Caller: Send + 'static {
    fn status(&mut self, url: &str) -> impl std::future::Future<Output = StatusCode> + Send;
}

impl Caller for ApiClient {
    fn status(&mut self, url: &str) -> impl std::future::Future<Output = StatusCode> + Send {
        call(self, url)
    }
}

/// Calls `url` from one task per client, each for `run_for`: (answered
/// 200, anything else).
async fn traffic_through<C: Caller>(
    clients: Vec<C>,
    url: &str,
    run_for: Duration,
) -> (usize, usize) {
    let workers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let url = url.to_owned();
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0, 0);
                let end = tokio::time::Instant::now() + run_for;
                while tokio::time::Instant::now() < end {
                    match client.status(&url).await {
                        StatusCode::OK => ok += 1,
                        _ => failed += 1,
                    }
                }
                (ok, failed)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    for worker in workers {
        let (o, f) = worker.await.unwrap();
        ok += o;
        failed += f;
    }
    (ok, failed)
}

impl Provider {
    /// An access token of `cc-basic`: the caller's token a proxy exchanges.
    async fn callers_token(&self) -> String {
        let grant = self.client_credentials(
            "cc-basic",
            "basic-secret",
            AuthMethod::ClientSecretBasic,
            "api.read",
        );
        secret_of(&grant.request_token().await.unwrap())
    }

    fn token_exchange(&self, id: &str, secret: &str, subject: &str) -> tower_oauth2::TokenExchange {
        tower_oauth2::TokenExchange::builder()
            .token_url(self.token_url())
            .client_id(id)
            .client_secret(secret)
            .subject_token(subject.to_owned(), tower_oauth2::token_types::ACCESS_TOKEN)
            .audience(AUDIENCE)
            .scope("api.read")
            .build()
            .unwrap()
    }

    fn jwt_bearer(
        &self,
        id: &str,
        secret: &str,
        key: tower_oauth2::PrivateKey,
    ) -> tower_oauth2::JwtBearer {
        tower_oauth2::JwtBearer::builder()
            .token_url(self.token_url())
            .client_id(id)
            .client_secret(secret)
            .signing_key(key)
            .subject("user-7")
            .scope("api.read")
            .build()
            .unwrap()
    }
}

#[tokio::test]
async fn token_exchange_of_a_callers_token_through_the_layer_with_short_tokens() {
    let provider = Provider::start();
    let (rs, url) = ResourceServer::start(&provider).await;
    let subject = provider.callers_token().await;
    let cache = TokenCache::new(provider.token_exchange("te-short", "te-short-secret", &subject));

    let (ok, failed) = traffic(&cache, &url, Duration::from_secs(5)).await;
    let exchanges = provider.token_requests_by_grant(TOKEN_EXCHANGE_GRANT).await;
    println!(
        "{ok} requests, {failed} failed, {exchanges} exchanges, {:?}",
        cache.stats()
    );
    assert!(ok > 20, "traffic was continuous: {ok}");
    assert_eq!(failed, 0);
    assert_eq!(
        rs.rejected.load(Ordering::SeqCst),
        0,
        "no expired token was sent"
    );
    // 2 s tokens (valid for just over 1 s after rounding) over 5 s: several
    // refresh cycles, each one exchange.
    assert!((3..=12).contains(&exchanges), "{exchanges} exchanges");
    assert_eq!(provider.token_requests("te-short").await, exchanges);

    let exchanged = cache.token().await.unwrap();
    assert_ne!(secret_of(&exchanged), subject);
    let info = provider.introspect(&secret_of(&exchanged)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["client_id"], "te-short", "{info}");
    assert_eq!(info["aud"], AUDIENCE, "{info}");

    // The server checks the subject: once it is revoked, the next exchange
    // is refused (and typed), and the cache reports it.
    provider.revoke(&subject, "cc-basic", "basic-secret").await;
    let error = cache.refresh_now().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidGrant),
        "{error}"
    );
}

#[tokio::test]
async fn token_exchange_refusals_are_typed() {
    let provider = Provider::start();
    let subject = provider.callers_token().await;
    let forged = provider.token_exchange("te-client", "te-secret", "not-a-token-it-issued");
    let error = forged.request_token().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidGrant),
        "{error}"
    );
    let other_audience = tower_oauth2::TokenExchange::builder()
        .token_url(provider.token_url())
        .client_id("te-client")
        .client_secret("te-secret")
        .subject_token(subject.clone(), tower_oauth2::token_types::ACCESS_TOKEN)
        .audience("urn:somewhere-else")
        .build()
        .unwrap();
    let error = other_audience.request_token().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidTarget),
        "{error}"
    );
    let wrong_secret = provider.token_exchange("te-client", "wrong", &subject);
    let error = wrong_secret.request_token().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidClient),
        "{error}"
    );
    // And with everything right, a token for the audience.
    let token = provider
        .token_exchange("te-client", "te-secret", &subject)
        .request_token()
        .await
        .unwrap();
    let info = provider.introspect(&secret_of(&token)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["scope"], "api.read", "{info}");
}

#[tokio::test]
async fn jwt_bearer_through_the_layer_with_short_tokens() {
    use tower_oauth2::JwsAlgorithm;
    let provider = Provider::start();
    let (rs, url) = ResourceServer::start(&provider).await;
    let grant = provider.jwt_bearer(
        "jb-short",
        "jb-short-secret",
        key(JwsAlgorithm::Rs256, "rsa.pem").with_kid("rsa-1"),
    );
    let cache = TokenCache::new(grant);

    let (ok, failed) = traffic(&cache, &url, Duration::from_secs(5)).await;
    let grants = provider.token_requests_by_grant(JWT_BEARER_GRANT).await;
    println!(
        "{ok} requests, {failed} failed, {grants} token requests, {:?}",
        cache.stats()
    );
    assert!(ok > 20, "traffic was continuous: {ok}");
    assert_eq!(failed, 0);
    assert_eq!(
        rs.rejected.load(Ordering::SeqCst),
        0,
        "no expired token was sent"
    );
    // Each refresh sent a fresh assertion: the server refuses a jti twice.
    assert!((3..=12).contains(&grants), "{grants} token requests");
    assert_eq!(cache.stats().failures, 0);
}

#[tokio::test]
async fn jwt_bearer_with_es256_and_ps256_and_a_wrong_key() {
    use tower_oauth2::JwsAlgorithm;
    let provider = Provider::start();
    for signing in [
        key(JwsAlgorithm::Es256, "ec.pem").with_kid("ec-1"),
        key(JwsAlgorithm::Ps256, "rsa.pem"),
    ] {
        let alg = signing.algorithm();
        let token = provider
            .jwt_bearer("jb-client", "jb-secret", signing)
            .request_token()
            .await
            .unwrap_or_else(|e| panic!("{alg}: {e}"));
        let info = provider.introspect(&secret_of(&token)).await;
        assert_eq!(info["active"], true, "{alg}: {info}");
        assert_eq!(info["aud"], AUDIENCE, "{alg}: {info}");
    }
    let wrong = provider.jwt_bearer(
        "jb-client",
        "jb-secret",
        key(JwsAlgorithm::Rs256, "rsa-other.pem").with_kid("rsa-1"),
    );
    let error = wrong.request_token().await.unwrap_err();
    assert_eq!(
        error.oauth_code(),
        Some(&OAuthErrorCode::InvalidGrant),
        "{error}"
    );
}

// ------------------------------------------------- device authorization --

/// `device-cli` (public) with the device authorization endpoint from
/// discovery; the person approves or denies at the provider's own pages.
async fn device_code(provider: &Provider, client_id: &str) -> tower_oauth2::grant::DeviceCode {
    let metadata = Discovery::builder()
        .build()
        .metadata(&provider.base)
        .await
        .unwrap();
    assert_eq!(
        metadata.device_authorization_endpoint().map(|u| u.as_str()),
        Some(format!("{}/device/auth", provider.base).as_str())
    );
    let client = tower_oauth2::OAuthClient::builder()
        .metadata(&metadata)
        .client_id(client_id)
        .scope("openid offline_access api.read")
        .build()
        .unwrap();
    let code = client.device_authorization().start().await.unwrap();
    assert_eq!(code.verification_uri(), format!("{}/device", provider.base));
    assert!(code
        .verification_uri_complete()
        .is_some_and(|uri| uri.starts_with(code.verification_uri())));
    assert!(!code.user_code().is_empty());
    code
}

async fn person_at_device_page(provider: &Provider, user_code: &str, action: &str) -> Value {
    provider
        .http
        .post(format!(
            "{}/test/device?{}",
            provider.base,
            form_urlencoded::Serializer::new(String::new())
                .append_pair("user_code", user_code)
                .append_pair("action", action)
                .finish()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn device_authorization_approved_then_refreshed() {
    let provider = Provider::start();
    let code = device_code(&provider, "device-cli").await;
    let page = person_at_device_page(&provider, code.user_code(), "approve").await;
    assert_eq!(page["success"], true, "{page}");
    let mut grant = code.wait().await.unwrap();
    let first = grant.fetch().await.unwrap();
    assert_eq!(
        provider.introspect(&secret_of(&first)).await["active"],
        true
    );
    let rotated = grant.refresh_token().unwrap().expose_secret().to_owned();
    // The next fetch refreshes, and the server rotates the refresh token.
    let second = grant.fetch().await.unwrap();
    assert_ne!(secret_of(&first), secret_of(&second));
    assert_eq!(
        provider.introspect(&secret_of(&second)).await["active"],
        true
    );
    assert_ne!(grant.refresh_token().unwrap().expose_secret(), rotated);
    assert_eq!(
        provider
            .token_requests_by_grant("urn:ietf:params:oauth:grant-type:device_code")
            .await,
        1
    );
    assert_eq!(provider.token_requests_by_grant("refresh_token").await, 1);
}

#[tokio::test]
async fn device_authorization_denied_is_access_denied() {
    let provider = Provider::start();
    let code = device_code(&provider, "device-cli").await;
    person_at_device_page(&provider, code.user_code(), "deny").await;
    let error = code.wait().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::AccessDenied)
    );
}

#[tokio::test]
async fn device_authorization_through_the_layer_with_short_tokens() {
    let provider = Provider::start();
    let (rs, url) = ResourceServer::start(&provider).await;
    let code = device_code(&provider, "device-short").await;
    let page = person_at_device_page(&provider, code.user_code(), "approve").await;
    assert_eq!(page["success"], true, "{page}");
    let cache = TokenCache::new(code.wait().await.unwrap());

    let (ok, failed) = traffic(&cache, &url, Duration::from_secs(5)).await;
    let refreshes = provider.token_requests_by_grant("refresh_token").await;
    println!(
        "{ok} requests, {failed} failed, {refreshes} refreshes, {:?}",
        cache.stats()
    );
    assert!(ok > 20, "traffic was continuous: {ok}");
    assert_eq!(failed, 0);
    assert_eq!(
        rs.rejected.load(Ordering::SeqCst),
        0,
        "no expired token was sent"
    );
    // 2 s tokens over 5 s: refreshed with the rotating refresh token.
    assert!((2..=10).contains(&refreshes), "{refreshes} refreshes");
    assert_eq!(cache.stats().failures, 0);
}

// ------------------------------------------------------------ mTLS (RFC 8705) --

/// A PEM certificate and its PEM private key.
struct Pem {
    cert: String,
    key: String,
}

impl Pem {
    fn identity(&self) -> ClientIdentity {
        ClientIdentity::from_pem(&self.cert, &self.key).unwrap()
    }
}

/// The certificates of the mTLS tests, made fresh for each server: one CA
/// that issues the https listeners' certificates and the `tls_client_auth`
/// ones, and self-signed client certificates. Written where the server
/// reads them (`MTLS_DIR`).
struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    /// `CN=mtls-pki` from the CA: what `mtls-pki` and `mtls-short` registered.
    pki: Pem,
    /// `CN=intruder` from the same CA.
    intruder: Pem,
    /// The certificate `mtls-self-signed` registered.
    self_signed: Pem,
    /// A self-signed certificate nobody registered.
    stranger: Pem,
    /// The resource server's https certificate, for 127.0.0.1.
    resource_server: Pem,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
            ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
        };
        let named = |cn: &str, sans: Vec<String>| {
            let mut params = CertificateParams::new(sans).unwrap();
            let mut name = DistinguishedName::new();
            name.push(DnType::CommonName, cn);
            params.distinguished_name = name;
            params
        };
        let mut ca = named("tower-oauth2 interop CA", vec![]);
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let issue = |cn: &str, purpose: ExtendedKeyUsagePurpose, self_signed: bool| {
            let sans = match purpose {
                ExtendedKeyUsagePurpose::ServerAuth => vec!["127.0.0.1".to_owned()],
                _ => vec![],
            };
            let mut params = named(cn, sans);
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().unwrap();
            let cert = match self_signed {
                true => params.self_signed(&key).unwrap(),
                false => params.signed_by(&key, &ca).unwrap(),
            };
            Pem {
                cert: cert.pem(),
                key: key.serialize_pem(),
            }
        };
        use ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca: ca.pem(),
            pki: issue("mtls-pki", ClientAuth, false),
            intruder: issue("intruder", ClientAuth, false),
            self_signed: issue("mtls-self-signed", ClientAuth, true),
            stranger: issue("stranger", ClientAuth, true),
            resource_server: issue("resource server", ServerAuth, false),
        };
        let authorization_server = issue("authorization server", ServerAuth, false);
        let write =
            |name: &str, text: &str| std::fs::write(pki.dir.path().join(name), text).unwrap();
        write("server.pem", &authorization_server.cert);
        write("server.key", &authorization_server.key);
        write("client-ca.pem", &pki.ca);
        write("self-signed.pem", &pki.self_signed.cert);
        pki
    }
}

impl Provider {
    async fn metadata(&self) -> tower_oauth2::discovery::ServerMetadata {
        Discovery::default().metadata(&self.base).await.unwrap()
    }

    /// A client credentials grant of `id` presenting `cert`, to the token
    /// endpoint's mutual-TLS alias as discovery names it.
    async fn mtls_grant(&self, pki: &Pki, id: &str, cert: &Pem) -> ClientCredentials {
        ClientCredentials::builder()
            .metadata(&self.metadata().await)
            .client_id(id)
            .client_certificate(cert.identity())
            .tls_root_certificates_pem(&pki.ca)
            .scope("api.read")
            .build()
            .unwrap()
    }
}

/// Both RFC 8705 client authentications, each through discovery's
/// `mtls_endpoint_aliases`; the tokens are bound to the certificate that
/// was presented, as introspection confirms.
#[tokio::test]
async fn mtls_client_credentials_with_each_method() {
    let pki = Pki::new();
    let provider = Provider::start_with(Some(&pki));
    let metadata = provider.metadata().await;
    let alias = metadata
        .mtls_endpoint_alias("token_endpoint")
        .expect("the server names an mTLS token endpoint")
        .clone();
    assert_eq!(alias.scheme(), "https");
    assert_ne!(alias.as_str(), provider.token_url());
    let methods = metadata.token_endpoint_auth_methods().unwrap();
    assert!(
        methods.iter().any(|m| m == "tls_client_auth"),
        "{methods:?}"
    );

    // self_signed_tls_client_auth, named, with the alias as the token URL.
    let identity = pki.self_signed.identity();
    let mut grant = ClientCredentials::builder()
        .token_url(alias.as_str())
        .client_id("mtls-self-signed")
        .auth_method(AuthMethod::SelfSignedTlsClientAuth)
        .client_certificate(identity.clone())
        .tls_root_certificates_pem(&pki.ca)
        .scope("api.read api.write")
        .build()
        .unwrap();
    // tls_client_auth, chosen by the metadata for a client with a
    // certificate and no secret; the alias too.
    let mut pki_grant = provider.mtls_grant(&pki, "mtls-pki", &pki.pki).await;
    for (id, grant, identity) in [
        ("mtls-self-signed", &mut grant, identity),
        ("mtls-pki", &mut pki_grant, pki.pki.identity()),
    ] {
        let token = grant.fetch().await.unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(token.x5t_s256(), Some(identity.x5t_s256()), "{id}");
        let info = provider.introspect(&secret_of(&token)).await;
        assert_eq!(info["active"], true, "{id}: {info}");
        assert_eq!(info["client_id"], id);
        assert_eq!(info["cnf"]["x5t#S256"], identity.x5t_s256(), "{id}: {info}");
        assert_eq!(provider.token_requests(id).await, 1);
    }
    // Bound to different certificates.
    assert_ne!(
        pki.self_signed.identity().x5t_s256(),
        pki.pki.identity().x5t_s256()
    );
}

/// A certificate the server does not accept for the client is
/// `invalid_client`, typed and permanent: one token request however many
/// callers ask.
#[tokio::test]
async fn mtls_a_wrong_certificate_is_invalid_client() {
    let pki = Pki::new();
    let provider = Provider::start_with(Some(&pki));
    // Not the certificate it registered.
    let stranger = provider
        .mtls_grant(&pki, "mtls-self-signed", &pki.stranger)
        .await;
    assert_no_retry_storm(
        &provider,
        stranger,
        "mtls-self-signed",
        OAuthErrorCode::InvalidClient,
    )
    .await;
    // From the right CA with another subject; from no CA the server trusts.
    for (cert, why) in [
        (&pki.intruder, "another subject"),
        (&pki.self_signed, "not issued by the CA"),
    ] {
        let mut grant = provider.mtls_grant(&pki, "mtls-pki", cert).await;
        let error = grant.fetch().await.unwrap_err();
        assert_eq!(
            error.kind(),
            &ErrorKind::OAuth(OAuthErrorCode::InvalidClient),
            "{why}: {error}"
        );
        assert!(!error.is_transient());
    }
    // No certificate, over a client of the test's own that trusts the CA.
    let alias = provider.metadata().await;
    let alias = alias.mtls_endpoint_alias("token_endpoint").unwrap();
    let mut grant = ClientCredentials::builder()
        .token_url(alias.as_str())
        .client_id("mtls-pki")
        .auth_method(AuthMethod::TlsClientAuth)
        .http_client(reqwest_presenting(&pki, None))
        .build()
        .unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::InvalidClient),
        "no certificate: {error}"
    );
    assert_eq!(error.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(provider.token_requests("mtls-pki").await, 3);
    // No certificate at all: the mTLS method needs one on the crate's own client.
    let error = ClientCredentials::builder()
        .token_url(provider.token_url())
        .client_id("mtls-pki")
        .auth_method(AuthMethod::TlsClientAuth)
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
}

/// A client of the application's own presents the certificate (here a
/// `reqwest::Client` given as `http_client`; a hyper-util client with the
/// certificate in its rustls config is the same to the grant), and the
/// grant is told only which certificate that is, without its key.
#[tokio::test]
async fn mtls_through_a_client_of_your_own() {
    let pki = Pki::new();
    let provider = Provider::start_with(Some(&pki));
    let metadata = provider.metadata().await;
    let alias = metadata.mtls_endpoint_alias("token_endpoint").unwrap();
    let presenting = pki.pki.identity();
    let public = ClientIdentity::from_certificate_pem(pki.pki.cert.as_bytes()).unwrap();
    assert!(!public.has_private_key());
    let mut grant = ClientCredentials::builder()
        .token_url(alias.as_str())
        .client_id("mtls-pki")
        .auth_method(AuthMethod::TlsClientAuth)
        .client_certificate(public)
        .http_client(reqwest_presenting(&pki, Some(&presenting)))
        .scope("api.read")
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.x5t_s256(), Some(presenting.x5t_s256()));
    let info = provider.introspect(&secret_of(&token)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["cnf"]["x5t#S256"], presenting.x5t_s256(), "{info}");
}

/// A TLS connection for hyper-util's client: a rustls stream over TCP
/// that presents the client certificate (what hyper-rustls does, written
/// out with the test's own dependencies).
struct MtlsStream(tokio_rustls::client::TlsStream<tokio::net::TcpStream>);

impl tokio::io::AsyncRead for MtlsStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for MtlsStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl hyper_util::client::legacy::connect::Connection for MtlsStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

/// A hyper-util client whose connections trust the test CA and present
/// `cert`: the application's own transport, holding the private key.
fn hyper_presenting(
    pki: &Pki,
    cert: &Pem,
) -> hyper_util::client::legacy::Client<
    tower::util::BoxCloneSyncService<
        http::Uri,
        hyper_util::rt::TokioIo<MtlsStream>,
        std::io::Error,
    >,
    String,
> {
    use tokio_rustls::rustls::{
        self,
        pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca.as_bytes()).unwrap())
        .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(
        vec![CertificateDer::from_pem_slice(cert.cert.as_bytes()).unwrap()],
        PrivateKeyDer::from_pem_slice(cert.key.as_bytes()).unwrap(),
    )
    .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let connect = tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(443);
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            let name = ServerName::try_from(host).map_err(std::io::Error::other)?;
            let tls = connector.connect(name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(MtlsStream(tls)))
        }
    });
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(tower::util::BoxCloneSyncService::new(connect))
}

/// The certificate presented by a hyper-util transport of the
/// application's own (rustls with the client certificate): the grant is
/// given only the certificate, for the thumbprint.
#[tokio::test]
async fn mtls_through_a_hyper_transport() {
    let pki = Pki::new();
    let provider = Provider::start_with(Some(&pki));
    let metadata = provider.metadata().await;
    let alias = metadata.mtls_endpoint_alias("token_endpoint").unwrap();
    let public = ClientIdentity::from_certificate_pem(pki.self_signed.cert.as_bytes()).unwrap();
    let mut grant = ClientCredentials::builder()
        .token_url(alias.as_str())
        .client_id("mtls-self-signed")
        .auth_method(AuthMethod::SelfSignedTlsClientAuth)
        .client_certificate(public.clone())
        .transport(hyper_presenting(&pki, &pki.self_signed))
        .scope("api.read")
        .build()
        .unwrap();
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.x5t_s256(), Some(public.x5t_s256()));
    let info = provider.introspect(&secret_of(&token)).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["cnf"]["x5t#S256"], public.x5t_s256(), "{info}");
    // Another certificate on the same transport: refused, typed.
    let mut wrong = ClientCredentials::builder()
        .token_url(alias.as_str())
        .client_id("mtls-self-signed")
        .auth_method(AuthMethod::SelfSignedTlsClientAuth)
        .transport(hyper_presenting(&pki, &pki.stranger))
        .build()
        .unwrap();
    let error = wrong.fetch().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::InvalidClient),
        "{error}"
    );
}

/// The thumbprint of the certificate a request's connection presented.
#[derive(Clone)]
struct Presented(Option<String>);

/// A resource server on https that asks for a client certificate and
/// serves a token only to the certificate it is bound to: the
/// introspection answer's `cnf.x5t#S256` must be the presented
/// certificate's thumbprint (RFC 8705 §3).
async fn bound_resource(
    State(rs): State<ResourceServer>,
    axum::Extension(Presented(presented)): axum::Extension<Presented>,
    headers: HeaderMap,
) -> (StatusCode, HeaderMap, &'static str) {
    let token = headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned();
    let info: Value = rs
        .http
        .post(format!("{}/token/introspection", rs.provider_base))
        .basic_auth("resource-server", Some("rs-secret"))
        .form(&[("token", token.as_str())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let scopes = info["scope"].as_str().unwrap_or_default();
    let bound = info["cnf"]["x5t#S256"].as_str();
    let ok = info["active"] == true
        && info["aud"] == AUDIENCE
        && scopes.split(' ').any(|s| s == "api.read")
        && bound.is_some()
        && bound == presented.as_deref();
    if ok {
        rs.served.fetch_add(1, Ordering::SeqCst);
        (StatusCode::OK, HeaderMap::new(), "data")
    } else {
        rs.rejected.fetch_add(1, Ordering::SeqCst);
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        (StatusCode::UNAUTHORIZED, headers, "")
    }
}

/// Takes any client certificate, or none, as Node's `rejectUnauthorized:
/// false` does (the handshake signature is still checked: the client holds
/// the key). The handler judges the certificate by its thumbprint.
#[derive(Debug)]
struct AnyClientCertificate(Arc<tokio_rustls::rustls::crypto::CryptoProvider>);

impl tokio_rustls::rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[tokio_rustls::rustls::DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn verify_client_cert(
        &self,
        _end_entity: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
        _now: tokio_rustls::rustls::pki_types::UnixTime,
    ) -> Result<tokio_rustls::rustls::server::danger::ClientCertVerified, tokio_rustls::rustls::Error>
    {
        Ok(tokio_rustls::rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &tokio_rustls::rustls::pki_types::CertificateDer<'_>,
        dss: &tokio_rustls::rustls::DigitallySignedStruct,
    ) -> Result<
        tokio_rustls::rustls::client::danger::HandshakeSignatureValid,
        tokio_rustls::rustls::Error,
    > {
        tokio_rustls::rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<tokio_rustls::rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ResourceServer {
    /// [`bound_resource`] on `https://127.0.0.1:<port>/data`.
    async fn start_mtls(provider: &Provider, pki: &Pki) -> (ResourceServer, String) {
        use tokio_rustls::rustls::{
            self,
            pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
        };
        let rs = ResourceServer {
            provider_base: provider.base.clone(),
            http: reqwest::Client::new(),
            served: Arc::default(),
            rejected: Arc::default(),
        };
        let crypto = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(crypto.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(Arc::new(AnyClientCertificate(crypto)))
            .with_single_cert(
                vec![CertificateDer::from_pem_slice(pki.resource_server.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(pki.resource_server.key.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let app = Router::new()
            .route("/data", get(bound_resource))
            .with_state(rs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}/data", listener.local_addr().unwrap());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let presented = Presented(
                        tls.get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|chain| chain.first())
                            .map(|leaf| URL_SAFE_NO_PAD.encode(Sha256::digest(leaf))),
                    );
                    let service = hyper::service::service_fn(
                        move |mut request: Request<hyper::body::Incoming>| {
                            request.extensions_mut().insert(presented.clone());
                            app.clone().call(request)
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (rs, url)
    }
}

/// A reqwest client presenting `identity`, trusting the test CA.
fn reqwest_presenting(pki: &Pki, identity: Option<&ClientIdentity>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_merge([reqwest::Certificate::from_pem(pki.ca.as_bytes()).unwrap()]);
    if let Some(identity) = identity {
        builder = builder.identity(identity.to_reqwest().unwrap());
    }
    builder.build().unwrap()
}

type MtlsApiClient =
    tower::retry::Retry<tower_oauth2::Replay, tower_oauth2::BearerAuth<reqwest::Client>>;

async fn call_reqwest(client: &mut MtlsApiClient, url: &str) -> StatusCode {
    let request = reqwest::Request::new(reqwest::Method::GET, url.parse().unwrap());
    let response = client.ready().await.unwrap().call(request).await.unwrap();
    let status = response.status();
    let _ = response.bytes().await;
    status
}

impl Caller for MtlsApiClient {
    fn status(&mut self, url: &str) -> impl std::future::Future<Output = StatusCode> + Send {
        call_reqwest(self, url)
    }
}

/// 2-second certificate-bound tokens through `TokenCache` and the layer,
/// refreshed under traffic from four workers, against a resource server
/// that serves a token only over a connection presenting the certificate
/// it is bound to. The same token over a connection with another
/// certificate, or none, is refused.
#[tokio::test]
async fn mtls_bound_short_lived_tokens_under_concurrent_traffic() {
    let pki = Pki::new();
    let provider = Provider::start_with(Some(&pki));
    let (rs, url) = ResourceServer::start_mtls(&provider, &pki).await;
    let identity = pki.pki.identity();
    let grant = provider.mtls_grant(&pki, "mtls-short", &pki.pki).await;
    let cache = TokenCache::new(grant);
    let api = reqwest_presenting(&pki, Some(&identity));
    let lifetimes = 10;
    let run_for = Duration::from_secs(2 * lifetimes + 1);
    let clients: Vec<MtlsApiClient> = (0..4)
        .map(|_| {
            tower::ServiceBuilder::new()
                .retry(tower_oauth2::Replay::new())
                .layer(BearerAuthLayer::new(cache.clone()))
                .service(api.clone())
        })
        .collect();
    let (ok, failed) = traffic_through(clients, &url, run_for).await;
    let token_requests = provider.token_requests("mtls-short").await;
    let stats = cache.stats();
    println!("{ok} requests, {failed} failed, {token_requests} token requests, {stats:?}");
    assert!(ok > 100, "traffic was continuous: {ok}");
    assert_eq!(failed, 0);
    assert_eq!(
        rs.rejected.load(Ordering::SeqCst),
        0,
        "no request carried an expired or unbound token"
    );
    assert!(
        stats.waits <= 4,
        "only each worker's first request waited: {stats:?}"
    );
    assert!(
        (lifetimes..=3 * lifetimes + 2).contains(&token_requests),
        "{token_requests} token requests over {lifetimes} lifetimes"
    );

    // The current token, valid, from connections without its certificate.
    let token = cache.token().await.unwrap();
    assert_eq!(token.x5t_s256(), Some(identity.x5t_s256()));
    let stranger = pki.stranger.identity();
    for client in [
        reqwest_presenting(&pki, Some(&stranger)),
        reqwest_presenting(&pki, None),
    ] {
        let status = client
            .get(&url)
            .header(AUTHORIZATION, token.header_value().clone())
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(rs.rejected.load(Ordering::SeqCst), 2);
    // With its certificate, it is served.
    let status = api
        .get(&url)
        .header(AUTHORIZATION, token.header_value().clone())
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
}
