//! A command-line tool signing in with the device authorization grant
//! (RFC 8628): it shows where to sign in, as a link and as a QR code for a
//! phone, shows a progress line while the person approves on the other
//! device, then keeps the tokens in a file store so that the next run starts
//! without asking again.
//!
//! ```sh
//! cargo run --example device        # against a stand-in server on loopback
//!
//! ISSUER=https://idp.example CLIENT_ID=my-cli SCOPE="openid offline_access" \
//! STORE=./device-tokens.json cargo run --example device
//! ```
//!
//! Without `ISSUER`, the example starts a stand-in authorization server on
//! loopback (discovery, a device authorization endpoint and a token endpoint)
//! whose "person" approves a few seconds after the code is shown, and keeps
//! the tokens in a temporary directory. With `ISSUER`, discovery reads the
//! real server's metadata (it names the device authorization endpoint);
//! `CLIENT_ID` is then required, `CLIENT_SECRET` is optional (public
//! clients), as is `SCOPE`; `STORE` defaults to `./device-tokens.json`.

use std::{
    collections::HashMap,
    error::Error as StdError,
    io::{IsTerminal as _, Write as _},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{extract::State, http::StatusCode, routing, Form, Json, Router};
use qrcode::{render::unicode::Dense1x2, QrCode};
use serde_json::{json, Value};
use tokio::time::Instant;
use tower_oauth2::{discovery::Discovery, FileStore, OAuthClient, TokenCache};

type BoxError = Box<dyn StdError + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    // Kept until the end of `main`: the stand-in's store lives in it.
    let mut scratch = None;
    let (issuer, client_id, store) = match var("ISSUER") {
        Some(issuer) => {
            let client_id = var("CLIENT_ID").ok_or("CLIENT_ID is required with ISSUER")?;
            let store = var("STORE").unwrap_or_else(|| "device-tokens.json".into());
            (issuer, client_id, FileStore::new(store))
        }
        None => {
            let issuer = stand_in::start().await?;
            println!("No ISSUER given: using a stand-in authorization server at {issuer}");
            let dir = scratch.insert(tempfile::tempdir()?);
            let store = FileStore::new(dir.path().join("device-tokens.json"));
            (issuer, "device-example".into(), store)
        }
    };

    let metadata = Discovery::builder().build().metadata(&issuer).await?;
    let mut client = OAuthClient::builder()
        .metadata(&metadata)
        .client_id(client_id);
    if let Some(secret) = var("CLIENT_SECRET") {
        client = client.client_secret(secret);
    }
    if let Some(scope) = var("SCOPE") {
        client = client.scope(scope);
    }
    let client = client.build()?;

    // A refresh token saved by an earlier run: no person needed.
    let cache = TokenCache::builder(client.refresh_token(None))
        .store(store.clone())
        .build();
    if cache.token().await.is_ok() {
        println!("signed in (from the token store)");
        return Ok(cache.shutdown().await?);
    }
    cache.shutdown().await.ok();

    let code = client.device_authorization().start().await?;
    // The complete URI carries the user code: scanning it is all a phone needs.
    let link = code
        .verification_uri_complete()
        .unwrap_or(code.verification_uri());
    println!();
    println!("  Scan this with a phone, or open {link}");
    match qr(link) {
        Some(qr) => println!("{qr}"),
        None => println!("  (the link is too long for a QR code)"),
    }
    println!("  and check that it shows the code  {}", code.user_code());
    println!();

    let expires_at = code.expires_at();
    let wait = code.wait();
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let spinner = ['|', '/', '-', '\\'];
    let mut ticks = 0;
    let grant = loop {
        tokio::select! {
            result = &mut wait => break result,
            _ = tick.tick() => {
                let left = expires_at.saturating_duration_since(Instant::now());
                print!(
                    "\r  {} waiting for approval ({:>3} s left) ",
                    spinner[ticks % spinner.len()],
                    left.as_secs(),
                );
                std::io::stdout().flush().ok();
                ticks += 1;
            }
        }
    };
    println!();
    let grant = grant?;

    let cache = TokenCache::builder(grant).store(store).build();
    let token = cache.token().await?;
    println!(
        "signed in; the access token expires in {:?}",
        token.expires_in()
    );
    cache.shutdown().await?;
    Ok(())
}

/// `text` as a QR code drawn with Unicode half blocks, two rows of modules
/// per line of text, with the quiet zone the standard asks for around it.
/// On a terminal, dark modules are drawn black on a white background
/// whatever the terminal's colours (phones read a light-on-dark code
/// poorly); into a file or a pipe, plain characters only. `None` if the text
/// does not fit in a QR code.
fn qr(text: &str) -> Option<String> {
    let code = QrCode::new(text.as_bytes()).ok()?;
    let image = code.render::<Dense1x2>().quiet_zone(true).build();
    if !std::io::stdout().is_terminal() {
        return Some(image);
    }
    // ANSI: black on white for each line, then back to the defaults.
    let lines: Vec<String> = image
        .lines()
        .map(|line| format!("  \x1b[30;47m{line}\x1b[0m"))
        .collect();
    Some(lines.join("\n"))
}

/// A stand-in authorization server on loopback, for a run without `ISSUER`:
/// what a real one does in the device flow, with a "person" who approves
/// [`APPROVE_AFTER`] after the code was issued.
mod stand_in {
    use super::*;

    /// How long the stand-in's person takes to approve.
    const APPROVE_AFTER: Duration = Duration::from_secs(4);
    const USER_CODE: &str = "WDJB-MJHT";
    const DEVICE_CODE: &str = "stand-in-device-code";

    #[derive(Clone)]
    struct Server {
        issuer: String,
        /// When the person approves: set when the code is issued.
        approves_at: Arc<Mutex<Option<Instant>>>,
    }

    /// Serves the stand-in on a fresh loopback port, in the background, and
    /// returns its issuer URL.
    pub(super) async fn start() -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let server = Server {
            issuer: issuer.clone(),
            approves_at: Arc::default(),
        };
        let app = Router::new()
            .route("/.well-known/openid-configuration", routing::get(metadata))
            .route("/device_authorization", routing::post(device_authorization))
            .route("/token", routing::post(token))
            .with_state(server);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(issuer)
    }

    async fn metadata(State(server): State<Server>) -> Json<Value> {
        let issuer = &server.issuer;
        Json(json!({
            "issuer": issuer,
            "token_endpoint": format!("{issuer}/token"),
            "device_authorization_endpoint": format!("{issuer}/device_authorization"),
            "token_endpoint_auth_methods_supported": ["none"],
            "grant_types_supported": [
                "urn:ietf:params:oauth:grant-type:device_code",
                "refresh_token"
            ],
        }))
    }

    async fn device_authorization(State(server): State<Server>) -> Json<Value> {
        *server.approves_at.lock().unwrap() = Some(Instant::now() + APPROVE_AFTER);
        let verification_uri = format!("{}/device", server.issuer);
        Json(json!({
            "device_code": DEVICE_CODE,
            "user_code": USER_CODE,
            "verification_uri": verification_uri,
            "verification_uri_complete": format!("{verification_uri}?user_code={USER_CODE}"),
            "expires_in": 120,
            "interval": 1,
        }))
    }

    async fn token(
        State(server): State<Server>,
        Form(form): Form<HashMap<String, String>>,
    ) -> (StatusCode, Json<Value>) {
        let error = |code: &str| (StatusCode::BAD_REQUEST, Json(json!({ "error": code })));
        match form.get("grant_type").map(String::as_str) {
            Some("urn:ietf:params:oauth:grant-type:device_code") => {
                if form.get("device_code").map(String::as_str) != Some(DEVICE_CODE) {
                    return error("invalid_grant");
                }
                match *server.approves_at.lock().unwrap() {
                    Some(at) if Instant::now() >= at => {}
                    Some(_) => return error("authorization_pending"),
                    None => return error("invalid_grant"),
                }
            }
            Some("refresh_token") => {}
            _ => return error("unsupported_grant_type"),
        }
        let serial = rand::random::<u64>();
        (
            StatusCode::OK,
            Json(json!({
                "access_token": format!("stand-in-access-{serial:016x}"),
                "token_type": "Bearer",
                "expires_in": 3600,
                "refresh_token": format!("stand-in-refresh-{serial:016x}"),
            })),
        )
    }
}
