//! An axum server whose handler forwards `/proxy/{*path}` to an upstream API
//! through `BearerAuthLayer`: the app holds one authenticated client in its
//! state, and every handler clone shares its token.
//!
//! ```text
//! cargo run --example axum_proxy
//! ```
//!
//! Self-contained: it starts a tiny token server and upstream on loopback,
//! sends a few requests to its own proxy (revoking the upstream's tokens
//! halfway through, to show the layer recover), prints what came back and
//! exits.
//!
//! The proxy reads each request body into memory (bounded) and forwards it as
//! `Full<Bytes>`, which the `Replay` retry policy copies (`CloneBody`): after
//! a `401 invalid_token` the layer drops the token, `Replay` sends the request
//! again with a new one, and the caller never sees the 401. An
//! `axum::body::Body` can go through the layer as is too (streaming, no
//! buffering), but such a body cannot be sent twice: the caller would get
//! that one 401, and its retry a new token.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    body::Body,
    extract::{Path, Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Form, Json, Router,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use rand::Rng;
use tower::{retry::Retry, BoxError, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    layer::replay::CloneBody, BearerAuth, BearerAuthError, BearerAuthLayer, ClientCredentials,
    Replay, TokenCache,
};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The authenticated client: replays once after a rejected token.
type Api = Retry<Replay<CloneBody>, BearerAuth<HttpClient>>;

/// The proxy's state: the authenticated client (cheap to clone) and where to send requests.
#[derive(Clone)]
struct Proxy {
    api: Api,
    upstream: String,
}

/// `/proxy/{*path}`: forwards method, path, query, `Content-Type`, `Accept` and body.
async fn forward(
    State(proxy): State<Proxy>,
    Path(path): Path<String>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 1 << 20).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB").into_response();
    };
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let mut upstream = http::Request::builder()
        .method(parts.method)
        .uri(format!("{}/{path}{query}", proxy.upstream));
    for name in [header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(value) = parts.headers.get(&name) {
            upstream = upstream.header(name, value);
        }
    }
    let Ok(upstream) = upstream.body(Full::new(body)) else {
        return (StatusCode::BAD_REQUEST, "cannot forward this path").into_response();
    };
    // `oneshot` waits for readiness, then calls; the clone shares the token cache.
    match proxy.api.oneshot(upstream).await {
        Ok(response) => response.map(Body::new),
        Err(BearerAuthError::Token(error)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no token for the upstream: {error}"),
        )
            .into_response(),
        Err(BearerAuthError::Service(error)) => (
            StatusCode::BAD_GATEWAY,
            format!("upstream unreachable: {error}"),
        )
            .into_response(),
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The token server and the upstream API, sharing the set of valid tokens.
    let tokens = Arc::new(Tokens::default());
    let auth_addr = serve(
        Router::new()
            .route("/token", post(issue_token))
            .with_state(tokens.clone()),
    )
    .await?;
    let upstream = Router::new()
        .route(
            "/items/{id}",
            get(|Path(id): Path<String>| async move { Json(serde_json::json!({ "id": id })) }),
        )
        .route(
            "/items",
            post(|body: Bytes| async move {
                (
                    StatusCode::CREATED,
                    format!("created from {} bytes", body.len()),
                )
            }),
        )
        .route_layer(middleware::from_fn_with_state(
            tokens.clone(),
            require_token,
        ));
    let upstream_addr = serve(upstream).await?;

    // The proxy: one authenticated client in the app state.
    let grant = ClientCredentials::builder()
        .token_url(format!("http://{auth_addr}/token"))
        .client_id("proxy")
        .client_secret("proxy-secret") // client_secret_basic, the default
        .scope("items")
        .build()?;
    let cache = TokenCache::new(grant);
    let upstream = format!("http://{upstream_addr}");
    let state = Proxy {
        // The token goes to the upstream's origin only, never elsewhere.
        api: ServiceBuilder::new()
            .retry(Replay::new().copy_body(CloneBody))
            .layer(BearerAuthLayer::new(cache.clone()).allow_origin(&upstream)?)
            .service(Client::builder(TokioExecutor::new()).build_http()),
        upstream,
    };
    let proxy_addr = serve(
        Router::new()
            .route("/proxy/{*path}", any(forward))
            .with_state(state),
    )
    .await?;
    println!("proxy on {proxy_addr} -> upstream {upstream_addr}, tokens from {auth_addr}\n");

    // A plain client (no token) talking to the proxy.
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let send = |method: &'static str, path: &'static str, body: &'static str| {
        let client = client.clone();
        async move {
            let request = http::Request::builder()
                .method(method)
                .uri(format!("http://{proxy_addr}{path}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from_static(body.as_bytes())))?;
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            println!(
                "{method:<4} {path:<28} -> {status}  {}",
                String::from_utf8_lossy(&body)
            );
            Ok::<_, BoxError>(status)
        }
    };
    let mut statuses = vec![
        send("GET", "/proxy/items/1", "").await?,
        send("GET", "/proxy/items/2?fields=name", "").await?,
    ];
    println!("  (the upstream now revokes every token it accepted)");
    tokens.valid.lock().unwrap().clear();
    statuses.push(send("GET", "/proxy/items/3", "").await?);
    statuses.push(send("POST", "/proxy/items", r#"{"name":"chair"}"#).await?);
    statuses.push(send("GET", "/proxy/nowhere", "").await?);

    let stats = cache.stats();
    println!(
        "\ntoken requests {} (one at start, one after the revocation), invalidations {}",
        stats.token_requests, stats.invalidations
    );
    // Stop the cache cleanly: a refresh under way finishes first.
    cache.shutdown().await?;
    let expected = [200, 200, 200, 201, 404];
    if statuses.iter().map(|s| s.as_u16()).ne(expected) {
        return Err(format!("expected statuses {expected:?}").into());
    }
    Ok(())
}

/// The tokens the token server issued and the upstream still accepts.
#[derive(Default)]
struct Tokens {
    valid: Mutex<HashSet<String>>,
}

/// `POST /token`: client_credentials, for the one client this demo knows.
async fn issue_token(
    State(tokens): State<Arc<Tokens>>,
    headers: HeaderMap,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    use base64::{engine::general_purpose::STANDARD, Engine as _};
    let expected = format!("Basic {}", STANDARD.encode("proxy:proxy-secret"));
    let client_ok = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == expected.as_str());
    let grant_ok = form
        .iter()
        .any(|(k, v)| k == "grant_type" && v == "client_credentials");
    if !(client_ok && grant_ok) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(serde_json::json!({ "error": "invalid_client" })),
        )
            .into_response();
    }
    let token = format!("{:032x}", rand::rng().random::<u128>());
    tokens.valid.lock().unwrap().insert(token.clone());
    Json(serde_json::json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 }))
        .into_response()
}

/// The upstream's guard: a known bearer token, or `401 invalid_token`.
async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let known = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok()?.strip_prefix("Bearer "))
        .is_some_and(|t| tokens.valid.lock().unwrap().contains(t));
    if known {
        return next.run(request).await;
    }
    let challenge = r#"Bearer error="invalid_token""#;
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, challenge)],
    )
        .into_response()
}

/// Serves `app` on a fresh loopback port, in the background.
async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}
