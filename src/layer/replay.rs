//! Which requests can be sent a second time after a 401.

use bytes::Bytes;
use http::Request;

/// A request body that can (sometimes) be copied, so the request can be
/// replayed once with a new token after a `401 invalid_token`.
///
/// [`BearerAuth`](super::BearerAuth) copies a request before sending it only
/// when `try_clone` returns `Some`; a body that cannot be copied is sent as
/// is, and a 401 for it is returned to the caller (after the token has been
/// invalidated, so the caller's own retry gets a new one).
///
/// Implemented for the usual in-memory bodies, which are always copied; for
/// streaming bodies (`BoxBody`, `UnsyncBoxBody`, and with the `axum` feature
/// `axum::body::Body`), which are copied only when known to be empty; and,
/// with the `hyper` feature, for `hyper::body::Incoming`, which never is.
/// Implement it for your own body type:
///
/// ```
/// use tower_oauth2::layer::ReplayBody;
///
/// #[derive(Clone)]
/// struct Json(bytes::Bytes);
///
/// impl ReplayBody for Json {
///     fn try_clone(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// ```
pub trait ReplayBody: Sized {
    /// A copy of this body, or `None` when it cannot be sent twice.
    fn try_clone(&self) -> Option<Self>;
}

macro_rules! copyable {
    ($($ty:ty),* $(,)?) => {$(
        impl ReplayBody for $ty {
            fn try_clone(&self) -> Option<Self> {
                Some(self.clone())
            }
        }
    )*};
}

copyable!((), String, Vec<u8>, Bytes, &'static str, &'static [u8],);

impl<D: Clone> ReplayBody for http_body_util::Full<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(self.clone())
    }
}

impl<D> ReplayBody for http_body_util::Empty<D> {
    fn try_clone(&self) -> Option<Self> {
        Some(*self)
    }
}

/// Streaming bodies are copied only when they are known to be empty (a GET,
/// say): then a fresh empty body is as good as the original.
macro_rules! copy_if_empty {
    ($($ty:ty $(: $($generic:ident),*)?);* $(;)?) => {$(
        impl$(<$($generic),*>)? ReplayBody for $ty
        where
            $ty: http_body::Body + Default,
        {
            fn try_clone(&self) -> Option<Self> {
                (http_body::Body::size_hint(self).exact() == Some(0)).then(Self::default)
            }
        }
    )*};
}

copy_if_empty!(
    http_body_util::combinators::BoxBody<D, E>: D, E;
    http_body_util::combinators::UnsyncBoxBody<D, E>: D, E;
);

#[cfg(feature = "axum")]
copy_if_empty!(axum_core::body::Body);

/// Incoming bodies cannot be made anew, not even empty ones.
#[cfg(feature = "hyper")]
impl ReplayBody for hyper::body::Incoming {
    fn try_clone(&self) -> Option<Self> {
        None
    }
}

/// A copy of `request` with every part but the body cloned, if the body can be.
pub(crate) fn try_clone_request<B: ReplayBody>(request: &Request<B>) -> Option<Request<B>> {
    let body = request.body().try_clone()?;
    let mut copy = Request::new(body);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{combinators::BoxBody, BodyExt, Full};

    #[derive(Clone, Debug, PartialEq)]
    struct Marker(u8);

    #[test]
    fn copies_every_part() {
        let request = Request::post("https://api.example.com/items?x=1")
            .header("x-trace", "abc")
            .extension(Marker(7))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let copy = try_clone_request(&request).unwrap();
        assert_eq!(copy.method(), request.method());
        assert_eq!(copy.uri(), request.uri());
        assert_eq!(copy.headers(), request.headers());
        assert_eq!(copy.extensions().get::<Marker>(), Some(&Marker(7)));
    }

    #[test]
    fn streaming_bodies_are_copied_only_when_empty() {
        type Streaming = BoxBody<Bytes, std::convert::Infallible>;
        let full: Streaming = Full::new(Bytes::from_static(b"data")).boxed();
        assert!(try_clone_request(&Request::new(full)).is_none());
        let empty: Streaming = http_body_util::Empty::new().boxed();
        let copy = try_clone_request(&Request::new(empty)).expect("an empty body is copied");
        assert_eq!(http_body::Body::size_hint(copy.body()).exact(), Some(0));
    }
}
