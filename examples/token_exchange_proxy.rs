//! An axum service that calls its upstream on behalf of each caller: it
//! exchanges the caller's access token for one the upstream accepts (token
//! exchange, RFC 8693) and sends it through `BearerAuthLayer`.
//!
//! ```text
//! cargo run --example token_exchange_proxy
//! ```
//!
//! Self-contained: it starts a tiny token server and upstream on loopback,
//! calls its own `/orders` as two callers, and prints what the upstream saw.
//!
//! One `TokenCache` per caller, in a `CacheMap` keyed by a digest of the
//! caller's token (a token is a secret: it is not kept as a map key), so
//! callers never share a token and each caller's exchanged token is reused
//! while it is valid. The map keeps at most `MAX_CALLERS` caches, dropping
//! the one used longest ago, and drops a caller quiet for half an hour.
//! With `refresh_unused(false)`, a caller that stopped calling costs no
//! token request, no task and no timer once its token expires; a caller
//! whose token changes gets a new cache (its old one ages out).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    routing::{get, post},
    Form, Json, Router,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tower::{Service, ServiceExt};
use tower_oauth2::{
    secrecy::SecretString, token_types, BearerAuthLayer, CacheMap, OAuthClient, RefreshPolicy,
    TokenCache,
};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Most caches kept at once.
const MAX_CALLERS: usize = 10_000;

#[derive(Clone)]
struct Proxy {
    client: OAuthClient,
    upstream: String,
    http: HttpClient,
    callers: CacheMap<[u8; 32]>,
}

impl Proxy {
    /// The cache of the caller holding `token`, made on first use.
    fn cache_for(&self, token: &str) -> TokenCache {
        self.callers
            .get_or_insert_with(&CacheMap::digest(token), || {
                let grant = self
                    .client
                    .token_exchange(SecretString::from(token), token_types::ACCESS_TOKEN)
                    .audience("orders");
                TokenCache::with_policy(grant, RefreshPolicy::new().refresh_unused(false))
            })
    }
}

/// `GET /orders`: the upstream's answer, fetched with the caller's exchanged token.
async fn orders(State(proxy): State<Proxy>, headers: HeaderMap) -> (StatusCode, String) {
    let Some(caller) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return (StatusCode::UNAUTHORIZED, "no bearer token".into());
    };
    let cache = proxy.cache_for(caller);
    let mut upstream = tower::ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache))
        .service(proxy.http.clone());
    let request = http::Request::get(&proxy.upstream)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = match upstream.ready().await {
        Ok(ready) => ready.call(request).await,
        Err(error) => Err(error),
    };
    match response {
        Ok(response) => {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes());
            let text = body.map(|b| String::from_utf8_lossy(&b).into_owned());
            (status, text.unwrap_or_default())
        }
        // The exchange was refused (an expired caller token, say): the
        // error names the OAuth code, never a token.
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()),
    }
}

#[tokio::main]
async fn main() {
    let exchanges = Arc::new(AtomicUsize::new(0));
    let token_url = serve(fake_token_server(exchanges.clone())).await;
    let upstream = serve(Router::new().route("/orders", get(upstream))).await;

    let client = OAuthClient::builder()
        .token_url(format!("{token_url}/token"))
        .client_id("orders-proxy")
        .client_secret("proxy-secret")
        .scope("orders.read")
        .build()
        .expect("client settings");
    let proxy = Proxy {
        client,
        upstream: format!("{upstream}/orders"),
        http: Client::builder(TokioExecutor::new()).build_http(),
        callers: CacheMap::builder()
            .max_caches(MAX_CALLERS)
            .idle(Duration::from_secs(30 * 60))
            .build(),
    };
    let app = serve(
        Router::new()
            .route("/orders", get(orders))
            .with_state(proxy),
    )
    .await;

    let http = reqwest::Client::new();
    for caller in [
        "alice-access-token",
        "bob-access-token",
        "alice-access-token",
    ] {
        let answer = http
            .get(format!("{app}/orders"))
            .bearer_auth(caller)
            .send()
            .await
            .expect("proxy answers");
        println!(
            "caller {caller}: {} {}",
            answer.status(),
            answer.text().await.unwrap_or_default()
        );
    }
    println!(
        "token exchanges: {} (alice's second call reused her token)",
        exchanges.load(Ordering::SeqCst)
    );
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind loopback");
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The upstream: says which token it was given.
async fn upstream(headers: HeaderMap) -> String {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none");
    format!("orders for {auth}")
}

/// A token endpoint that exchanges any subject token for one naming it.
fn fake_token_server(exchanges: Arc<AtomicUsize>) -> Router {
    Router::new().route(
        "/token",
        post(
            move |Form(form): Form<std::collections::HashMap<String, String>>| {
                let exchanges = exchanges.clone();
                async move {
                    let subject = form.get("subject_token").cloned().unwrap_or_default();
                    let is_exchange = form.get("grant_type").map(String::as_str)
                        == Some("urn:ietf:params:oauth:grant-type:token-exchange");
                    if !is_exchange || subject.is_empty() {
                        let error = serde_json::json!({ "error": "invalid_request" });
                        return (StatusCode::BAD_REQUEST, Json(error));
                    }
                    exchanges.fetch_add(1, Ordering::SeqCst);
                    let user = subject.trim_end_matches("-access-token");
                    (
                        StatusCode::OK,
                        Json(serde_json::json!({
                            "access_token": format!("orders-token-of-{user}"),
                            "issued_token_type": token_types::ACCESS_TOKEN,
                            "token_type": "Bearer",
                            "expires_in": 300,
                        })),
                    )
                }
            },
        ),
    )
}
