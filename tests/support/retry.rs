//! A caller-side retry policy, as users put `tower::retry` outside the
//! layer: a fixed number of further attempts, a fixed delay apart, on any
//! error.

use std::time::Duration;

use http::{Request, Response};

#[derive(Clone)]
pub struct RetryOnError {
    left: usize,
    delay: Duration,
}

impl RetryOnError {
    /// `retries` more attempts, `delay` apart.
    pub fn new(retries: usize, delay: Duration) -> Self {
        Self {
            left: retries,
            delay,
        }
    }
}

impl<T, E> tower::retry::Policy<Request<()>, Response<T>, E> for RetryOnError {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _: &mut Request<()>,
        result: &mut Result<Response<T>, E>,
    ) -> Option<Self::Future> {
        if result.is_ok() || self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(tokio::time::sleep(self.delay))
    }

    fn clone_request(&mut self, request: &Request<()>) -> Option<Request<()>> {
        let mut copy = Request::new(());
        *copy.uri_mut() = request.uri().clone();
        *copy.headers_mut() = request.headers().clone();
        Some(copy)
    }
}
