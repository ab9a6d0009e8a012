//! A token endpoint for tests: records every request it receives, byte for
//! byte, and answers from a script. Binds 127.0.0.1:0.
#![allow(dead_code)]

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, Method, StatusCode},
    response::Response,
    Router,
};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Recorded {
    /// The form body as (name, value) pairs, in order, decoded.
    pub fn form(&self) -> Vec<(String, String)> {
        form_urlencoded::parse(&self.body).into_owned().collect()
    }

    /// The one value of form parameter `name`; panics if it is absent or repeated.
    pub fn param(&self, name: &str) -> String {
        let values: Vec<_> = self.form().into_iter().filter(|(n, _)| n == name).collect();
        assert_eq!(
            values.len(),
            1,
            "`{name}` appears {} times in {:?}",
            values.len(),
            self.body
        );
        values[0].1.clone()
    }

    pub fn has_param(&self, name: &str) -> bool {
        self.form().iter().any(|(n, _)| n == name)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    Raw {
        status: u16,
        headers: Vec<(&'static str, String)>,
        body: Vec<u8>,
    },
    /// Never answers.
    Hang,
}

impl Reply {
    pub fn json(status: u16, body: &str) -> Self {
        Reply::Raw {
            status,
            headers: vec![("content-type", "application/json".into())],
            body: body.as_bytes().to_vec(),
        }
    }

    pub fn token(access_token: &str) -> Self {
        Self::json(
            200,
            &format!(
                r#"{{"access_token":"{access_token}","token_type":"Bearer","expires_in":3600}}"#
            ),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: &str) -> Self {
        if let Reply::Raw { headers, .. } = &mut self {
            headers.push((name, value.to_owned()));
        }
        self
    }
}

#[derive(Clone, Default)]
struct Shared {
    seen: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Reply>>>,
}

/// A running recording server.
pub struct Recorder {
    shared: Shared,
    pub base: String,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let shared = Shared::default();
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Recorder { shared, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Queues answers; once the queue is empty the server answers 500.
    pub fn reply(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.script.lock().unwrap().extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Recorded {
        self.requests().pop().expect("no request was received")
    }
}

async fn record(State(shared): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 16 * 1024 * 1024)
        .await
        .unwrap_or_default();
    shared.seen.lock().unwrap().push(Recorded {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body,
    });
    let reply = shared.script.lock().unwrap().pop_front();
    match reply {
        Some(Reply::Raw {
            status,
            headers,
            body,
        }) => {
            let mut response = Response::builder().status(status);
            for (name, value) in headers {
                response = response.header(name, value);
            }
            response.body(Body::from(body)).unwrap()
        }
        Some(Reply::Hang) => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(Body::empty())
        }
        None => Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .body(Body::from("no scripted reply"))
            .unwrap(),
    }
}
