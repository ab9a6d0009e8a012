//! Lists a few members of an OfficeRnD organization, with a client
//! credentials token from OfficeRnD's identity server.
//!
//! ```text
//! OFFICERND_CLIENT_ID=... OFFICERND_CLIENT_SECRET=... OFFICERND_ORG=your-org-slug \
//!     cargo run --example officernd
//! ```
//!
//! `OFFICERND_SCOPES` (space-separated) defaults to `officernd.api.read`.
//! Without the other variables the example says what to set and exits 0.
//!
//! The client is `reqwest` (for TLS: hyper-util has none of its own):
//! `reqwest::Client` is a tower `Service<reqwest::Request>`, wrapped in
//! `BearerAuthLayer` like any other service, with `Replay` outside it.

use std::{env, process::ExitCode};

use tower::{BoxError, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    AuthMethod, BearerAuthLayer, ClientCredentials, OAuthErrorCode, Replay, TokenCache,
};

const TOKEN_URL: &str = "https://identity.officernd.com/oauth/token";
const API_ORIGIN: &str = "https://app.officernd.com";

#[tokio::main]
async fn main() -> Result<ExitCode, BoxError> {
    let (Ok(client_id), Ok(client_secret), Ok(org)) = (
        env::var("OFFICERND_CLIENT_ID"),
        env::var("OFFICERND_CLIENT_SECRET"),
        env::var("OFFICERND_ORG"),
    ) else {
        eprintln!(
            "Set OFFICERND_CLIENT_ID, OFFICERND_CLIENT_SECRET and OFFICERND_ORG (the organization \
             slug), and optionally OFFICERND_SCOPES (default: officernd.api.read), then run again."
        );
        return Ok(ExitCode::SUCCESS);
    };
    let scopes = env::var("OFFICERND_SCOPES").unwrap_or_else(|_| "officernd.api.read".into());

    // OfficeRnD documents client_secret_post: id and secret in the form body.
    let grant = ClientCredentials::builder()
        .token_url(TOKEN_URL)
        .client_id(client_id)
        .client_secret(client_secret)
        .auth_method(AuthMethod::ClientSecretPost)
        .scope(scopes)
        .build()?;
    let cache = TokenCache::new(grant);

    // Not needed (the first request would fetch the token), but a wrong
    // secret or a scope the application was not granted shows up here as a
    // typed error rather than as a failed API call.
    match cache.token().await {
        Ok(token) => println!(
            "token: scopes {:?}, expires in {:?}",
            token.scopes(),
            token.expires_in()
        ),
        Err(error) => {
            eprintln!("no token: {error}");
            match error.oauth_code() {
                Some(OAuthErrorCode::InvalidScope) => {
                    eprintln!("hint: grant the scopes in OfficeRnD, or set OFFICERND_SCOPES")
                }
                Some(OAuthErrorCode::InvalidClient) => {
                    eprintln!("hint: check OFFICERND_CLIENT_ID and OFFICERND_CLIENT_SECRET")
                }
                _ => {}
            }
            return Ok(ExitCode::FAILURE);
        }
    }

    // The token goes to the API's origin only, whatever URL a request names;
    // a rejected token is replaced and the request sent once more.
    let http = reqwest::Client::new();
    let api = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()).allow_origin(API_ORIGIN)?)
        .service(http.clone());

    // The slug goes into the path percent-encoded, whatever it holds.
    let mut url = url::Url::parse(API_ORIGIN)?;
    url.path_segments_mut()
        .map_err(|()| "not a base URL")?
        .extend(["api", "v2", "organizations", &org, "members"]);
    url.set_query(Some("$limit=5"));

    let request = http.get(url.as_str()).build()?;
    let response = api.oneshot(request).await?;
    let status = response.status();
    let body = response.bytes().await?;
    println!("GET {url} -> {status}");
    println!("{}", String::from_utf8_lossy(&body[..body.len().min(600)]));
    if body.len() > 600 {
        println!("... ({} bytes in all)", body.len());
    }
    // Stop the cache cleanly: a refresh under way finishes first.
    cache.shutdown().await?;
    Ok(if status.is_success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
