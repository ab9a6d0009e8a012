//! Every Rust snippet of README.md compiles: each one is copied below,
//! verbatim, into a function with whatever it assumes (a `cache`, a
//! `grant`, an inner service), and `every_readme_snippet_is_compiled_here`
//! fails when a README block is not found here, line for line. Edit a
//! snippet in both places.
//!
//! The functions are compiled, not run: they would call real providers.
//! What the snippets do is tested elsewhere (the OfficeRnD one, against a
//! server that takes the secret only in the form body, in
//! `endpoint::the_readme_snippet_gets_a_token_from_an_officernd_like_server`).
#![allow(dead_code, unused_variables, clippy::unused_async)]

use std::{convert::Infallible, error::Error, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::signal::unix::SignalKind;
use tonic::transport::Channel;
use tower::{Layer, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    layer::Replay, BearerAuthLayer, BearerAuthMiddleware, ClientCredentials, JwsAlgorithm,
    OAuthClient, PrivateKey, RedisStore, TokenCache,
};

type Result<T = ()> = std::result::Result<T, Box<dyn Error + Send + Sync>>;

fn inner_service() -> impl tower::Service<
    http::Request<String>,
    Response = http::Response<String>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(|_: http::Request<String>| async {
        Ok::<_, Infallible>(http::Response::new(String::new()))
    })
}

#[rustfmt::skip] // the README's text, verbatim
async fn use_() -> Result {
    let inner = inner_service();
    // README: Use
    use tower::ServiceBuilder;
    use tower_oauth2::{AuthMethod, BearerAuthLayer, ClientCredentials, TokenCache};

    let grant = ClientCredentials::builder()
        .token_url("https://identity.officernd.com/oauth/token")
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretPost) // OfficeRnD takes the secret in the form body
        .scope("officernd.api.read officernd.api.write")
        .build()?;                            // Result<ClientCredentials, tower_oauth2::Error>
    let cache = TokenCache::new(grant);       // Clone; inside a Tokio runtime
    let client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(inner);                      // any Service<http::Request<B>> + Clone
    let token = cache.token().await?;         // the current valid token (fetches if needed)
    // end
    Ok(())
}

async fn kms_sign(client_id: String, audience: String) -> std::io::Result<String> {
    Ok(format!("{client_id}{audience}"))
}

#[rustfmt::skip] // the README's text, verbatim
async fn private_key_jwt(url: &str) -> Result {
    // README: private_key_jwt
    let key = PrivateKey::from_pem(JwsAlgorithm::Es256, std::fs::read("key.pem")?)?.with_kid("k1");
    println!("register: {}", key.public_jwk());
    let grant = ClientCredentials::builder().token_url(url).client_id("svc")
        .private_key_jwt(key)                                   // or:
    //  .client_assertion(|| tokio::fs::read_to_string("/var/run/secrets/tokens/oauth"))
    //  .client_assertion_with(|ctx| kms_sign(ctx.client_id().to_owned(), ctx.audience().to_owned()))
        .build()?;
    // end
    let by_file = ClientCredentials::builder()
        .token_url(url)
        .client_id("svc")
        .client_assertion(|| tokio::fs::read_to_string("/var/run/secrets/tokens/oauth"))
        .build()?;
    let by_kms = ClientCredentials::builder()
        .token_url(url)
        .client_id("svc")
        .client_assertion_with(|ctx| kms_sign(ctx.client_id().to_owned(), ctx.audience().to_owned()))
        .build()?;
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
fn more_grants(client: OAuthClient, callers_token: String, pem: Vec<u8>) -> Result {
    // README: more grants
    use tower_oauth2::{secrecy::SecretString, token_types, CacheMap, JwtBearer, RefreshPolicy};

    // On behalf of a caller: one cache per caller's token, at most 100,000 kept.
    // A caller gone quiet costs no task, no timer and no token request.
    let callers = CacheMap::new(100_000);
    let cache = callers.get_or_insert_with(&CacheMap::digest(&callers_token), || {
        let grant = client
            .token_exchange(SecretString::from(callers_token.clone()), token_types::ACCESS_TOKEN)
            .audience("https://orders.example.com");
        TokenCache::with_policy(grant, RefreshPolicy::new().refresh_unused(false))
    });

    // A signed JWT as the grant.
    let grant = JwtBearer::builder()
        .token_url("https://oauth2.googleapis.com/token")
        .client_id("robot@project.iam.gserviceaccount.com")
        .signing_key(PrivateKey::from_pem(JwsAlgorithm::Rs256, pem)?)
        .claim("scope", "https://www.googleapis.com/auth/cloud-platform")
        .build()?;
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn device(client: OAuthClient) -> Result {
    use tower_oauth2::FileStore;
    // README: device
    let code = client.device_authorization().start().await?;
    println!("open {} and enter {}", code.verification_uri(), code.user_code());
    let grant = code.wait().await?;                // polls until approved, denied or expired
    let cache = TokenCache::builder(grant).store(FileStore::new("tokens.json")).build();
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn par_and_revocation(client: OAuthClient, refresh_token: tower_oauth2::secrecy::SecretString) -> Result {
    use tower_oauth2::TokenTypeHint;
    // README: PAR and revocation
    let request = client
        .authorization_request("https://auth.example.com/authorize")
        .redirect_uri("http://127.0.0.1:8123/callback")
        .authorization_details(&serde_json::json!([{"type": "payment_initiation", "amount": "10.00"}]))
        .push()                                  // PAR: only client_id and request_uri in the URL
        .await?;
    println!("open {}", request.url());
    // On logout or decommission:
    client.revoke(&refresh_token, Some(TokenTypeHint::RefreshToken)).await?;
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
fn plain_http() -> Result {
    // README: plain http
    let grant = ClientCredentials::builder()
        .token_url("http://keycloak:8080/realms/ci/protocol/openid-connect/token")
        .client_id("ci-client")
        .client_secret("ci-secret")
        .danger_allow_http_hosts(["keycloak"])
        .build()?;
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
fn own_transport(connector: HttpConnector) -> Result {
    // README: your own HTTP client
    let hyper: Client<_, String> =
        Client::builder(TokioExecutor::new()).build(connector); // your connector: TLS, proxy, DNS
    let grant = ClientCredentials::builder()
        .token_url("https://login.example.com/oauth2/token")
        .client_id("my-app")
        .client_secret("s3cret")
        .transport(hyper)                       // any Service<http::Request<B>>, B: From<String>
        .build()?;
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn discovery() -> Result {
    // README: discovery
    use tower_oauth2::discovery::Discovery;

    let metadata = Discovery::default().metadata("https://login.example.com/tenant").await?;
    let grant = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-app")
        .client_secret("s3cret")
        .build()?;
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn persistence(callback_url: String) -> Result {
    // README: persistence
    use tower_oauth2::{FileStore, OAuthClient, TokenCache};

    let client = OAuthClient::builder()                  // configured once
        .token_url("https://example.orangelogic.com/oauth2/token")
        .client_id("my-app")
        .client_secret("s3cret")
        .refresh_token_param("code")                     // Orange Logic's name for it
        .build()?;
    let store = FileStore::new("/var/lib/my-app/orange-logic.json");

    // Every start, unattended: the refresh token comes from the store.
    let cache = TokenCache::builder(client.refresh_token(None)).store(store.clone()).build();
    if cache.authorization_required().await? {          // nothing stored yet, or the grant was refused
        // Once, with a person (examples/authorize.rs does all of it):
        let request = client
            .authorization_request("https://example.orangelogic.com/oauth2/authorize")
            .redirect_uri("http://127.0.0.1:8123/callback")  // a loopback listener
            .build()?;                                       // PKCE S256 and state generated
        println!("open {}", request.url());
        let code = request.callback(&callback_url)?;         // checks state
        let grant = client.authorization_code(&request, code); // a new code wins over a stored, older grant
        let first = TokenCache::builder(grant).store(store.clone()).build();
        first.token().await?;                                // exchanged, saved, then handed out
        first.shutdown().await?;
    }
    // ... serve through BearerAuthLayer::new(cache.clone()) ...

    // On SIGTERM (Kubernetes, systemd), before main returns: finish a refresh
    // under way and its save; say what could not be saved.
    tokio::signal::unix::signal(SignalKind::terminate())?.recv().await;
    let stop = tokio::time::timeout(Duration::from_secs(20), async {
        while let Err(error) = cache.shutdown().await {   // each call retries the save at once
            eprintln!("token state not saved yet: {error}");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    if stop.await.is_err() {
        eprintln!("exiting with the newest token state unsaved");
    }
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
fn fleet(client: OAuthClient, key: [u8; 32]) -> Result {
    // README: fleet
    let cache = TokenCache::builder(client.refresh_token(None))
        .store(RedisStore::new("redis://10.0.0.5:6379/")?.encryption_key(key)) // was FileStore::new(..)
        .build();
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn stack(cache: TokenCache, http: reqwest::Client, url: &str) -> Result {
    // README: the recommended stack
    // hyper-util legacy client (and an axum handler holding it in its state)
    let client = ServiceBuilder::new()
        .retry(Replay::new())                    // replays GETs; .copy_body(CloneBody) for Full<Bytes>
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // tonic: a gRPC channel (its bodies are streams: a rejected call fails once,
    // with UNAUTHENTICATED, and the next call carries a new token)
    let channel = Channel::from_static("https://pubsub.googleapis.com").connect().await?;
    let grpc = tonic::client::Grpc::new(BearerAuthLayer::new(cache.clone()).layer(channel));
    // (generated clients: `MyClient::new(BearerAuthLayer::new(cache).layer(channel))`;
    //  with .allow_origin(o), add .relative_uri_origin(o): tonic sends paths only)

    // reqwest::Client is a tower service: build requests as usual, up to build()
    let client = ServiceBuilder::new()
        .retry(Replay::new())                    // copies with reqwest's try_clone
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(reqwest::Client::new());
    let response = client.oneshot(http.get(url).build()?).await?;

    // reqwest-middleware (cargo feature `reqwest-middleware`)
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::new(cache).allow_origin("https://api.example.com")?.replay(true))
        .build();
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn dpop() -> Result {
    // README: DPoP
    use tower_oauth2::{BearerAuthMiddleware, DpopKey, JwsAlgorithm, PrivateKey};

    // One key for every replica (a token is bound to one key): the same PEM
    // everywhere, or DpopKey::generate() for a single process.
    let pem = std::fs::read("dpop-key.pem")?;
    let key = DpopKey::from_private_key(PrivateKey::from_pem(JwsAlgorithm::Es256, pem)?)?;
    let grant = ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth2/token")
        .client_id("my-service")
        .client_secret("s3cret")
        .dpop(key)                               // a proof on every token request
        .build()?;
    let cache = TokenCache::new(grant);

    // hyper-util (and axum): Replay sends a `use_dpop_nonce` answer once more, with the nonce
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>());

    // reqwest::Client
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(reqwest::Client::new());

    // tonic: a proof names the request's URL, and a channel sends paths only
    let channel = Channel::from_static("https://grpc.example.com").connect().await?;
    let layer = BearerAuthLayer::new(cache.clone()).relative_uri_origin("https://grpc.example.com")?;
    let grpc = tonic::client::Grpc::new(layer.layer(channel));

    // reqwest-middleware
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::new(cache).replay(true))
        .build();
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
async fn mtls(hyper_presenting_the_certificate: Client<HttpConnector, String>) -> Result {
    // README: mTLS
    use tower_oauth2::{discovery::Discovery, AuthMethod, ClientIdentity};

    let (cert, key) = (std::fs::read("client.pem")?, std::fs::read("client-key.pem")?);
    let identity = ClientIdentity::from_pem(&cert, &key)?;  // chain (leaf first), key
    let metadata = Discovery::default().metadata("https://auth.example.com").await?;
    let grant = ClientCredentials::builder()
        .metadata(&metadata)                    // its mtls_endpoint_aliases, when it names them
        .client_id("my-service")                // no secret: tls_client_auth
        .client_certificate(identity.clone())   // presented by the crate's own reqwest client
        .build()?;
    let cache = TokenCache::new(grant);

    // The API requests present the same certificate.
    let api = reqwest::Client::builder().identity(identity.to_reqwest()?).build()?;
    let client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(api);

    // A transport of your own presents the certificate itself (a hyper-util
    // client whose rustls config has it): the grant only needs to know which.
    let grant = ClientCredentials::builder()
        .token_url("https://mtls.auth.example.com/oauth2/token")
        .client_id("my-service")
        .auth_method(AuthMethod::SelfSignedTlsClientAuth)
        .client_certificate(ClientIdentity::from_certificate_pem(&cert)?)
        .transport(hyper_presenting_the_certificate)
        .build()?;
    // end
    Ok(())
}

#[rustfmt::skip] // the README's text, verbatim
fn metrics(grant: ClientCredentials) -> Result {
    // README: metrics
    // metrics_exporter_prometheus::PrometheusBuilder::new().install()?; // any exporter
    let cache = TokenCache::builder(grant).metrics_name("officernd").build();
    // end
    Ok(())
}

/// The ```rust blocks of a Markdown text, each as its lines.
fn rust_blocks(markdown: &str) -> Vec<Vec<&str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in markdown.lines() {
        match &mut current {
            None if line.starts_with("```rust") => current = Some(Vec::new()),
            Some(_) if line.starts_with("```") => blocks.extend(current.take()),
            Some(block) => block.push(line),
            None => {}
        }
    }
    blocks
}

/// The snippets of this file: the lines between `// README: ...` and
/// `// end`, without their common indentation.
fn snippets(source: &str) -> Vec<Vec<String>> {
    let mut snippets = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in source.lines() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed.starts_with("// README: ") => current = Some(Vec::new()),
            Some(_) if trimmed == "// end" => snippets.extend(current.take()),
            Some(lines) => lines.push(line),
            None => {}
        }
    }
    snippets
        .into_iter()
        .map(|lines| {
            let indent = lines
                .iter()
                .filter(|l| !l.trim().is_empty())
                .map(|l| l.len() - l.trim_start().len())
                .min()
                .unwrap_or(0);
            lines
                .iter()
                .map(|l| l.get(indent..).unwrap_or("").to_owned())
                .collect()
        })
        .collect()
}

#[test]
fn every_readme_snippet_is_compiled_here() {
    let readme = include_str!("../README.md");
    let here = snippets(include_str!("readme.rs"));
    let blocks = rust_blocks(readme);
    assert!(blocks.len() >= 9, "found {} blocks", blocks.len());
    for block in &blocks {
        let found = here.iter().any(|snippet| {
            snippet.len() == block.len() && snippet.iter().zip(block).all(|(a, b)| a == b)
        });
        assert!(
            found,
            "this README block is not compiled in tests/readme.rs:\n{}",
            block.join("\n")
        );
    }
    assert_eq!(
        here.len(),
        blocks.len(),
        "a snippet here is no longer in the README"
    );
    assert!(
        !readme.contains("```rust,ignore") && !readme.contains("```ignore"),
        "README snippets are compiled here, so none is marked ignore"
    );
}
