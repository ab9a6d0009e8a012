//! DPoP (RFC 9449) end to end against servers that check every proof
//! (`support::dpop`): token requests with proofs and nonces, bound tokens,
//! API requests through the layer with `ath` and rotating nonces, and a
//! refused proof marked on the answer.

mod support;

use std::{collections::HashSet, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use support::dpop::DpopServer;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    dpop::DpopRejected,
    layer::{Replay, TokenRejected},
    BearerAuthLayer, BearerAuthMiddleware, ClientCredentials, DpopKey, FileStore, JwsAlgorithm,
    PrivateKey, RefreshPolicy, TokenCache, TokenSource,
};

type Http = Client<HttpConnector, Full<Bytes>>;

fn hyper_client() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

fn grant(issuer: &DpopServer, key: DpopKey) -> ClientCredentials {
    ClientCredentials::builder()
        .token_url(format!("{}/token", issuer.origin))
        .client_id("my-app")
        .client_secret("s3cret")
        .dpop(key)
        .build()
        .unwrap()
}

async fn get<S>(client: &mut S, url: &str) -> http::Response<hyper::body::Incoming>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<hyper::body::Incoming>>,
    S::Error: std::fmt::Debug,
{
    let request = Request::get(url).body(Full::default()).unwrap();
    client.ready().await.unwrap().call(request).await.unwrap()
}

#[tokio::test]
async fn token_requests_carry_a_proof_and_the_token_comes_back_bound() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    let key = DpopKey::generate().unwrap();
    let mut grant = grant(&issuer, key.clone());
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.token_type(), "DPoP");
    assert_eq!(token.dpop_jkt(), Some(key.thumbprint()));
    assert!(token
        .header_value()
        .to_str()
        .unwrap()
        .starts_with("DPoP tok1."));
    assert_eq!(issuer.accepted(), 1);
    assert!(issuer.refused().is_empty(), "{:?}", issuer.refused());
}

#[tokio::test]
async fn a_loaded_key_binds_like_a_generated_one() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    let pem = include_str!("keys/rsa.pem");
    let private = PrivateKey::from_pem(JwsAlgorithm::Ps256, pem).unwrap();
    let key = DpopKey::from_private_key(private.clone()).unwrap();
    assert_eq!(key.thumbprint(), private.thumbprint());
    let token = grant(&issuer, key).fetch().await.unwrap();
    assert_eq!(token.dpop_jkt(), Some(private.thumbprint().as_str()));
    assert!(issuer.refused().is_empty(), "{:?}", issuer.refused());
}

#[tokio::test]
async fn use_dpop_nonce_at_the_token_endpoint_is_retried_once_then_remembered() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    issuer.rotate_nonce();
    let key = DpopKey::generate().unwrap();
    let mut grant = grant(&issuer, key);
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.token_type(), "DPoP");
    let refused = issuer.refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(refused[0].starts_with("use_dpop_nonce"), "{refused:?}");
    // The nonce is remembered: the next request carries it at once.
    grant.fetch().await.unwrap();
    assert_eq!(issuer.refused().len(), 1);
    assert_eq!(issuer.accepted(), 2);
    // Rotated: one refusal, one retry.
    issuer.rotate_nonce();
    grant.fetch().await.unwrap();
    assert_eq!(issuer.refused().len(), 2);
    assert_eq!(issuer.accepted(), 3);
}

#[tokio::test(start_paused = true)]
async fn two_second_tokens_for_ten_seconds_with_rotating_nonces_all_accepted() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(2)).await;
    let api = DpopServer::api().await;
    issuer.rotate_nonce();
    api.rotate_nonce();
    let key = DpopKey::generate().unwrap();
    let cache = TokenCache::with_policy(grant(&issuer, key), RefreshPolicy::new().jitter(0.0));
    let mut client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(hyper_client());
    let mut rotations = 1;
    for i in 0..100 {
        if i % 25 == 12 {
            api.rotate_nonce();
            rotations += 1;
        }
        if i == 50 {
            issuer.rotate_nonce();
        }
        let url = format!("{}/api/items/{i}?page={i}#top", api.origin);
        let response = get(&mut client, &url).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "request {i}: {:?}",
            api.refused()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        issuer.issued() >= 5,
        "2 s tokens over 10 s: {}",
        issuer.issued()
    );
    let jtis = api.accepted_jtis();
    assert_eq!(jtis.len(), 100);
    let issuer_jtis = issuer.accepted_jtis();
    let unique: HashSet<&String> = jtis.iter().chain(issuer_jtis.iter()).collect();
    assert_eq!(unique.len(), 100 + issuer_jtis.len(), "every jti unique");
    let refused = api.refused();
    assert_eq!(refused.len(), rotations, "one per new nonce: {refused:?}");
    assert!(
        refused.iter().all(|r| r.starts_with("use_dpop_nonce")),
        "{refused:?}"
    );
    assert_eq!(
        cache.stats().invalidations,
        0,
        "a nonce request keeps the token"
    );
}

#[tokio::test]
async fn a_replayed_proof_is_refused_and_marked_without_dropping_the_token() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    let api = DpopServer::api().await;
    let cache = TokenCache::new(grant(&issuer, DpopKey::generate().unwrap()));
    // Below the layer: sends each request twice, as an attacker replaying
    // a captured request would, and hands back the second answer.
    let http = hyper_client();
    let twice = tower::service_fn(move |request: Request<Full<Bytes>>| {
        let http = http.clone();
        async move {
            let mut again = Request::builder()
                .method(request.method().clone())
                .uri(request.uri().clone())
                .body(Full::default())
                .unwrap();
            *again.headers_mut() = request.headers().clone();
            let first = http.clone().oneshot(request).await?;
            assert_eq!(first.status(), StatusCode::OK);
            http.oneshot(again).await
        }
    });
    let mut client = ServiceBuilder::new()
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(twice);
    let response = get(&mut client, &format!("{}/api/x", api.origin)).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let marked = response.extensions().get::<DpopRejected>().copied();
    assert_eq!(marked.map(|m| m.nonce()), Some(false), "invalid_dpop_proof");
    assert!(response.extensions().get::<TokenRejected>().is_none());
    assert_eq!(api.refused(), ["invalid_dpop_proof: jti replayed"]);
    assert_eq!(cache.stats().invalidations, 0, "the token itself was fine");
}

#[tokio::test]
async fn reqwest_requests_carry_the_proof_too() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    let api = DpopServer::api().await;
    api.rotate_nonce();
    let cache = TokenCache::new(grant(&issuer, DpopKey::generate().unwrap()));
    let mut client = ServiceBuilder::new()
        .retry(Replay::new())
        .layer(BearerAuthLayer::new(cache))
        .service(reqwest::Client::new());
    for i in 0..3 {
        let request = reqwest::Request::new(
            reqwest::Method::POST,
            format!("{}/api/r/{i}?q=1", api.origin).parse().unwrap(),
        );
        let response = client.ready().await.unwrap().call(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{:?}", api.refused());
    }
    assert_eq!(api.accepted(), 3);
    assert_eq!(api.refused().len(), 1, "the first nonce only");
}

/// reqwest-middleware: the same proofs, and `replay(true)` sends a
/// `use_dpop_nonce` answer once more with the nonce. Without `replay`, that
/// first answer comes back marked, and the next request carries the nonce.
#[tokio::test]
async fn reqwest_middleware_requests_carry_the_proof_too() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    let api = DpopServer::api().await;
    api.rotate_nonce();
    let cache = TokenCache::new(grant(&issuer, DpopKey::generate().unwrap()));
    let replaying = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            BearerAuthMiddleware::new(cache.clone())
                .allow_origin(&api.origin)
                .unwrap()
                .replay(true),
        )
        .build();
    for i in 0..3 {
        let response = replaying
            .post(format!("{}/api/m/{i}?q=1", api.origin))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{:?}", api.refused());
    }
    assert_eq!(api.accepted(), 3);
    assert_eq!(api.refused().len(), 1, "the first nonce only");

    api.rotate_nonce();
    let plain = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(BearerAuthMiddleware::new(cache.clone()))
        .build();
    let response = plain
        .get(format!("{}/api/m/x", api.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.extensions().get::<DpopRejected>().is_some());
    let response = plain
        .get(format!("{}/api/m/y", api.origin))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{:?}", api.refused());
    assert_eq!(api.accepted(), 4);
    assert_eq!(issuer.issued(), 1, "the token was kept throughout");
}

#[tokio::test]
async fn a_replica_adopts_a_stored_token_only_with_the_key_it_is_bound_to() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let shared_key = || {
        let pem = include_str!("keys/ec.pem");
        DpopKey::from_private_key(PrivateKey::from_pem(JwsAlgorithm::Es256, pem).unwrap()).unwrap()
    };
    let replica = |key: DpopKey| {
        TokenCache::builder(grant(&issuer, key))
            .store(FileStore::new(&path))
            .build()
    };

    let first = replica(shared_key());
    let jkt = first.token().await.unwrap().dpop_jkt().unwrap().to_owned();
    let stored = std::fs::read_to_string(&path).unwrap();
    assert!(
        stored.contains(r#""token_type":"DPoP""#),
        "{}",
        stored.len()
    );
    assert!(stored.contains(&jkt));
    assert_eq!(issuer.issued(), 1);

    // Same key (loaded on its own, as another replica would): adopted.
    let second = replica(shared_key());
    assert_eq!(second.token().await.unwrap().dpop_jkt(), Some(jkt.as_str()));
    assert_eq!(issuer.issued(), 1, "adopted, not fetched");
    first.shutdown().await.unwrap();
    second.shutdown().await.unwrap();
    drop((first, second));

    // Another key, and no holder of the first one left: its own token.
    let other = DpopKey::generate().unwrap();
    let third = replica(other.clone());
    let token = third.token().await.unwrap();
    assert_eq!(token.dpop_jkt(), Some(other.thumbprint()));
    assert_eq!(
        issuer.issued(),
        2,
        "a token bound to another key is not adopted"
    );
}

#[tokio::test]
async fn token_type_dpop_only_after_a_proof_and_nonces_retried_only_once() {
    use support::recorder::{Recorder, Reply};
    use tower_oauth2::{ErrorKind, OAuthErrorCode};
    let server = Recorder::start().await;
    let dpop_answer = r#"{"access_token":"at","token_type":"DPoP","expires_in":60}"#;

    // No key: a DPoP answer is not a token this client can use.
    server.reply([Reply::json(200, dpop_answer)]);
    let mut bearer = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .client_secret("s3cret")
        .build()
        .unwrap();
    let error = bearer.fetch().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::InvalidResponse);
    assert!(server.last().header("dpop").is_none());

    // A key: the proof is sent, and the server may still answer Bearer.
    let key = DpopKey::generate().unwrap();
    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/token?tenant=a"))
        .client_id("my-app")
        .client_secret("s3cret")
        .dpop(key.clone())
        .build()
        .unwrap();
    server.reply([Reply::token("plain")]);
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.token_type(), "Bearer");
    assert_eq!(token.dpop_jkt(), None);
    let proof = server.last().header("dpop").unwrap().to_owned();
    let jwk = {
        use base64::Engine as _;
        let header = proof.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
        )
        .unwrap();
        header["jwk"].to_string()
    };
    let (_, claims) = support::jws::verify(&proof, &jwk).unwrap();
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], server.url("/token"), "no query in htu");
    assert!(claims.get("ath").is_none() && claims.get("nonce").is_none());

    // use_dpop_nonce twice in a row: one retry, then the error, typed.
    let nonce =
        |n: &str| Reply::json(400, r#"{"error":"use_dpop_nonce"}"#).with_header("dpop-nonce", n);
    server.reply([nonce("n1"), nonce("n2")]);
    let before = server.requests().len();
    let error = grant.fetch().await.unwrap_err();
    assert_eq!(error.oauth_code(), Some(&OAuthErrorCode::UseDpopNonce));
    assert_eq!(server.requests().len(), before + 2, "retried once");
    // The next request carries the last nonce given.
    server.reply([Reply::json(200, dpop_answer)]);
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.dpop_jkt(), Some(key.thumbprint()));
    let proof = server.last().header("dpop").unwrap().to_owned();
    let (_, claims) = support::jws::verify(&proof, &jwk).unwrap();
    assert_eq!(claims["nonce"], "n2");
}

#[tokio::test]
async fn a_relative_uri_is_proved_for_the_layers_relative_uri_origin() {
    let issuer = DpopServer::token_endpoint(Duration::from_secs(60)).await;
    let api = DpopServer::api().await;
    let cache = TokenCache::new(grant(&issuer, DpopKey::generate().unwrap()));
    // Below the layer, as a tonic channel does: the origin is added to a
    // path-only URI.
    let http = hyper_client();
    let origin = api.origin.clone();
    let channel = tower::service_fn(move |mut request: Request<Full<Bytes>>| {
        let http = http.clone();
        *request.uri_mut() = format!("{origin}{}", request.uri()).parse().unwrap();
        http.oneshot(request)
    });
    let mut client = ServiceBuilder::new()
        .layer(
            BearerAuthLayer::new(cache)
                .relative_uri_origin(&api.origin)
                .unwrap(),
        )
        .service(channel);
    let response = get(&mut client, "/api/pkg.Service/Method").await;
    assert_eq!(response.status(), StatusCode::OK, "{:?}", api.refused());

    // Without the setting, such a request fails before it is sent, typed.
    let cache = TokenCache::new(grant(&issuer, DpopKey::generate().unwrap()));
    let mut bare =
        BearerAuthLayer::new(cache).layer(tower::service_fn(|_: Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(()))
        }));
    let request = Request::get("/api/x").body(Full::default()).unwrap();
    let error = bare.ready().await.unwrap().call(request).await.unwrap_err();
    match error {
        tower_oauth2::BearerAuthError::Token(e) => {
            assert_eq!(e.kind(), &tower_oauth2::ErrorKind::Config)
        }
        other => panic!("{other:?}"),
    }
}
