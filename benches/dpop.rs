//! What a DPoP-bound request costs through `BearerAuth`, against a bearer
//! request through the same layer and against one bare ES256 signature by
//! the same signing backend: paired rounds in one run, the variant and its
//! baseline taking turns (order swapped every round), the median ratio
//! printed. `cargo bench --bench dpop`.
//!
//! The bare signature signs a message as long as a proof's signing input,
//! with the same key, through the key's public `DpopSigner::sign` (so it
//! also pays that method's one `Vec` for the signature, which the layer's
//! own path does not).

mod common;

use std::{
    convert::Infallible,
    future::{ready, Ready},
    hint::black_box,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use common::{bearer, serve, warm, TOKEN};
use http::{Request, Response, Uri};
use tower::{Layer, Service};
use tower_oauth2::{
    BearerAuth, BearerAuthLayer, ClientCredentials, DpopKey, DpopSigner, JwsAlgorithm, PrivateKey,
    TokenCache,
};

const ROUNDS: usize = 51;
const SLICE: u64 = 2_000;
const URL: &str = "https://api.example.com/v1/items/42?expand=owner";

/// The inner service: answers at once, whatever the headers.
#[derive(Clone, Copy)]
struct Answer;

impl<B> Service<Request<B>> for Answer {
    type Response = Response<()>;
    type Error = Infallible;
    type Future = Ready<Result<Response<()>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<B>) -> Self::Future {
        ready(Ok(Response::new(())))
    }
}

fn key() -> PrivateKey {
    let pem = include_str!("../tests/keys/ec.pem");
    PrivateKey::from_pem(JwsAlgorithm::Es256, pem).unwrap()
}

/// A warm cache holding a DPoP-bound token for `key`, from a token
/// endpoint answered in-process.
fn dpop_cache(runtime: &tokio::runtime::Runtime, key: DpopKey) -> TokenCache {
    let answer = format!(r#"{{"access_token":"{TOKEN}","token_type":"DPoP","expires_in":86400}}"#);
    let transport = tower::service_fn(move |_: Request<String>| {
        let answer = answer.clone();
        async move { Ok::<_, Infallible>(Response::new(answer)) }
    });
    let grant = ClientCredentials::builder()
        .token_url("https://auth.example.com/oauth2/token")
        .client_id("bench")
        .client_secret("s3cret")
        .transport(transport)
        .dpop(key)
        .build()
        .unwrap();
    runtime.block_on(async {
        let cache = TokenCache::new(grant);
        let token = cache.token().await.unwrap();
        assert_eq!(token.token_type(), "DPoP");
        cache
    })
}

type Timer = Box<dyn FnMut(u64) -> Duration>;

/// `iters` requests to `URL` through `service`.
fn through<S>(mut service: S, uri: Uri) -> Timer
where
    S: Service<Request<()>> + 'static,
{
    Box::new(move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            let mut request = Request::new(());
            *request.uri_mut() = uri.clone();
            serve(black_box(&mut service), request);
        }
        start.elapsed()
    })
}

/// `iters` bare signatures of `message`.
fn signatures(key: PrivateKey, message: Vec<u8>) -> Timer {
    Box::new(move |iters| {
        let start = Instant::now();
        for _ in 0..iters {
            black_box(DpopSigner::sign(&key, black_box(&message)).unwrap());
        }
        start.elapsed()
    })
}

/// Median over `ROUNDS` of (candidate / baseline), and the medians of
/// each per request.
fn paired(mut baseline: Timer, mut candidate: Timer) -> (f64, Duration, Duration) {
    baseline(SLICE / 10);
    candidate(SLICE / 10);
    let mut ratios = Vec::with_capacity(ROUNDS);
    let (mut bs, mut cs) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (b, c) = if round % 2 == 0 {
            let b = baseline(SLICE);
            (b, candidate(SLICE))
        } else {
            let c = candidate(SLICE);
            (baseline(SLICE), c)
        };
        ratios.push(c.as_secs_f64() / b.as_secs_f64());
        bs.push(b / SLICE as u32);
        cs.push(c / SLICE as u32);
    }
    ratios.sort_by(f64::total_cmp);
    bs.sort();
    cs.sort();
    (ratios[ROUNDS / 2], bs[ROUNDS / 2], cs[ROUNDS / 2])
}

fn main() {
    let (runtime, bearer_cache) = warm();
    let private = key();
    let key = DpopKey::from_private_key(private.clone()).unwrap();
    let cache = dpop_cache(&runtime, key);
    let uri: Uri = URL.parse().unwrap();
    let dpop: BearerAuth<Answer> = BearerAuthLayer::new(cache).layer(Answer);
    let bearer_service = bearer(&bearer_cache);

    // A proof's signing input is its header and claims, base64url: measure
    // one to sign a message of the same length.
    let recorder = tower::service_fn(|request: Request<()>| {
        let proof = request.headers()["dpop"].to_str().unwrap().to_owned();
        async move { Ok::<_, Infallible>(Response::new(proof)) }
    });
    let recorded_cache = dpop_cache(
        &runtime,
        DpopKey::from_private_key(private.clone()).unwrap(),
    );
    let mut recorded = BearerAuthLayer::new(recorded_cache).layer(recorder);
    let proof = runtime.block_on(async {
        use tower::ServiceExt;
        let mut request = Request::new(());
        *request.uri_mut() = uri.clone();
        recorded.ready().await.unwrap();
        recorded.call(request).await.unwrap().into_body()
    });
    let signing_input = proof.rsplit_once('.').unwrap().0.as_bytes().to_vec();

    println!("\nDPoP per request: median of {ROUNDS} rounds of {SLICE} each, taking turns");
    println!(
        "(signing input {} bytes, ES256 on the crate's backend)",
        signing_input.len()
    );
    let (ratio, b, c) = paired(
        signatures(private.clone(), signing_input.clone()),
        through(dpop.clone(), uri.clone()),
    );
    println!(
        "{:<44} {:>7.3}   ({c:?} / {b:?})",
        "DPoP request / bare ES256 signature", ratio
    );
    let (ratio, b, c) = paired(
        through(bearer_service.clone(), uri.clone()),
        through(dpop.clone(), uri.clone()),
    );
    println!(
        "{:<44} {:>7.1}   ({c:?} / {b:?})",
        "DPoP request / bearer request", ratio
    );
    let (ratio, b, c) = paired(
        signatures(private.clone(), signing_input.clone()),
        signatures(private, signing_input),
    );
    println!(
        "{:<44} {:>7.3}   ({c:?} / {b:?})",
        "A/A bare signature / bare signature", ratio
    );
}
