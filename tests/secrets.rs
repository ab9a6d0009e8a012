//! CASES 6: a sentinel secret, access token and refresh token never appear in
//! any Debug, Display, error chain or tracing event the crate produces; nor
//! does a private key or a client assertion.

mod support;

use support::logs::Captured;
use support::recorder::{Recorder, Reply};
use tower::{service_fn, Layer, ServiceExt};
use tower_oauth2::{
    AuthorizationCode, BearerAuthLayer, ClientCredentials, RefreshPolicy, RefreshToken, TokenCache,
    TokenSource,
};

const SECRET: &str = "SENTINEL-SECRET-7f3a";
const ACCESS: &str = "SENTINEL-ACCESS-91bc";
const REFRESH: &str = "SENTINEL-REFRESH-d2e4";
const CODE: &str = "SENTINEL-CODE-55aa";

fn assert_clean(what: &str, text: &str) {
    for sentinel in [SECRET, ACCESS, REFRESH, CODE] {
        assert!(!text.contains(sentinel), "{what} shows {sentinel}: {text}");
    }
}

/// The error, its Display, its Debug, and every source in the chain.
fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error} {error:?}");
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(&format!(" | {s} {s:?}"));
        source = s.source();
    }
    text
}

/// Every `tracing` event of this thread, at every level, until the guard drops.
fn capture_traces() -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    (logs.clone(), tracing::subscriber::set_default(subscriber))
}

fn token_body() -> Reply {
    Reply::json(
        200,
        &format!(
            r#"{{"access_token":"{ACCESS}","token_type":"Bearer","expires_in":3600,"refresh_token":"{REFRESH}"}}"#
        ),
    )
}

#[tokio::test]
async fn no_sentinel_in_debug_display_errors_or_traces() {
    let (logs, _guard) = capture_traces();

    let server = Recorder::start().await;
    let url = server.url("/token");
    // Success, then every kind of failure, with sentinels in the bodies.
    server.reply([
        token_body(),
        token_body(),
        Reply::json(
            401,
            &format!(r#"{{"error":"invalid_client","leak":"{SECRET}{ACCESS}"}}"#),
        ),
        Reply::Raw {
            status: 502,
            headers: vec![],
            body: format!("<html>{ACCESS} {REFRESH}</html>").into(),
        },
        Reply::json(
            200,
            &format!(r#"{{"access_token":"{ACCESS}","token_type":"mac"}}"#),
        ),
        Reply::json(
            200,
            &format!(r#"{{"access_token":"{ACCESS} x","token_type":"bearer"}}"#),
        ),
        Reply::json(400, r#"{"error":"invalid_grant"}"#),
    ]);

    let cc = ClientCredentials::builder()
        .token_url(&url)
        .client_id("id")
        .client_secret(SECRET);
    assert_clean("ClientCredentialsBuilder", &format!("{cc:?}"));
    let mut cc = cc.build().unwrap();
    assert_clean("ClientCredentials", &format!("{cc:?}"));

    let cache = TokenCache::with_policy(cc.clone(), RefreshPolicy::new());
    let token = cache.token().await.unwrap();
    assert_clean("Token", &format!("{token:?}"));
    assert_clean("TokenCache", &format!("{cache:?}"));
    let layer = BearerAuthLayer::new(cache.clone());
    let service = layer.layer(service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(()))
    }));
    assert_clean("BearerAuth", &format!("{layer:?} {service:?}"));
    service.oneshot(http::Request::new(())).await.unwrap();

    cc.fetch().await.unwrap();
    for _ in 0..4 {
        let error = cc.fetch().await.unwrap_err();
        assert_clean("error", &error_text(&error));
    }

    let rt = RefreshToken::builder()
        .token_url(&url)
        .client_id("id")
        .client_secret(SECRET)
        .refresh_token(REFRESH);
    assert_clean("RefreshTokenBuilder", &format!("{rt:?}"));
    let mut rt = rt.build().unwrap();
    assert_clean("RefreshToken", &format!("{rt:?}"));
    let error = rt.fetch().await.unwrap_err();
    assert!(error.is_reauthorization_required());
    assert_clean("reauthorization error", &error_text(&error));

    let code = AuthorizationCode::builder()
        .token_url(&url)
        .client_id("id")
        .client_secret(SECRET)
        .code(CODE);
    assert_clean("AuthorizationCodeBuilder", &format!("{code:?}"));
    assert_clean("AuthorizationCode", &format!("{:?}", code.build().unwrap()));

    let logs = logs.text();
    assert!(
        logs.contains("token request"),
        "tracing captured nothing: {logs}"
    );
    assert!(logs.contains("token request failed"), "{logs}");
    assert_clean("tracing output", &logs);
}

const ASSERTION: &str = "SENTINEL-ASSERTION-3c1d";

/// Pieces of the test keys' private parts: PEM body lines and JWK members.
fn key_material() -> Vec<String> {
    let mut pieces: Vec<String> = [include_str!("keys/rsa.pem"), include_str!("keys/ec.pem")]
        .iter()
        .flat_map(|pem| pem.lines().filter(|l| !l.starts_with("-----")))
        .map(|line| line[..line.len().min(40)].to_owned())
        .collect();
    for jwk in [
        include_str!("keys/rsa.jwk.json"),
        include_str!("keys/ec.jwk.json"),
    ] {
        let jwk: serde_json::Value = serde_json::from_str(jwk).unwrap();
        for member in ["d", "p", "q", "dp", "dq", "qi"] {
            if let Some(value) = jwk[member].as_str() {
                pieces.push(value[..value.len().min(40)].to_owned());
            }
        }
    }
    pieces
}

#[tokio::test]
async fn no_key_or_assertion_in_debug_display_errors_or_traces() {
    use tower_oauth2::{JwsAlgorithm, PrivateKey};

    let (logs, _guard) = capture_traces();

    let server = Recorder::start().await;
    let url = server.url("/token");
    server.reply([
        token_body(),
        Reply::json(401, r#"{"error":"invalid_client"}"#),
        token_body(),
        Reply::json(400, r#"{"error":"invalid_client"}"#),
    ]);
    let mut seen = Vec::new(); // every Debug, Display and error text

    let pem_key = PrivateKey::from_pem(JwsAlgorithm::Rs256, include_str!("keys/rsa.pem"))
        .unwrap()
        .with_kid("k1");
    let jwk_key =
        PrivateKey::from_jwk(JwsAlgorithm::Es256, include_str!("keys/ec.jwk.json")).unwrap();
    seen.push(format!("{pem_key:?} {jwk_key:?}"));
    // A broken key: the error does not quote what it was given.
    let mut broken = include_str!("keys/rsa.pem").to_owned();
    broken.insert_str(40, "!!");
    let error = PrivateKey::from_pem(JwsAlgorithm::Rs256, &broken).unwrap_err();
    seen.push(error_text(&error));

    let builder = ClientCredentials::builder()
        .token_url(&url)
        .client_id("id")
        .private_key_jwt(pem_key);
    seen.push(format!("{builder:?}"));
    let mut signed = builder.build().unwrap();
    seen.push(format!("{signed:?}"));
    let token = signed.fetch().await.unwrap();
    seen.push(format!("{token:?}"));
    seen.push(error_text(&signed.fetch().await.unwrap_err()));

    let callback = ClientCredentials::builder()
        .token_url(&url)
        .client_id("id")
        .client_assertion(|| async { Ok::<_, std::io::Error>(ASSERTION.to_owned()) });
    seen.push(format!("{callback:?}"));
    let mut callback = callback.build().unwrap();
    seen.push(format!("{callback:?}"));
    callback.fetch().await.unwrap();
    seen.push(error_text(&callback.fetch().await.unwrap_err()));
    let mut failing = ClientCredentials::builder()
        .token_url(&url)
        .client_id("id")
        .client_assertion(|| async { Err::<String, _>(std::io::Error::other("no token file")) })
        .build()
        .unwrap();
    seen.push(error_text(&failing.fetch().await.unwrap_err()));

    // What was really sent, so the checks below cannot miss it.
    let sent: Vec<String> = server
        .requests()
        .iter()
        .map(|r| r.param("client_assertion"))
        .collect();
    assert_eq!(sent.len(), 4);
    assert_eq!(sent[2], ASSERTION);

    let logs = logs.text();
    assert!(logs.contains("token request not sent"), "{logs}");
    seen.push(logs);
    for text in &seen {
        assert_clean("output", text);
        for secret in key_material().iter().chain(&sent) {
            assert!(!text.contains(secret.as_str()), "{secret} shown in {text}");
        }
    }
}
