//! A command-line tool signing in with the device authorization grant
//! (RFC 8628): it prints the code and where to enter it, shows a progress
//! line while the person approves on another device, then keeps the tokens
//! in a file store so that the next run starts without asking again.
//!
//! ```sh
//! ISSUER=https://idp.example CLIENT_ID=my-cli SCOPE="openid offline_access" \
//! STORE=./device-tokens.json cargo run --example device
//! ```
//!
//! `ISSUER` is read by discovery (its metadata names the device
//! authorization endpoint). `CLIENT_SECRET` is optional (public clients), as
//! is `SCOPE`; `STORE` defaults to `./device-tokens.json`.

use std::{error::Error as StdError, io::Write as _, time::Duration};

use tower_oauth2::{discovery::Discovery, FileStore, OAuthClient, TokenCache};

type BoxError = Box<dyn StdError + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let issuer = var("ISSUER").ok_or("ISSUER is required")?;
    let client_id = var("CLIENT_ID").ok_or("CLIENT_ID is required")?;
    let store = FileStore::new(var("STORE").unwrap_or_else(|| "device-tokens.json".into()));

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
    println!();
    match code.verification_uri_complete() {
        Some(complete) => println!("  Open {complete}"),
        None => println!("  Open {}", code.verification_uri()),
    }
    println!("  and check that it shows the code  {}", code.user_code());
    println!();

    let expires_at = code.expires_at();
    let wait = code.wait();
    tokio::pin!(wait);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let grant = loop {
        tokio::select! {
            result = &mut wait => break result,
            _ = tick.tick() => {
                let left = expires_at.saturating_duration_since(tokio::time::Instant::now());
                print!("\r  waiting for approval ({:>3} s left) ", left.as_secs());
                std::io::stdout().flush().ok();
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
