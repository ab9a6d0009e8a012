//! A gRPC service on loopback (a real tonic server), without code
//! generation: one unary method, `/test.Echo/Say`, with hand-written prost
//! messages. It checks the bearer token in the metadata like
//! [`super::upstream`]: revoked tokens get `UNAUTHENTICATED`.

use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::uri::PathAndQuery;
use tonic::{body::Body, server::NamedService, Status};
use tonic_prost::ProstCodec;

/// The request message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayRequest {
    #[prost(string, tag = "1")]
    pub message: String,
}

/// The answer: the message back, and the `authorization` the server saw.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SayReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(string, tag = "2")]
    pub authorization: String,
}

pub const SAY: &str = "/test.Echo/Say";

use super::upstream::{Ledger, Verdict};

/// The unary handler.
#[derive(Clone)]
struct Say(Ledger);

impl tower::Service<tonic::Request<SayRequest>> for Say {
    type Response = tonic::Response<SayReply>;
    type Error = Status;
    type Future = std::future::Ready<Result<Self::Response, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::Request<SayRequest>) -> Self::Future {
        let auth = request
            .metadata()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        if self.0.check(&auth) != Verdict::Accepted {
            return std::future::ready(Err(Status::unauthenticated("invalid token")));
        }
        let message = request.into_inner().message;
        std::future::ready(Ok(tonic::Response::new(SayReply {
            message,
            authorization: auth,
        })))
    }
}

/// The service the tonic server routes to.
#[derive(Clone)]
struct EchoServer(Ledger);

impl NamedService for EchoServer {
    const NAME: &'static str = "test.Echo";
}

impl tower::Service<http::Request<Body>> for EchoServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let say = Say(self.0.clone());
        Box::pin(async move {
            if request.uri().path() != SAY {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let mut grpc = tonic::server::Grpc::new(ProstCodec::<SayReply, SayRequest>::default());
            Ok(grpc.unary(say, request).await)
        })
    }
}

/// The running gRPC server.
pub struct GrpcUpstream {
    pub url: String,
    state: Ledger,
}

impl GrpcUpstream {
    pub async fn start() -> Self {
        let state = Ledger::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let server = tonic::transport::Server::builder().add_service(EchoServer(state.clone()));
        tokio::spawn(async move { server.serve_with_incoming(incoming).await.unwrap() });
        Self { url, state }
    }

    pub fn revoke(&self, authorization: &str) {
        self.state.revoke(authorization);
    }

    pub fn seen(&self) -> Vec<String> {
        self.state.seen()
    }
}

/// Calls `/test.Echo/Say` through `client` (any gRPC service stack).
pub async fn say<T>(client: &mut tonic::client::Grpc<T>, message: &str) -> Result<SayReply, Status>
where
    T: tonic::client::GrpcService<Body>,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error: Into<tower::BoxError>,
    T::Error: Into<tower::BoxError>,
{
    client
        .ready()
        .await
        .map_err(|e| Status::unknown(e.into().to_string()))?;
    let request = tonic::Request::new(SayRequest {
        message: message.to_owned(),
    });
    let codec = ProstCodec::<SayRequest, SayReply>::default();
    Ok(client
        .unary(request, PathAndQuery::from_static(SAY), codec)
        .await?
        .into_inner())
}
