//! The grants against a recording token endpoint: the exact bytes sent, and
//! what each kind of answer becomes. Numbers refer to shared/CASES.md.

mod support;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use secrecy::ExposeSecret;
use support::recorder::{Recorder, Reply};
use tower_oauth2::{
    AuthMethod, AuthorizationCode, ClientCredentials, Error, ErrorKind, OAuthErrorCode,
    RefreshToken, Token, TokenCache, TokenSource,
};

fn cc(server: &Recorder) -> tower_oauth2::grant::ClientCredentialsBuilder {
    ClientCredentials::builder()
        .token_url(server.url("/oauth/token"))
        .client_id("my-app")
        .client_secret("s3cret")
}

/// Fetches once with a fresh grant built by `build`, after scripting `reply`.
async fn answer(reply: Reply) -> (Recorder, Result<Token, Error>) {
    let server = Recorder::start().await;
    server.reply([reply]);
    let result = cc(&server).build().unwrap().fetch().await;
    (server, result)
}

async fn answer_err(reply: Reply) -> Error {
    answer(reply)
        .await
        .1
        .expect_err("the answer should be refused")
}

/// The Authorization header sent for id `CLIENT_ID??`, secret
/// `CLIENT_SECRET??` with `method`; also checks they stay out of the body.
async fn basic_header(method: AuthMethod) -> Option<String> {
    let server = Recorder::start().await;
    server.reply([Reply::token("t")]);
    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("CLIENT_ID??")
        .client_secret("CLIENT_SECRET??")
        .auth_method(method)
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    let sent = server.last();
    assert!(!sent.has_param("client_id") && !sent.has_param("client_secret"));
    sent.header("authorization").map(str::to_owned)
}

#[tokio::test]
async fn client_secret_basic_encodes_before_base64() {
    // 1: the vector from RFC 6749 §2.3.1 discussions.
    assert_eq!(
        basic_header(AuthMethod::ClientSecretBasic).await.as_deref(),
        Some("Basic Q0xJRU5UX0lEJTNGJTNGOkNMSUVOVF9TRUNSRVQlM0YlM0Y=")
    );
    // The explicit opt-out: plain base64("CLIENT_ID??:CLIENT_SECRET??").
    assert_eq!(
        basic_header(AuthMethod::ClientSecretBasicUnencoded)
            .await
            .as_deref(),
        Some("Basic Q0xJRU5UX0lEPz86Q0xJRU5UX1NFQ1JFVD8/")
    );
}

#[tokio::test]
async fn client_secret_post_and_public_clients_use_the_body() {
    // 2
    let server = Recorder::start().await;
    server.reply([Reply::token("t"), Reply::token("t")]);
    let mut post = cc(&server)
        .client_secret("+ %:é=")
        .auth_method(AuthMethod::ClientSecretPost)
        .build()
        .unwrap();
    post.fetch().await.unwrap();
    let sent = server.last();
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.param("client_id"), "my-app");
    assert_eq!(sent.param("client_secret"), "+ %:é=");

    let mut public = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("spa")
        .build()
        .unwrap();
    public.fetch().await.unwrap();
    let sent = server.last();
    assert_eq!(sent.header("authorization"), None);
    assert_eq!(sent.param("client_id"), "spa");
    assert!(!sent.has_param("client_secret"));
}

#[tokio::test]
async fn the_request_is_a_form_post_with_each_parameter_once() {
    // 3, and OfficeRnD's scope with a leading space.
    let server = Recorder::start().await;
    server.reply([Reply::token("t")]);
    let mut grant = cc(&server)
        .scope(" officernd.api.write")
        .scopes(["a&b=c#d+e"])
        .resource("https://api.example.com/")
        .resource("urn:example:other")
        .audience("https://aud.example.com")
        .param("tenant", "x&y=z")
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    let sent = server.last();
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.path, "/oauth/token");
    assert_eq!(sent.query, None, "nothing in the query string");
    assert_eq!(
        sent.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(sent.header("accept"), Some("application/json"));
    assert_eq!(sent.param("grant_type"), "client_credentials");
    assert_eq!(sent.param("scope"), "officernd.api.write a&b=c#d+e");
    assert_eq!(sent.param("audience"), "https://aud.example.com");
    assert_eq!(sent.param("tenant"), "x&y=z");
    let resources: Vec<_> = sent
        .form()
        .into_iter()
        .filter(|(n, _)| n == "resource")
        .map(|(_, v)| v)
        .collect();
    assert_eq!(resources, ["https://api.example.com/", "urn:example:other"]);
    let raw = String::from_utf8(sent.body.to_vec()).unwrap();
    assert!(
        raw.contains("scope=officernd.api.write+a%26b%3Dc%23d%2Be"),
        "{raw}"
    );
    assert!(!raw.contains("s3cret"), "the secret travels in the header");
}

#[tokio::test]
async fn bad_token_urls_are_refused_at_build_time() {
    // 4
    for url in [
        "http://example.com/token",
        "https://example.com/token#frag",
        "ftp://example.com/t",
    ] {
        let err = ClientCredentials::builder()
            .token_url(url)
            .client_id("id")
            .client_secret("s")
            .build()
            .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Config, "{url}");
    }
    let no_id = ClientCredentials::builder()
        .token_url("https://example.com/t")
        .build();
    assert_eq!(no_id.unwrap_err().kind(), &ErrorKind::Config);
    let no_url = ClientCredentials::builder().client_id("id").build();
    assert_eq!(no_url.unwrap_err().kind(), &ErrorKind::Config);
    let reserved = ClientCredentials::builder()
        .token_url("https://example.com/t")
        .client_id("id")
        .param("grant_type", "password")
        .build();
    assert_eq!(reserved.unwrap_err().kind(), &ErrorKind::Config);
}

#[tokio::test]
async fn redirects_are_not_followed() {
    // 5
    for status in [302, 307] {
        let target = Recorder::start().await;
        let server = Recorder::start().await;
        server.reply([Reply::json(status, "{}").with_header("location", &target.url("/steal"))]);
        let err = cc(&server).build().unwrap().fetch().await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Redirect, "{status}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert!(
            target.requests().is_empty(),
            "{status}: the redirect target was reached"
        );
    }
}

#[tokio::test]
async fn answers_without_expiry_or_with_odd_token_types() {
    // 7, 8
    let (_, token) = answer(Reply::json(
        200,
        r#"{"access_token":"x","token_type":"Bearer"}"#,
    ))
    .await;
    assert_eq!(token.unwrap().expires_in(), None);
    for kind in ["bearer", "BEARER"] {
        let body = format!(r#"{{"access_token":"x","token_type":"{kind}"}}"#);
        let (_, token) = answer(Reply::json(200, &body)).await;
        assert_eq!(token.unwrap().header_value(), "Bearer x");
    }
    // 9
    for body in [
        r#"{"access_token":"x","token_type":"mac"}"#,
        r#"{"access_token":"x"}"#,
    ] {
        assert_eq!(
            answer_err(Reply::json(200, body)).await.kind(),
            &ErrorKind::InvalidResponse
        );
    }
    let server = Recorder::start().await;
    server.reply([Reply::json(200, r#"{"access_token":"x"}"#)]);
    let mut lenient = cc(&server).allow_missing_token_type(true).build().unwrap();
    assert!(lenient.fetch().await.is_ok());
}

#[tokio::test]
async fn expires_in_and_access_token_forms() {
    // 10
    let with =
        |v: &str| format!(r#"{{"access_token":"x","token_type":"bearer","expires_in":{v}}}"#);
    let (_, token) = answer(Reply::json(200, &with(r#""3599""#))).await;
    assert_eq!(token.unwrap().expires_in(), Some(Duration::from_secs(3599)));
    let (_, token) = answer(Reply::json(200, &with("null"))).await;
    assert_eq!(token.unwrap().expires_in(), None);
    for bad in [r#""abc""#, "-5", "true", "{}"] {
        assert_eq!(
            answer_err(Reply::json(200, &with(bad))).await.kind(),
            &ErrorKind::InvalidResponse,
            "{bad}"
        );
    }
    // 11
    let (_, token) = answer(Reply::json(
        200,
        r#"{"access_token":"x","token_type":"bearer","id_token":"a.b.c","ext_expires_in":1,"n":{"d":[{}]}}"#,
    ))
    .await;
    assert!(token.is_ok());
    // 12
    for body in [
        r#"{"token_type":"bearer"}"#,
        r#"{"access_token":"","token_type":"bearer"}"#,
        r#"{"access_token":7,"token_type":"bearer"}"#,
    ] {
        assert_eq!(
            answer_err(Reply::json(200, body)).await.kind(),
            &ErrorKind::InvalidResponse,
            "{body}"
        );
    }
}

#[tokio::test]
async fn oauth_errors_are_typed_whatever_the_status() {
    // 13, 14, 15
    for (status, code, expected) in [
        (200, "invalid_grant", OAuthErrorCode::InvalidGrant),
        (400, "invalid_scope", OAuthErrorCode::InvalidScope),
        (401, "invalid_client", OAuthErrorCode::InvalidClient),
        (
            400,
            "unauthorized_client",
            OAuthErrorCode::UnauthorizedClient,
        ),
        (
            400,
            "unsupported_grant_type",
            OAuthErrorCode::UnsupportedGrantType,
        ),
        (400, "invalid_request", OAuthErrorCode::InvalidRequest),
    ] {
        let body = format!(r#"{{"error":"{code}","error_description":"nope"}}"#);
        let (server, result) = answer(Reply::json(status, &body)).await;
        let err = result.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::OAuth(expected), "{code}");
        assert_eq!(err.status().map(|s| s.as_u16()), Some(status));
        assert_eq!(err.description(), Some("nope"));
        assert!(!err.is_transient(), "{code} is permanent");
        assert_eq!(
            server.requests().len(),
            1,
            "a grant never retries by itself"
        );
    }
}

#[tokio::test]
async fn server_errors_are_transient_and_bodies_stay_out_of_errors() {
    // 16, 17
    for (status, body) in [
        (500, r#"{"message":"SENTINEL-BODY"}"#),
        (502, "<html>SENTINEL-BODY</html>"),
        (503, "<html>SENTINEL-BODY</html>"),
    ] {
        let err = answer_err(Reply::Raw {
            status,
            headers: vec![],
            body: body.into(),
        })
        .await;
        assert_eq!(err.kind(), &ErrorKind::Status, "{status}");
        assert!(err.is_transient());
        assert!(!format!("{err} {err:?}").contains("SENTINEL"), "{err:?}");
    }
    for status in [429, 503] {
        let err = answer_err(Reply::json(status, "{}").with_header("retry-after", "120")).await;
        assert!(err.is_transient());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    }
}

#[tokio::test]
async fn huge_bodies_stop_at_the_bound() {
    // 18
    let huge = format!(
        r#"{{"access_token":"{}","token_type":"bearer"}}"#,
        "x".repeat(10 << 20)
    );
    let err = answer_err(Reply::json(200, &huge)).await;
    assert_eq!(err.kind(), &ErrorKind::ResponseTooLarge);
    let server = Recorder::start().await;
    server.reply([Reply::token(&"y".repeat(2000))]);
    let mut small_bound = cc(&server).max_response_bytes(1000).build().unwrap();
    assert_eq!(
        small_bound.fetch().await.unwrap_err().kind(),
        &ErrorKind::ResponseTooLarge
    );
}

#[tokio::test]
async fn hangs_time_out_and_refused_connections_are_network_errors() {
    let server = Recorder::start().await;
    server.reply([Reply::Hang]);
    let mut grant = cc(&server)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let err = grant.fetch().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Timeout);
    assert!(err.is_transient());

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut grant = ClientCredentials::builder()
        .token_url(format!("http://127.0.0.1:{port}/token"))
        .client_id("id")
        .client_secret("s")
        .build()
        .unwrap();
    let err = grant.fetch().await.unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::Network);
    assert!(err.is_transient());
}

fn refresh_grant(
    server: &Recorder,
    rotations: &Arc<Mutex<Vec<String>>>,
) -> tower_oauth2::grant::RefreshTokenBuilder {
    let seen = rotations.clone();
    RefreshToken::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .client_secret("s3cret")
        .refresh_token("rt-0")
        .on_refresh_token(move |rt| seen.lock().unwrap().push(rt.expose_secret().to_owned()))
}

fn refreshed(refresh_token: Option<&str>) -> Reply {
    let rt = match refresh_token {
        Some(rt) => format!(r#","refresh_token":{rt}"#),
        None => String::new(),
    };
    Reply::json(
        200,
        &format!(r#"{{"access_token":"at","token_type":"bearer","expires_in":60{rt}}}"#),
    )
}

#[tokio::test]
async fn refresh_tokens_rotate_and_are_kept_when_not_rotated() {
    // 19, 20
    let server = Recorder::start().await;
    server.reply([
        refreshed(Some(r#""rt-1""#)),
        refreshed(None),
        refreshed(Some(r#""""#)),
        refreshed(Some("null")),
        refreshed(Some(r#""rt-2""#)),
        refreshed(None),
    ]);
    let rotations = Arc::new(Mutex::new(Vec::new()));
    let mut grant = refresh_grant(&server, &rotations).build().unwrap();
    for _ in 0..6 {
        let token = grant.fetch().await.unwrap();
        assert!(token.refresh_token().is_some());
    }
    let sent: Vec<_> = server
        .requests()
        .iter()
        .map(|r| r.param("refresh_token"))
        .collect();
    assert_eq!(sent, ["rt-0", "rt-1", "rt-1", "rt-1", "rt-1", "rt-2"]);
    assert!(server
        .requests()
        .iter()
        .all(|r| r.param("grant_type") == "refresh_token"));
    assert_eq!(*rotations.lock().unwrap(), ["rt-1", "rt-2"]);
    assert_eq!(
        grant.current_refresh_token().unwrap().expose_secret(),
        "rt-2"
    );
}

#[tokio::test]
async fn orange_logic_sends_the_refresh_token_as_code() {
    let server = Recorder::start().await;
    server.reply([refreshed(Some(r#""rt-1""#))]);
    let mut grant = refresh_grant(&server, &Arc::default())
        .refresh_token_param("code")
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    let sent = server.last();
    assert_eq!(sent.param("code"), "rt-0");
    assert!(!sent.has_param("refresh_token"));
    assert_eq!(sent.param("grant_type"), "refresh_token");
}

#[tokio::test]
async fn invalid_grant_on_refresh_means_reauthorization() {
    // 21
    let server = Recorder::start().await;
    server.reply([Reply::json(400, r#"{"error":"invalid_grant"}"#)]);
    let err = refresh_grant(&server, &Arc::default())
        .build()
        .unwrap()
        .fetch()
        .await
        .unwrap_err();
    assert!(err.is_reauthorization_required());
    assert_eq!(err.kind(), &ErrorKind::ReauthorizationRequired);
    assert_eq!(err.oauth_code(), Some(&OAuthErrorCode::InvalidGrant));
}

fn code_grant(server: &Recorder, method: AuthMethod) -> AuthorizationCode {
    AuthorizationCode::builder()
        .token_url(server.url("/token"))
        .client_id("web")
        .client_secret("web-secret")
        .auth_method(method)
        .code("the-code")
        .redirect_uri("https://app.example.com/cb")
        .code_verifier("v".repeat(43))
        .build()
        .unwrap()
}

#[tokio::test]
async fn authorization_code_exchanges_once_then_refreshes() {
    for method in [AuthMethod::ClientSecretBasic, AuthMethod::ClientSecretPost] {
        let server = Recorder::start().await;
        server.reply([
            refreshed(Some(r#""rt-1""#)),
            refreshed(Some(r#""rt-2""#)),
            refreshed(None),
        ]);
        let mut grant = code_grant(&server, method);
        for _ in 0..3 {
            grant.fetch().await.unwrap();
        }
        let sent = server.requests();
        assert_eq!(sent[0].param("grant_type"), "authorization_code");
        assert_eq!(sent[0].param("code"), "the-code");
        assert_eq!(sent[0].param("redirect_uri"), "https://app.example.com/cb");
        assert_eq!(sent[0].param("code_verifier"), "v".repeat(43));
        assert_eq!(sent[1].param("refresh_token"), "rt-1");
        assert_eq!(sent[2].param("refresh_token"), "rt-2");
        assert!(sent[1..]
            .iter()
            .all(|r| !r.has_param("code") && r.param("grant_type") == "refresh_token"));
    }
}

#[tokio::test]
async fn a_code_is_retried_after_a_transient_failure_only() {
    let server = Recorder::start().await;
    server.reply([Reply::json(503, "{}"), refreshed(Some(r#""rt-1""#))]);
    let mut grant = code_grant(&server, AuthMethod::ClientSecretBasic);
    assert!(grant.fetch().await.unwrap_err().is_transient());
    grant.fetch().await.unwrap();
    let codes: Vec<_> = server.requests().iter().map(|r| r.param("code")).collect();
    assert_eq!(codes, ["the-code", "the-code"]);

    let server = Recorder::start().await;
    server.reply([Reply::json(400, r#"{"error":"invalid_grant"}"#)]);
    let mut grant = code_grant(&server, AuthMethod::ClientSecretBasic);
    assert!(grant
        .fetch()
        .await
        .unwrap_err()
        .is_reauthorization_required());
    let again = grant.fetch().await.unwrap_err();
    assert!(again.is_reauthorization_required());
    assert_eq!(
        server.requests().len(),
        1,
        "a refused code is never sent again"
    );
}

#[tokio::test]
async fn rotated_refresh_tokens_survive_answers_the_client_refuses() {
    // 29, 30: against a server that revokes the family on any reuse.
    use support::rotating::{Rotating, Shape};
    let server = Rotating::start(Some("rt-0"), None).await;
    let shapes = [
        Shape::ErrorNull,
        Shape::UnknownTokenType,
        Shape::ErrorEmpty,
        Shape::SpaceInAccessToken,
        Shape::NegativeExpiry,
        Shape::Plain,
    ];
    server.shapes(shapes);
    let rotations = Arc::new(Mutex::new(Vec::new()));
    let seen = rotations.clone();
    let mut grant = RefreshToken::builder()
        .token_url(&server.url)
        .client_id("my-app")
        .client_secret("s3cret")
        .refresh_token("rt-0")
        .on_refresh_token(move |rt| seen.lock().unwrap().push(rt.expose_secret().to_owned()))
        .build()
        .unwrap();
    for shape in shapes {
        match grant.fetch().await {
            Ok(token) => {
                assert!(shape.is_usable(), "{shape:?} accepted");
                // The token of that answer, with its own refresh token.
                let rt = token.refresh_token().unwrap().expose_secret().to_owned();
                assert_eq!(server.current(), Some(rt));
            }
            Err(error) => {
                assert!(!shape.is_usable(), "{shape:?}: {error}");
                assert_eq!(error.kind(), &ErrorKind::InvalidResponse, "{shape:?}");
                assert!(!format!("{error} {error:?}").contains("rt-"), "{error:?}");
            }
        }
    }
    assert_eq!(server.reuses(), 0);
    assert!(!server.revoked(), "re-authorization would be required");
    assert_eq!(
        server.received(),
        ["rt-0", "rt-1", "rt-2", "rt-3", "rt-4", "rt-5"]
    );
    assert_eq!(
        *rotations.lock().unwrap(),
        ["rt-1", "rt-2", "rt-3", "rt-4", "rt-5", "rt-6"]
    );
    assert_eq!(
        grant
            .current_refresh_token()
            .map(|t| t.expose_secret().to_owned()),
        server.current()
    );
}

#[tokio::test]
async fn a_refused_code_exchange_keeps_its_refresh_token() {
    use support::rotating::{Rotating, Shape};
    let server = Rotating::start(None, Some("the-code")).await;
    server.shapes([Shape::UnknownTokenType]);
    let mut grant = AuthorizationCode::builder()
        .token_url(&server.url)
        .client_id("web")
        .client_secret("web-secret")
        .code("the-code")
        .build()
        .unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidResponse);
    // The code is spent; the refresh token it bought carries on.
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.refresh_token().unwrap().expose_secret(), "rt-2");
    assert_eq!(server.received(), ["rt-1"]);
    assert_eq!(server.reuses(), 0);
    assert!(!server.revoked());
}

#[tokio::test]
async fn the_rotating_server_does_revoke_a_reused_refresh_token() {
    // The check above would mean nothing if reuse went unnoticed.
    use support::rotating::Rotating;
    let server = Rotating::start(Some("rt-0"), None).await;
    let grant = |rt: &str| {
        RefreshToken::builder()
            .token_url(&server.url)
            .client_id("my-app")
            .refresh_token(rt)
            .build()
            .unwrap()
    };
    grant("rt-0").fetch().await.unwrap();
    let error = grant("rt-0").fetch().await.unwrap_err();
    assert!(error.is_reauthorization_required());
    assert_eq!(server.reuses(), 1);
    assert!(server.revoked());
    assert!(
        grant("rt-1").fetch().await.is_err(),
        "the family is revoked"
    );
}

/// A token URL whose server answers `200` with `Content-Length: 100 MB`,
/// then sends nothing and keeps the connection open.
async fn announces_a_huge_body() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/token", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0; 4096];
        let _ = socket.read(&mut request).await;
        let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100000000\r\n\r\n";
        socket.write_all(head.as_bytes()).await.unwrap();
        std::future::pending::<()>().await;
    });
    url
}

/// The same guarantees whatever carries the bytes: reqwest (the default) and
/// a user's hyper-util client given with `transport`.
#[tokio::test]
async fn every_transport_keeps_the_endpoint_rules() {
    type Builder = tower_oauth2::grant::ClientCredentialsBuilder;
    let hyper = |builder: Builder| {
        let client: Client<HttpConnector, String> =
            Client::builder(TokioExecutor::new()).build_http();
        builder.transport(client)
    };
    let transports: [(&str, &dyn Fn(Builder) -> Builder); 2] =
        [("reqwest", &|builder| builder), ("hyper-util", &hyper)];
    for (name, with_transport) in transports {
        let server = Recorder::start().await;
        let target = Recorder::start().await;
        server.reply([
            Reply::token("t1"),
            Reply::json(302, "{}").with_header("location", &target.url("/steal")),
            Reply::token(&"y".repeat(2000)),
            Reply::Hang,
        ]);
        let mut grant = with_transport(cc(&server).timeout(Duration::from_millis(300)))
            .max_response_bytes(1000)
            .build()
            .unwrap();
        let token = grant.fetch().await.unwrap();
        assert_eq!(token.access_token().expose_secret(), "t1", "{name}");
        let sent = server.last();
        assert_eq!(sent.method, "POST", "{name}");
        assert_eq!(sent.param("grant_type"), "client_credentials", "{name}");
        assert_eq!(
            sent.header("content-type"),
            Some("application/x-www-form-urlencoded"),
            "{name}"
        );
        assert_eq!(sent.header("accept"), Some("application/json"), "{name}");
        assert!(sent.header("authorization").is_some(), "{name}");

        let redirect = grant.fetch().await.unwrap_err();
        assert_eq!(redirect.kind(), &ErrorKind::Redirect, "{name}");
        assert!(target.requests().is_empty(), "{name}: redirect followed");
        let large = grant.fetch().await.unwrap_err();
        assert_eq!(large.kind(), &ErrorKind::ResponseTooLarge, "{name}");
        let hang = grant.fetch().await.unwrap_err();
        assert_eq!(hang.kind(), &ErrorKind::Timeout, "{name}");

        // A body announced too large is refused before any of it is read
        // (this one never comes: reading would end in Timeout).
        let announced = with_transport(
            ClientCredentials::builder()
                .token_url(announces_a_huge_body().await)
                .client_id("id")
                .client_secret("s")
                .timeout(Duration::from_millis(300)),
        );
        let err = announced.build().unwrap().fetch().await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::ResponseTooLarge, "{name}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let closed = with_transport(
            ClientCredentials::builder()
                .token_url(format!("http://127.0.0.1:{port}/token"))
                .client_id("id")
                .client_secret("s"),
        );
        let err = closed.build().unwrap().fetch().await.unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Network, "{name}");
        assert!(err.is_transient(), "{name}");

        let plain_http = with_transport(
            ClientCredentials::builder()
                .token_url("http://example.com/token")
                .client_id("id")
                .client_secret("s"),
        );
        assert_eq!(
            plain_http.build().unwrap_err().kind(),
            &ErrorKind::Config,
            "{name}"
        );
    }
}

// -- private_key_jwt (RFC 7523 §2.2) ------------------------------------------

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn rsa_key() -> tower_oauth2::PrivateKey {
    tower_oauth2::PrivateKey::from_pem(
        tower_oauth2::JwsAlgorithm::Rs256,
        include_str!("keys/rsa.pem"),
    )
    .unwrap()
}

/// The claims of a compact JWS, unverified.
fn jwt_claims(jws: &str) -> serde_json::Value {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "{jws}");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

#[tokio::test]
async fn private_key_jwt_sends_a_fresh_assertion_in_the_body() {
    let server = Recorder::start().await;
    server.reply([Reply::token("t"), Reply::token("t"), Reply::token("t")]);
    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/oauth/token"))
        .client_id("my-app")
        .private_key_jwt(rsa_key().with_kid("k1"))
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    grant.fetch().await.unwrap();
    let sent = server.requests();
    let mut jtis = Vec::new();
    for request in &sent {
        assert_eq!(request.header("authorization"), None);
        assert!(!request.has_param("client_secret"));
        assert_eq!(request.param("client_id"), "my-app");
        assert_eq!(request.param("client_assertion_type"), JWT_BEARER);
        let claims = jwt_claims(&request.param("client_assertion"));
        assert_eq!(claims["iss"], "my-app");
        assert_eq!(claims["sub"], "my-app");
        assert_eq!(
            claims["aud"],
            server.url("/oauth/token"),
            "the token URL by default"
        );
        let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
        assert_eq!(lifetime, 120);
        jtis.push(claims["jti"].as_str().unwrap().to_owned());
    }
    assert_ne!(jtis[0], jtis[1], "every request has its own assertion");

    let mut issuer_aud = ClientCredentials::builder()
        .token_url(server.url("/oauth/token"))
        .client_id("my-app")
        .private_key_jwt(rsa_key())
        .client_assertion_audience("https://issuer.example")
        .client_assertion_lifetime(Duration::from_secs(60))
        .build()
        .unwrap();
    issuer_aud.fetch().await.unwrap();
    let claims = jwt_claims(&server.last().param("client_assertion"));
    assert_eq!(claims["aud"], "https://issuer.example");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
}

#[tokio::test]
async fn the_client_assertion_callback_runs_once_per_request() {
    let server = Recorder::start().await;
    server.reply([Reply::token("t"), Reply::token("t")]);
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .client_assertion(move || {
            let mut calls = counter.lock().unwrap();
            *calls += 1;
            // Files often end in a newline; it is trimmed.
            let answer = format!("header.claims-{calls}.signature\n");
            async move { Ok::<_, std::io::Error>(answer) }
        })
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    grant.fetch().await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 2);
    let sent = server.requests();
    for (i, request) in sent.iter().enumerate() {
        assert_eq!(request.param("client_id"), "my-app");
        assert_eq!(request.param("client_assertion_type"), JWT_BEARER);
        assert_eq!(
            request.param("client_assertion"),
            format!("header.claims-{}.signature", i + 1)
        );
        assert_eq!(request.header("authorization"), None);
    }

    // A failing callback fails the fetch before anything is sent.
    for (failing, what) in [
        (
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no token file",
            )),
            "an error",
        ),
        (Ok(" \n".to_owned()), "an empty assertion"),
    ] {
        let failing = Arc::new(Mutex::new(Some(failing)));
        let mut grant = ClientCredentials::builder()
            .token_url(server.url("/token"))
            .client_id("my-app")
            .client_assertion(move || {
                let answer = failing.lock().unwrap().take().unwrap();
                async move { answer }
            })
            .build()
            .unwrap();
        let error = grant.fetch().await.unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::ClientAssertion, "{what}: {error}");
        assert!(error.is_transient(), "{what}: the next call may succeed");
    }
    assert_eq!(
        server.requests().len(),
        2,
        "no request without an assertion"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_assertion_callback_that_hangs_times_out() {
    let server = Recorder::start().await;
    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .timeout(Duration::from_secs(5))
        .client_assertion(std::future::pending::<Result<String, std::io::Error>>)
        .build()
        .unwrap();
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Timeout);
    assert!(error.is_transient());
    assert!(
        server.requests().is_empty(),
        "nothing sent without an assertion"
    );
}

#[tokio::test]
async fn private_key_jwt_settings_that_cannot_work_are_refused() {
    let server = Recorder::start().await;
    let base = || {
        ClientCredentials::builder()
            .token_url(server.url("/token"))
            .client_id("my-app")
    };
    let cases = [
        (
            "a secret too",
            base().private_key_jwt(rsa_key()).client_secret("s"),
        ),
        (
            "another method",
            base()
                .private_key_jwt(rsa_key())
                .auth_method(AuthMethod::ClientSecretPost),
        ),
        ("no key", base().auth_method(AuthMethod::PrivateKeyJwt)),
        (
            "a zero lifetime",
            base()
                .private_key_jwt(rsa_key())
                .client_assertion_lifetime(Duration::ZERO),
        ),
        (
            "a day's lifetime",
            base()
                .private_key_jwt(rsa_key())
                .client_assertion_lifetime(Duration::from_secs(86_400)),
        ),
        (
            "client_assertion as a parameter",
            base()
                .private_key_jwt(rsa_key())
                .param("client_assertion", "x"),
        ),
        (
            "client_assertion_type as a parameter",
            base()
                .private_key_jwt(rsa_key())
                .param("client_assertion_type", "x"),
        ),
    ];
    for (what, builder) in cases {
        let error = builder.build().expect_err(what);
        assert_eq!(error.kind(), &ErrorKind::Config, "{what}: {error}");
    }
    assert!(base()
        .private_key_jwt(rsa_key())
        .auth_method(AuthMethod::PrivateKeyJwt)
        .build()
        .is_ok());
}

#[tokio::test]
async fn a_retry_through_the_cache_signs_a_new_assertion() {
    let server = Recorder::start().await;
    server.reply([Reply::json(503, "{}"), Reply::token("t")]);
    let grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .private_key_jwt(rsa_key())
        .build()
        .unwrap();
    let policy = tower_oauth2::RefreshPolicy::new()
        .initial_backoff(Duration::from_millis(20))
        .wait_for_retry(Duration::from_secs(5));
    let cache = tower_oauth2::TokenCache::with_policy(grant, policy);
    let mut token = cache.token().await;
    if token.is_err() {
        // The first answer may reach this caller before the retry is due.
        token = cache.token().await;
    }
    token.expect("the retry succeeds");
    let jtis: Vec<String> = server
        .requests()
        .iter()
        .map(|r| {
            jwt_claims(&r.param("client_assertion"))["jti"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(jtis.len(), 2);
    assert_ne!(jtis[0], jtis[1], "the retry did not replay the assertion");
}

/// A stand-in for OfficeRnD's token endpoint: like the real one, it takes
/// the client's id and secret only in the form body (`client_secret_post`)
/// and answers `invalid_client` to a Basic header.
async fn officernd_like() -> String {
    use axum::{body::Bytes, http::HeaderMap, routing::post, Router};
    let token = |headers: HeaderMap, body: Bytes| async move {
        let form: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
        let has = |name: &str, value: &str| form.iter().any(|(n, v)| n == name && v == value);
        let in_body = has("client_id", "my-app") && has("client_secret", "s3cret");
        if headers.contains_key(http::header::AUTHORIZATION) || !in_body {
            return (
                http::StatusCode::UNAUTHORIZED,
                [(http::header::CONTENT_TYPE, "application/json")],
                r#"{"error":"invalid_client"}"#.to_owned(),
            );
        }
        (
            http::StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            r#"{"access_token":"officernd-token","token_type":"Bearer","expires_in":3599,"scope":"officernd.api.read officernd.api.write"}"#.to_owned(),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
    let app = Router::new().route("/oauth/token", post(token));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    url
}

/// The README's first snippet (and the crate root's), with the token URL of
/// a loopback stand-in for OfficeRnD: it gets a token. The same grant
/// without `ClientSecretPost` sends a Basic header and is refused, which is
/// what the snippet did before it named the method.
#[tokio::test]
async fn the_readme_snippet_gets_a_token_from_an_officernd_like_server() {
    let token_url = officernd_like().await;
    let grant = ClientCredentials::builder()
        .token_url(&token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .auth_method(AuthMethod::ClientSecretPost) // OfficeRnD takes the secret in the form body
        .scope("officernd.api.read officernd.api.write")
        .build()
        .unwrap();
    let cache = TokenCache::new(grant);
    let token = cache.token().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "officernd-token");
    assert_eq!(
        token.scopes(),
        ["officernd.api.read", "officernd.api.write"]
    );

    let basic = ClientCredentials::builder()
        .token_url(&token_url)
        .client_id("my-app")
        .client_secret("s3cret")
        .scope("officernd.api.read officernd.api.write")
        .build()
        .unwrap();
    let error = TokenCache::new(basic).token().await.unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::OAuth(OAuthErrorCode::InvalidClient),
        "{error}"
    );
}
