//! The layer's DPoP branch: taken only for a DPoP-bound token, so the
//! bearer path stays one atomic load and a header insert.

use std::{
    future::Future as _,
    sync::Arc,
    task::{Context, Poll},
};

use super::{
    future::Sent, message::sealed, AuthRequest, AuthResponse, BearerAuthError, TokenRejected,
};
use crate::{
    dpop::{Binding, DpopRejected, Htu},
    Error, Token, TokenCache,
};

/// Whether the token of id `token_id` is a DPoP one: a bit of the id the
/// hot path already holds, so a bearer request reads nothing more.
#[inline]
pub(crate) fn is_dpop(token_id: u64) -> bool {
    crate::token::is_dpop_id(token_id)
}

/// The binding of the token `token_id`: the one this service clone used
/// last (`last`), or the cache's when it has changed.
#[inline(never)]
pub(super) fn binding(
    last: &mut Option<(u64, Arc<Binding>)>,
    cache: &TokenCache,
    token_id: u64,
) -> Option<Arc<Binding>> {
    if let Some((id, binding)) = last {
        if *id == token_id {
            return Some(binding.clone());
        }
    }
    let binding = current_binding(cache, token_id)?;
    *last = Some((token_id, binding.clone()));
    Some(binding)
}

/// The binding of the cache's current token, if it is `token_id` and ready
/// now: the cache's own answer polled once, never waited for.
fn current_binding(cache: &TokenCache, token_id: u64) -> Option<Arc<Binding>> {
    let future = cache.token();
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(Ok(token)) if token.id() == token_id => token.dpop().cloned(),
        _ => None,
    }
}

/// What a DPoP request was sent with, to read its answer.
pub(crate) struct Proved {
    pub(crate) binding: Arc<Binding>,
    pub(crate) htu: Htu,
    pub(crate) sent: Sent,
}

/// Adds the proof for `request` to it. `Err` when the request names no
/// origin (a proof needs an absolute URI) or signing failed.
pub(super) fn prove<R: AuthRequest>(
    request: &mut R,
    binding: &Arc<Binding>,
    relative: Option<&str>,
) -> Result<Htu, Error> {
    let (method, htu) = sealed::Request::dpop_target(request, relative).ok_or_else(|| {
        Error::config(
            "a DPoP-bound token needs an absolute request URI (scheme://host/path), \
             or the layer's relative_uri_origin",
        )
    })?;
    let proof = binding.proof(method, &htu)?;
    sealed::Request::set_dpop(request, proof);
    Ok(htu)
}

/// Adds the token (and, for a DPoP token, its proof) to `request`.
pub(crate) fn authorize<R: AuthRequest>(
    request: &mut R,
    token: &Token,
    relative: Option<&str>,
) -> Result<Option<(Arc<Binding>, Htu)>, Error> {
    sealed::Request::set_authorization(request, token.header_value().clone());
    match token.dpop() {
        Some(binding) => {
            let htu = prove(request, binding, relative)?;
            Ok(Some((binding.clone(), htu)))
        }
        None => Ok(None),
    }
}

impl Proved {
    /// Reads the answer: remembers its nonce; a `use_dpop_nonce` or
    /// `invalid_dpop_proof` is marked [`DpopRejected`] and keeps the token
    /// (the first is also marked [`TokenRejected`] for `Replay`); anything
    /// else as for a bearer token.
    pub(crate) fn check<T: AuthResponse>(self, response: &mut T) {
        let headers = sealed::Response::headers(response);
        self.binding.key.remember_nonce(self.htu.origin(), headers);
        let status = sealed::Response::status(response);
        match super::rejection::dpop_error(status, headers) {
            Some(nonce) => {
                tracing::debug!(
                    target: "tower_oauth2",
                    nonce,
                    "DPoP proof refused ({})",
                    if nonce { "use_dpop_nonce" } else { "invalid_dpop_proof" }
                );
                let extensions = sealed::Response::extensions_mut(response);
                extensions.insert(DpopRejected::new(nonce));
                if nonce {
                    extensions.insert(TokenRejected);
                }
            }
            None => self.sent.check(response),
        }
    }
}

/// The future of a request that left with a proof, or could not.
pub(super) type Future<T, E> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, BearerAuthError<E>>> + Send>>;

/// A request whose proof could not be made: fails without being sent.
pub(super) fn failed<T, E>(error: Error) -> Future<T, E>
where
    T: Send + 'static,
    E: Send + 'static,
{
    Box::pin(std::future::ready(Err(BearerAuthError::Token(error))))
}
