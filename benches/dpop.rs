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
mod dpop_common;

use std::{
    convert::Infallible,
    hint::black_box,
    time::{Duration, Instant},
};

use common::{bearer, serve, warm};
use dpop_common::{dpop_cache, key, Answer, URL};
use http::{Request, Response, Uri};
use tower::{Layer, Service};
use tower_oauth2::{BearerAuth, BearerAuthLayer, DpopKey, DpopSigner, PrivateKey};

const ROUNDS: usize = 51;
const SLICE: u64 = 2_000;
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
