//! OAuth 2.0 bearer authentication for [tower] clients.
//!
//! Wrap any `Service<http::Request<B>>` (any body type: hyper, axum, a tonic
//! channel) or a `reqwest::Client` in [`BearerAuthLayer`] and every
//! request leaves with `Authorization: Bearer <token>`. The token comes from
//! a [`TokenCache`] that every clone of the service shares: reading it is one
//! atomic load, a background task refreshes it before it expires, and however
//! many requests arrive at once, at most one token request is in flight.
//!
//! The data flow, and the modules, in order:
//!
//! ```text
//! grant (how to get a token) ─▶ endpoint (one form POST) ─▶ cache (shared, refreshed) ─▶ layer (per request)
//! ClientCredentials              TokenEndpoint                TokenCache + RefreshPolicy    BearerAuthLayer
//! RefreshToken                   client auth (secret,              │                        BearerAuth<S>
//! AuthorizationCode               private_key_jwt),                ▼
//! (OAuthClient makes them;       bounded body, typed errors,  store (between processes)
//!  or your own TokenSource;      over reqwest or your own     TokenStore: FileStore,
//!  discovery fills in the        tower service                RedisStore, yours
//!  endpoint from an issuer)
//! ```
//!
//! ```no_run
//! # use std::convert::Infallible;
//! # async fn run() -> Result<(), tower_oauth2::Error> {
//! # let inner = tower::service_fn(|_: http::Request<String>| async {
//! #     Ok::<_, Infallible>(http::Response::new(String::new()))
//! # });
//! use tower::ServiceBuilder;
//! use tower_oauth2::{AuthMethod, BearerAuthLayer, ClientCredentials, TokenCache};
//!
//! let grant = ClientCredentials::builder()
//!     .token_url("https://identity.officernd.com/oauth/token")
//!     .client_id("my-app")
//!     .client_secret("s3cret")
//!     .auth_method(AuthMethod::ClientSecretPost) // OfficeRnD takes the secret in the form body
//!     .scope("officernd.api.read officernd.api.write")
//!     .build()?;                            // Result<ClientCredentials, tower_oauth2::Error>
//! let cache = TokenCache::new(grant);       // Clone; inside a Tokio runtime
//! let client = ServiceBuilder::new()
//!     .layer(BearerAuthLayer::new(cache.clone()))
//!     .service(inner);                      // any Service<http::Request<B>> + Clone
//! let token = cache.token().await?;         // the current valid token (fetches if needed)
//! # drop((client, token));
//! # Ok(())
//! # }
//! ```
//!
//! The module docs of [`layer`], [`cache`], [`store`], [`grant`],
//! [`endpoint`] and [`discovery`] go further, each with an example; [`layer::replay`] sends a
//! request once more after a rejected token, and the `reqwest-middleware`
//! feature adds `BearerAuthMiddleware` for `reqwest_middleware` clients.
//! The `dpop` feature binds tokens to a key the client holds (RFC 9449):
//! see its `dpop` module. A grant's `client_certificate` ([`ClientIdentity`])
//! authenticates with mutual TLS and has tokens bound to the certificate
//! (RFC 8705).
//! The `metrics` feature counts token requests, waits, rejected tokens,
//! replays and saves through the `metrics` facade: see [`metrics`] for the
//! names.
//!
//! Secrets (client secret, access and refresh tokens) never appear in the
//! `Debug` or `Display` output of any type in this crate, nor in its errors
//! or `tracing` events; the header the layer inserts is marked sensitive.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![deny(missing_docs)]
#![warn(rust_2018_idioms, unreachable_pub)]

#[cfg(all(
    feature = "private-key-jwt",
    not(any(feature = "aws-lc-rs", feature = "ring"))
))]
compile_error!(
    "the `private-key-jwt` feature needs a signing backend: turn on the `aws-lc-rs` \
     or the `ring` feature (`reqwest` turns on aws-lc-rs, `reqwest-rustls-ring` ring)"
);
#[cfg(all(
    feature = "reqwest-middleware",
    not(any(
        feature = "reqwest",
        feature = "reqwest-rustls-ring",
        feature = "reqwest-native-tls"
    ))
))]
compile_error!(
    "the `reqwest-middleware` feature needs reqwest with a TLS stack: turn on `reqwest` \
     (rustls on aws-lc-rs), `reqwest-rustls-ring` or `reqwest-native-tls`"
);

pub mod cache;
mod clock;
#[cfg(signing)]
mod crypto;
pub mod discovery;
#[cfg(dpop)]
#[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
pub mod dpop;
pub mod endpoint;
mod error;
pub mod grant;
pub mod layer;
pub mod metrics;
#[cfg(feature = "reqwest-middleware")]
mod middleware;
pub mod store;
mod token;

pub use cache::{CacheBuilder, CacheMap, CacheMapBuilder, CacheStats, RefreshPolicy, TokenCache};
#[cfg(dpop)]
#[cfg_attr(docsrs, doc(cfg(feature = "dpop")))]
pub use dpop::{DpopKey, DpopSigner};
pub use endpoint::{AssertionContext, AuthMethod, ClientIdentity, TokenEndpoint, TokenTypeHint};
#[cfg(signing)]
#[cfg_attr(docsrs, doc(cfg(feature = "private-key-jwt")))]
pub use endpoint::{JwsAlgorithm, PrivateKey};
pub use error::{DiscoveryErrorKind, Error, ErrorKind, OAuthErrorCode, StoreErrorKind};
pub use grant::{
    token_types, AuthorizationCode, ClientCredentials, DeviceAuthorization, JwtBearer, OAuthClient,
    RefreshToken, TokenExchange, TokenSource,
};
pub use layer::{BearerAuth, BearerAuthError, BearerAuthLayer, Replay, TokenRejected};
#[cfg(feature = "reqwest-middleware")]
#[cfg_attr(docsrs, doc(cfg(feature = "reqwest-middleware")))]
pub use middleware::BearerAuthMiddleware;
/// The `secrecy` crate this one uses: refresh tokens reach you as its
/// [`SecretString`](secrecy::SecretString), and this re-export saves matching
/// its version by hand.
pub use secrecy;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
pub use store::{Expect, FileStore, Lease, Saved, StoreKey, TokenState, TokenStore};
pub use token::{Token, TokenBuilder};
