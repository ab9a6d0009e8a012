//! What the integration tests share, in one place: fakes and servers.
//!
//! - [`scripted`]: a token source that answers from a script and panics when
//!   called once too often (cache and layer tests).
//! - [`recorder`]: a loopback token endpoint that records every request byte
//!   for byte and answers from a script (endpoint tests).
//! - [`rotating`]: a loopback token endpoint that rotates refresh tokens and
//!   revokes the family when one is reused.
//! - [`retry`]: a caller-side `tower::retry` policy, for stacks that put a
//!   retry outside the layer.
//! - [`upstream`]: a protected HTTP API on loopback that revokes tokens on
//!   demand (client tests).
//! - [`grpc`]: the same as a real tonic gRPC server, codegen-free (client tests).
//! - [`logs`]: what a test's `tracing` subscriber wrote, to search.
//! - [`jws`]: verifies a signed JWT with a public JWK, as a server would.
//! - [`dpop`]: an API and a token endpoint that check DPoP proofs as RFC
//!   9449 asks, with nonces they rotate on demand.
//! - [`redis`]: a real `redis-server` on a free loopback port, killed and
//!   restarted empty or from an older snapshot (fleet and chaos tests).
//! - [`proxy`]: a TCP proxy in front of it that holds replies or drops
//!   connections on demand (chaos tests).
//! - [`child`]: this test binary as a child process, running one ignored
//!   test (crash and fleet tests).
//! - [`authorize`]: an authorization endpoint and the person's browser
//!   (code flow tests).
//! - [`faketime`]: a system clock the test steps under a child process
//!   (clock tests).
#![allow(dead_code)]

pub mod apt;
pub mod authorize;
pub mod child;
pub mod dpop;
pub mod faketime;
pub mod grpc;
pub mod jws;
pub mod logs;
pub mod proxy;
pub mod recorder;
pub mod redis;
pub mod retry;
pub mod rotating;
pub mod scripted;
pub mod upstream;
