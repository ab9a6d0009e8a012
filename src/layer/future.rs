//! The response future of [`BearerAuth`](super::BearerAuth).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use pin_project_lite::pin_project;

use super::{message::mark_if_rejected, registry, AuthResponse, BearerAuthError};

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, BearerAuthError<E>>> + Send>>;

/// The token a request was sent with: enough to drop it if it is rejected,
/// and small (no handle, so no reference count per request).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub(crate) token_id: u64,
    /// The cache's index in the registry: 16 bytes in all, so the response
    /// future carries little more than the inner one.
    pub(crate) cache: u32,
    pub(crate) plain_401: bool,
}

impl Sent {
    /// Reads the answer: a rejected token is dropped from its cache, and the
    /// answer marked [`TokenRejected`](super::TokenRejected). The usual
    /// answer (neither a 401 nor a 200 with headers) costs two comparisons.
    #[inline(always)]
    pub(crate) fn check<R: AuthResponse>(self, response: &mut R) {
        if super::rejection::may_reject(response.status(), response.headers()) {
            self.check_slow(response);
        }
    }

    #[inline(never)]
    fn check_slow<R: AuthResponse>(self, response: &mut R) {
        if mark_if_rejected(response, self.plain_401) {
            tracing::debug!(target: "tower_oauth2", "token rejected; dropped from the cache");
            let cache = registry::invalidate(self.cache, self.token_id);
            crate::metrics::rejected_by(response.extensions_mut(), cache.as_ref());
        }
    }
}

pin_project! {
    /// Response future of [`BearerAuth`](super::BearerAuth).
    ///
    /// When a token was ready, this is the inner service's future and two
    /// integers; waiting for a token happens in a boxed future, off the
    /// usual path.
    pub struct ResponseFuture<F, T, E> {
        #[pin]
        state: State<F, T, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, T, E> {
        Sent {
            #[pin]
            future: F,
            sent: Option<Sent>,
        },
        Waiting {
            future: BoxFuture<T, E>,
        },
    }
}

impl<F, T, E> ResponseFuture<F, T, E> {
    pub(super) fn sent(future: F, sent: Option<Sent>) -> Self {
        Self {
            state: State::Sent { future, sent },
        }
    }

    pub(super) fn waiting(future: BoxFuture<T, E>) -> Self {
        Self {
            state: State::Waiting { future },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, T, E>
where
    F: Future<Output = Result<T, E>>,
    T: AuthResponse,
{
    type Output = Result<T, BearerAuthError<E>>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Sent { future, sent } => {
                let mut response = ready!(future.poll(cx)).map_err(BearerAuthError::Service)?;
                if let Some(sent) = sent.take() {
                    sent.check(&mut response);
                }
                Poll::Ready(Ok(response))
            }
            StateProj::Waiting { future } => future.as_mut().poll(cx),
        }
    }
}

impl<F, T, E> std::fmt::Debug for ResponseFuture<F, T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
