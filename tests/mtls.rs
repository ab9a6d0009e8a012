//! Mutual-TLS client authentication (RFC 8705) against a recording token
//! endpoint: what the requests carry, which endpoint they go to, and what
//! `build` refuses. The TLS handshake itself is tested against a real server
//! in `tests/interop.rs` (`mtls_*`).

mod support;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use sha2::{Digest, Sha256};
use support::recorder::{Recorder, Reply};
use tower_oauth2::{
    discovery::ServerMetadata, AuthMethod, ClientCredentials, ClientIdentity, DiscoveryErrorKind,
    ErrorKind, TokenSource,
};

/// A self-signed certificate and its key, as PEM.
fn certificate(name: &str) -> (String, String, rcgen::Certificate) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert)
}

fn hyper() -> Client<HttpConnector, String> {
    Client::builder(TokioExecutor::new()).build_http()
}

#[test]
fn the_thumbprint_is_sha256_of_the_leaf_der() {
    let (pem, key, cert) = certificate("client.example");
    let expected = URL_SAFE_NO_PAD.encode(Sha256::digest(cert.der()));
    let (other, _, _) = certificate("intermediate.example");
    // Leaf first: the chain's other certificates do not change it.
    let chain = format!("{pem}{other}");
    let identity = ClientIdentity::from_pem(&chain, &key).unwrap();
    assert_eq!(identity.x5t_s256(), expected);
    assert!(identity.has_private_key());
    let public = ClientIdentity::from_certificate_pem(&chain).unwrap();
    assert_eq!(public.x5t_s256(), expected);
    assert!(!public.has_private_key());
    let shown = format!("{identity:?}");
    assert!(shown.contains(&expected), "{shown}");
    let key_body = key.lines().nth(1).unwrap();
    assert!(!shown.contains(key_body), "{shown}");
}

#[test]
fn a_key_that_is_not_the_certificates_is_refused() {
    let (pem, _, _) = certificate("client.example");
    let (_, other_key, _) = certificate("other.example");
    // The TLS stack checks the pair when the grant's client is built.
    let mismatched = ClientIdentity::from_pem(&pem, &other_key).unwrap();
    let error = ClientCredentials::builder()
        .token_url("https://as.example.com/token")
        .client_id("my-service")
        .client_certificate(mismatched)
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
    assert!(!format!("{error:?}").contains(other_key.lines().nth(1).unwrap()));
    // The key and the certificate the wrong way round.
    let (pem, key, _) = certificate("client.example");
    for (chain, key) in [(&key, &pem), (&pem, &pem), (&key, &key)] {
        let error = ClientIdentity::from_pem(chain, key).unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
    }
}

/// RFC 8705 §2: `client_id` in the body, no secret, no `Authorization`; the
/// certificate is the transport's business (here a plain hyper client to
/// loopback, so only the form is checked). The token names the
/// certificate's thumbprint.
#[tokio::test]
async fn mtls_methods_send_the_client_id_and_nothing_else() {
    let (pem, _, _) = certificate("client.example");
    let identity = ClientIdentity::from_certificate_pem(&pem).unwrap();
    for method in [
        AuthMethod::TlsClientAuth,
        AuthMethod::SelfSignedTlsClientAuth,
    ] {
        let server = Recorder::start().await;
        server.reply([Reply::token("bound")]);
        let mut grant = ClientCredentials::builder()
            .token_url(server.url("/token"))
            .client_id("my-service")
            .auth_method(method)
            .client_certificate(identity.clone())
            .transport(hyper())
            .build()
            .unwrap();
        let token = grant.fetch().await.unwrap();
        assert_eq!(token.x5t_s256(), Some(identity.x5t_s256()));
        let sent = server.last();
        assert_eq!(sent.param("client_id"), "my-service");
        assert_eq!(sent.param("grant_type"), "client_credentials");
        assert!(!sent.has_param("client_secret"));
        assert!(!sent.has_param("client_assertion"));
        assert_eq!(sent.header("authorization"), None);
    }
}

/// A certificate with nothing else to authenticate with implies
/// `tls_client_auth`; with a secret, the secret authenticates and the
/// certificate only binds (the token still names it). Without a
/// certificate, nothing changes: a public client, no thumbprint.
#[tokio::test]
async fn a_certificate_alone_implies_tls_client_auth() {
    let (pem, _, _) = certificate("client.example");
    let identity = ClientIdentity::from_certificate_pem(&pem).unwrap();
    let server = Recorder::start().await;
    server.reply([Reply::token("a"), Reply::token("b"), Reply::token("c")]);
    let base = || {
        ClientCredentials::builder()
            .token_url(server.url("/token"))
            .client_id("my-service")
            .transport(hyper())
    };
    let token = base()
        .client_certificate(identity.clone())
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(token.x5t_s256(), Some(identity.x5t_s256()));
    assert_eq!(server.last().param("client_id"), "my-service");

    let token = base()
        .client_secret("s3cret")
        .client_certificate(identity.clone())
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap();
    assert_eq!(token.x5t_s256(), Some(identity.x5t_s256()));
    assert!(server.last().header("authorization").is_some());

    let token = base().build().unwrap().fetch().await.unwrap();
    assert_eq!(token.x5t_s256(), None);
}

/// What `build` refuses, each with a `Config` error.
#[test]
fn misconfigurations_are_config_errors() {
    let (pem, key, _) = certificate("client.example");
    let full = ClientIdentity::from_pem(&pem, &key).unwrap();
    let public = ClientIdentity::from_certificate_pem(&pem).unwrap();
    let base = || {
        ClientCredentials::builder()
            .token_url("https://as.example.com/token")
            .client_id("my-service")
    };
    let cases = [
        (
            "a secret with an mTLS method",
            base()
                .client_secret("s3cret")
                .auth_method(AuthMethod::TlsClientAuth)
                .client_certificate(full.clone()),
        ),
        (
            "an mTLS method and no certificate on the crate's own client",
            base().auth_method(AuthMethod::SelfSignedTlsClientAuth),
        ),
        (
            "a certificate without its key on the crate's own client",
            base().client_certificate(public.clone()),
        ),
        (
            "roots for a transport of the user's",
            base()
                .client_certificate(public.clone())
                .tls_root_certificates_pem(&pem)
                .transport(hyper()),
        ),
        (
            "roots that are not PEM certificates",
            base()
                .client_certificate(full.clone())
                .tls_root_certificates_pem("not a certificate"),
        ),
    ];
    for (what, builder) in cases {
        let error = builder.build().expect_err(what);
        assert_eq!(error.kind(), &ErrorKind::Config, "{what}: {error}");
    }
    // With a transport of the user's, the certificate is theirs to present.
    base()
        .auth_method(AuthMethod::TlsClientAuth)
        .transport(hyper())
        .build()
        .unwrap();
    // The crate's own client, presenting the certificate, trusting a root.
    base()
        .client_certificate(full)
        .tls_root_certificates_pem(&pem)
        .build()
        .unwrap();
}

fn metadata(server: &Recorder, extra: serde_json::Value) -> ServerMetadata {
    let issuer = server.url("");
    let mut document = serde_json::json!({
        "issuer": issuer,
        "token_endpoint": server.url("/token"),
        "revocation_endpoint": server.url("/revoke"),
    });
    for (name, value) in extra.as_object().unwrap() {
        document[name] = value.clone();
    }
    ServerMetadata::from_json(&issuer, document.to_string().as_bytes()).unwrap()
}

/// RFC 8705 §5: a client that presents a certificate uses the aliases
/// (token and revocation here); one that does not, the plain endpoints.
#[tokio::test]
async fn mtls_endpoint_aliases_are_used_with_a_certificate() {
    let (pem, _, _) = certificate("client.example");
    let identity = ClientIdentity::from_certificate_pem(&pem).unwrap();
    let server = Recorder::start().await;
    let metadata = metadata(
        &server,
        serde_json::json!({
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "self_signed_tls_client_auth"],
            "mtls_endpoint_aliases": {
                "token_endpoint": server.url("/mtls/token"),
                "revocation_endpoint": server.url("/mtls/revoke"),
            },
        }),
    );
    assert_eq!(
        metadata
            .mtls_endpoint_alias("token_endpoint")
            .map(|u| u.as_str()),
        Some(server.url("/mtls/token").as_str())
    );
    server.reply([Reply::token("a"), Reply::json(200, "{}"), Reply::token("b")]);
    let grant = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-service")
        .client_certificate(identity)
        .transport(hyper())
        .build()
        .unwrap();
    let token = grant.request_token().await.unwrap();
    assert_eq!(server.last().path, "/mtls/token");
    // The only mTLS method the server lists was chosen: same request.
    assert!(!server.last().has_param("client_secret"));
    let client = tower_oauth2::OAuthClient::builder()
        .metadata(&metadata)
        .client_id("my-service")
        .client_certificate(ClientIdentity::from_certificate_pem(&pem).unwrap())
        .transport(hyper())
        .build()
        .unwrap();
    client.revoke(token.access_token(), None).await.unwrap();
    assert_eq!(server.last().path, "/mtls/revoke");

    let plain = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-service")
        .client_secret("s3cret")
        .transport(hyper())
        .build()
        .unwrap();
    plain.request_token().await.unwrap();
    assert_eq!(server.last().path, "/token");
}

#[tokio::test]
async fn aliases_are_checked_like_endpoints() {
    let server = Recorder::start().await;
    let issuer = server.url("");
    let read = |aliases: serde_json::Value| {
        let document = serde_json::json!({
            "issuer": issuer,
            "token_endpoint": server.url("/token"),
            "mtls_endpoint_aliases": aliases,
        });
        ServerMetadata::from_json(&issuer, document.to_string().as_bytes())
    };
    let kind = |aliases| read(aliases).unwrap_err().kind().clone();
    assert_eq!(
        kind(serde_json::json!({"token_endpoint": "http://as.example.com/token"})),
        ErrorKind::Discovery(DiscoveryErrorKind::InsecureEndpoint)
    );
    assert_eq!(
        kind(serde_json::json!({"token_endpoint": 7})),
        ErrorKind::Discovery(DiscoveryErrorKind::Invalid)
    );
    assert_eq!(
        kind(serde_json::json!(["https://as.example.com/token"])),
        ErrorKind::Discovery(DiscoveryErrorKind::Invalid)
    );
    // A server that lists no mTLS method: the choice is the user's.
    let metadata = metadata(
        &server,
        serde_json::json!({"token_endpoint_auth_methods_supported": ["client_secret_basic"]}),
    );
    let (pem, _, _) = certificate("client.example");
    let error = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("my-service")
        .client_certificate(ClientIdentity::from_certificate_pem(&pem).unwrap())
        .transport(hyper())
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
}
