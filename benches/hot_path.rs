//! Cost per request of adding the token, at 1 thread and with every core
//! hammering clones of one shared service. `cargo bench --bench hot_path`.

mod common;

use std::{
    hint::black_box,
    sync::Barrier,
    time::{Duration, Instant},
};

use common::*;
use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use tower::Service;

/// Runs `iters` requests on each of `threads` threads, each with its own
/// clone; returns wall time divided by the thread count (time per request
/// per thread, comparable to the 1-thread figure).
fn contended<S>(service: &S, threads: usize, iters: u64) -> Duration
where
    S: Service<Request<()>> + Clone + Send + 'static,
{
    let barrier = std::sync::Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (mut service, barrier) = (service.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..iters {
                    one(black_box(&mut service));
                }
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    for worker in workers {
        worker.join().unwrap();
    }
    start.elapsed()
}

fn hot_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let cache = warm_cache(&runtime);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());

    macro_rules! variants {
        ($group:expr, $run:expr) => {{
            let mut group = $group;
            group.bench_function("a_no_layer", |b| $run(b, Inner));
            group.bench_function("b_static_header", |b| $run(b, static_header()));
            group.bench_function("bearer_auth_no_401_handling", |b| {
                $run(b, bearer(&cache, false))
            });
            group.bench_function("bearer_auth_default", |b| $run(b, bearer(&cache, true)));
            group.bench_function("c_mutex_cache", |b| $run(b, mutex_cache()));
            group.bench_function("d_tokio_rwlock_cache", |b| $run(b, rwlock_cache()));
            group.bench_function("e_watch_new_header", |b| $run(b, watched()));
            group.finish();
        }};
    }

    variants!(
        c.benchmark_group("hot_path_1_thread"),
        |b: &mut criterion::Bencher, mut s| { b.iter(|| one(black_box(&mut s))) }
    );
    variants!(
        c.benchmark_group(format!("hot_path_{threads}_threads")),
        |b: &mut criterion::Bencher, s| { b.iter_custom(|iters| contended(&s, threads, iters)) }
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = hot_path
}
criterion_main!(benches);
