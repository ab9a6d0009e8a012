//! How requests reach the authorization server: reqwest by default, or any
//! tower service the user already has (a hyper-util client with their proxy,
//! TLS and DNS setup, say).
//!
//! Whatever carries the bytes, the rules stay here: the caller checked the URL
//! (`https`, or `http` to loopback or to a host listed with
//! `danger_allow_http_hosts`), a redirect answer is refused, the whole
//! exchange (sending and reading the body) is bounded by one timeout, and no
//! more than the configured number of body bytes is read.

use std::{future::Future, time::Duration};

use bytes::{Buf, Bytes};
use http::{HeaderMap, Method, StatusCode};
use http_body::Body;
use http_body_util::{combinators::UnsyncBoxBody, BodyExt};
use tower::{util::BoxCloneSyncService, BoxError, Service, ServiceExt};
use url::Url;

use crate::Error;

type Boxed = BoxCloneSyncService<http::Request<String>, http::Response<ResponseBody>, BoxError>;
type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A cloneable, type-erased service that sends one request. (`pub` only so
/// that the sealed [`HttpService`] can name it; this module is private.)
#[derive(Clone)]
pub struct Transport(Boxed);

/// A tower service that can carry token and discovery requests: any
/// `Service<http::Request<B>>` answering `http::Response<_>` whose body
/// implements `http_body::Body`, cloneable and `Send + Sync`, where
/// `B: From<String>` (`String`, `Full<Bytes>`, `reqwest::Body`, axum's
/// `Body`): a hyper-util client, or a tower stack around one. Implemented for
/// every such service; nothing to implement.
pub trait HttpService<B>: sealed::Sealed<B> {}

impl<S: sealed::Sealed<B>, B> HttpService<B> for S {}

mod sealed {
    pub trait Sealed<B> {
        fn into_transport(self) -> super::Transport;
    }
}

impl<S, ReqB, ResB> sealed::Sealed<ReqB> for S
where
    S: Service<http::Request<ReqB>, Response = http::Response<ResB>>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ReqB: From<String> + 'static,
    ResB: Body + Send + 'static,
    ResB::Data: Send,
    ResB::Error: Into<BoxError>,
{
    fn into_transport(self) -> Transport {
        let service = self
            .map_request(|request: http::Request<String>| request.map(ReqB::from))
            .map_response(|response: http::Response<ResB>| {
                response.map(|body| {
                    body.map_frame(|frame| {
                        frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                    })
                    .map_err(Into::into)
                    .boxed_unsync()
                })
            })
            .map_err(Into::into);
        Transport(BoxCloneSyncService::new(service))
    }
}

/// What came back: status, headers, and at most the allowed number of bytes.
pub(crate) struct Answer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Why no [`Answer`] came back.
pub(crate) enum Failure {
    /// The body was larger than allowed; status and headers are still useful.
    TooLarge {
        status: StatusCode,
        headers: HeaderMap,
    },
    /// Anything else: no connection, a timeout, a redirect, a broken body.
    Error(Error),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Error(error)
    }
}

impl Transport {
    /// Wraps a user's service (see [`HttpService`]).
    pub(crate) fn new<B>(service: impl HttpService<B>) -> Self {
        service.into_transport()
    }

    /// reqwest's client, which reports where it ended up: a client that was
    /// built to follow redirects is caught here.
    #[cfg(reqwest_client)]
    pub(crate) fn reqwest(client: reqwest::Client) -> Self {
        let service = tower::service_fn(move |request: http::Request<String>| {
            let client = client.clone();
            async move {
                let request = reqwest::Request::try_from(request)?;
                let sent_to = request.url().clone();
                let response = client.execute(request).await?;
                if response.url() != &sent_to {
                    return Err(Error::redirect(StatusCode::TEMPORARY_REDIRECT).into());
                }
                Ok::<_, BoxError>(http::Response::<reqwest::Body>::from(response))
            }
        });
        Self::new(service)
    }

    /// The default transport: reqwest with the TLS stack the features
    /// picked, following no redirect.
    ///
    /// With `reqwest-rustls-ring` (and not `reqwest`, whose rustls brings
    /// aws-lc-rs as its own default), reqwest's rustls has no provider of its
    /// own and would panic here: ring becomes the process's default rustls
    /// `CryptoProvider` first, unless the application installed one.
    pub(crate) fn default_client() -> Result<Self, Error> {
        Self::default_client_with(None, None)
    }

    /// [`default_client`](Self::default_client), presenting `identity` in
    /// every TLS handshake (RFC 8705) and trusting the PEM certificates of
    /// `roots` beside the platform's.
    pub(crate) fn default_client_with(
        identity: Option<&super::ClientIdentity>,
        roots: Option<&[u8]>,
    ) -> Result<Self, Error> {
        #[cfg(reqwest_client)]
        {
            #[cfg(all(feature = "reqwest-rustls-ring", not(feature = "reqwest")))]
            if rustls::crypto::CryptoProvider::get_default().is_none() {
                // Losing a race to another installer leaves a provider in place all the same.
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
            #[cfg_attr(not(reqwest_tls), allow(unused_mut))]
            let mut builder =
                reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
            #[cfg(reqwest_tls)]
            {
                if let Some(identity) = identity {
                    builder = builder.identity(identity.reqwest_identity()?);
                    // A rustls identity fits only rustls, which reqwest
                    // stops using by default when something else in the
                    // build turns its native-tls on.
                    #[cfg(not(feature = "reqwest-native-tls"))]
                    {
                        builder = builder.tls_backend_rustls();
                    }
                }
                if let Some(roots) = roots {
                    let roots = reqwest::Certificate::from_pem_bundle(roots).map_err(|_| {
                        Error::config("the TLS root certificates are not valid PEM certificates")
                    })?;
                    if roots.is_empty() {
                        return Err(Error::config(
                            "the TLS root certificates hold no PEM certificate",
                        ));
                    }
                    builder = builder.tls_certs_merge(roots);
                }
            }
            #[cfg(not(reqwest_tls))]
            if identity.is_some() || roots.is_some() {
                return Err(Error::config(
                    "a client certificate or root certificates need reqwest with a TLS stack",
                ));
            }
            let client = builder.build().map_err(|_| match identity {
                // rustls checks here that the key is the certificate's.
                Some(_) => Error::config(
                    "could not build the HTTP client with the client certificate \
                     (is the key the certificate's?)",
                ),
                None => Error::config("could not build the HTTP client"),
            })?;
            Ok(Self::reqwest(client))
        }
        #[cfg(not(reqwest_client))]
        {
            let _ = (identity, roots);
            Err(Error::config(
                "no HTTP transport: enable the `reqwest` feature (or `reqwest-rustls-ring`, \
             `reqwest-native-tls`) or call `transport(...)`",
            ))
        }
    }

    /// Sends `request` and reads the answer, all within `timeout`, reading at
    /// most `max_body` bytes.
    pub(crate) async fn send(
        &self,
        request: http::Request<String>,
        timeout: Duration,
        max_body: usize,
    ) -> Result<Answer, Failure> {
        bounded(timeout, self.exchange(request, max_body)).await?
    }

    async fn exchange(
        &self,
        request: http::Request<String>,
        max_body: usize,
    ) -> Result<Answer, Failure> {
        let response = self
            .0
            .clone()
            .oneshot(request)
            .await
            .map_err(from_transport)?;
        let (parts, mut body) = response.into_parts();
        if parts.status.is_redirection() {
            return Err(Error::redirect(parts.status).into());
        }
        let too_large = |parts: http::response::Parts| Failure::TooLarge {
            status: parts.status,
            headers: parts.headers,
        };
        // The body's `size_hint` does not survive the frame mapping that
        // makes every transport's body one type; the header does.
        let announced = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
        if announced.is_some_and(|length| length > max_body as u64) {
            return Err(too_large(parts));
        }
        let mut bytes = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(from_transport)?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > max_body {
                    return Err(too_large(parts));
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body: bytes.into(),
        })
    }
}

/// A `GET` of `uri` without a body.
pub(crate) fn get(uri: http::Uri) -> http::Request<String> {
    let mut request = http::Request::new(String::new());
    *request.method_mut() = Method::GET;
    *request.uri_mut() = uri;
    request
}

/// The URL as an `http` URI; the two parsers differ on a few characters.
pub(crate) fn to_uri(url: &Url) -> Result<http::Uri, Error> {
    url.as_str()
        .parse()
        .map_err(|_| Error::config(format!("`{url}` is not a valid HTTP URI")))
}

async fn bounded<T>(timeout: Duration, exchange: impl Future<Output = T>) -> Result<T, Error> {
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Error::timeout(timeout))
}

/// Keeps the crate's own errors (a redirect the reqwest client followed) and
/// reqwest's timeout classification; anything else is a network failure.
fn from_transport(error: BoxError) -> Error {
    let error = match error.downcast::<Error>() {
        Ok(error) => return *error,
        Err(error) => error,
    };
    #[cfg(reqwest_client)]
    let error = match error.downcast::<reqwest::Error>() {
        Ok(error) => return Error::from_transport(*error),
        Err(error) => error,
    };
    Error::network(error)
}
