//! The device authorization grant (RFC 8628) against a scripted device
//! endpoint and token endpoint, served in process as the grant's transport so
//! that paused tokio time measures the poll intervals exactly.

mod support;

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::StatusCode, routing::post, Router};
use secrecy::ExposeSecret;
use tokio::time::Instant;
use tower_oauth2::{
    discovery::ServerMetadata, AuthMethod, DeviceAuthorization, ErrorKind, FileStore, OAuthClient,
    OAuthErrorCode, TokenCache, TokenSource,
};

/// (path, answer status, answer body).
type Step = (&'static str, u16, String);
/// (path, when, form, authorization header) of one request.
type Seen = (String, Instant, Vec<(String, String)>, Option<String>);

#[derive(Clone, Default)]
struct Fake {
    /// (path, answer status, answer body), in order.
    script: Arc<Mutex<VecDeque<Step>>>,
    /// (path, when, form) of each request.
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn new(script: impl IntoIterator<Item = Step>) -> Self {
        let fake = Fake::default();
        fake.script.lock().unwrap().extend(script);
        fake
    }

    fn router(&self) -> Router {
        let answer = |path: &'static str| {
            move |State(fake): State<Fake>, headers: axum::http::HeaderMap, body: Bytes| async move {
                let form = form_urlencoded::parse(&body).into_owned().collect();
                let auth = headers
                    .get("authorization")
                    .map(|v| v.to_str().unwrap().to_owned());
                fake.seen
                    .lock()
                    .unwrap()
                    .push((path.to_owned(), Instant::now(), form, auth));
                let next = fake.script.lock().unwrap().pop_front();
                match next {
                    Some((expected, status, body)) => {
                        assert_eq!(expected, path, "request to an unexpected endpoint");
                        (
                            StatusCode::from_u16(status).unwrap(),
                            [("content-type", "application/json")],
                            body,
                        )
                    }
                    None => panic!("unscripted request to {path}"),
                }
            }
        };
        Router::new()
            .route("/device", post(answer("/device")))
            .route("/token", post(answer("/token")))
            .with_state(self.clone())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn grant(&self) -> DeviceAuthorization {
        DeviceAuthorization::builder()
            .token_url("http://127.0.0.1:9/token")
            .device_authorization_url("http://127.0.0.1:9/device")
            .client_id("my-cli")
            .scope("openid offline_access")
            .transport::<axum::body::Body>(self.router())
            .build()
            .unwrap()
    }
}

fn param(form: &[(String, String)], name: &str) -> Option<String> {
    form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

fn device_answer(interval: Option<u64>, expires_in: u64) -> Step {
    let mut body = serde_json::json!({
        "device_code": "dc-secret-1",
        "user_code": "WDJB-MJHT",
        "verification_uri": "https://idp.example/device",
        "verification_uri_complete": "https://idp.example/device?user_code=WDJB-MJHT",
        "expires_in": expires_in,
    });
    if let Some(interval) = interval {
        body["interval"] = interval.into();
    }
    ("/device", 200, body.to_string())
}

fn error(code: &str) -> Step {
    ("/token", 400, format!(r#"{{"error":"{code}"}}"#))
}

fn token(access: &str, refresh: &str) -> Step {
    (
        "/token",
        200,
        format!(
            r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":600,"refresh_token":"{refresh}"}}"#
        ),
    )
}

#[tokio::test(start_paused = true)]
async fn start_returns_what_the_person_sees() {
    let fake = Fake::new([device_answer(None, 900)]);
    let code = fake.grant().start().await.unwrap();
    assert_eq!(code.user_code(), "WDJB-MJHT");
    assert_eq!(code.verification_uri(), "https://idp.example/device");
    assert_eq!(
        code.verification_uri_complete(),
        Some("https://idp.example/device?user_code=WDJB-MJHT")
    );
    assert_eq!(code.expires_in(), Duration::from_secs(900));
    // RFC 8628 §3.2: no interval means 5 seconds.
    assert_eq!(code.interval(), Duration::from_secs(5));
    // Neither code shows in Debug.
    let debug = format!("{code:?}");
    assert!(
        !debug.contains("dc-secret-1") && !debug.contains("WDJB"),
        "{debug}"
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let (path, _, form, auth) = &seen[0];
    assert_eq!(path, "/device");
    assert_eq!(param(form, "client_id").as_deref(), Some("my-cli"));
    assert_eq!(
        param(form, "scope").as_deref(),
        Some("openid offline_access")
    );
    assert_eq!(auth, &None);
}

#[tokio::test(start_paused = true)]
async fn a_confidential_client_authenticates_the_device_request() {
    let fake = Fake::new([device_answer(Some(1), 60)]);
    let client = OAuthClient::builder()
        .token_url("http://127.0.0.1:9/token")
        .device_authorization_url("http://127.0.0.1:9/device")
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretBasic)
        .transport::<axum::body::Body>(fake.router())
        .build()
        .unwrap();
    client.device_authorization().start().await.unwrap();
    let (_, _, form, auth) = &fake.seen()[0];
    assert_eq!(auth.as_deref(), Some("Basic bXktYXBwOnMzY3JldA=="));
    assert_eq!(param(form, "client_secret"), None);
}

#[tokio::test(start_paused = true)]
async fn polling_honours_interval_pending_and_slow_down_then_refreshes() {
    let fake = Fake::new([
        device_answer(Some(3), 900),
        error("authorization_pending"),
        error("slow_down"),
        error("authorization_pending"),
        token("at-1", "rt-1"),
        token("at-2", "rt-2"),
    ]);
    let begun = Instant::now();
    let code = fake.grant().start().await.unwrap();
    let grant = code.wait().await.unwrap();
    assert_eq!(
        grant.token().unwrap().access_token().expose_secret(),
        "at-1"
    );

    let seen = fake.seen();
    let at: Vec<u64> = seen.iter().map(|s| (s.1 - begun).as_secs()).collect();
    // 3 s, 3 s, then slow_down makes it 8 s for good.
    assert_eq!(at, [0, 3, 6, 14, 22]);
    for (_, _, form, _) in &seen[1..] {
        assert_eq!(
            param(form, "grant_type").as_deref(),
            Some("urn:ietf:params:oauth:grant-type:device_code")
        );
        assert_eq!(param(form, "device_code").as_deref(), Some("dc-secret-1"));
        assert_eq!(param(form, "client_id").as_deref(), Some("my-cli"));
    }

    // The cache hands out the approval's token without another request,
    // then refreshes with the refresh token it came with.
    assert!(!grant.needs_authorization());
    assert_eq!(
        grant.refresh_token().map(|t| t.expose_secret()),
        Some("rt-1")
    );
    let cache = TokenCache::builder(grant).build();
    let first = cache.token().await.unwrap();
    assert_eq!(first.access_token().expose_secret(), "at-1");
    assert_eq!(fake.seen().len(), 5);
    tokio::time::sleep(Duration::from_secs(600)).await;
    let second = cache.token().await.unwrap();
    assert_eq!(second.access_token().expose_secret(), "at-2");
    let seen = fake.seen();
    let (_, _, form, _) = seen.last().unwrap();
    assert_eq!(param(form, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(form, "refresh_token").as_deref(), Some("rt-1"));
}

#[tokio::test(start_paused = true)]
async fn access_denied_ends_the_wait() {
    let fake = Fake::new([
        device_answer(Some(2), 900),
        error("authorization_pending"),
        error("access_denied"),
    ]);
    let code = fake.grant().start().await.unwrap();
    let error = code.wait().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::AccessDenied)
    );
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn the_servers_expired_token_ends_the_wait() {
    let fake = Fake::new([device_answer(Some(2), 900), error("expired_token")]);
    let error = fake
        .grant()
        .start()
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(
        error.oauth_code().map(|c| c.as_str()),
        Some("expired_token")
    );
    assert!(!error.is_transient());
}

#[tokio::test(start_paused = true)]
async fn expires_in_stops_polling_without_a_poll_past_it() {
    let fake = Fake::new([
        device_answer(Some(4), 10),
        error("authorization_pending"),
        error("authorization_pending"),
    ]);
    let begun = Instant::now();
    let error = fake
        .grant()
        .start()
        .await
        .unwrap()
        .wait()
        .await
        .unwrap_err();
    assert_eq!(
        error.oauth_code().map(|c| c.as_str()),
        Some("expired_token")
    );
    assert_eq!(begun.elapsed(), Duration::from_secs(10));
    let at: Vec<u64> = fake
        .seen()
        .iter()
        .map(|s| (s.1 - begun).as_secs())
        .collect();
    assert_eq!(at, [0, 4, 8]);
}

#[tokio::test(start_paused = true)]
async fn a_malformed_answer_is_an_invalid_response() {
    let fake = Fake::new([(
        "/device",
        200,
        r#"{"device_code":"x","expires_in":5}"#.into(),
    )]);
    let error = fake.grant().start().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidResponse);

    let fake = Fake::new([("/device", 400, r#"{"error":"invalid_client"}"#.into())]);
    let error = fake.grant().start().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::InvalidClient)
    );
}

#[test]
fn the_endpoint_comes_from_metadata_or_is_required() {
    let metadata = ServerMetadata::from_json(
        "https://idp.example",
        br#"{"issuer":"https://idp.example","token_endpoint":"https://idp.example/token",
            "device_authorization_endpoint":"https://idp.example/device",
            "token_endpoint_auth_methods_supported":["none"]}"#,
    )
    .unwrap();
    assert_eq!(
        metadata.device_authorization_endpoint().map(|u| u.as_str()),
        Some("https://idp.example/device")
    );
    DeviceAuthorization::builder()
        .metadata(&metadata)
        .client_id("my-cli")
        .build()
        .unwrap();
    let error = DeviceAuthorization::builder()
        .token_url("https://idp.example/token")
        .client_id("my-cli")
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config);
}

#[tokio::test(start_paused = true)]
async fn the_next_run_carries_on_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::new(dir.path().join("tokens.json"));
    let fake = Fake::new([
        device_answer(Some(1), 60),
        token("at-1", "rt-1"),
        token("at-2", "rt-2"),
    ]);
    let client = OAuthClient::builder()
        .token_url("http://127.0.0.1:9/token")
        .device_authorization_url("http://127.0.0.1:9/device")
        .client_id("my-cli")
        .scope("offline_access")
        .transport::<axum::body::Body>(fake.router())
        .build()
        .unwrap();
    let grant = client
        .device_authorization()
        .start()
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    let cache = TokenCache::builder(grant).store(store.clone()).build();
    assert_eq!(
        cache.token().await.unwrap().access_token().expose_secret(),
        "at-1"
    );
    cache.shutdown().await.unwrap();

    // The next run: no person, the refresh grant under the same store key.
    let cache = TokenCache::builder(client.refresh_token(None))
        .store(store)
        .build();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        cache.token().await.unwrap().access_token().expose_secret(),
        "at-2"
    );
    let seen = fake.seen();
    let (_, _, form, _) = seen.last().unwrap();
    assert_eq!(param(form, "grant_type").as_deref(), Some("refresh_token"));
    assert_eq!(param(form, "refresh_token").as_deref(), Some("rt-1"));
    assert_eq!(seen.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn waiting_is_not_a_warning_and_no_code_is_logged() {
    let logs = support::logs::Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let fake = Fake::new([
        device_answer(Some(1), 60),
        error("authorization_pending"),
        error("slow_down"),
        token("at-1", "rt-1"),
    ]);
    fake.grant().start().await.unwrap().wait().await.unwrap();
    let text = logs.text();
    assert!(text.contains("authorization pending"), "{text}");
    assert!(!text.contains("WARN"), "{text}");
    for secret in ["dc-secret-1", "WDJB-MJHT", "at-1", "rt-1"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}
