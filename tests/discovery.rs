//! Discovery against a scripted loopback server: which documents are asked
//! for, which are refused and why, the cache, and a grant built from one.
//! The real server's documents are read in `tests/interop.rs`.

mod support;

use std::time::Duration;

use serde_json::json;
use support::recorder::{Recorder, Reply};
use tower_oauth2::{
    discovery::Discovery, AuthMethod, ClientCredentials, DiscoveryErrorKind, ErrorKind, TokenSource,
};

fn document(server: &Recorder, issuer_path: &str) -> serde_json::Value {
    json!({
        "issuer": server.url(issuer_path),
        "token_endpoint": server.url("/oauth/token"),
        "authorization_endpoint": server.url("/authorize"),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_post"],
    })
}

#[tokio::test]
async fn openid_first_then_rfc8414_and_the_document_is_cached() {
    let server = Recorder::start().await;
    server.reply([
        Reply::json(404, "{}"),
        Reply::json(200, &document(&server, "/tenant").to_string()),
    ]);
    let discovery = Discovery::default();
    let issuer = server.url("/tenant");
    let metadata = discovery.metadata(&issuer).await.unwrap();
    assert_eq!(
        metadata.token_endpoint().as_str(),
        server.url("/oauth/token")
    );
    assert_eq!(
        metadata
            .authorization_endpoint()
            .map(|u| u.as_str().to_owned()),
        Some(server.url("/authorize"))
    );
    let paths: Vec<_> = server.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(
        paths,
        [
            "/tenant/.well-known/openid-configuration",
            "/.well-known/oauth-authorization-server/tenant"
        ]
    );
    assert!(server.requests().iter().all(|r| r.method == "GET"));

    // A clone shares the cache: no request for the second look.
    discovery.clone().metadata(&issuer).await.unwrap();
    assert_eq!(server.requests().len(), 2);

    // With no time to live, every look asks again.
    let uncached = Discovery::builder().ttl(Duration::ZERO).build();
    server.reply([
        Reply::json(200, &document(&server, "/tenant").to_string()),
        Reply::json(200, &document(&server, "/tenant").to_string()),
    ]);
    uncached.metadata(&issuer).await.unwrap();
    uncached.metadata(&issuer).await.unwrap();
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn a_grant_from_metadata_uses_its_endpoint_and_auth_method() {
    let server = Recorder::start().await;
    server.reply([Reply::json(200, &document(&server, "").to_string())]);
    let metadata = Discovery::default().metadata(&server.base).await.unwrap();
    server.reply([Reply::token("t"), Reply::token("t")]);

    // The server lists client_secret_post (not basic): the secret goes in the body.
    let mut grant = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-app")
        .client_secret("s3cret")
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    let sent = server.last();
    assert_eq!(sent.path, "/oauth/token");
    assert_eq!(sent.param("client_secret"), "s3cret");
    assert_eq!(sent.header("authorization"), None);

    // A method the user chose wins over the list.
    let mut chosen = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretBasic)
        .build()
        .unwrap();
    chosen.fetch().await.unwrap();
    assert!(server.last().header("authorization").is_some());

    // A public client cannot use any listed method: told at build time.
    let public = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-app")
        .build();
    assert_eq!(public.unwrap_err().kind(), &ErrorKind::Config);
}

#[tokio::test]
async fn bad_documents_are_typed_errors() {
    let server = Recorder::start().await;
    let issuer = server.base.clone();
    let discovery = Discovery::builder().ttl(Duration::ZERO).build();
    let cases = [
        (
            json!({"issuer": "http://127.0.0.1:1", "token_endpoint": server.url("/t")}),
            ErrorKind::Discovery(DiscoveryErrorKind::IssuerMismatch),
        ),
        (
            json!({"issuer": issuer}),
            ErrorKind::Discovery(DiscoveryErrorKind::NoTokenEndpoint),
        ),
        (
            json!({"issuer": issuer, "token_endpoint": "http://as.example.com/token"}),
            ErrorKind::Discovery(DiscoveryErrorKind::InsecureEndpoint),
        ),
        (
            json!("a string"),
            ErrorKind::Discovery(DiscoveryErrorKind::Invalid),
        ),
    ];
    for (body, kind) in cases {
        server.reply([Reply::json(200, &body.to_string())]);
        let err = discovery.metadata(&issuer).await.unwrap_err();
        assert_eq!(err.kind(), &kind, "{body}");
    }

    let huge = format!(r#"{{"issuer":"{issuer}","x":"{}"}}"#, "x".repeat(10 << 20));
    server.reply([Reply::json(200, &huge)]);
    let err = discovery.metadata(&issuer).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::ResponseTooLarge);

    let target = Recorder::start().await;
    server.reply([Reply::json(302, "{}").with_header("location", &target.url("/doc"))]);
    let err = discovery.metadata(&issuer).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Redirect);
    assert!(target.requests().is_empty(), "the redirect was followed");

    // A server error is not "absent": no second document is asked for.
    let before = server.requests().len();
    server.reply([Reply::json(503, "{}")]);
    let err = discovery.metadata(&issuer).await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Status);
    assert!(err.is_transient());
    assert_eq!(server.requests().len(), before + 1);

    // Neither document served: the first answer's error.
    server.reply([Reply::json(404, "{}"), Reply::json(404, "{}")]);
    let err = discovery.metadata(&issuer).await.unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(404));

    for bad_issuer in [
        "http://example.com",
        "https://example.com/?tenant=a",
        "nope",
    ] {
        let err = discovery.metadata(bad_issuer).await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Config, "{bad_issuer}");
    }
}

/// A key of an algorithm the server does not list would be refused with
/// `invalid_client` on every token request: refused at build time instead.
#[tokio::test]
async fn a_key_the_server_does_not_list_is_refused_at_build_time() {
    use tower_oauth2::{JwsAlgorithm, PrivateKey};

    let server = Recorder::start().await;
    let mut doc = document(&server, "");
    doc["token_endpoint_auth_signing_alg_values_supported"] = json!(["ES256", "PS256"]);
    server.reply([Reply::json(200, &doc.to_string())]);
    let metadata = Discovery::default().metadata(&server.base).await.unwrap();
    let build = |key: PrivateKey| {
        ClientCredentials::builder()
            .metadata(&metadata)
            .client_id("my-app")
            .private_key_jwt(key)
            .build()
    };
    let rsa = include_str!("keys/rsa.pem");
    let rs256 = build(PrivateKey::from_pem(JwsAlgorithm::Rs256, rsa).unwrap());
    assert_eq!(rs256.unwrap_err().kind(), &ErrorKind::Config);
    assert!(build(PrivateKey::from_pem(JwsAlgorithm::Ps256, rsa).unwrap()).is_ok());
    let ec = include_str!("keys/ec.pem");
    assert!(build(PrivateKey::from_pem(JwsAlgorithm::Es256, ec).unwrap()).is_ok());
}

#[tokio::test]
async fn callers_asking_at_once_share_one_fetch() {
    let server = Recorder::start().await;
    // One answer only: a second fetch would get the recorder's 500.
    server.reply([Reply::json(200, &document(&server, "/").to_string())]);
    let discovery = Discovery::default();
    let issuer = server.url("/");
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let (discovery, issuer) = (discovery.clone(), issuer.clone());
        callers.spawn(async move { discovery.metadata(&issuer).await });
    }
    while let Some(answer) = callers.join_next().await {
        answer.unwrap().expect("every caller gets the document");
    }
    assert_eq!(server.requests().len(), 1);
}
