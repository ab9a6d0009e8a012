//! Instructions per request under callgrind: a count that does not move with
//! the machine's load, for differences too small for wall time to settle.
//!
//! ```sh
//! cargo bench --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!     target/release/deps/instructions-* <variant> <requests>
//! ```
//!
//! Run each variant at two request counts: the difference of the totals
//! divided by the difference of the counts is the cost of one request, with
//! start-up (runtime, warm cache) cancelled out. Without valgrind the binary
//! only runs the requests. Variants: `static`, `bearer`, `cloning-static`,
//! `cloning-bearer`, `replay-bearer` (empty bodies), `replay-clone-bearer`
//! (`CloneBody`).

mod common;

use std::hint::black_box;

use common::*;

fn run<S>(mut service: S, requests: u64, one: fn(&mut S)) {
    for _ in 0..requests {
        one(black_box(&mut service));
    }
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
    match variant.as_str() {
        "static" => run(static_header(), requests, one),
        "bearer" => run(bearer(&cache), requests, one),
        "cloning-static" => run(static_with_cloning_retry(), requests, one_string),
        "cloning-bearer" => run(bearer_with_cloning_retry(&cache), requests, one_string),
        "replay-bearer" => run(bearer_with_replay(&cache), requests, one_string),
        "replay-clone-bearer" => run(bearer_with_replay_cloning(&cache), requests, one_string),
        other => panic!("unknown variant {other}"),
    }
}
