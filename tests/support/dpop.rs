//! DPoP (RFC 9449) servers that check every proof as §4.3 and §7 ask: an
//! API (a resource server) and a token endpoint that binds the tokens it
//! issues to the proof's key.
//!
//! Checks, in order: one `DPoP` header; a compact JWS whose header has `typ`
//! `dpop+jwt`, an asymmetric `alg` and a public `jwk` (no private member),
//! and whose signature verifies with that `jwk`; `jti` never seen before;
//! `htm` the request's method; `htu` the request's URI without query and
//! fragment; `iat` within a minute of the server's clock; the server's
//! current nonce when it asks for nonces; on the API, `ath` the hash of the
//! access token and the token's `cnf.jkt` the RFC 7638 thumbprint of `jwk`
//! (computed here, apart from the crate).
//!
//! Tokens issued here carry their binding in the clear:
//! `tok<n>.<base64url({"cnf":{"jkt":...}})>`, so the API checks it without
//! introspection.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri},
    response::{IntoResponse, Response},
    routing::{any, post},
    Router,
};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::digest::{digest, SHA256};
use serde_json::{json, Value};

use super::jws;

/// How far `iat` may be from the server's clock.
pub const IAT_WINDOW: Duration = Duration::from_secs(60);

/// What a server saw and decided.
#[derive(Default)]
struct Ledger {
    jtis: HashSet<String>,
    accepted: usize,
    /// Why each refused proof was refused (`use_dpop_nonce` included).
    refused: Vec<String>,
    nonce: Option<String>,
    nonces_issued: u64,
    /// Every `jti` accepted, in order.
    accepted_jtis: Vec<String>,
    /// Token endpoint only: form of each accepted request.
    forms: Vec<String>,
}

#[derive(Clone)]
struct Shared {
    origin: String,
    ledger: Arc<Mutex<Ledger>>,
    /// The clock the server judges `iat` by: the wall clock, moved along
    /// with tokio's (paused) time as the crate's clock is.
    started: (tokio::time::Instant, SystemTime),
    /// Token endpoint: lifetime of issued tokens.
    lifetime: Duration,
    issued: Arc<AtomicU64>,
}

impl Shared {
    fn now(&self) -> SystemTime {
        self.started.1 + (tokio::time::Instant::now() - self.started.0)
    }

    fn current_nonce(&self) -> Option<String> {
        self.ledger.lock().unwrap().nonce.clone()
    }
}

/// A running DPoP server: an API under `/api/...` or a token endpoint at
/// `/token`.
pub struct DpopServer {
    pub origin: String,
    shared: Shared,
}

impl DpopServer {
    /// An API on loopback: answers `200 ok` to a request whose token and
    /// proof pass every check, `401` with a `DPoP` challenge otherwise.
    pub async fn api() -> Self {
        Self::start(Duration::ZERO, false).await
    }

    /// A token endpoint on loopback issuing DPoP tokens that live `lifetime`.
    pub async fn token_endpoint(lifetime: Duration) -> Self {
        Self::start(lifetime, true).await
    }

    async fn start(lifetime: Duration, token_endpoint: bool) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let shared = Shared {
            origin: origin.clone(),
            ledger: Arc::default(),
            started: (tokio::time::Instant::now(), SystemTime::now()),
            lifetime,
            issued: Arc::default(),
        };
        let app = if token_endpoint {
            Router::new().route("/token", post(token))
        } else {
            Router::new().route("/api/{*rest}", any(api))
        }
        .with_state(shared.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { origin, shared }
    }

    /// Asks for nonces from now on, with a new one: proofs carrying another
    /// (or none) are answered `use_dpop_nonce` with this one.
    pub fn rotate_nonce(&self) -> String {
        let mut ledger = self.shared.ledger.lock().unwrap();
        ledger.nonces_issued += 1;
        let nonce = format!("n-{}-{}", ledger.nonces_issued, rand_part());
        ledger.nonce = Some(nonce.clone());
        nonce
    }

    /// How many requests passed every check.
    pub fn accepted(&self) -> usize {
        self.shared.ledger.lock().unwrap().accepted
    }

    /// Why each refused request was refused, in order.
    pub fn refused(&self) -> Vec<String> {
        self.shared.ledger.lock().unwrap().refused.clone()
    }

    /// The `jti` of every accepted proof.
    pub fn accepted_jtis(&self) -> Vec<String> {
        self.shared.ledger.lock().unwrap().accepted_jtis.clone()
    }

    /// The form bodies of accepted token requests.
    pub fn forms(&self) -> Vec<String> {
        self.shared.ledger.lock().unwrap().forms.clone()
    }

    /// How many tokens the token endpoint issued.
    pub fn issued(&self) -> u64 {
        self.shared.issued.load(Ordering::SeqCst)
    }
}

fn rand_part() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 9]>())
}

/// A token bound to `jkt`, as this token endpoint issues them.
pub fn bound_token(n: u64, jkt: &str) -> String {
    let claims = json!({ "cnf": { "jkt": jkt } }).to_string();
    format!("tok{n}.{}", URL_SAFE_NO_PAD.encode(claims))
}

/// The `cnf.jkt` of a token issued here.
fn token_jkt(token: &str) -> Option<String> {
    let (_, claims) = token.split_once('.')?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
    claims["cnf"]["jkt"].as_str().map(str::to_owned)
}

/// RFC 7638, written apart from the crate's.
pub fn thumbprint(jwk: &Value) -> Option<String> {
    let s = |name: &str| jwk[name].as_str().map(str::to_owned);
    let canonical = match jwk["kty"].as_str()? {
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            s("crv")?,
            s("x")?,
            s("y")?
        ),
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, s("e")?, s("n")?),
        _ => return None,
    };
    Some(URL_SAFE_NO_PAD.encode(digest(&SHA256, canonical.as_bytes())))
}

/// Why a proof is refused: the error code and a reason.
struct Refusal {
    code: &'static str,
    reason: String,
}

fn refuse(code: &'static str, reason: impl Into<String>) -> Refusal {
    Refusal {
        code,
        reason: reason.into(),
    }
}

/// Checks the proof of a request; the proof's `jkt` when it passes.
fn check_proof(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    access_token: Option<&str>,
) -> Result<String, Refusal> {
    let invalid = "invalid_dpop_proof";
    let mut proofs = headers.get_all("dpop").iter();
    let proof = proofs
        .next()
        .ok_or_else(|| refuse(invalid, "no DPoP header"))?;
    if proofs.next().is_some() {
        return Err(refuse(invalid, "more than one DPoP header"));
    }
    let proof = proof.to_str().map_err(|_| refuse(invalid, "not text"))?;
    let header_part = proof.split('.').next().unwrap_or_default();
    let header: Value = URL_SAFE_NO_PAD
        .decode(header_part)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| refuse(invalid, "header is not JSON"))?;
    if header["typ"] != "dpop+jwt" {
        return Err(refuse(invalid, "typ is not dpop+jwt"));
    }
    if !matches!(header["alg"].as_str(), Some("ES256" | "RS256" | "PS256")) {
        return Err(refuse(invalid, "alg not asymmetric"));
    }
    let jwk = header["jwk"].clone();
    if !jwk.is_object() {
        return Err(refuse(invalid, "no jwk"));
    }
    for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
        if jwk.get(private).is_some() {
            return Err(refuse(invalid, "jwk holds a private member"));
        }
    }
    let (_, claims) = jws::verify(proof, &jwk.to_string())
        .map_err(|e| refuse(invalid, format!("signature: {e}")))?;
    let jti = claims["jti"]
        .as_str()
        .filter(|j| !j.is_empty())
        .ok_or_else(|| refuse(invalid, "no jti"))?
        .to_owned();
    if claims["htm"] != method.as_str() {
        return Err(refuse(
            invalid,
            format!("htm {} for {method}", claims["htm"]),
        ));
    }
    let expected_htu = format!("{}{}", shared.origin, uri.path());
    if claims["htu"] != expected_htu.as_str() {
        return Err(refuse(
            invalid,
            format!("htu {} for {expected_htu}", claims["htu"]),
        ));
    }
    let iat = claims["iat"]
        .as_u64()
        .ok_or_else(|| refuse(invalid, "no iat"))?;
    let now = shared.now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    if iat.abs_diff(now) > IAT_WINDOW.as_secs() {
        return Err(refuse(invalid, format!("iat {iat} is {now} ± too much")));
    }
    if let Some(token) = access_token {
        let ath = URL_SAFE_NO_PAD.encode(digest(&SHA256, token.as_bytes()));
        if claims["ath"] != ath.as_str() {
            return Err(refuse(invalid, "ath is not the token's hash"));
        }
    } else if claims.get("ath").is_some() {
        return Err(refuse(invalid, "ath on a token request"));
    }
    let jkt = thumbprint(&jwk).ok_or_else(|| refuse(invalid, "jwk has no thumbprint"))?;
    let mut ledger = shared.ledger.lock().unwrap();
    if let Some(nonce) = &ledger.nonce {
        if claims["nonce"] != nonce.as_str() {
            return Err(refuse("use_dpop_nonce", "nonce is not the current one"));
        }
    }
    // Last: a proof refused for its nonce may be sent again fixed.
    if !ledger.jtis.insert(jti.clone()) {
        return Err(refuse(invalid, "jti replayed"));
    }
    ledger.accepted_jtis.push(jti);
    Ok(jkt)
}

/// Adds the current nonce, if the server asks for nonces.
fn with_nonce(shared: &Shared, mut response: Response) -> Response {
    if let Some(nonce) = shared.current_nonce() {
        response
            .headers_mut()
            .insert("dpop-nonce", HeaderValue::from_str(&nonce).unwrap());
    }
    response
}

async fn api(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("DPoP "))
        .map(str::to_owned);
    let result = match &token {
        None => Err(refuse("invalid_token", "no DPoP authorization")),
        Some(token) => check_proof(&shared, &method, &uri, &headers, Some(token)).and_then(|jkt| {
            match token_jkt(token) {
                Some(bound) if bound == jkt => Ok(()),
                Some(_) => Err(refuse("invalid_token", "token bound to another key")),
                None => Err(refuse("invalid_token", "token not bound")),
            }
        }),
    };
    let response = match result {
        Ok(()) => {
            shared.ledger.lock().unwrap().accepted += 1;
            (StatusCode::OK, "ok").into_response()
        }
        Err(refusal) => {
            shared
                .ledger
                .lock()
                .unwrap()
                .refused
                .push(format!("{}: {}", refusal.code, refusal.reason));
            let challenge = format!(r#"DPoP algs="ES256 RS256 PS256", error="{}""#, refusal.code);
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
                String::new(),
            )
                .into_response()
        }
    };
    with_nonce(&shared, response)
}

async fn token(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = match check_proof(&shared, &method, &uri, &headers, None) {
        Ok(jkt) => {
            let n = shared.issued.fetch_add(1, Ordering::SeqCst) + 1;
            let mut ledger = shared.ledger.lock().unwrap();
            ledger.accepted += 1;
            ledger
                .forms
                .push(String::from_utf8_lossy(&body).into_owned());
            let answer = json!({
                "access_token": bound_token(n, &jkt),
                "token_type": "DPoP",
                "expires_in": shared.lifetime.as_secs(),
            });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                answer.to_string(),
            )
                .into_response()
        }
        Err(refusal) => {
            shared
                .ledger
                .lock()
                .unwrap()
                .refused
                .push(format!("{}: {}", refusal.code, refusal.reason));
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "error": refusal.code }).to_string(),
            )
                .into_response()
        }
    };
    with_nonce(&shared, response)
}
