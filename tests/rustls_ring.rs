//! The `reqwest-rustls-ring` feature set, aws-lc-rs nowhere: the default
//! transport's client builds (the crate installs ring as rustls's
//! process-default provider, without which reqwest panics) and
//! `private_key_jwt` signs with ring. Compiled only in that feature set:
//!
//! `cargo test --no-default-features --features reqwest-rustls-ring --test rustls_ring`
#![cfg(all(feature = "reqwest-rustls-ring", not(feature = "aws-lc-rs")))]

mod support;

use support::{
    jws,
    recorder::{Recorder, Reply},
};
use tower_oauth2::{
    secrecy::ExposeSecret as _, ClientCredentials, JwsAlgorithm, PrivateKey, TokenSource,
};

// One test: the process-default provider is the process's, shared by every
// test in this binary.
#[tokio::test]
async fn the_default_transport_and_private_key_jwt_run_on_ring() {
    assert!(
        rustls::crypto::CryptoProvider::get_default().is_none(),
        "nothing installed a provider yet"
    );
    let server = Recorder::start().await;
    server.reply([Reply::token("t1"), Reply::token("t2")]);

    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .client_secret("s")
        .build()
        .expect("the default client builds");
    let token = grant.fetch().await.unwrap();
    assert_eq!(token.access_token().expose_secret(), "t1");
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());

    let key = PrivateKey::from_pem(JwsAlgorithm::Es256, include_str!("keys/ec.pem")).unwrap();
    let mut grant = ClientCredentials::builder()
        .token_url(server.url("/token"))
        .client_id("my-app")
        .private_key_jwt(key.clone())
        .build()
        .unwrap();
    grant.fetch().await.unwrap();
    let assertion = server.last().param("client_assertion");
    jws::verify(&assertion, &key.public_jwk()).expect("ring's ES256 signature verifies");
}
