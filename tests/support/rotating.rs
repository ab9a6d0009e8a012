//! A token endpoint as strict as the strictest real ones about refresh
//! tokens: every refresh rotates the refresh token, and a refresh token sent
//! a second time revokes the whole family (RFC 9700 §4.14.2), after which
//! every refresh is `invalid_grant` and a person must authorize again. It
//! keeps what a test needs to judge a run: every refresh token received
//! (and those received twice), when the family was revoked, and which access
//! token it accepts at a given moment.
//!
//! The shape of each success answer can be scripted (`"error": null`, an
//! unknown `token_type`, ...) to check that a client keeps the refresh token
//! of an answer it refuses. Binds 127.0.0.1:0.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use secrecy::{ExposeSecret, SecretString};
use tower_oauth2::{Error, StoreKey, Token, TokenSource};

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
    fn body(self, access: &str, refresh: &str, expires_in: u64) -> String {
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
            String::new()
        } else {
            format!(r#","expires_in":{expires_in}"#)
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
    /// When each refresh token was issued, on the real clock.
    issued_at: Vec<std::time::Instant>,
    /// When each refresh token in `received` arrived, on the wall clock.
    received_at: Vec<SystemTime>,
    /// When the family was last revoked, on the wall clock.
    revoked_at: Option<SystemTime>,
}

/// What the family says to a token request.
enum Answer {
    Issued {
        access: String,
        refresh: String,
        shape: Shape,
    },
    InvalidGrant(&'static str),
}

impl Family {
    fn new(refresh_token: Option<&str>, code: Option<&str>) -> Self {
        Family {
            current: refresh_token.map(str::to_owned),
            code: code.map(str::to_owned),
            ever: refresh_token.map(str::to_owned).into_iter().collect(),
            ..Family::default()
        }
    }

    fn refresh(&mut self, presented: &str) -> Answer {
        self.received.push(presented.to_owned());
        self.received_at.push(SystemTime::now());
        if self.current.as_deref() == Some(presented) {
            return self.issue();
        }
        if self.ever.iter().any(|t| t == presented) && self.current.is_some() {
            self.reuses += 1;
            self.current = None;
            self.revoked_at = Some(SystemTime::now());
        }
        Answer::InvalidGrant("refresh token revoked or reused")
    }

    fn exchange(&mut self, code: Option<&str>) -> Answer {
        if code.is_some() && code == self.code.as_deref() {
            self.code = None;
            return self.issue();
        }
        Answer::InvalidGrant("unknown or used code")
    }

    fn credentials(&mut self) -> Answer {
        self.issued += 1;
        Answer::Issued {
            access: format!("at-{}", self.issued),
            refresh: String::new(),
            shape: Shape::Plain,
        }
    }

    fn issue(&mut self) -> Answer {
        self.issued += 1;
        let n = self.issued;
        let refresh = format!("rt-{n}");
        self.current = Some(refresh.clone());
        self.ever.push(refresh.clone());
        self.issued_at.push(std::time::Instant::now());
        Answer::Issued {
            access: format!("at-{n}"),
            refresh,
            shape: self.shapes.pop_front().unwrap_or(Shape::Plain),
        }
    }
}

/// A running rotating endpoint.
#[derive(Clone)]
pub struct Rotating {
    family: Arc<Mutex<Family>>,
    latency: Arc<Mutex<Duration>>,
    /// `expires_in` of the access tokens, in seconds (3600 by default).
    lifetime: Arc<Mutex<u64>>,
    /// Token requests received, answered or not yet.
    requests: Arc<std::sync::atomic::AtomicU64>,
    /// Every access token issued: when (wall clock) and for how long.
    access: Arc<Mutex<HashMap<String, (SystemTime, Duration)>>>,
    pub url: String,
}

impl Rotating {
    /// Starts a server whose family begins with `refresh_token`, or with the
    /// one-time authorization code `code` (whichever is `Some`).
    pub async fn start(refresh_token: Option<&str>, code: Option<&str>) -> Rotating {
        let server = Rotating {
            family: Arc::new(Mutex::new(Family::new(refresh_token, code))),
            latency: Arc::default(),
            lifetime: Arc::new(Mutex::new(3600)),
            requests: Arc::default(),
            access: Arc::default(),
            url: String::new(),
        };
        let app = Router::new()
            .route("/token", post(token))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Rotating { url, ..server }
    }

    /// Every answer waits this long first (the server has rotated already).
    pub fn latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }

    /// Access tokens from now on live `seconds`.
    pub fn lifetime(&self, seconds: u64) {
        *self.lifetime.lock().unwrap() = seconds;
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

    /// Tokens issued so far.
    pub fn issued(&self) -> u64 {
        self.family.lock().unwrap().issued
    }

    /// Token requests received so far, answered or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// When the server rotated to refresh token `rt-{n}`, on the real clock.
    pub fn rotated_at(&self, n: u64) -> Option<std::time::Instant> {
        let family = self.family.lock().unwrap();
        family
            .issued_at
            .get(usize::try_from(n).ok()?.checked_sub(1)?)
            .copied()
    }

    /// The grant ends (revoked, expired) and a person authorizes again with
    /// a redirect that brings the one-time `code`: the old refresh tokens
    /// are dead, the code starts a new family.
    pub fn new_authorization(&self, code: &str) {
        let mut family = self.family.lock().unwrap();
        family.current = None;
        family.code = Some(code.to_owned());
    }

    /// Refresh tokens received more than once (the first receipt of each is
    /// not counted; those after a revocation are).
    pub fn sent_twice(&self) -> u64 {
        let family = self.family.lock().unwrap();
        let mut seen = HashSet::new();
        family
            .received
            .iter()
            .filter(|t| !seen.insert(t.as_str()))
            .count() as u64
    }

    /// Every refresh token received, with when (wall clock).
    pub fn receipts(&self) -> Vec<(String, SystemTime)> {
        let family = self.family.lock().unwrap();
        family
            .received
            .iter()
            .cloned()
            .zip(family.received_at.iter().copied())
            .collect()
    }

    /// Each refresh token received more than once, with when (wall clock)
    /// it came again.
    pub fn resent(&self) -> Vec<(String, SystemTime)> {
        let family = self.family.lock().unwrap();
        let mut seen = HashSet::new();
        family
            .received
            .iter()
            .zip(&family.received_at)
            .filter(|(t, _)| !seen.insert(t.as_str()))
            .map(|(t, at)| (t.clone(), *at))
            .collect()
    }

    /// When (wall clock) the family was last revoked.
    pub fn revoked_at(&self) -> Option<SystemTime> {
        self.family.lock().unwrap().revoked_at
    }

    /// When (wall clock) access token `access` was issued and when it
    /// expires; `None` for a token this server never issued.
    pub fn access_window(&self, access: &str) -> Option<(SystemTime, SystemTime)> {
        let (issued, lifetime) = *self.access.lock().unwrap().get(access)?;
        Some((issued, issued + lifetime))
    }

    /// Whether this server accepts access token `access` at `at`: issued,
    /// not expired, and its family not revoked by then.
    pub fn accepts(&self, access: &str, at: SystemTime) -> bool {
        let Some((issued, expires)) = self.access_window(access) else {
            return false;
        };
        let revoked = self.revoked_at().is_some_and(|r| r <= at);
        issued <= at && at < expires && !revoked
    }

    /// A person authorizes again: a new family starting with `refresh_token`.
    pub fn reauthorize(&self, refresh_token: &str) {
        let mut family = self.family.lock().unwrap();
        family.current = Some(refresh_token.to_owned());
        family.ever.push(refresh_token.to_owned());
    }
}

async fn token(State(server): State<Rotating>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let param = |name: &str| form.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    server
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let issued_at = SystemTime::now();
    let answer = {
        let mut family = server.family.lock().unwrap();
        match param("grant_type").as_deref() {
            // Orange Logic names the refresh token `code`.
            Some("refresh_token") => match param("refresh_token").or_else(|| param("code")) {
                Some(presented) => family.refresh(&presented),
                None => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request"),
            },
            Some("authorization_code") => family.exchange(param("code").as_deref()),
            // No refresh token at all: for fleets of client-credentials replicas.
            Some("client_credentials") => family.credentials(),
            _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
        }
    };
    let latency = *server.latency.lock().unwrap();
    tokio::time::sleep(latency).await;
    match answer {
        Answer::Issued {
            access,
            refresh,
            shape,
        } => {
            let lifetime = *server.lifetime.lock().unwrap();
            server
                .access
                .lock()
                .unwrap()
                .insert(access.clone(), (issued_at, Duration::from_secs(lifetime)));
            (
                [(header::CONTENT_TYPE, "application/json")],
                shape.body(&access, &refresh, lifetime),
            )
                .into_response()
        }
        Answer::InvalidGrant(description) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "application/json")],
            format!(r#"{{"error":"invalid_grant","error_description":"{description}"}}"#),
        )
            .into_response(),
    }
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"error":"{code}"}}"#),
    )
        .into_response()
}

/// The same server's rules, in process, behind a [`TokenSource`] that acts
/// as a refresh-token client: for paused-time runs over simulated days,
/// where real sockets cannot follow the clock. Access tokens live
/// `access_lifetime`; a refresh token unused for `refresh_lifetime` dies.
#[derive(Clone)]
pub struct InProcess {
    family: Arc<Mutex<Family>>,
    /// When each refresh token was issued, on the (paused) Tokio clock.
    born: Arc<Mutex<Vec<(String, tokio::time::Instant)>>>,
    access_lifetime: Duration,
    refresh_lifetime: Duration,
}

impl InProcess {
    pub fn new(
        first_refresh_token: &str,
        access_lifetime: Duration,
        refresh_lifetime: Duration,
    ) -> Self {
        InProcess {
            family: Arc::new(Mutex::new(Family::new(Some(first_refresh_token), None))),
            born: Arc::new(Mutex::new(vec![(
                first_refresh_token.to_owned(),
                tokio::time::Instant::now(),
            )])),
            access_lifetime,
            refresh_lifetime,
        }
    }

    /// A client of this server that starts from `refresh_token`, as a
    /// `RefreshToken` grant built from configuration would.
    pub fn client(&self, refresh_token: &str) -> InProcessClient {
        InProcessClient {
            server: self.clone(),
            refresh_token: Some(SecretString::from(refresh_token.to_owned())),
        }
    }

    pub fn reuses(&self) -> u64 {
        self.family.lock().unwrap().reuses
    }

    pub fn revoked(&self) -> bool {
        self.family.lock().unwrap().current.is_none()
    }

    pub fn issued(&self) -> u64 {
        self.family.lock().unwrap().issued
    }

    fn refresh(&self, presented: &str) -> Result<(String, String), Error> {
        let expired = self
            .born
            .lock()
            .unwrap()
            .iter()
            .any(|(t, at)| t == presented && at.elapsed() >= self.refresh_lifetime);
        if expired {
            return Err(Error::reauthorization_required("refresh token expired"));
        }
        match self.family.lock().unwrap().refresh(presented) {
            Answer::Issued {
                access, refresh, ..
            } => {
                self.born
                    .lock()
                    .unwrap()
                    .push((refresh.clone(), tokio::time::Instant::now()));
                Ok((access, refresh))
            }
            Answer::InvalidGrant(why) => Err(Error::reauthorization_required(why)),
        }
    }
}

/// The client half of [`InProcess`].
pub struct InProcessClient {
    server: InProcess,
    refresh_token: Option<SecretString>,
}

impl TokenSource for InProcessClient {
    async fn fetch(&mut self) -> Result<Token, Error> {
        let presented = self
            .refresh_token
            .as_ref()
            .ok_or_else(|| Error::reauthorization_required("no refresh token"))?;
        let sent = tokio::time::Instant::now();
        let (access, refresh) = self.server.refresh(presented.expose_secret())?;
        self.refresh_token = Some(SecretString::from(refresh.clone()));
        Token::builder(access)
            .issued_at(sent)
            .expires_in(self.server.access_lifetime)
            .refresh_token(refresh)
            .build()
    }

    fn store_key(&self) -> Option<StoreKey> {
        Some(StoreKey::new("refresh_token", "in-process", "memory:", &[]))
    }

    fn refresh_token(&self) -> Option<&SecretString> {
        self.refresh_token.as_ref()
    }

    fn resume(&mut self, refresh_token: SecretString) {
        self.refresh_token = Some(refresh_token);
    }
}
