//! A token endpoint as strict as the strictest real ones about refresh
//! tokens: every refresh rotates the refresh token, and a refresh token sent
//! a second time revokes the whole family (RFC 9700 §4.14.2), after which
//! every refresh is `invalid_grant` and a person must authorize again.
//!
//! The shape of each success answer can be scripted (`"error": null`, an
//! unknown `token_type`, ...) to check that a client keeps the refresh token
//! of an answer it refuses. Binds 127.0.0.1:0.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};

/// How a success answer looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A plain RFC 6749 answer.
    Plain,
    /// `"error": null`, as .NET and Jackson serializers write an absent field.
    ErrorNull,
    /// `"error": ""`.
    ErrorEmpty,
    /// `"token_type": "mac"`: a client must refuse the access token.
    UnknownTokenType,
    /// An access token with a space in it.
    SpaceInAccessToken,
    /// `"expires_in": -5`.
    NegativeExpiry,
}

impl Shape {
    fn body(self, access: &str, refresh: &str) -> String {
        let (access, token_type, extra) = match self {
            Shape::Plain => (access.to_owned(), "Bearer", ""),
            Shape::ErrorNull => (access.to_owned(), "Bearer", r#","error":null"#),
            Shape::ErrorEmpty => (
                access.to_owned(),
                "Bearer",
                r#","error":"","error_description":"""#,
            ),
            Shape::UnknownTokenType => (access.to_owned(), "mac", ""),
            Shape::SpaceInAccessToken => (format!("{access} x"), "Bearer", ""),
            Shape::NegativeExpiry => (access.to_owned(), "Bearer", r#","expires_in":-5"#),
        };
        let expires = if self == Shape::NegativeExpiry {
            ""
        } else {
            r#","expires_in":3600"#
        };
        format!(
            r#"{{"access_token":"{access}","token_type":"{token_type}","refresh_token":"{refresh}"{expires}{extra}}}"#
        )
    }

    /// Whether a client should accept the answer's access token.
    pub fn is_usable(self) -> bool {
        matches!(self, Shape::Plain | Shape::ErrorNull | Shape::ErrorEmpty)
    }
}

#[derive(Default)]
struct Family {
    /// The one refresh token that works; `None` once the family is revoked.
    current: Option<String>,
    /// The authorization code that starts the family, until it is used.
    code: Option<String>,
    issued: u64,
    /// Every refresh token that was ever valid.
    ever: Vec<String>,
    /// Every refresh token received, in order.
    received: Vec<String>,
    reuses: u64,
    shapes: VecDeque<Shape>,
}

/// A running rotating endpoint.
#[derive(Clone)]
pub struct Rotating {
    family: Arc<Mutex<Family>>,
    pub url: String,
}

impl Rotating {
    /// Starts a server whose family begins with `refresh_token`, or with the
    /// one-time authorization code `code` (whichever is `Some`).
    pub async fn start(refresh_token: Option<&str>, code: Option<&str>) -> Rotating {
        let family = Arc::new(Mutex::new(Family {
            current: refresh_token.map(str::to_owned),
            code: code.map(str::to_owned),
            ever: refresh_token.map(str::to_owned).into_iter().collect(),
            ..Family::default()
        }));
        let app = Router::new()
            .route("/token", post(token))
            .with_state(family.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Rotating { family, url }
    }

    /// The shapes of the next success answers, in order (then `Plain`).
    pub fn shapes(&self, shapes: impl IntoIterator<Item = Shape>) {
        self.family.lock().unwrap().shapes.extend(shapes);
    }

    /// Refresh tokens sent a second time (each revoked the family).
    pub fn reuses(&self) -> u64 {
        self.family.lock().unwrap().reuses
    }

    /// Whether the family was revoked: a person must authorize again.
    pub fn revoked(&self) -> bool {
        let family = self.family.lock().unwrap();
        family.current.is_none() && family.code.is_none()
    }

    /// Every refresh token the server received, in order.
    pub fn received(&self) -> Vec<String> {
        self.family.lock().unwrap().received.clone()
    }

    /// The refresh token the server would accept now.
    pub fn current(&self) -> Option<String> {
        self.family.lock().unwrap().current.clone()
    }
}

async fn token(State(family): State<Arc<Mutex<Family>>>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let param = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut family = family.lock().unwrap();
    let presented = match param("grant_type").as_deref() {
        // Orange Logic names the refresh token `code`.
        Some("refresh_token") => param("refresh_token").or_else(|| param("code")),
        Some("authorization_code") => {
            let code = param("code");
            if code.is_some() && code == family.code {
                family.code = None;
                return issue(&mut family);
            }
            return invalid_grant("unknown or used code");
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    };
    let Some(presented) = presented else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    family.received.push(presented.clone());
    if family.current.as_deref() == Some(presented.as_str()) {
        return issue(&mut family);
    }
    if family.ever.contains(&presented) && family.current.is_some() {
        family.reuses += 1;
        family.current = None;
    }
    invalid_grant("refresh token revoked or reused")
}

fn issue(family: &mut Family) -> Response {
    family.issued += 1;
    let n = family.issued;
    let refresh = format!("rt-{n}");
    family.current = Some(refresh.clone());
    family.ever.push(refresh.clone());
    let shape = family.shapes.pop_front().unwrap_or(Shape::Plain);
    (
        [(header::CONTENT_TYPE, "application/json")],
        shape.body(&format!("at-{n}"), &refresh),
    )
        .into_response()
}

fn invalid_grant(description: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"error":"invalid_grant","error_description":"{description}"}}"#),
    )
        .into_response()
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"error":"{code}"}}"#),
    )
        .into_response()
}
