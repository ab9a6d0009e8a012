//! `private_key_jwt` as a user meets it: the public JWK to register and its
//! RFC 7638 thumbprint, constructors of one shape, a callback told what the
//! request is, and settings a callback would ignore refused by `build`.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use support::{
    jws,
    recorder::{Recorder, Reply},
};
use tower_oauth2::{
    endpoint::AssertionContext, ClientCredentials, ErrorKind, JwsAlgorithm, PrivateKey, TokenSource,
};

const RSA_PEM: &str = include_str!("keys/rsa.pem");
const RSA_PKCS1_PEM: &str = include_str!("keys/rsa-pkcs1.pem");
const RSA_JWK: &str = include_str!("keys/rsa.jwk.json");
const RSA_OTHER_PEM: &str = include_str!("keys/rsa-other.pem");
const EC_PEM: &str = include_str!("keys/ec.pem");
const EC_SEC1_PEM: &str = include_str!("keys/ec-sec1.pem");
const EC_JWK: &str = include_str!("keys/ec.jwk.json");

/// The fixtures' thumbprints, computed apart from the crate: SHA-256 of
/// `{"e":..,"kty":"RSA","n":..}` / `{"crv":"P-256","kty":"EC","x":..,"y":..}`
/// built from the JWK files.
const RSA_THUMBPRINT: &str = "hJPki_4-tJuedzw7q4q-Ov55KXNbkWuHXlmQC-HpKrc";
const EC_THUMBPRINT: &str = "A_qV7_eiyteqUeHFuIrYkCwTv7dkrCg1huFmEzWCcd4";

const PRIVATE_MEMBERS: [&str; 6] = ["d", "p", "q", "dp", "dq", "qi"];

fn object(json: &str) -> serde_json::Map<String, Value> {
    serde_json::from_str::<Value>(json)
        .unwrap()
        .as_object()
        .unwrap()
        .clone()
}

fn member_names(jwk: &serde_json::Map<String, Value>) -> Vec<&str> {
    let mut names: Vec<&str> = jwk.keys().map(String::as_str).collect();
    names.sort_unstable();
    names
}

#[test]
fn the_public_jwk_holds_the_public_key_and_nothing_private() {
    let fixture = object(RSA_JWK);
    let key = PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_PEM)
        .unwrap()
        .with_kid("k1");
    let text = key.public_jwk();
    let jwk = object(&text);
    assert_eq!(
        member_names(&jwk),
        ["alg", "e", "kid", "kty", "n", "use"],
        "{text}"
    );
    assert_eq!(jwk["kty"], "RSA");
    assert_eq!(jwk["n"], fixture["n"]);
    assert_eq!(jwk["e"], "AQAB");
    assert_eq!(jwk["alg"], "RS256");
    assert_eq!(jwk["use"], "sig");
    assert_eq!(jwk["kid"], "k1");
    for name in PRIVATE_MEMBERS {
        let secret = fixture[name].as_str().unwrap();
        assert!(!text.contains(secret), "`{name}` leaked: {text}");
    }

    let fixture = object(EC_JWK);
    let key = PrivateKey::from_pem(JwsAlgorithm::Es256, EC_PEM).unwrap();
    let text = key.public_jwk();
    let jwk = object(&text);
    assert_eq!(
        member_names(&jwk),
        ["alg", "crv", "kty", "use", "x", "y"],
        "no kid when none is set: {text}"
    );
    for name in ["kty", "crv", "x", "y"] {
        assert_eq!(jwk[name], fixture[name], "{name}");
    }
    assert_eq!(jwk["alg"], "ES256");
    assert!(!text.contains(fixture["d"].as_str().unwrap()), "{text}");
}

#[test]
fn the_thumbprint_is_rfc_7638_and_depends_on_the_key_alone() {
    let rsa = [
        PrivateKey::from_pem(JwsAlgorithm::Rs256, RSA_PEM).unwrap(),
        PrivateKey::from_pem(JwsAlgorithm::Ps256, RSA_PEM)
            .unwrap()
            .with_kid("another"),
        PrivateKey::from_jwk(JwsAlgorithm::Ps256, RSA_JWK).unwrap(),
    ];
    for key in &rsa {
        assert_eq!(key.thumbprint(), RSA_THUMBPRINT, "{key:?}");
    }
    let ec = [
        PrivateKey::from_pem(JwsAlgorithm::Es256, EC_PEM).unwrap(),
        PrivateKey::from_jwk(JwsAlgorithm::Es256, EC_JWK).unwrap(),
    ];
    for key in &ec {
        assert_eq!(key.thumbprint(), EC_THUMBPRINT, "{key:?}");
    }
    // A thumbprint makes a fine kid: the JWK carries it.
    let key = ec[0].clone().with_kid(ec[0].thumbprint());
    assert_eq!(object(&key.public_jwk())["kid"], EC_THUMBPRINT);
}

#[test]
fn pem_and_jwk_constructors_take_the_same_arguments() {
    // Algorithm first, then the key as text or bytes, for both.
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keys");
    let from_pem = PrivateKey::from_pem(
        JwsAlgorithm::Es256,
        std::fs::read(dir.join("ec.pem")).unwrap(),
    )
    .unwrap();
    let from_jwk = PrivateKey::from_jwk(
        JwsAlgorithm::Es256,
        std::fs::read(dir.join("ec.jwk.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(from_pem.thumbprint(), from_jwk.thumbprint());
    assert_eq!(from_jwk.algorithm(), JwsAlgorithm::Es256);

    // The algorithm is the caller's: a JWK naming another one is refused,
    // not followed.
    for (alg, jwk) in [
        (JwsAlgorithm::Rs256, RSA_JWK), // the file says PS256
        (JwsAlgorithm::Es256, RSA_JWK),
        (JwsAlgorithm::Rs256, EC_JWK),
    ] {
        let error = PrivateKey::from_jwk(alg, jwk).unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Config, "{alg}: {error}");
    }
}

/// The fixture JWK with its `alg` removed, to load for another algorithm.
fn without_alg(jwk: &str) -> String {
    let mut jwk = object(jwk);
    jwk.remove("alg");
    Value::Object(jwk).to_string()
}

#[tokio::test]
async fn every_key_form_signs_assertions_its_public_jwk_verifies() {
    use JwsAlgorithm::{Es256, Ps256, Rs256};
    let server = Recorder::start().await;
    let keys = [
        ("RS256, PKCS#8", PrivateKey::from_pem(Rs256, RSA_PEM)),
        ("RS256, PKCS#1", PrivateKey::from_pem(Rs256, RSA_PKCS1_PEM)),
        (
            "RS256, JWK",
            PrivateKey::from_jwk(Rs256, without_alg(RSA_JWK)),
        ),
        ("PS256, PKCS#8", PrivateKey::from_pem(Ps256, RSA_PEM)),
        ("PS256, PKCS#1", PrivateKey::from_pem(Ps256, RSA_PKCS1_PEM)),
        ("PS256, JWK", PrivateKey::from_jwk(Ps256, RSA_JWK)),
        ("ES256, PKCS#8", PrivateKey::from_pem(Es256, EC_PEM)),
        ("ES256, SEC1", PrivateKey::from_pem(Es256, EC_SEC1_PEM)),
        ("ES256, JWK", PrivateKey::from_jwk(Es256, EC_JWK)),
    ];
    let other = PrivateKey::from_pem(Rs256, RSA_OTHER_PEM)
        .unwrap()
        .public_jwk();
    for (form, key) in keys {
        let key = key.unwrap_or_else(|e| panic!("{form}: {e}"));
        server.reply([Reply::token("t")]);
        ClientCredentials::builder()
            .token_url(server.url("/token"))
            .client_id("my-app")
            .private_key_jwt(key.clone())
            .build()
            .unwrap()
            .fetch()
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        let assertion = server.last().param("client_assertion");

        // What the client registers verifies it, and so does the fixture's
        // public half: the key loaded is the key in the file.
        let fixture = if key.algorithm() == Es256 {
            EC_JWK
        } else {
            RSA_JWK
        };
        for jwk in [key.public_jwk(), fixture.to_owned()] {
            let (header, claims) =
                jws::verify(&assertion, &jwk).unwrap_or_else(|e| panic!("{form}: {e}"));
            assert_eq!(header["alg"], key.algorithm().as_str(), "{form}");
            assert_eq!(claims["iss"], "my-app", "{form}");
        }
        // Another key, or another signing input, does not.
        if key.algorithm() != Es256 {
            jws::verify(&assertion, &other).expect_err(form);
        }
        let (head, signature) = assertion.rsplit_once('.').unwrap();
        let tampered = format!("{head}x.{signature}");
        jws::verify(&tampered, &key.public_jwk()).expect_err(form);
    }
}

#[tokio::test]
async fn the_callback_is_told_the_request() {
    let server = Recorder::start().await;
    server.reply([Reply::token("t"), Reply::token("t")]);
    let seen: Arc<Mutex<Vec<AssertionContext>>> = Arc::default();
    let grant = |audience: Option<&str>| {
        let seen = seen.clone();
        let builder = ClientCredentials::builder()
            .token_url(server.url("/oauth/token"))
            .client_id("my-app")
            .client_assertion_with(move |ctx| {
                let answer = format!("signed-for.{}.{}", ctx.client_id(), ctx.audience().len());
                seen.lock().unwrap().push(ctx);
                async move { Ok::<_, std::io::Error>(answer) }
            });
        match audience {
            Some(audience) => builder.client_assertion_audience(audience),
            None => builder,
        }
        .build()
        .unwrap()
    };
    grant(None).fetch().await.unwrap();
    grant(Some("https://issuer.example")).fetch().await.unwrap();

    let seen = seen.lock().unwrap();
    let token_url = server.url("/oauth/token");
    assert_eq!(seen.len(), 2);
    for ctx in seen.iter() {
        assert_eq!(ctx.token_url().as_str(), token_url);
        assert_eq!(ctx.client_id(), "my-app");
    }
    assert_eq!(seen[0].audience(), token_url, "the token URL by default");
    assert_eq!(seen[1].audience(), "https://issuer.example");
    let sent = server.requests();
    assert_eq!(
        sent[0].param("client_assertion"),
        format!("signed-for.my-app.{}", token_url.len())
    );
    assert_eq!(sent[1].param("client_id"), "my-app");
}

#[tokio::test]
async fn settings_nothing_would_read_are_refused() {
    let server = Recorder::start().await;
    let base = || {
        ClientCredentials::builder()
            .token_url(server.url("/token"))
            .client_id("my-app")
    };
    let callback = || async { Ok::<_, std::io::Error>("a.b.c".to_owned()) };
    let key = || PrivateKey::from_pem(JwsAlgorithm::Es256, EC_PEM).unwrap();
    let cases = [
        (
            "an audience next to a callback told nothing",
            base()
                .client_assertion(callback)
                .client_assertion_audience("https://issuer.example"),
        ),
        (
            "a lifetime next to a callback",
            base()
                .client_assertion(callback)
                .client_assertion_lifetime(Duration::from_secs(60)),
        ),
        (
            "a lifetime next to a callback told the request",
            base()
                .client_assertion_with(move |_ctx| callback())
                .client_assertion_lifetime(Duration::from_secs(60)),
        ),
        (
            "a key replaced by a callback, its lifetime left behind",
            base()
                .private_key_jwt(key())
                .client_assertion_lifetime(Duration::from_secs(60))
                .client_assertion(callback),
        ),
        (
            "an audience with a client secret",
            base()
                .client_secret("s")
                .client_assertion_audience("https://issuer.example"),
        ),
        (
            "a lifetime with a client secret",
            base()
                .client_secret("s")
                .client_assertion_lifetime(Duration::from_secs(60)),
        ),
    ];
    for (what, builder) in cases {
        let error = builder.build().expect_err(what);
        assert_eq!(error.kind(), &ErrorKind::Config, "{what}: {error}");
    }

    // What is read is accepted.
    base()
        .client_assertion_with(move |_ctx| callback())
        .client_assertion_audience("https://issuer.example")
        .build()
        .expect("a callback told the request reads the audience");
    base()
        .private_key_jwt(key())
        .client_assertion_audience("https://issuer.example")
        .client_assertion_lifetime(Duration::from_secs(60))
        .build()
        .expect("the crate signs with both");
    base()
        .client_assertion(callback)
        .build()
        .expect("a plain callback");
}
