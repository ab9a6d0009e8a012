//! The person's side of the code flow, on loopback: an authorization
//! endpoint where the person is already signed in and consents at once (it
//! records each query and redirects to the `redirect_uri` with a one-time
//! code and the request's `state`), and [`browse`], the browser that opens
//! the printed URL and follows the redirect back to the application.

use std::sync::{Arc, Mutex};

use axum::{
    extract::{RawQuery, State},
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};

/// One request's query, decoded, in order.
type Query = Vec<(String, String)>;

#[derive(Clone)]
struct Shared {
    code: String,
    seen: Arc<Mutex<Vec<Query>>>,
}

/// A running authorization endpoint. `url` ends in `/authorize`.
pub struct AuthorizePage {
    pub url: String,
    shared: Shared,
}

impl AuthorizePage {
    /// Answers every authorization request with the code `code`.
    pub async fn start(code: &str) -> Self {
        let shared = Shared {
            code: code.to_owned(),
            seen: Arc::default(),
        };
        let app = Router::new()
            .route("/authorize", get(authorize))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/authorize", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, shared }
    }

    /// The query of every authorization request so far, decoded.
    pub fn requests(&self) -> Vec<Query> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// The one value of `name` in the only authorization request; panics
    /// if there was not exactly one request, or `name` is absent.
    pub fn param(&self, name: &str) -> String {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "authorization requests: {requests:?}");
        requests[0]
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("`{name}` missing from {:?}", requests[0]))
    }
}

async fn authorize(State(shared): State<Shared>, RawQuery(query): RawQuery) -> Response {
    let query: Query = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    shared.seen.lock().unwrap().push(query.clone());
    let param = |name: &str| {
        query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let (Some(redirect), Some(state)) = (param("redirect_uri"), param("state")) else {
        return (StatusCode::BAD_REQUEST, "redirect_uri and state required").into_response();
    };
    let Ok(mut location) = url::Url::parse(&redirect) else {
        return (StatusCode::BAD_REQUEST, "bad redirect_uri").into_response();
    };
    location
        .query_pairs_mut()
        .append_pair("code", &shared.code)
        .append_pair("state", &state);
    (
        StatusCode::FOUND,
        [(header::LOCATION, location.to_string())],
    )
        .into_response()
}

/// The browser: opens `url` and follows the redirects; returns the final
/// answer's status (the application's callback page).
pub async fn browse(url: String) -> StatusCode {
    let response = reqwest::get(url)
        .await
        .expect("the browser reaches the page");
    StatusCode::from_u16(response.status().as_u16()).unwrap()
}
