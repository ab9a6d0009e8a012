//! The response future of [`BearerAuth`](super::BearerAuth).

use std::{
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{header::AUTHORIZATION, Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{replay::try_clone_request, BearerAuthError, Replay, ReplayBody, RetryOn};
use crate::TokenCache;

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, BearerAuthError<E>>> + Send>>;

pin_project! {
    /// Response future of [`BearerAuth`](super::BearerAuth).
    ///
    /// When a token was ready, this is the inner service's future and
    /// nothing more; waiting for a token or replaying after a 401 happens in
    /// a boxed future, off the usual path.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<B>>,
    {
        Sent {
            #[pin]
            future: S::Future,
            replay: Option<Replay<S, B>>,
        },
        Boxed {
            future: BoxFuture<S::Response, S::Error>,
        },
    }
}

impl<S, B, ResBody> ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    pub(super) fn passthrough(future: S::Future) -> Self {
        Self {
            state: State::Sent {
                future,
                replay: None,
            },
        }
    }

    pub(super) fn sent(future: S::Future, replay: Replay<S, B>) -> Self {
        Self {
            state: State::Sent {
                future,
                replay: Some(replay),
            },
        }
    }

    /// `ready` has been polled ready; it is called once a token is there.
    pub(super) fn wait_for_token(
        mut ready: S,
        cache: TokenCache,
        mut request: Request<B>,
        retry: Option<RetryOn>,
    ) -> Self {
        let future = async move {
            let token = cache.token().await.map_err(BearerAuthError::Token)?;
            request
                .headers_mut()
                .insert(AUTHORIZATION, token.header_value().clone());
            let replay = retry.map(|retry| Replay {
                retry,
                token_id: token.id(),
                request: try_clone_request(&request),
                service: ready.clone(),
                cache,
            });
            let response = ready
                .call(request)
                .await
                .map_err(BearerAuthError::Service)?;
            match replay.and_then(|replay| replay.after(&response)) {
                Some(resend) => resend.await,
                None => Ok(response),
            }
        };
        Self {
            state: State::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: ReplayBody + Send + 'static,
    ResBody: Send + 'static,
{
    type Output = Result<Response<ResBody>, BearerAuthError<S::Error>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let resend = match this.state.as_mut().project() {
                StateProj::Sent { future, replay } => {
                    let response = ready!(future.poll(cx)).map_err(BearerAuthError::Service)?;
                    match replay.take().and_then(|replay| replay.after(&response)) {
                        Some(resend) => resend,
                        None => return Poll::Ready(Ok(response)),
                    }
                }
                StateProj::Boxed { future } => return future.as_mut().poll(cx),
            };
            this.state.set(State::Boxed {
                future: Box::pin(resend),
            });
        }
    }
}

impl<S, B, ResBody> Replay<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
    ResBody: Send + 'static,
{
    /// Reads the first answer. When it says the token was rejected, drops
    /// that token and, if the request could be copied, returns the second
    /// (and last) attempt.
    pub(super) fn after(
        self,
        response: &Response<ResBody>,
    ) -> Option<
        impl Future<Output = Result<Response<ResBody>, BearerAuthError<S::Error>>> + Send + 'static,
    > {
        if !self.retry.matches(response) {
            return None;
        }
        tracing::debug!(target: "tower_oauth2", replay = self.request.is_some(), "401: token rejected");
        self.cache.invalidate_id(self.token_id);
        let mut request = self.request?;
        let mut service = self.service;
        let cache = self.cache;
        Some(async move {
            let token = cache.token().await.map_err(BearerAuthError::Token)?;
            request
                .headers_mut()
                .insert(AUTHORIZATION, token.header_value().clone());
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(BearerAuthError::Service)?;
            service
                .call(request)
                .await
                .map_err(BearerAuthError::Service)
        })
    }
}
