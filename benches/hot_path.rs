//! Cost per request of adding the token, at 1 thread and with every core
//! hammering clones of one shared service. `cargo bench --bench hot_path`.
//!
//! Two parts: criterion's figure for each variant, one after the other; then
//! paired ratios, where a variant and its baseline take turns in short
//! slices (many rounds) and the median of the per-round ratios is printed.
//! The pairs hold up when something else loads the machine, which criterion's
//! back-to-back runs do not. With `REDIS_URL` set (a running `redis-server`),
//! one more pair compares a cache with a `RedisStore` to one without.
//! `cargo bench --bench hot_path -- paired` prints the pairs alone (the
//! filter names none of criterion's benchmarks).

mod common;

use std::{
    hint::black_box,
    sync::Barrier,
    time::{Duration, Instant},
};

use common::*;
use criterion::{
    criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, Criterion,
};

/// Runs `iters` requests on each of `threads` threads, each with its own
/// clone; returns wall time divided by the thread count (time per request
/// per thread, comparable to the 1-thread figure).
fn contended<S>(service: &S, threads: usize, iters: u64, one: fn(&mut S)) -> Duration
where
    S: Clone + Send + 'static,
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

/// One variant in one group: `threads == 1` runs on the bench thread.
fn variant<S>(
    group: &mut BenchmarkGroup<'_, WallTime>,
    threads: usize,
    name: &str,
    service: S,
    one: fn(&mut S),
) where
    S: Clone + Send + 'static,
{
    group.bench_function(name, |b| {
        if threads == 1 {
            let mut service = service.clone();
            b.iter(|| one(black_box(&mut service)))
        } else {
            b.iter_custom(|iters| contended(&service, threads, iters, one))
        }
    });
}

fn hot_path(c: &mut Criterion) {
    let (_runtime, cache) = warm();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    for threads in [1, cores] {
        let name = match threads {
            1 => "hot_path_1_thread".to_owned(),
            n => format!("hot_path_{n}_threads"),
        };
        let mut g = c.benchmark_group(name);
        variant(&mut g, threads, "a_no_layer", Inner, one);
        variant(&mut g, threads, "b_static_header", static_header(), one);
        variant(&mut g, threads, "bearer_auth", bearer(&cache), one);
        variant(&mut g, threads, "c_mutex_cache", mutex_cache(), one);
        variant(&mut g, threads, "d_tokio_rwlock_cache", rwlock_cache(), one);
        variant(&mut g, threads, "e_watch_new_header", watched(), one);
        // Retry variants: a String body (empty, no allocation) the policies can copy.
        variant(
            &mut g,
            threads,
            "f_retry_cloning_static_header",
            static_with_cloning_retry(),
            one_string,
        );
        variant(
            &mut g,
            threads,
            "retry_cloning_bearer_auth",
            bearer_with_cloning_retry(&cache),
            one_string,
        );
        variant(
            &mut g,
            threads,
            "retry_replay_bearer_auth",
            bearer_with_replay(&cache),
            one_string,
        );
        g.finish();
    }
}

/// Times `iters` requests through `service` on `threads` threads (per
/// request per thread).
fn timer<S>(service: S, threads: usize, one: fn(&mut S)) -> Box<dyn FnMut(u64) -> Duration>
where
    S: Clone + Send + 'static,
{
    let mut mine = service.clone();
    Box::new(move |iters| {
        if threads == 1 {
            let start = Instant::now();
            for _ in 0..iters {
                one(black_box(&mut mine));
            }
            start.elapsed()
        } else {
            contended(&service, threads, iters, one)
        }
    })
}

const ROUNDS: usize = 101;
const SLICE: u64 = 20_000;

/// Median over `ROUNDS` of (candidate time / baseline time), the two taking
/// turns (the order swaps every round).
fn paired_ratio(
    mut baseline: Box<dyn FnMut(u64) -> Duration>,
    mut candidate: Box<dyn FnMut(u64) -> Duration>,
) -> f64 {
    baseline(SLICE);
    candidate(SLICE);
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|round| {
            let (b, c) = if round % 2 == 0 {
                let b = baseline(SLICE);
                (b, candidate(SLICE))
            } else {
                let c = candidate(SLICE);
                (baseline(SLICE), c)
            };
            c.as_secs_f64() / b.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ROUNDS / 2]
}

fn paired(_: &mut Criterion) {
    let (runtime, cache) = warm();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("\npaired ratios: median of {ROUNDS} rounds of {SLICE} requests each, taking turns");
    println!(
        "{:<8} {:<44} {:>7}",
        "threads", "variant / baseline", "ratio"
    );
    for threads in [1, cores] {
        let rows: Vec<(&str, f64)> = vec![
            (
                "BearerAuth / static header",
                paired_ratio(
                    timer(static_header(), threads, one),
                    timer(bearer(&cache), threads, one),
                ),
            ),
            (
                "retry(Replay)+BearerAuth / static header",
                paired_ratio(
                    timer(static_header(), threads, one_string),
                    timer(bearer_with_replay(&cache), threads, one_string),
                ),
            ),
            (
                "retry(Replay)+BearerAuth / retry(cloning)+same",
                paired_ratio(
                    timer(bearer_with_cloning_retry(&cache), threads, one_string),
                    timer(bearer_with_replay(&cache), threads, one_string),
                ),
            ),
            (
                "retry(Replay, CloneBody)+BA / retry(cloning)+BA",
                paired_ratio(
                    timer(bearer_with_cloning_retry(&cache), threads, one_string),
                    timer(bearer_with_replay_cloning(&cache), threads, one_string),
                ),
            ),
            (
                "retry(Replay, CloneBody)+BA / retry(once-401)+BA",
                paired_ratio(
                    timer(bearer_with_once_401(&cache), threads, one_string),
                    timer(bearer_with_replay_cloning(&cache), threads, one_string),
                ),
            ),
            // Controls: one variant against itself. What these read is the
            // method's own error at this thread count.
            (
                "A/A retry(cloning)+BA / retry(cloning)+BA",
                paired_ratio(
                    timer(bearer_with_cloning_retry(&cache), threads, one_string),
                    timer(bearer_with_cloning_retry(&cache), threads, one_string),
                ),
            ),
            (
                "A/A retry(Replay,Clone)+BA / same",
                paired_ratio(
                    timer(bearer_with_replay_cloning(&cache), threads, one_string),
                    timer(bearer_with_replay_cloning(&cache), threads, one_string),
                ),
            ),
            (
                "retry(cloning)+static / static header",
                paired_ratio(
                    timer(static_header(), threads, one_string),
                    timer(static_with_cloning_retry(), threads, one_string),
                ),
            ),
        ];
        for (name, ratio) in rows {
            println!("{threads:<8} {name:<44} {ratio:>7.3}");
        }
        // The store is never on the request path; this row shows it.
        if let Ok(url) = std::env::var("REDIS_URL") {
            let shared = warm_redis_cache(&runtime, &url);
            let ratio = paired_ratio(
                timer(bearer(&cache), threads, one),
                timer(bearer(&shared), threads, one),
            );
            let name = "BearerAuth, RedisStore / no store";
            println!("{threads:<8} {name:<44} {ratio:>7.3}");
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30);
    targets = hot_path, paired
}
criterion_main!(benches);
