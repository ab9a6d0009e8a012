//! The one-time authorization of a native app (RFC 8252), then unattended
//! running from the token store: the Orange Logic flow.
//!
//! 1. Listen on a loopback port for the redirect (`http://127.0.0.1:<port>/callback`).
//! 2. Print the authorization URL (PKCE S256 and `state` generated).
//! 3. Receive the callback, check its `state`, exchange the code, and save
//!    the tokens to the file store before anything uses them.
//! 4. Run from the store, as every later start of the service does: no
//!    code, no second configuration, the stored (and rotated) refresh token.
//!
//! ```sh
//! AUTHORIZE_URL=https://example.orangelogic.com/oauth2/authorize \
//! TOKEN_URL=https://example.orangelogic.com/oauth2/token \
//! CLIENT_ID=my-app CLIENT_SECRET=s3cret REFRESH_TOKEN_PARAM=code \
//! SCOPE="offline_access" STORE=./orange-logic.json \
//! cargo run --example authorize
//! ```
//!
//! `CLIENT_SECRET` is optional (public clients), as are `SCOPE`, `PROMPT`
//! and `REFRESH_TOKEN_PARAM`. `tests/interop.rs` runs this file against the
//! interop server.

use std::{error::Error as StdError, path::PathBuf};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};
use tower_oauth2::{FileStore, OAuthClient, Token, TokenCache};

type BoxError = Box<dyn StdError + Send + Sync>;

/// What the example needs to know about the server and the client.
pub struct Settings {
    /// The authorization endpoint.
    pub authorize_url: String,
    /// The token endpoint.
    pub token_url: String,
    /// The client identifier.
    pub client_id: String,
    /// The client secret; none for a public client.
    pub client_secret: Option<String>,
    /// Scopes to ask for, space-separated.
    pub scope: Option<String>,
    /// A `prompt` for the authorization request (`consent`, say).
    pub prompt: Option<String>,
    /// `code` for Orange Logic; `refresh_token` by default.
    pub refresh_token_param: Option<String>,
    /// The token store's file.
    pub store: PathBuf,
}

impl Settings {
    fn from_env() -> Result<Self, BoxError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let required = |name: &str| var(name).ok_or_else(|| format!("{name} is required"));
        Ok(Settings {
            authorize_url: required("AUTHORIZE_URL")?,
            token_url: required("TOKEN_URL")?,
            client_id: required("CLIENT_ID")?,
            client_secret: var("CLIENT_SECRET"),
            scope: var("SCOPE"),
            prompt: var("PROMPT"),
            refresh_token_param: var("REFRESH_TOKEN_PARAM"),
            store: required("STORE")?.into(),
        })
    }
}

/// The client, configured once for the code exchange and every refresh.
/// (Scopes go in the authorization request; leaving them off the client
/// keeps one store key for the exchange and the refreshes.)
fn client(settings: &Settings) -> Result<OAuthClient, BoxError> {
    let mut client = OAuthClient::builder()
        .token_url(&settings.token_url)
        .client_id(&settings.client_id);
    if let Some(secret) = &settings.client_secret {
        client = client.client_secret(secret);
    }
    if let Some(param) = &settings.refresh_token_param {
        client = client.refresh_token_param(param);
    }
    Ok(client.build()?)
}

/// Steps 1 to 3. `open` shows the person the URL (prints it, here).
pub async fn authorize_once(settings: &Settings, open: impl FnOnce(&str)) -> Result<(), BoxError> {
    let client = client(settings)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let redirect_uri = format!(
        "http://127.0.0.1:{}/callback",
        listener.local_addr()?.port()
    );
    let mut request = client
        .authorization_request(&settings.authorize_url)
        .redirect_uri(&redirect_uri);
    if let Some(scope) = &settings.scope {
        request = request.scope(scope);
    }
    if let Some(prompt) = &settings.prompt {
        request = request.param("prompt", prompt);
    }
    let request = request.build()?;
    open(request.url().as_str());

    let target = receive_callback(&listener).await?;
    let code = request.callback(&target)?;
    let cache = TokenCache::builder(client.authorization_code(&request, code))
        .store(FileStore::new(&settings.store))
        .build();
    // The exchange; its tokens are in the file before this returns them.
    cache.token().await?;
    cache.shutdown().await?;
    println!(
        "authorized; token state saved to {}",
        settings.store.display()
    );
    Ok(())
}

/// Step 4: what every later start does.
pub async fn run_from_store(settings: &Settings) -> Result<Token, BoxError> {
    // No refresh token configured: it comes from the store.
    let cache = TokenCache::builder(client(settings)?.refresh_token(None))
        .store(FileStore::new(&settings.store))
        .build();
    let token = cache.token().await?;
    println!(
        "running from the store: a token valid for {:?} more; {} token request(s) at start",
        token
            .expires_at()
            .map(|at| at - tokio::time::Instant::now()),
        cache.stats().token_requests
    );
    // ... the service sends its requests through BearerAuthLayer::new(cache.clone()) ...
    cache.shutdown().await?;
    Ok(token)
}

/// Accepts connections until one asks for `/callback`; answers it with a
/// short page and returns its path and query.
async fn receive_callback(listener: &TcpListener) -> Result<String, BoxError> {
    loop {
        let (mut socket, _) = listener.accept().await?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(&head);
        let target = head
            .lines()
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .unwrap_or("")
            .to_owned();
        let found = target.starts_with("/callback");
        let (status, body) = if found {
            ("200 OK", "Authorized. You can close this window.")
        } else {
            ("404 Not Found", "Not found.")
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        socket.write_all(response.as_bytes()).await?;
        socket.shutdown().await.ok();
        if found {
            return Ok(target);
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let settings = Settings::from_env()?;
    // The cache says whether a person must authorize: nothing stored yet,
    // or the stored grant was refused.
    let stored = TokenCache::builder(client(&settings)?.refresh_token(None))
        .store(FileStore::new(&settings.store))
        .build();
    let required = stored.authorization_required().await?;
    stored.shutdown().await?;
    if required {
        authorize_once(&settings, |url| {
            println!("Open this URL in a browser to authorize the application:\n\n  {url}\n");
        })
        .await?;
    }
    run_from_store(&settings).await?;
    Ok(())
}
