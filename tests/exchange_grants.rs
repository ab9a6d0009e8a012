//! The token exchange (RFC 8693) and JWT bearer (RFC 7523 §2.1) grants: the
//! form each sends, what each answer becomes, secrets kept out of `Debug`,
//! and store keys that keep subjects apart.

mod support;

use std::{path::PathBuf, time::Duration};

use support::{
    jws,
    recorder::{Recorder, Reply},
};
use tower_oauth2::{
    secrecy::{ExposeSecret, SecretString},
    token_types, AuthMethod, ErrorKind, JwsAlgorithm, JwtBearer, OAuthClient, PrivateKey,
    TokenCache, TokenExchange, TokenSource,
};

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

fn exchange(recorder: &Recorder, subject: &str) -> tower_oauth2::grant::TokenExchangeBuilder {
    TokenExchange::builder()
        .token_url(recorder.url("/token"))
        .client_id("gateway")
        .client_secret("gateway-secret")
        .auth_method(AuthMethod::ClientSecretPost)
        .subject_token(subject.to_owned(), token_types::ACCESS_TOKEN)
}

#[tokio::test]
async fn token_exchange_sends_every_parameter() {
    let recorder = Recorder::start().await;
    recorder.reply([Reply::json(
        200,
        r#"{"access_token":"upstream-1","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":600}"#,
    )]);
    let grant = exchange(&recorder, "callers-token")
        .actor_token("actor-jwt".to_owned(), token_types::JWT)
        .requested_token_type(token_types::ACCESS_TOKEN)
        .audience("orders")
        .audience("billing")
        .resource("https://orders.example.com/")
        .resource("https://billing.example.com/")
        .scope("orders.read billing.read")
        .build()
        .unwrap();
    let token = grant.request_token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "upstream-1");
    assert_eq!(token.expires_in(), Some(Duration::from_secs(600)));

    let sent = recorder.last();
    let expected: Vec<(String, String)> = [
        ("grant_type", EXCHANGE),
        ("subject_token", "callers-token"),
        ("subject_token_type", token_types::ACCESS_TOKEN),
        ("actor_token", "actor-jwt"),
        ("actor_token_type", token_types::JWT),
        ("requested_token_type", token_types::ACCESS_TOKEN),
        ("audience", "orders"),
        ("audience", "billing"),
        ("resource", "https://orders.example.com/"),
        ("resource", "https://billing.example.com/"),
        ("scope", "orders.read billing.read"),
        ("client_id", "gateway"),
        ("client_secret", "gateway-secret"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.to_string()))
    .collect();
    assert_eq!(sent.form(), expected);
    assert!(sent.query.is_none());
}

#[tokio::test]
async fn token_exchange_minimal_form_with_basic_auth() {
    let recorder = Recorder::start().await;
    recorder.reply([Reply::token("upstream-1")]);
    let grant = TokenExchange::builder()
        .token_url(recorder.url("/token"))
        .client_id("gateway")
        .client_secret("gateway-secret")
        .subject_token("workload-jwt".to_owned(), token_types::JWT)
        .build()
        .unwrap();
    grant.request_token().await.unwrap();
    let sent = recorder.last();
    assert_eq!(
        sent.form(),
        [
            ("grant_type".to_owned(), EXCHANGE.to_owned()),
            ("subject_token".to_owned(), "workload-jwt".to_owned()),
            ("subject_token_type".to_owned(), token_types::JWT.to_owned()),
        ]
    );
    assert!(sent.header("authorization").unwrap().starts_with("Basic "));
}

#[tokio::test]
async fn n_a_token_type_only_when_something_else_than_an_access_token_was_asked_for() {
    let recorder = Recorder::start().await;
    let n_a = r#"{"access_token":"an-id-token","issued_token_type":"urn:ietf:params:oauth:token-type:id_token","token_type":"N_A","expires_in":60}"#;
    recorder.reply([Reply::json(200, n_a), Reply::json(200, n_a)]);

    let plain = exchange(&recorder, "s").build().unwrap();
    let err = plain.request_token().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::InvalidResponse);

    let id_token = exchange(&recorder, "s")
        .requested_token_type(token_types::ID_TOKEN)
        .build()
        .unwrap();
    let token = id_token.request_token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "an-id-token");
    assert_eq!(token.header_value(), "Bearer an-id-token");
    assert_eq!(
        recorder.last().param("requested_token_type"),
        token_types::ID_TOKEN
    );
}

#[tokio::test]
async fn oauth_client_makes_token_exchanges_per_subject() {
    let recorder = Recorder::start().await;
    recorder.reply([Reply::token("for-alice")]);
    let client = OAuthClient::builder()
        .token_url(recorder.url("/token"))
        .client_id("gateway")
        .client_secret("gateway-secret")
        .scope("orders.read")
        .build()
        .unwrap();
    let alice = client
        .token_exchange(SecretString::from("alice-token"), token_types::ACCESS_TOKEN)
        .audience("orders")
        .requested_token_type(token_types::ID_TOKEN);
    let bob = client
        .token_exchange(SecretString::from("bob-token"), token_types::ACCESS_TOKEN)
        .audience("orders");
    assert_ne!(alice.store_key(), bob.store_key());
    let cache = TokenCache::new(alice);
    let token = cache.token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "for-alice");
    let sent = recorder.last();
    assert_eq!(sent.param("subject_token"), "alice-token");
    assert_eq!(sent.param("audience"), "orders");
    assert_eq!(sent.param("scope"), "orders.read");
}

#[test]
fn token_exchange_keys_and_debug_hold_no_token() {
    let build = |subject: &str, actor: Option<&str>| {
        let mut builder = TokenExchange::builder()
            .token_url("https://auth.example.com/token")
            .client_id("gateway")
            .client_secret("gateway-secret")
            .subject_token(subject.to_owned(), token_types::ACCESS_TOKEN)
            .audience("orders");
        if let Some(actor) = actor {
            builder = builder.actor_token(actor.to_owned(), token_types::JWT);
        }
        builder.build().unwrap()
    };
    let alice = build("alice-token", None);
    let bob = build("bob-token", None);
    let alice_key = alice.store_key().unwrap();
    assert_ne!(alice_key, bob.store_key().unwrap());
    assert_eq!(alice_key, build("alice-token", None).store_key().unwrap());
    assert_ne!(
        alice_key,
        build("alice-token", Some("actor-token"))
            .store_key()
            .unwrap()
    );
    let with_actor = build("alice-token", Some("actor-token"));
    let shown = format!(
        "{alice:?} {with_actor:?} {alice_key} {alice_key:?} {:?}",
        with_actor.store_key()
    );
    for secret in ["alice-token", "actor-token", "gateway-secret"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    let builder = TokenExchange::builder().subject_token("alice-token".to_owned(), "t");
    assert!(!format!("{builder:?}").contains("alice-token"));
}

#[test]
fn reserved_exchange_parameters_are_refused_as_extra_parameters() {
    for name in [
        "subject_token",
        "actor_token",
        "assertion",
        "requested_token_type",
    ] {
        let err = TokenExchange::builder()
            .token_url("https://auth.example.com/token")
            .client_id("gateway")
            .subject_token("s".to_owned(), token_types::JWT)
            .param(name, "x")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Config, "{name}");
    }
}

fn key(alg: JwsAlgorithm, file: &str) -> PrivateKey {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(file);
    PrivateKey::from_pem(alg, std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn jwt_bearer_sends_a_fresh_signed_assertion() {
    let recorder = Recorder::start().await;
    recorder.reply([Reply::token("t-1"), Reply::token("t-2")]);
    let signing = key(JwsAlgorithm::Es256, "ec.pem").with_kid("ec-1");
    let public = signing.public_jwk();
    let grant = JwtBearer::builder()
        .token_url(recorder.url("/token"))
        .client_id("robot")
        .signing_key(signing)
        .subject("user-7")
        .claim("scope", "cloud-platform")
        .scope("api.read")
        .build()
        .unwrap();
    grant.request_token().await.unwrap();
    grant.request_token().await.unwrap();
    let sent = recorder.requests();
    assert_eq!(sent.len(), 2);
    let first = &sent[0];
    assert_eq!(
        first.param("grant_type"),
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    );
    assert_eq!(first.param("scope"), "api.read");
    // Public client: only the client id beside the assertion.
    assert_eq!(first.param("client_id"), "robot");
    assert!(!first.has_param("client_assertion"));
    let (header, claims) = jws::verify(&first.param("assertion"), &public).unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], "ec-1");
    assert_eq!(claims["iss"], "robot");
    assert_eq!(claims["sub"], "user-7");
    assert_eq!(claims["aud"], recorder.url("/token"));
    assert_eq!(claims["scope"], "cloud-platform");
    let (iat, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    assert_eq!(exp - iat, 120);
    let (_, second) = jws::verify(&sent[1].param("assertion"), &public).unwrap();
    assert_ne!(claims["jti"], second["jti"], "a fresh jti per request");
}

#[tokio::test]
async fn jwt_bearer_with_a_callback_and_client_authentication() {
    let recorder = Recorder::start().await;
    recorder.reply([Reply::token("t-1")]);
    let grant = JwtBearer::builder()
        .token_url(recorder.url("/token"))
        .client_id("b2b-client")
        .client_secret("b2b-secret")
        .audience("https://issuer.example.com")
        .assertion_with(|ctx| async move {
            Ok::<_, std::io::Error>(format!("made-for.{}.{}\n", ctx.client_id(), ctx.audience()))
        })
        .build()
        .unwrap();
    grant.request_token().await.unwrap();
    let sent = recorder.last();
    assert_eq!(
        sent.param("assertion"),
        "made-for.b2b-client.https://issuer.example.com"
    );
    assert!(sent.header("authorization").unwrap().starts_with("Basic "));
    assert!(!format!("{grant:?}").contains("b2b-secret"));

    let failing = JwtBearer::builder()
        .token_url(recorder.url("/token"))
        .client_id("b2b-client")
        .assertion_with(|_| async { Err::<String, _>(std::io::Error::other("kms down")) })
        .build()
        .unwrap();
    let err = failing.request_token().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ClientAssertion);
    assert_eq!(recorder.requests().len(), 1, "not sent");
}

#[test]
fn jwt_bearer_settings_are_checked() {
    let base = || {
        JwtBearer::builder()
            .token_url("https://auth.example.com/token")
            .client_id("robot")
    };
    assert_eq!(base().build().unwrap_err().kind(), &ErrorKind::Config);
    let reserved = base()
        .signing_key(key(JwsAlgorithm::Rs256, "rsa.pem"))
        .claim("exp", 1)
        .build();
    assert_eq!(reserved.unwrap_err().kind(), &ErrorKind::Config);
    let key_of_rs = key(JwsAlgorithm::Rs256, "rsa.pem");
    let alice = base()
        .signing_key(key_of_rs.clone())
        .subject("alice")
        .build()
        .unwrap();
    let bob = base()
        .signing_key(key_of_rs)
        .subject("bob")
        .build()
        .unwrap();
    assert_ne!(alice.store_key(), bob.store_key());
    assert!(alice
        .store_key()
        .unwrap()
        .as_str()
        .starts_with("jwt_bearer:robot@"));
}

/// A store written for one subject is never served to another: the subject
/// is part of the store key (as a digest), so the other subject's cache
/// refuses the stored state (OtherCredential, as for any other credential),
/// while the same subject's next cache adopts it.
#[tokio::test]
async fn a_stored_token_of_one_subject_is_never_served_to_another() {
    let recorder = Recorder::start().await;
    recorder.reply([Reply::token("for-alice"), Reply::token("for-bob")]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("exchange.json");
    let cache = |subject: &str| {
        let grant = exchange(&recorder, subject)
            .audience("orders")
            .build()
            .unwrap();
        TokenCache::builder(grant)
            .store(tower_oauth2::FileStore::new(&path))
            .build()
    };

    let alice = cache("alice-token");
    let token = alice.token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "for-alice");
    drop(alice);
    let stored = std::fs::read_to_string(&path).unwrap();
    assert!(!stored.contains("alice-token"), "the subject is not stored");

    let bob = cache("bob-token");
    let error = bob.token().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(tower_oauth2::StoreErrorKind::OtherCredential),
        "{error}"
    );
    assert!(!error.to_string().contains("alice-token"), "{error}");
    drop(bob);

    let again = cache("alice-token");
    let token = again.token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "for-alice");
    assert_eq!(
        recorder.requests().len(),
        1,
        "bob's cache sent nothing, alice's second cache adopted the stored token"
    );
}
