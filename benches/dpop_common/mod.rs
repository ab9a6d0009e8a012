//! What the DPoP benches share: the request, a trivial inner service, the
//! key, and a warm cache holding a DPoP-bound token for it.
#![allow(dead_code)]

use std::{
    convert::Infallible,
    future::{ready, Ready},
    task::{Context, Poll},
};

use http::{Request, Response};
use tower::Service;
use tower_oauth2::{ClientCredentials, DpopKey, JwsAlgorithm, PrivateKey, TokenCache};

use super::common::TOKEN;

pub const URL: &str = "https://api.example.com/v1/items/42?expand=owner";

/// The inner service: answers at once, whatever the headers.
#[derive(Clone, Copy)]
pub struct Answer;

impl<B> Service<Request<B>> for Answer {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

pub fn key() -> PrivateKey {
    let pem = include_str!("../../tests/keys/ec.pem");
    PrivateKey::from_pem(JwsAlgorithm::Es256, pem).unwrap()
}

/// A warm cache holding a DPoP-bound token for `key`, from a token
/// endpoint answered in-process.
pub fn dpop_cache(runtime: &tokio::runtime::Runtime, key: DpopKey) -> TokenCache {
    let answer = format!(r#"{{"access_token":"{TOKEN}","token_type":"DPoP","expires_in":86400}}"#);
    let transport = tower::service_fn(move |_: Request<String>| {
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(Response::new(answer)) }
    });
    let grant = ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth2/token")
        .client_id("bench")
        .client_secret("s3cret")
        .transport(transport)
        .dpop(key)
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = TokenCache::new(grant);
        let token = cache.token().await.unwrap();
        assert_eq!(token.token_type(), "DPoP");
        cache
    })
}
