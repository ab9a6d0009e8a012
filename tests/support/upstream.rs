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

/// What a protected test server knows of bearer tokens: every
/// `Authorization` it was sent, and the revoked ones. The HTTP API here and
/// the gRPC one in [`super::grpc`] share it.
#[derive(Clone, Default)]
pub struct Ledger {
    seen: Arc<Mutex<Vec<String>>>,
    revoked: Arc<Mutex<HashSet<String>>>,
}

/// What a server answers to one `Authorization`.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Missing,
    Revoked,
    Accepted,
}

impl Ledger {
    /// Records `authorization` ("" when absent) and judges it.
    pub fn check(&self, authorization: &str) -> Verdict {
        self.seen.lock().unwrap().push(authorization.to_owned());
        if authorization.is_empty() {
            Verdict::Missing
        } else if self.revoked.lock().unwrap().contains(authorization) {
            Verdict::Revoked
        } else {
            Verdict::Accepted
        }
    }

    /// From now on, `authorization` (`Bearer token-2`) is refused.
    pub fn revoke(&self, authorization: &str) {
        self.revoked
            .lock()
            .unwrap()
            .insert(authorization.to_owned());
    }

    /// The `Authorization` of every request so far ("" when absent).
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// The running API. `url` ends in `/echo`.
pub struct Upstream {
    pub origin: String,
    pub url: String,
    state: Ledger,
}

impl Upstream {
    pub async fn start() -> Self {
        let state = Ledger::default();
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
                    let challenge = match state.check(&auth) {
                        Verdict::Missing => "Bearer",
                        Verdict::Revoked => r#"Bearer error="invalid_token""#,
                        Verdict::Accepted => {
                            return (
                                StatusCode::OK,
                                [(header::VARY, "authorization")],
                                format!("{auth} {}", body.len()),
                            )
                        }
                    };
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, challenge)],
                        String::new(),
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
        self.state.revoke(authorization);
    }

    /// The `Authorization` header of every request so far ("" when absent).
    pub fn seen(&self) -> Vec<String> {
        self.state.seen()
    }
}
