//! Instructions per request under callgrind: a count that does not move with
//! the machine's load, for differences too small for wall time to settle.
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     --toggle-collect='instructions::measured*' \
//!     target/release/deps/instructions-* <variant> <requests>
//! ```
//!
//! Only [`measured`] is counted: everything a variant does for one request
//! (`poll_ready`, `call`, polling, dropping the answer), and not the loop
//! that makes the requests, whose code the compiler lays out differently for
//! each variant. Without `--toggle-collect` the count is the whole program;
//! then run each variant at two request counts and divide the difference of
//! the totals by the difference of the counts. Without valgrind the binary
//! only runs the requests.
//!
//! Variants: `static`, `bearer`, `cloning-static`, `cloning-bearer`,
//! `once401-bearer` (a hand-written "copy, retry once after a 401" policy),
//! `replay-bearer` (`Replay`, empty bodies), `replay-clone-bearer`
//! (`Replay` with `CloneBody`).

mod common;

use std::hint::black_box;

use common::*;
use http::Request;
use tower::Service;

fn run<S, B>(mut service: S, requests: u64, body: fn() -> B)
where
    S: Service<Request<B>>,
{
    for _ in 0..requests {
        let request = black_box(Request::new(body()));
        measured(black_box(&mut service), request);
    }
}

/// The counted part: one request through `service`.
#[inline(never)]
fn measured<S, B>(service: &mut S, request: Request<B>)
where
    S: Service<Request<B>>,
{
    serve(service, request)
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let (Some(variant), Some(requests)) = (args.next(), args.next()) else {
        // `cargo bench` runs every bench target with no arguments: nothing to do.
        eprintln!("usage: instructions <variant> <requests>; see the source");
        return;
    };
    let requests: u64 = requests.parse().expect("a request count");
    let (_runtime, cache) = warm();
    let unit = || ();
    match variant.as_str() {
        "static" => run(static_header(), requests, unit),
        "bearer" => run(bearer(&cache), requests, unit),
        "cloning-static" => run(static_with_cloning_retry(), requests, String::new),
        "cloning-bearer" => run(bearer_with_cloning_retry(&cache), requests, String::new),
        "once401-bearer" => run(bearer_with_once_401(&cache), requests, String::new),
        "replay-bearer" => run(bearer_with_replay(&cache), requests, String::new),
        "replay-clone-bearer" => run(bearer_with_replay_cloning(&cache), requests, String::new),
        other => panic!("unknown variant {other}"),
    }
}
