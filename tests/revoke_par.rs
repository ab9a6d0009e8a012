//! Revocation (RFC 7009), pushed authorization requests (RFC 9126) and
//! `authorization_details` (RFC 9396) against a recording server: the forms
//! sent, and what each kind of answer becomes.

mod support;

use secrecy::SecretString;
use serde_json::json;
use support::recorder::{Recorder, Reply};
use tower_oauth2::{
    discovery::ServerMetadata, grant::AuthorizationRequest, AuthMethod, ErrorKind, OAuthClient,
    OAuthErrorCode, TokenTypeHint,
};

fn client(server: &Recorder) -> OAuthClient {
    OAuthClient::builder()
        .token_url(server.url("/token"))
        .revocation_url(server.url("/revoke"))
        .par_url(server.url("/par"))
        .client_id("my-app")
        .client_secret("s3cret")
        .build()
        .unwrap()
}

#[tokio::test]
async fn revoke_posts_the_token_and_hint_with_client_authentication() {
    let server = Recorder::start().await;
    // RFC 7009 §2.2: 200 with an empty body, also for an unknown token.
    server.reply([Reply::json(200, "")]);
    let token = SecretString::from("rt-1+/=");
    client(&server)
        .revoke(&token, Some(TokenTypeHint::RefreshToken))
        .await
        .unwrap();
    let sent = server.last();
    assert_eq!(sent.method, http::Method::POST);
    assert_eq!(sent.path, "/revoke");
    assert_eq!(sent.query, None);
    assert_eq!(
        sent.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(sent.param("token"), "rt-1+/=");
    assert_eq!(sent.param("token_type_hint"), "refresh_token");
    assert_eq!(
        sent.header("authorization"),
        Some("Basic bXktYXBwOnMzY3JldA==")
    );
    assert!(!sent.has_param("client_secret"));

    // No hint: none sent.
    server.reply([Reply::json(200, "{}")]);
    client(&server).revoke(&token, None).await.unwrap();
    assert!(!server.last().has_param("token_type_hint"));
}

#[tokio::test]
async fn revoke_errors_are_typed() {
    let server = Recorder::start().await;
    server.reply([
        Reply::json(400, r#"{"error":"unsupported_token_type"}"#),
        Reply::json(503, "busy"),
    ]);
    let client = client(&server);
    let token = SecretString::from("at-secret-value");
    let refused = client
        .revoke(&token, Some(TokenTypeHint::AccessToken))
        .await
        .unwrap_err();
    assert_eq!(
        refused.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::Other("unsupported_token_type".into()))
    );
    assert_eq!(server.last().param("token_type_hint"), "access_token");
    let busy = client.revoke(&token, None).await.unwrap_err();
    assert_eq!(busy.kind(), &ErrorKind::Status);
    assert!(!format!("{refused} {busy} {refused:?} {busy:?}").contains("at-secret-value"));

    // No revocation endpoint: a configuration error, nothing sent.
    let before = server.requests().len();
    let bare = OAuthClient::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .build()
        .unwrap();
    let error = bare.revoke(&token, None).await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config);
    assert_eq!(server.requests().len(), before);
}

#[tokio::test]
async fn the_endpoints_come_from_discovery_metadata() {
    let server = Recorder::start().await;
    let metadata = ServerMetadata::from_json(
        &server.base,
        json!({
            "issuer": server.base,
            "token_endpoint": server.url("/token"),
            "revocation_endpoint": server.url("/revoke-d"),
            "pushed_authorization_request_endpoint": server.url("/par-d"),
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(
        metadata.revocation_endpoint().unwrap().as_str(),
        server.url("/revoke-d")
    );
    let client = OAuthClient::builder()
        .metadata(&metadata)
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretPost)
        .build()
        .unwrap();
    server.reply([
        Reply::json(200, ""),
        Reply::json(201, r#"{"request_uri":"urn:x:1","expires_in":60}"#),
    ]);
    client
        .revoke(&SecretString::from("rt"), None)
        .await
        .unwrap();
    let sent = server.last();
    assert_eq!(sent.path, "/revoke-d");
    assert_eq!(sent.param("client_secret"), "s3cret");
    client
        .authorization_request(server.url("/authorize"))
        .push()
        .await
        .unwrap();
    assert_eq!(server.last().path, "/par-d");

    // An insecure endpoint in the document is refused like the others.
    let insecure = ServerMetadata::from_json(
        "https://as.example.com",
        json!({
            "issuer": "https://as.example.com",
            "token_endpoint": "https://as.example.com/token",
            "revocation_endpoint": "http://as.example.com/revoke",
        })
        .to_string()
        .as_bytes(),
    );
    assert!(insecure.is_err());
}

#[tokio::test]
async fn push_sends_every_parameter_and_the_url_carries_only_the_request_uri() {
    let server = Recorder::start().await;
    server.reply([Reply::json(
        201,
        r#"{"request_uri":"urn:ietf:params:oauth:request_uri:abc","expires_in":90}"#,
    )]);
    let details = json!([{"type": "payment_initiation", "amount": "10.00"}]);
    let request = client(&server)
        .authorization_request(server.url("/authorize?tenant=a"))
        .redirect_uri("http://127.0.0.1:9/callback")
        .scope("openid api.read")
        .authorization_details(&details)
        .param("prompt", "consent")
        .push()
        .await
        .unwrap();
    let sent = server.last();
    assert_eq!(sent.path, "/par");
    assert_eq!(
        sent.header("authorization"),
        Some("Basic bXktYXBwOnMzY3JldA==")
    );
    assert_eq!(sent.param("response_type"), "code");
    assert_eq!(sent.param("client_id"), "my-app");
    assert_eq!(sent.param("redirect_uri"), "http://127.0.0.1:9/callback");
    assert_eq!(sent.param("scope"), "openid api.read");
    assert_eq!(sent.param("state"), request.state());
    assert_eq!(sent.param("code_challenge_method"), "S256");
    assert_eq!(sent.param("code_challenge").len(), 43);
    assert_eq!(sent.param("prompt"), "consent");
    let pushed: serde_json::Value =
        serde_json::from_str(&sent.param("authorization_details")).unwrap();
    assert_eq!(pushed, details);
    assert!(
        !sent.has_param("tenant"),
        "the URL's own query stays in the URL"
    );

    let pairs: Vec<(String, String)> = request.url().query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        [
            ("tenant".to_owned(), "a".to_owned()),
            ("client_id".to_owned(), "my-app".to_owned()),
            (
                "request_uri".to_owned(),
                "urn:ietf:params:oauth:request_uri:abc".to_owned()
            ),
        ]
    );
    assert_eq!(
        request.expires_in(),
        Some(std::time::Duration::from_secs(90))
    );
    assert_eq!(request.redirect_uri(), Some("http://127.0.0.1:9/callback"));
}

#[tokio::test]
async fn push_errors_are_typed() {
    let server = Recorder::start().await;
    server.reply([
        Reply::json(
            400,
            r#"{"error":"invalid_request","error_description":"no"}"#,
        ),
        Reply::json(201, r#"{"expires_in":90}"#),
    ]);
    let client = client(&server);
    let refused = client
        .authorization_request(server.url("/authorize"))
        .push()
        .await
        .unwrap_err();
    assert_eq!(refused.oauth_code(), Some(&OAuthErrorCode::InvalidRequest));
    let invalid = client
        .authorization_request(server.url("/authorize"))
        .push()
        .await
        .unwrap_err();
    assert_eq!(invalid.kind(), &ErrorKind::InvalidResponse);

    // A builder with no client behind it has nowhere to push.
    let alone = AuthorizationRequest::builder(server.url("/authorize"))
        .client_id("my-app")
        .push()
        .await
        .unwrap_err();
    assert_eq!(alone.kind(), &ErrorKind::Config);
}

#[test]
fn authorization_details_in_the_url() {
    let details = json!([{"type": "account_information", "actions": ["read"]}]);
    let request = AuthorizationRequest::builder("https://as.example.com/authorize")
        .client_id("app")
        .authorization_details(&details)
        .build()
        .unwrap();
    let sent = request
        .url()
        .query_pairs()
        .find(|(n, _)| n == "authorization_details")
        .map(|(_, v)| v.into_owned())
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&sent).unwrap(),
        details
    );
    for bad in [json!({"type": "x"}), json!([]), json!(["x"])] {
        let error = AuthorizationRequest::builder("https://as.example.com/authorize")
            .client_id("app")
            .authorization_details(&bad)
            .build()
            .unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Config, "{bad}");
    }
}

/// A refresh-token grant over a file store, through its first refresh
/// (which rotates `rt-0` to `rt-1`).
async fn refreshed_cache(
    server: &Recorder,
    dir: &tempfile::TempDir,
) -> (tower_oauth2::TokenCache, tower_oauth2::StoreKey) {
    use tower_oauth2::{FileStore, TokenCache, TokenSource};
    server.reply([Reply::json(
        200,
        r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-1"}"#,
    )]);
    let grant = client(server).refresh_token(Some(SecretString::from("rt-0")));
    let key = grant.store_key().unwrap();
    let cache = TokenCache::builder(grant)
        .store(FileStore::new(dir.path().join("tokens.json")))
        .build();
    cache.token().await.unwrap();
    (cache, key)
}

#[tokio::test]
async fn shutdown_and_revoke_gives_the_newest_refresh_token_back_and_clears_the_store() {
    use tower_oauth2::{FileStore, TokenCache, TokenStore};
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cache, key) = refreshed_cache(&server, &dir).await;
    server.reply([Reply::json(200, "")]);
    cache.shutdown_and_revoke().await.unwrap();

    let sent = server.last();
    assert_eq!(sent.path, "/revoke");
    assert_eq!(sent.param("token"), "rt-1", "not the newest refresh token");
    assert_eq!(sent.param("token_type_hint"), "refresh_token");
    assert_eq!(cache.token().await.unwrap_err().kind(), &ErrorKind::Closed);

    let store = FileStore::new(dir.path().join("tokens.json"));
    let state = store.load(&key).await.unwrap().expect("a state");
    assert!(state.refresh_token().is_none(), "the store still holds it");
    // A restart finds nothing to resume: a person must authorize again.
    let grant = client(&server).refresh_token(None);
    let restarted = TokenCache::builder(grant).store(store).build();
    assert!(restarted.authorization_required().await.unwrap());
    assert!(cache.authorization_required().await.unwrap());
}

#[tokio::test]
async fn a_refused_revocation_stops_the_cache_and_keeps_the_stored_token() {
    use tower_oauth2::{FileStore, TokenStore};
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (cache, key) = refreshed_cache(&server, &dir).await;
    server.reply([Reply::json(503, "busy")]);
    let refused = cache.shutdown_and_revoke().await.unwrap_err();
    assert_eq!(refused.kind(), &ErrorKind::Status);
    assert_eq!(cache.token().await.unwrap_err().kind(), &ErrorKind::Closed);
    let state = FileStore::new(dir.path().join("tokens.json"))
        .load(&key)
        .await
        .unwrap()
        .expect("a state");
    let kept = state
        .refresh_token()
        .map(secrecy::ExposeSecret::expose_secret);
    assert_eq!(kept, Some("rt-1"), "give it back with OAuthClient::revoke");
    // The cache is gone: asking again says so.
    assert_eq!(
        cache.shutdown_and_revoke().await.unwrap_err().kind(),
        &ErrorKind::Closed
    );
}

#[tokio::test]
async fn shutdown_and_revoke_without_a_revocation_endpoint_is_a_config_error() {
    use tower_oauth2::TokenCache;
    let server = Recorder::start().await;
    server.reply([Reply::token("at-1")]);
    let grant = OAuthClient::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .client_secret("s3cret")
        .build()
        .unwrap()
        .client_credentials();
    let cache = TokenCache::new(grant);
    cache.token().await.unwrap();
    let error = cache.shutdown_and_revoke().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config);
    assert_eq!(server.requests().len(), 1, "something was sent");
}

#[tokio::test]
async fn client_credentials_give_the_access_token_back() {
    use tower_oauth2::TokenCache;
    let server = Recorder::start().await;
    server.reply([Reply::token("at-secret-1"), Reply::json(200, "")]);
    let cache = TokenCache::new(client(&server).client_credentials());
    cache.token().await.unwrap();
    cache.shutdown_and_revoke().await.unwrap();
    let sent = server.last();
    assert_eq!(sent.path, "/revoke");
    assert_eq!(sent.param("token"), "at-secret-1");
    assert_eq!(sent.param("token_type_hint"), "access_token");
}
