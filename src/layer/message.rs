//! The request and response types the layer works with: `http`'s (any body
//! type) and `reqwest`'s. Sealed: the crate implements them, users never do.

use http::{header::AUTHORIZATION, HeaderMap, HeaderValue, StatusCode};

use super::{origin::Target, NoBearerAuth, TokenRejected};

pub(crate) mod sealed {
    use super::*;

    /// What the layer does with a request.
    pub trait Request {
        fn opted_out(&self) -> bool;
        fn target(&self) -> Option<Target<'_>>;
        fn set_authorization(&mut self, value: HeaderValue);
        /// The method and where the request goes, as a DPoP proof names
        /// them; a URI that is a path only goes to `relative`, if given.
        #[cfg(dpop)]
        fn dpop_target(&self, relative: Option<&str>) -> Option<(&str, crate::dpop::Htu)>;
        /// Sets the `DPoP` proof header.
        #[cfg(dpop)]
        fn set_dpop(&mut self, proof: HeaderValue);
    }

    /// What the layer reads from a response.
    pub trait Response {
        fn status(&self) -> StatusCode;
        fn headers(&self) -> &HeaderMap;
        fn extensions(&self) -> &http::Extensions;
        fn extensions_mut(&mut self) -> &mut http::Extensions;
    }
}

/// A request [`BearerAuth`](super::BearerAuth) can add a token to:
/// [`http::Request<B>`] for any body type `B`, and [`reqwest::Request`].
///
/// Sealed: this crate implements it for those types; nobody else needs to.
#[diagnostic::on_unimplemented(
    message = "`BearerAuth` cannot add a token to a `{Self}`",
    label = "not an `http::Request<B>`, nor a `reqwest::Request` with the `reqwest` feature",
    note = "`reqwest::Request` needs one of tower-oauth2's reqwest features (`reqwest`, on by default); check `default-features = false` in Cargo.toml"
)]
pub trait AuthRequest: sealed::Request {}

/// A response [`BearerAuth`](super::BearerAuth) reads the status of:
/// [`http::Response<B>`] for any body type `B`, and [`reqwest::Response`].
///
/// Sealed: this crate implements it for those types; nobody else needs to.
#[diagnostic::on_unimplemented(
    message = "`BearerAuth` cannot read a `{Self}`",
    label = "not an `http::Response<B>`, nor a `reqwest::Response` with the `reqwest` feature",
    note = "`reqwest::Response` needs one of tower-oauth2's reqwest features (`reqwest`, on by default); check `default-features = false` in Cargo.toml"
)]
pub trait AuthResponse: sealed::Response {}

impl<B> AuthRequest for http::Request<B> {}
#[cfg(reqwest_client)]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "reqwest",
        feature = "reqwest-rustls-ring",
        feature = "reqwest-native-tls"
    )))
)]
impl AuthRequest for reqwest::Request {}
impl<B> AuthResponse for http::Response<B> {}
#[cfg(reqwest_client)]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "reqwest",
        feature = "reqwest-rustls-ring",
        feature = "reqwest-native-tls"
    )))
)]
impl AuthResponse for reqwest::Response {}

impl<B> sealed::Request for http::Request<B> {
    #[inline]
    fn opted_out(&self) -> bool {
        self.extensions().get::<NoBearerAuth>().is_some()
    }

    fn target(&self) -> Option<Target<'_>> {
        let uri = self.uri();
        Some(Target {
            scheme: uri.scheme_str()?,
            host: uri.host()?,
            port: uri.port_u16(),
        })
    }

    #[inline]
    fn set_authorization(&mut self, value: HeaderValue) {
        self.headers_mut().insert(AUTHORIZATION, value);
    }

    #[cfg(dpop)]
    fn dpop_target(&self, relative: Option<&str>) -> Option<(&str, crate::dpop::Htu)> {
        let uri = self.uri();
        let htu = crate::dpop::Htu::of_uri(uri)
            .or_else(|| crate::dpop::Htu::of_relative(relative?, uri))?;
        Some((self.method().as_str(), htu))
    }

    #[cfg(dpop)]
    fn set_dpop(&mut self, proof: HeaderValue) {
        self.headers_mut().insert(crate::dpop::DPOP, proof);
    }
}

#[cfg(reqwest_client)]
impl sealed::Request for reqwest::Request {
    #[inline]
    fn opted_out(&self) -> bool {
        // `reqwest::Request` has no extensions; choose origins instead.
        false
    }

    fn target(&self) -> Option<Target<'_>> {
        let url = self.url();
        Some(Target {
            scheme: url.scheme(),
            host: url.host_str()?,
            port: url.port(),
        })
    }

    #[inline]
    fn set_authorization(&mut self, value: HeaderValue) {
        self.headers_mut().insert(AUTHORIZATION, value);
    }

    #[cfg(dpop)]
    fn dpop_target(&self, _: Option<&str>) -> Option<(&str, crate::dpop::Htu)> {
        Some((
            self.method().as_str(),
            crate::dpop::Htu::of_url(self.url())?,
        ))
    }

    #[cfg(dpop)]
    fn set_dpop(&mut self, proof: HeaderValue) {
        self.headers_mut().insert(crate::dpop::DPOP, proof);
    }
}

/// Both response types have the same four accessors under the same names.
macro_rules! response_via_inherent_methods {
    ($(#[$attr:meta])* impl$(<$b:ident>)? for $ty:ty) => {
        $(#[$attr])*
        impl$(<$b>)? sealed::Response for $ty {
            #[inline]
            fn status(&self) -> StatusCode {
                self.status()
            }

            #[inline]
            fn headers(&self) -> &HeaderMap {
                self.headers()
            }

            fn extensions(&self) -> &http::Extensions {
                self.extensions()
            }

            fn extensions_mut(&mut self) -> &mut http::Extensions {
                self.extensions_mut()
            }
        }
    };
}

response_via_inherent_methods!(impl<B> for http::Response<B>);
response_via_inherent_methods!(#[cfg(reqwest_client)] impl for reqwest::Response);

/// Marks `response` when it says the token sent was rejected.
pub(crate) fn mark_if_rejected<R: sealed::Response>(response: &mut R, plain_401: bool) -> bool {
    let rejected = super::rejection::rejects(response.status(), response.headers(), plain_401);
    if rejected {
        response.extensions_mut().insert(TokenRejected);
    }
    rejected
}
