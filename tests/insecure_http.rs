//! Plain http to hosts the user lists (`danger_allow_http_hosts`), for test
//! setups such as a Keycloak container reached as `http://keycloak:8080`.
//!
//! No request here leaves the process: the transport is a tower service that
//! answers in memory and records where each request was addressed, so a host
//! name that resolves nowhere can still be "reached".

mod support;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use support::logs::Captured;
use tower_oauth2::{
    discovery::{Discovery, ServerMetadata},
    ClientCredentials, DiscoveryErrorKind, Error, ErrorKind, RefreshToken, TokenCache,
    TokenEndpoint,
};

const ISSUER: &str = "http://keycloak:8080/realms/ci";
const TOKEN_URL: &str = "http://keycloak:8080/realms/ci/protocol/openid-connect/token";
const TOKEN_BODY: &str = r#"{"access_token":"at-1","token_type":"Bearer","expires_in":3600}"#;

/// An in-memory server: answers the discovery document at its well-known
/// path and a token everywhere else, and records every request's URI.
#[derive(Clone)]
struct InMemory {
    seen: Arc<Mutex<Vec<String>>>,
    document: String,
}

impl InMemory {
    fn new(document: serde_json::Value) -> Self {
        Self {
            seen: Arc::default(),
            document: document.to_string(),
        }
    }

    fn keycloak() -> Self {
        Self::new(serde_json::json!({
            "issuer": ISSUER,
            "token_endpoint": TOKEN_URL,
            "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        }))
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl tower::Service<
        http::Request<String>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
           + Send
           + Sync
           + 'static {
        let this = self.clone();
        tower::service_fn(move |request: http::Request<String>| {
            let this = this.clone();
            async move {
                let uri = request.uri().to_string();
                this.seen.lock().unwrap().push(uri.clone());
                let body = if uri.contains("/.well-known/") {
                    this.document.clone()
                } else {
                    TOKEN_BODY.to_owned()
                };
                let response = http::Response::builder()
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(body)
                    .unwrap();
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn grant(token_url: &str, hosts: Option<&[&str]>) -> Result<ClientCredentials, Error> {
    let mut builder = ClientCredentials::builder()
        .token_url(token_url)
        .client_id("ci-client")
        .client_secret("ci-secret")
        .transport(InMemory::keycloak().service());
    if let Some(hosts) = hosts {
        builder = builder.danger_allow_http_hosts(hosts.iter().copied());
    }
    builder.build()
}

fn assert_config(result: Result<impl std::fmt::Debug, Error>, what: &str) -> Error {
    let error = result.expect_err(what);
    assert_eq!(error.kind(), &ErrorKind::Config, "{what}: {error}");
    error
}

#[test]
fn plain_http_to_a_named_host_is_refused_by_default() {
    let error = assert_config(grant(TOKEN_URL, None), "no opt-in");
    assert!(
        error.to_string().contains("danger_allow_http_hosts"),
        "the refusal names the way out: {error}"
    );
    assert_config(
        TokenEndpoint::builder()
            .token_url(TOKEN_URL)
            .client_id("ci-client")
            .build(),
        "TokenEndpoint without opt-in",
    );
    assert_config(
        RefreshToken::builder()
            .token_url(TOKEN_URL)
            .client_id("ci-client")
            .refresh_token("rt")
            .build(),
        "RefreshToken without opt-in",
    );
    // An empty list is no opt-in.
    assert_config(grant(TOKEN_URL, Some(&[])), "empty list");
}

#[test]
fn a_listed_host_is_accepted_by_every_grant() {
    grant(TOKEN_URL, Some(&["keycloak"])).expect("ClientCredentials");
    TokenEndpoint::builder()
        .token_url(TOKEN_URL)
        .client_id("ci-client")
        .danger_allow_http_hosts(["keycloak"])
        .build()
        .expect("TokenEndpoint");
    RefreshToken::builder()
        .token_url(TOKEN_URL)
        .client_id("ci-client")
        .refresh_token("rt")
        .danger_allow_http_hosts(vec![String::from("keycloak")])
        .build()
        .expect("RefreshToken");
}

#[tokio::test]
async fn a_token_is_fetched_over_http_from_a_listed_host() {
    let server = InMemory::keycloak();
    let grant = ClientCredentials::builder()
        .token_url(TOKEN_URL)
        .client_id("ci-client")
        .client_secret("ci-secret")
        .danger_allow_http_hosts(["keycloak"])
        .transport(server.service())
        .build()
        .unwrap();
    let token = TokenCache::new(grant).token().await.unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(token.access_token()),
        "at-1"
    );
    assert_eq!(server.seen(), [TOKEN_URL]);
}

#[test]
fn only_the_listed_hosts_match_exactly_and_case_insensitively() {
    let listed: &[&str] = &["KeyCloak", "10.0.0.5", "[fd00::5]", "fd00::6"];
    for good in [
        TOKEN_URL,
        "http://KEYCLOAK:8080/token",
        "http://keycloak/token",
        "http://10.0.0.5:8080/token",
        "http://[fd00::5]/token",
        "http://[fd00::6]:8080/token",
        // Today's rules still hold.
        "https://login.example.com/token",
        "http://127.0.0.1:9/token",
        "http://localhost/token",
    ] {
        grant(good, Some(listed)).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in [
        "http://keycloak.example.com/token",
        "http://sub.keycloak/token",
        "http://keycloak2:8080/token",
        "http://keycloak./token",
        "http://10.0.0.6/token",
        "http://[fd00::7]/token",
        "ftp://keycloak/token",
        "http://user:pw@keycloak/token",
        "http://keycloak/token#fragment",
    ] {
        assert_config(grant(bad, Some(listed)), bad);
    }
}

#[test]
fn entries_that_are_not_hosts_are_refused_at_build() {
    for entry in [
        "keycloak:8080",
        "http://keycloak",
        "keycloak/realms",
        "",
        "key cloak",
        "http://ci:pw-7f3a@keycloak",
    ] {
        // Even where the list is not needed: a typo must not pass silently.
        let error = assert_config(
            grant("https://login.example.com/token", Some(&["ok", entry])),
            entry,
        );
        let text = format!("{error} {error:?}");
        assert!(text.contains("danger_allow_http_hosts"), "{text}");
        assert!(text.contains("entry 2"), "{text}");
        // A URL pasted by mistake may hold credentials: not repeated.
        assert!(!text.contains("pw-7f3a"), "{text}");
    }
}

#[test]
fn each_listed_host_is_warned_about_once() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Host names no other test uses: the warning is once per process.
    let listed: &[&str] = &["warn-once-a", "warn-once-b"];

    grant("https://login.example.com/token", Some(listed)).unwrap();
    grant("http://127.0.0.1:9/token", Some(listed)).unwrap();
    assert!(
        !logs.text().contains("danger_allow_http_hosts"),
        "no warning while no listed host is used: {}",
        logs.text()
    );

    for _ in 0..3 {
        grant("http://warn-once-a:8080/token", Some(listed)).unwrap();
    }
    grant("http://WARN-ONCE-B/token", Some(listed)).unwrap();
    let text = logs.text();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|line| line.contains("danger_allow_http_hosts"))
        .collect();
    assert_eq!(warnings.len(), 2, "{text}");
    assert!(warnings[0].contains("WARN") && warnings[0].contains("warn-once-a"));
    assert!(warnings[1].contains("warn-once-b"));
    assert!(!text.contains("ci-secret"), "{text}");
}

#[tokio::test]
async fn discovery_refuses_an_http_issuer_by_default() {
    let server = InMemory::keycloak();
    let error = Discovery::builder()
        .transport(server.service())
        .build()
        .metadata(ISSUER)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
    assert!(server.seen().is_empty(), "nothing was sent");

    // A document read by other means keeps the strict rules too.
    let document = server.document.clone();
    let error = ServerMetadata::from_json(ISSUER, document.as_bytes()).unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::Discovery(DiscoveryErrorKind::InsecureEndpoint)
    );
}

#[tokio::test]
async fn discovery_with_the_opt_in_reads_an_http_issuer_and_its_grant_works() {
    let server = InMemory::keycloak();
    let metadata = Discovery::builder()
        .transport(server.service())
        .danger_allow_http_hosts(["keycloak"])
        .build()
        .metadata(ISSUER)
        .await
        .unwrap();
    assert_eq!(metadata.token_endpoint().as_str(), TOKEN_URL);
    assert_eq!(
        server.seen(),
        ["http://keycloak:8080/realms/ci/.well-known/openid-configuration"]
    );

    // The grant takes the document's http endpoint without a second opt-in.
    let grant = ClientCredentials::builder()
        .metadata(&metadata)
        .client_id("ci-client")
        .client_secret("ci-secret")
        .transport(server.service())
        .build()
        .unwrap();
    let token = TokenCache::new(grant).token().await.unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(token.access_token()),
        "at-1"
    );
    assert_eq!(server.seen().last().map(String::as_str), Some(TOKEN_URL));

    // A token URL the user sets still needs the grant's own opt-in.
    let error = ClientCredentials::builder()
        .metadata(&metadata)
        .token_url("http://other-host:8080/token")
        .client_id("ci-client")
        .client_secret("ci-secret")
        .transport(server.service())
        .build()
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
}

#[tokio::test]
async fn discovery_refuses_http_endpoints_of_hosts_not_listed() {
    let server = InMemory::new(serde_json::json!({
        "issuer": ISSUER,
        "token_endpoint": "http://attacker:8080/token",
    }));
    let error = Discovery::builder()
        .transport(server.service())
        .danger_allow_http_hosts(["keycloak"])
        .build()
        .metadata(ISSUER)
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        &ErrorKind::Discovery(DiscoveryErrorKind::InsecureEndpoint),
        "{error}"
    );

    // Nor an issuer of a host not listed.
    let server = InMemory::keycloak();
    let error = Discovery::builder()
        .transport(server.service())
        .danger_allow_http_hosts(["keycloak-2"])
        .build()
        .metadata(ISSUER)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn discovery_refuses_entries_that_are_not_hosts() {
    let server = InMemory::keycloak();
    let error = Discovery::builder()
        .transport(server.service())
        .danger_allow_http_hosts(["keycloak:8080"])
        .build()
        .metadata("https://login.example.com")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Config, "{error}");
    assert!(server.seen().is_empty());
}
