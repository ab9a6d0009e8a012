//! Names the feature combinations the code is gated on, so each is spelled
//! out once, here, rather than as an `any(...)` at every use.
//!
//! - `reqwest_client`: the crate talks to reqwest, whichever TLS stack the
//!   user picked (`reqwest`, `reqwest-rustls-ring`, `reqwest-native-tls`), or
//!   none (`reqwest-middleware` alone, which `lib.rs` refuses with a message).
//! - `reqwest_tls`: reqwest with a TLS stack (`reqwest`,
//!   `reqwest-rustls-ring`, `reqwest-native-tls`): the crate's own client can
//!   present a client certificate and trust extra roots.
//! - `signing`: `private-key-jwt` and a backend to sign with (`aws-lc-rs` or
//!   `ring`); without a backend `lib.rs` refuses the build with a message, and
//!   nothing else fails to compile beside it.
//! - `dpop`: the `dpop` feature (which turns on `private-key-jwt`) and a
//!   backend to sign proofs with.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rustc-check-cfg=cfg(reqwest_client)");
    println!("cargo::rustc-check-cfg=cfg(reqwest_tls)");
    println!("cargo::rustc-check-cfg=cfg(signing)");
    println!("cargo::rustc-check-cfg=cfg(dpop)");
    let on = |feature: &str| std::env::var_os(format!("CARGO_FEATURE_{feature}")).is_some();
    if [
        "REQWEST",
        "REQWEST_RUSTLS_RING",
        "REQWEST_NATIVE_TLS",
        "REQWEST_MIDDLEWARE",
    ]
    .into_iter()
    .any(on)
    {
        println!("cargo::rustc-cfg=reqwest_client");
    }
    if ["REQWEST", "REQWEST_RUSTLS_RING", "REQWEST_NATIVE_TLS"]
        .into_iter()
        .any(on)
    {
        println!("cargo::rustc-cfg=reqwest_tls");
    }
    if on("PRIVATE_KEY_JWT") && (on("AWS_LC_RS") || on("RING")) {
        println!("cargo::rustc-cfg=signing");
        if on("DPOP") {
            println!("cargo::rustc-cfg=dpop");
        }
    }
}
