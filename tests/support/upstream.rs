//! A protected HTTP API on loopback (axum), for the client tests: it records
//! the `Authorization` header of every request, answers `401
//! invalid_token` to revoked tokens (and a plain 401 without a token), and
//! otherwise echoes the header it got.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use axum::{
    http::{header, HeaderMap, StatusCode},
    routing::any,
    Router,
};

#[derive(Clone, Default)]
struct State {
    seen: Arc<Mutex<Vec<String>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
}

/// The running API. `url` ends in `/echo`.
pub struct Upstream {
    pub origin: String,
    pub url: String,
    state: State,
}

impl Upstream {
    pub async fn start() -> Self {
        let state = State::default();
        let shared = state.clone();
        let app = Router::new().route(
            "/echo",
            any(move |headers: HeaderMap, body: axum::body::Bytes| {
                let state = shared.clone();
                async move {
                    let auth = headers
                        .get(header::AUTHORIZATION)
                        .map(|h| h.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    state.seen.lock().unwrap().push(auth.clone());
                    if auth.is_empty() {
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, "Bearer")],
                            String::new(),
                        );
                    }
                    if state.revoked.lock().unwrap().contains(&auth) {
                        let challenge = r#"Bearer error="invalid_token""#;
                        return (
                            StatusCode::UNAUTHORIZED,
                            [(header::WWW_AUTHENTICATE, challenge)],
                            String::new(),
                        );
                    }
                    (
                        StatusCode::OK,
                        [(header::VARY, "authorization")],
                        format!("{auth} {}", body.len()),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url: format!("{origin}/echo"),
            origin,
            state,
        }
    }

    /// From now on, `authorization` (`Bearer token-2`) is answered `401 invalid_token`.
    pub fn revoke(&self, authorization: &str) {
        self.state
            .revoked
            .lock()
            .unwrap()
            .insert(authorization.to_owned());
    }

    /// The `Authorization` header of every request so far ("" when absent).
    pub fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }
}
