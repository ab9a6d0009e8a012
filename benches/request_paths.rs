//! The per-request paths beside the layer's hot path, each against its floor
//! in the same run: `BearerAuthMiddleware` against a static-header
//! reqwest-middleware, `TokenCache::token()` with a token ready against a
//! clone of a prebuilt `HeaderValue` and against the layer, and the layer
//! against tower-http's static `AddAuthorization`. `cargo bench --bench
//! request_paths`.
//!
//! Requests are built before each timed slice, off the clock. Each pair runs
//! on persistent threads (one per thread count), and the two variants take
//! turns in slices, the order swapping every round. Printed per pair: the
//! median of the per-round ratios, the median time per request of each,
//! and the median of the per-round differences (the added cost). Then the
//! size of the future `BearerAuthMiddleware::handle` returns on each path.

mod common;
#[path = "common/paths.rs"]
mod paths;

use std::{
    hint::black_box,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Barrier,
    },
    thread,
    time::{Duration, Instant},
};

use common::{bearer, serve, static_header, warm, TOKEN};
use http::HeaderValue;
use paths::*;
use reqwest::Url;
use tower_oauth2::{BearerAuthMiddleware, TokenCache};

/// One thread's share of a variant: `prepare` builds what `run` consumes,
/// off the clock.
trait Work: Send {
    fn prepare(&mut self, _n: usize) {}
    fn run(&mut self, n: usize);
}

type Factory = Box<dyn Fn() -> Box<dyn Work> + Sync>;

const ROUNDS: usize = 201;
const QUIT: usize = usize::MAX;

struct Pair {
    ratio: f64,
    baseline_ns: f64,
    candidate_ns: f64,
    added_ns: f64,
}

/// Median of `ROUNDS` rounds, `threads` threads each running `n` requests of
/// one variant per slice (time per request per thread).
fn paired(threads: usize, n: usize, baseline: Factory, candidate: Factory) -> Pair {
    let command = Arc::new(AtomicUsize::new(0));
    let go = Arc::new(Barrier::new(threads + 1));
    let start = Arc::new(Barrier::new(threads + 1));
    let done = Arc::new(Barrier::new(threads + 1));
    let factories = [&baseline, &candidate];
    thread::scope(|scope| {
        for _ in 0..threads {
            let (command, go, start, done) =
                (command.clone(), go.clone(), start.clone(), done.clone());
            scope.spawn(move || {
                let mut work = [factories[0](), factories[1]()];
                loop {
                    go.wait();
                    let which = command.load(Ordering::Acquire);
                    if which == QUIT {
                        break;
                    }
                    work[which].prepare(n);
                    start.wait();
                    work[which].run(n);
                    done.wait();
                }
            });
        }
        let slice = |which: usize| -> Duration {
            command.store(which, Ordering::Release);
            go.wait();
            start.wait();
            let t0 = Instant::now();
            done.wait();
            t0.elapsed()
        };
        // Warm-up: one slice each.
        slice(0);
        slice(1);
        let mut rounds: Vec<(Duration, Duration)> = (0..ROUNDS)
            .map(|round| {
                if round % 2 == 0 {
                    let b = slice(0);
                    (b, slice(1))
                } else {
                    let c = slice(1);
                    (slice(0), c)
                }
            })
            .collect();
        command.store(QUIT, Ordering::Release);
        go.wait();
        let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let ratio = median(rounds.iter().map(|(b, c)| per(*c) / per(*b)).collect());
        let added_ns = median(rounds.iter().map(|(b, c)| per(*c) - per(*b)).collect());
        rounds.sort_by_key(|(b, _)| *b);
        let baseline_ns = per(rounds[ROUNDS / 2].0);
        rounds.sort_by_key(|(_, c)| *c);
        let candidate_ns = per(rounds[ROUNDS / 2].1);
        Pair {
            ratio,
            baseline_ns,
            candidate_ns,
            added_ns,
        }
    })
}

/// Requests through a reqwest-middleware client, built off the clock.
struct Middlewares {
    client: reqwest_middleware::ClientWithMiddleware,
    url: Url,
    requests: Vec<reqwest::Request>,
}

impl Work for Middlewares {
    fn prepare(&mut self, n: usize) {
        self.requests.extend((0..n).map(|_| request(&self.url)));
    }

    fn run(&mut self, _: usize) {
        for request in self.requests.drain(..) {
            send(&self.client, black_box(request));
        }
    }
}

fn middlewares(client: reqwest_middleware::ClientWithMiddleware) -> Factory {
    Box::new(move || {
        Box::new(Middlewares {
            client: client.clone(),
            url: Url::parse(URL).unwrap(),
            requests: Vec::new(),
        })
    })
}

/// Requests through a tower service, built off the clock.
struct Tower<S> {
    service: S,
    requests: Vec<http::Request<()>>,
}

impl<S> Work for Tower<S>
where
    S: tower::Service<http::Request<()>> + Send,
{
    fn prepare(&mut self, n: usize) {
        self.requests.extend((0..n).map(|_| http::Request::new(())));
    }

    fn run(&mut self, _: usize) {
        for request in self.requests.drain(..) {
            serve(black_box(&mut self.service), black_box(request));
        }
    }
}

fn tower<S>(service: S) -> Factory
where
    S: tower::Service<http::Request<()>> + Clone + Send + Sync + 'static,
{
    Box::new(move || {
        Box::new(Tower {
            service: service.clone(),
            requests: Vec::new(),
        })
    })
}

struct Tokens(TokenCache);

impl Work for Tokens {
    fn run(&mut self, n: usize) {
        for _ in 0..n {
            let token = now(black_box(&self.0).token()).unwrap();
            black_box(token);
        }
    }
}

fn tokens(cache: &TokenCache) -> Factory {
    let cache = cache.clone();
    Box::new(move || Box::new(Tokens(cache.clone())))
}

struct Prebuilt(HeaderValue);

impl Work for Prebuilt {
    fn run(&mut self, n: usize) {
        for _ in 0..n {
            black_box(black_box(&self.0).clone());
        }
    }
}

/// Clones of one value on every thread, as a static header layer's clones share theirs.
fn prebuilt() -> Factory {
    let mut value = HeaderValue::try_from(format!("Bearer {TOKEN}")).unwrap();
    value.set_sensitive(true);
    Box::new(move || Box::new(Prebuilt(value.clone())))
}

/// A cache whose first token never comes: the waiting path.
struct Never;

impl tower_oauth2::TokenSource for Never {
    async fn fetch(&mut self) -> Result<tower_oauth2::Token, tower_oauth2::Error> {
        std::future::pending().await
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a name filters the pairs.
    let filter: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (runtime, cache) = warm();
    let cores = thread::available_parallelism().map_or(2, |n| n.get());
    println!("paired: median of {ROUNDS} rounds, the two variants taking turns; ns per request per thread");
    println!(
        "{:<8} {:<46} {:>7} {:>9} {:>9} {:>8}",
        "threads", "candidate / baseline", "ratio", "base ns", "cand ns", "added"
    );
    type Make<'a> = Box<dyn Fn() -> (Factory, Factory) + 'a>;
    let pairs: Vec<(&str, usize, Make)> = vec![
        (
            "BearerAuthMiddleware / static-header mw",
            2_000,
            Box::new(|| {
                (
                    middlewares(static_client()),
                    middlewares(bearer_client(&cache)),
                )
            }),
        ),
        (
            "BearerAuthMiddleware replay(true) / static mw",
            2_000,
            Box::new(|| {
                (
                    middlewares(static_client()),
                    middlewares(replay_client(&cache)),
                )
            }),
        ),
        (
            "A/A static-header mw / static-header mw",
            2_000,
            Box::new(|| (middlewares(static_client()), middlewares(static_client()))),
        ),
        (
            "token() / clone of a prebuilt HeaderValue",
            20_000,
            Box::new(|| (prebuilt(), tokens(&cache))),
        ),
        (
            "token() / BearerAuth (layer)",
            10_000,
            Box::new(|| (tower(bearer(&cache)), tokens(&cache))),
        ),
        (
            "BearerAuth (layer) / tower-http AddAuthorization",
            10_000,
            Box::new(|| (tower(static_header()), tower(bearer(&cache)))),
        ),
        (
            "A/A AddAuthorization / AddAuthorization",
            10_000,
            Box::new(|| (tower(static_header()), tower(static_header()))),
        ),
    ];
    for threads in [1, cores] {
        for (name, n, make) in &pairs {
            if filter.as_deref().is_some_and(|f| !name.contains(f)) {
                continue;
            }
            let (baseline, candidate) = make();
            let pair = paired(threads, *n, baseline, candidate);
            println!(
                "{threads:<8} {name:<46} {:>7.3} {:>9.1} {:>9.1} {:>+8.1}",
                pair.ratio, pair.baseline_ns, pair.candidate_ns, pair.added_ns
            );
        }
    }
    let empty = runtime.block_on(async { TokenCache::new(Never) });
    println!("\nsize of the future BearerAuthMiddleware::handle returns (bytes)");
    let sizes = [
        (
            "token ready",
            future_size(BearerAuthMiddleware::new(cache.clone())),
        ),
        (
            "token ready, replay(true)",
            future_size(BearerAuthMiddleware::new(cache.clone()).replay(true)),
        ),
        (
            "no token yet",
            future_size(BearerAuthMiddleware::new(empty.clone())),
        ),
        (
            "no token yet, replay(true)",
            future_size(BearerAuthMiddleware::new(empty).replay(true)),
        ),
        (
            "static-header middleware (floor)",
            future_size(StaticHeader::new()),
        ),
    ];
    for (name, size) in sizes {
        println!("{name:<34} {size:>6}");
    }
    println!(
        "(a reqwest::Request is {} bytes, a reqwest::Response {})",
        std::mem::size_of::<reqwest::Request>(),
        std::mem::size_of::<reqwest::Response>()
    );
}
