//! A new user's first hour: five programs written from the README, the
//! rustdoc and `examples/` only, each as a user would write their `main`
//! (it takes only the addresses of the services it talks to), run against
//! loopback stand-ins for the providers. Each test checks what its program
//! is for: the API got the right `Authorization`, the token endpoint was
//! called as often as it should be, the stored state carried over a
//! restart.
//!
//! 1. a `reqwest::Client` wrapped with the layer;
//! 2. a `reqwest-middleware` client;
//! 3. a tonic channel, with `allow_origin`;
//! 4. the Orange Logic flow over three starts sharing only a `FileStore`
//!    file: authorize once with a person, serve, restart from the stored
//!    refresh token;
//! 5. an axum handler over a hyper-util client, with `tower` retry and
//!    timeout.

mod support;

use std::{path::Path, time::Duration};

use support::{
    authorize::{browse, AuthorizePage},
    grpc::{self, GrpcUpstream},
    recorder::{Recorder, Reply},
    upstream::Upstream,
};
use tower::BoxError;

// ---------------------------------------------------------------------------
// Program 1: a `reqwest::Client` wrapped with the layer (README "Use", "The
// recommended stack"; examples/officernd.rs).

use tower::{ServiceBuilder, ServiceExt};
use tower_oauth2::{AuthMethod, BearerAuthLayer, ClientCredentials, Replay, TokenCache};

async fn reqwest_client(token_url: &str, api: &str) -> Result<Vec<String>, BoxError> {
    let grant = ClientCredentials::builder()
        .token_url(token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretPost) // OfficeRnD takes the secret in the form body
        .scope("officernd.api.read")
        .build()?;
    let cache = TokenCache::new(grant);
    let http = reqwest::Client::new();
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()).allow_origin(api)?)
        .service(http.clone());
    let mut bodies = Vec::new();
    for id in 1..=3 {
        let request = http.get(format!("{api}/echo?member={id}")).build()?;
        let response = client.clone().oneshot(request).await?;
        bodies.push(response.error_for_status()?.text().await?);
    }
    cache.shutdown().await?;
    Ok(bodies)
}

/// The token endpoint, answering `at-1`, `at-2`, ... as asked.
async fn token_server(tokens: usize) -> Recorder {
    let server = Recorder::start().await;
    server.reply((1..=tokens).map(|n| Reply::token(&format!("at-{n}"))));
    server
}

#[tokio::test]
async fn a_reqwest_client() {
    let tokens = token_server(2).await;
    let api = Upstream::start().await;
    // The API has already stopped accepting the first token it will get
    // (revoked early): the program must recover without a failed call.
    api.revoke("Bearer at-1");

    let bodies = reqwest_client(&tokens.url("/token"), &api.origin)
        .await
        .unwrap();

    assert_eq!(bodies, ["Bearer at-2 0"; 3]);
    assert_eq!(
        api.seen(),
        ["Bearer at-1", "Bearer at-2", "Bearer at-2", "Bearer at-2"]
    );
    let requests = tokens.requests();
    assert_eq!(requests.len(), 2, "one token, then one after the rejection");
    for request in &requests {
        assert_eq!(request.param("grant_type"), "client_credentials");
        assert_eq!(request.param("client_secret"), "s3cret");
        assert_eq!(request.header("authorization"), None);
    }
}

// ---------------------------------------------------------------------------
// Program 2: reqwest-middleware (README "The recommended stack"; the
// `BearerAuthMiddleware` rustdoc: "build it from a `BearerAuthLayer` with
// `From` to choose a cache per origin"; it has no `allow_origin` of its own).

use tower_oauth2::BearerAuthMiddleware;

async fn reqwest_middleware_client(
    token_url: &str,
    api: &str,
    webhook: &str,
) -> Result<Vec<String>, BoxError> {
    let grant = ClientCredentials::builder()
        .token_url(token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretPost)
        .scope("officernd.api.read")
        .build()?;
    let cache = TokenCache::new(grant);
    let auth = BearerAuthLayer::new(cache.clone()).allow_origin(api)?; // the token goes there only
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::from(auth).replay(true))
        .build();
    let mut bodies = Vec::new();
    for id in 1..=3 {
        let response = client.get(format!("{api}/echo?member={id}")).send().await?;
        bodies.push(response.error_for_status()?.text().await?);
    }
    client.post(webhook).body("done").send().await?; // another service: no token
    cache.shutdown().await?;
    Ok(bodies)
}

#[tokio::test]
async fn a_reqwest_middleware_client() {
    let tokens = token_server(2).await;
    let api = Upstream::start().await;
    let webhook = Upstream::start().await;
    api.revoke("Bearer at-1");

    let bodies = reqwest_middleware_client(&tokens.url("/token"), &api.origin, &webhook.url)
        .await
        .unwrap();

    assert_eq!(bodies, ["Bearer at-2 0"; 3]);
    assert_eq!(
        api.seen(),
        ["Bearer at-1", "Bearer at-2", "Bearer at-2", "Bearer at-2"]
    );
    assert_eq!(webhook.seen(), [""], "the other origin got no token");
    assert_eq!(tokens.requests().len(), 2);
}

// ---------------------------------------------------------------------------
// Program 3: a tonic 0.14 channel with `allow_origin` (README "The layer" and
// "The recommended stack"; `BearerAuthLayer::relative_uri_origin`).
// `grpc::say` stands for the generated client's method.

use tonic::transport::Channel;
use tower::Layer;

async fn tonic_channel(token_url: &str, grpc_origin: &str) -> Result<Vec<String>, BoxError> {
    let grant = ClientCredentials::builder()
        .token_url(token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .scope("pubsub")
        .build()?;
    let cache = TokenCache::new(grant);
    let channel = Channel::from_shared(grpc_origin.to_owned())?
        .connect()
        .await?;
    let auth = BearerAuthLayer::new(cache.clone())
        .allow_origin(grpc_origin)?
        .relative_uri_origin(grpc_origin)?; // tonic sends paths only
    let mut client = tonic::client::Grpc::new(auth.layer(channel)); // MyClient::new(..)
    let mut replies = Vec::new();
    for message in ["one", "two", "three"] {
        replies.push(grpc::say(&mut client, message).await?.message);
    }
    cache.shutdown().await?;
    Ok(replies)
}

#[tokio::test]
async fn a_tonic_channel_with_allow_origin() {
    let tokens = token_server(1).await;
    let api = GrpcUpstream::start().await;

    let replies = tonic_channel(&tokens.url("/token"), &api.url)
        .await
        .unwrap();

    assert_eq!(replies, ["one", "two", "three"]);
    assert_eq!(api.seen(), ["Bearer at-1"; 3]);
    assert_eq!(tokens.requests().len(), 1);
    // The default `ClientSecretBasic`: the secret in the header only.
    assert!(tokens.last().header("authorization").is_some());
    assert!(!tokens.last().has_param("client_secret"));
}

// ---------------------------------------------------------------------------
// Program 4: the Orange Logic flow (README "Persistence and shutdown";
// examples/authorize.rs; `OAuthClient`). One `main`, started three times;
// the starts share nothing but the store's file. `open_browser` shows the
// person the URL (a `println!` in a real `main`).

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tower_oauth2::{FileStore, OAuthClient};

async fn orange_logic(
    authorize_url: &str,
    token_url: &str,
    api: &str,
    store: &Path,
    open_browser: impl FnOnce(&str),
) -> Result<String, BoxError> {
    let client = OAuthClient::builder()
        .token_url(token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .refresh_token_param("code") // Orange Logic's name for it
        .build()?;
    let store = FileStore::open(store)?;
    let cache = TokenCache::builder(client.refresh_token(None))
        .store(store.clone())
        .build();
    if cache.authorization_required().await? {
        // Once, with a person: the redirect comes back to a loopback port.
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let request = client
            .authorization_request(authorize_url)
            .redirect_uri(format!("http://{}/callback", listener.local_addr()?))
            .build()?;
        open_browser(request.url().as_str());
        let (mut socket, _) = listener.accept().await?;
        let mut head = vec![0; 8192];
        let read = socket.read(&mut head).await?;
        let head = String::from_utf8_lossy(&head[..read]).into_owned();
        let target = head.split(' ').nth(1).unwrap_or_default();
        let page = "HTTP/1.1 200 OK\r\ncontent-length: 10\r\nconnection: close\r\n\r\nAuthorized";
        socket.write_all(page.as_bytes()).await?;
        let code = request.callback(target)?;
        let first = TokenCache::builder(client.authorization_code(&request, code))
            .store(store.clone())
            .build();
        first.token().await?;
        first.shutdown().await?;
    }
    // Serve: here, one call to the API.
    let http = reqwest::Client::new();
    let api_client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()).allow_origin(api)?)
        .service(http.clone());
    let request = http.get(format!("{api}/echo?asset=42")).build()?;
    let body = api_client
        .oneshot(request)
        .await?
        .error_for_status()?
        .text()
        .await?;
    // Before main returns: finish a refresh under way and its save.
    let stop = tokio::time::timeout(Duration::from_secs(20), async {
        while let Err(error) = cache.shutdown().await {
            eprintln!("token state not saved yet: {error}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    if stop.await.is_err() {
        eprintln!("exiting with the newest token state unsaved");
    }
    Ok(body)
}

fn token_answer(n: u32) -> Reply {
    Reply::json(
        200,
        &format!(
            r#"{{"access_token":"at-{n}","token_type":"Bearer","expires_in":3600,"refresh_token":"rt-{n}"}}"#
        ),
    )
}

#[tokio::test]
async fn the_orange_logic_flow_over_three_starts() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    use sha2::{Digest, Sha256};

    let page = AuthorizePage::start("code-1").await;
    let tokens = Recorder::start().await;
    tokens.reply([token_answer(1), token_answer(2), token_answer(3)]);
    let api = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orange-logic.json");
    let token_url = tokens.url("/token");
    let start = |open_browser: Box<dyn FnOnce(&str)>| {
        orange_logic(&page.url, &token_url, &api.origin, &file, open_browser)
    };

    // First start: nothing stored, so a person authorizes.
    let body = start(Box::new(|url: &str| {
        tokio::spawn(browse(url.to_owned()));
    }))
    .await
    .unwrap();
    assert_eq!(page.param("response_type"), "code");
    assert_eq!(page.param("client_id"), "my-app");
    assert_eq!(page.param("code_challenge_method"), "S256");
    let requests = tokens.requests();
    let exchange = &requests[0];
    assert_eq!(exchange.param("grant_type"), "authorization_code");
    assert_eq!(exchange.param("code"), "code-1");
    assert_eq!(exchange.param("redirect_uri"), page.param("redirect_uri"));
    let verifier = exchange.param("code_verifier");
    assert_eq!(
        URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())),
        page.param("code_challenge"),
        "PKCE: the verifier answers the challenge"
    );
    // As the README's snippet has it, the serving cache is the one that
    // found nothing stored; after the exchange it serves the stored access
    // token too: one token request on the first start, and no rotation.
    assert_eq!(requests.len(), 1, "the exchange's token is served");
    assert_eq!(body, "Bearer at-1 0");

    // Second start: the stored access token serves, no token request, no person.
    let never = |_: &str| panic!("a person was asked to authorize again");
    let body = start(Box::new(never)).await.unwrap();
    assert_eq!(body, "Bearer at-1 0");
    assert_eq!(tokens.requests().len(), 1, "no token request at a restart");

    // The access token dies early on the server's side; third start: the
    // stored refresh token, under Orange Logic's parameter name, gets a new one.
    api.revoke("Bearer at-1");
    let body = start(Box::new(never)).await.unwrap();
    assert_eq!(body, "Bearer at-2 0");
    let refresh = tokens.last();
    assert_eq!(tokens.requests().len(), 2);
    assert_eq!(refresh.param("grant_type"), "refresh_token");
    assert_eq!(refresh.param("code"), "rt-1");
    assert!(!refresh.has_param("refresh_token"));
    assert_eq!(
        api.seen(),
        ["Bearer at-1", "Bearer at-1", "Bearer at-1", "Bearer at-2"]
    );
    assert_eq!(page.requests().len(), 1, "the person was asked once");
    // The rotated refresh token was saved for the next start.
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(stored.contains("rt-2") && !stored.contains("rt-1"));
}

// ---------------------------------------------------------------------------
// Program 5: an axum handler over a hyper-util client, with `tower` retry
// and timeout (README "The layer", "The recommended stack";
// examples/axum_proxy.rs). The listener is the one `main` would bind.

use axum::{
    body::Body,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::{retry::Retry, timeout::Timeout};
use tower_oauth2::{layer::replay::CloneBody, BearerAuth};

type Api = Timeout<Retry<Replay<CloneBody>, BearerAuth<Client<HttpConnector, Full<Bytes>>>>>;

#[derive(Clone)]
struct App {
    api: Api,
    origin: String,
}

async fn item(State(app): State<App>) -> Response {
    let request = http::Request::get(format!("{}/echo", app.origin)).body(Full::default());
    let Ok(request) = request else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match app.api.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(error) => match tower_oauth2::Error::find_in(error.as_ref()) {
            Some(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no token: {error}"),
            ),
            None => (StatusCode::BAD_GATEWAY, format!("upstream: {error}")),
        }
        .into_response(),
    }
}

async fn axum_handler(token_url: &str, api: &str, listener: TcpListener) -> Result<(), BoxError> {
    let grant = ClientCredentials::builder()
        .token_url(token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .scope("items")
        .build()?;
    let cache = TokenCache::new(grant);
    let client = ServiceBuilder::new()
        .timeout(Duration::from_secs(10)) // bounds the wait for a token too
        .retry(Replay::new().copy_body(CloneBody))
        .layer(BearerAuthLayer::new(cache).allow_origin(api)?)
        .service(Client::builder(TokioExecutor::new()).build_http());
    let app = Router::new().route("/item", get(item)).with_state(App {
        api: client,
        origin: api.to_owned(),
    });
    axum::serve(listener, app).await?;
    Ok(())
}

#[tokio::test]
async fn an_axum_handler_over_hyper_util() {
    let tokens = token_server(2).await;
    let api = Upstream::start().await;
    api.revoke("Bearer at-1");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = format!("http://{}/item", listener.local_addr().unwrap());
    let token_url = tokens.url("/token");
    let origin = api.origin.clone();
    tokio::spawn(async move { axum_handler(&token_url, &origin, listener).await });

    // 20 callers at once on a cold cache: one token, rejected by the API,
    // then one more; every caller gets its answer.
    let http = reqwest::Client::new();
    let calls = (0..20).map(|_| {
        let (http, app) = (http.clone(), app.clone());
        tokio::spawn(async move {
            let response = http.get(app).send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        })
    });
    for call in calls.collect::<Vec<_>>() {
        assert_eq!(call.await.unwrap(), (200, "Bearer at-2 0".to_owned()));
    }
    assert_eq!(tokens.requests().len(), 2, "single flight, one refresh");
    let seen = api.seen();
    assert_eq!(seen.iter().filter(|a| *a == "Bearer at-2").count(), 20);
    assert!(seen
        .iter()
        .all(|a| a == "Bearer at-1" || a == "Bearer at-2"));
}
