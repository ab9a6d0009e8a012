//! Real time: what the crate sends or stores as a date follows the system
//! clock when it is stepped after start (NTP at boot, a VM snapshot
//! restored, a machine resumed). A child process runs under a system clock
//! the test steps forward while it runs; its monotonic clock is untouched.
//!
//! The child is this test binary again, running the ignored test
//! `child_process` with its settings in the environment.

mod support;

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use secrecy::ExposeSecret;
use support::{
    faketime::SteppedClock,
    recorder::{Recorder, Reply},
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower_oauth2::{
    grant::ClientCredentials, FileStore, JwsAlgorithm, PrivateKey, TokenCache, TokenSource,
    TokenStore,
};

/// How far the child's clock is stepped forward after start: a clock two
/// hours slow corrected by NTP, or a two-hour suspension.
const STEP: Duration = Duration::from_secs(2 * 3600);

/// Signs its assertions (`private_key_jwt`).
fn signed_grant(base: &str) -> ClientCredentials {
    ClientCredentials::builder()
        .token_url(format!("{base}/token"))
        .client_id("clock-app")
        .private_key_jwt(
            PrivateKey::from_pem(JwsAlgorithm::Rs256, include_str!("keys/rsa.pem")).unwrap(),
        )
        .build()
        .unwrap()
}

/// For the store: a plain client secret.
fn stored_grant(base: &str) -> ClientCredentials {
    ClientCredentials::builder()
        .token_url(format!("{base}/token"))
        .client_id("clock-app")
        .client_secret("secret")
        .build()
        .unwrap()
}

/// The child: one signed token request, then waits for its clock to be
/// stepped, then a second signed request, one answered 503 with a dated
/// `Retry-After`, a token stored, and a stored token read back. Says what
/// it saw on stdout, one `CLOCK` line each.
#[tokio::test]
#[ignore = "the child process of the clock test, started by it"]
async fn child_process() {
    let env = |name: &str| std::env::var(name).expect(name);
    let (base, dir) = (env("CLOCK_URL"), PathBuf::from(env("CLOCK_DIR")));
    let mut signed = signed_grant(&base);
    signed.fetch().await.expect("first token");

    // The system clock moves away from the monotonic one: it was stepped.
    let (wall, mono) = (SystemTime::now(), Instant::now());
    println!("CLOCK before-step");
    loop {
        let moved = SystemTime::now()
            .duration_since(wall)
            .unwrap_or_default()
            .saturating_sub(mono.elapsed());
        if moved >= STEP / 2 {
            break;
        }
        assert!(mono.elapsed() < Duration::from_secs(30), "never stepped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("CLOCK stepped");

    signed.fetch().await.expect("second token");
    let refused = signed.fetch().await.expect_err("answered 503");
    let delay = refused.retry_after().map_or(-1, |d| d.as_secs() as i64);
    println!("CLOCK retry-after {delay}");

    let cache = TokenCache::builder(stored_grant(&base))
        .store(FileStore::new(dir.join("written.json")))
        .build();
    cache.token().await.expect("a token to store");
    cache.shutdown().await.expect("stored");

    let cache = TokenCache::builder(stored_grant(&base))
        .store(FileStore::new(dir.join("stored.json")))
        .build();
    let token = cache.token().await.expect("a token");
    println!("CLOCK served {}", token.access_token().expose_secret());
    let _ = cache.shutdown().await;
    println!("CLOCK done");
}

fn unix(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The claims of a compact JWS, unverified.
fn jwt_claims(jws: &str) -> serde_json::Value {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    let parts: Vec<&str> = jws.split('.').collect();
    assert_eq!(parts.len(), 3, "{jws}");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap()
}

/// `at` (Unix seconds) is within a minute of `expected`: the child's steps
/// take seconds, a missed step is two hours.
#[track_caller]
fn about(what: &str, at: u64, expected: u64) {
    assert!(
        at.abs_diff(expected) <= 60,
        "{what}: {at}, expected about {expected} ({:+} s)",
        at as i64 - expected as i64
    );
}

#[tokio::test]
async fn dates_sent_and_stored_follow_a_clock_stepped_after_start() {
    let clock = SteppedClock::new();
    let server = Recorder::start().await;
    let dir = tempfile::tempdir().unwrap();

    // Another process stores a token good for an hour, now: two hours on
    // the child's stepped clock, it has expired.
    server.reply([Reply::token("stored")]);
    let cache = TokenCache::builder(stored_grant(&server.base))
        .store(FileStore::new(dir.path().join("stored.json")))
        .build();
    cache.token().await.unwrap();
    cache.shutdown().await.unwrap();

    // A server whose clock agrees with the child's stepped one asks for
    // two minutes.
    let retry_at = SystemTime::now() + STEP + Duration::from_secs(120);
    server.reply([
        Reply::token("first"),
        Reply::token("second"),
        Reply::json(503, "{}").with_header("retry-after", &httpdate::fmt_http_date(retry_at)),
        Reply::token("written"),
        Reply::token("fresh"),
    ]);
    let started = unix(SystemTime::now());

    let mut env = clock.env();
    env.push(("CLOCK_URL", server.base.clone()));
    env.push(("CLOCK_DIR", dir.path().display().to_string()));
    let mut child = support::child::spawn("child_process", env);
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut said = Vec::new();
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(what) = line.strip_prefix("CLOCK ") {
                if what == "before-step" {
                    clock.set(STEP.as_secs() as i64);
                }
                said.push(what.to_owned());
            }
        }
    })
    .await;
    let status = child.wait().await.unwrap();
    assert!(
        finished.is_ok() && status.success(),
        "the child failed ({status}); it said {said:?}"
    );
    assert!(said.contains(&"stepped".to_owned()), "{said:?}");
    let stepped_now = unix(SystemTime::now()) + STEP.as_secs();

    // The assertions: the first dated on the clock the child started with,
    // the second on the stepped one (a clock read once at start dates it
    // two hours in the past: invalid_client, for ever).
    let iats: Vec<u64> = server
        .requests()
        .iter()
        .filter(|request| request.has_param("client_assertion"))
        .map(|request| {
            let claims = jwt_claims(&request.param("client_assertion"));
            let iat = claims["iat"].as_u64().unwrap();
            assert_eq!(claims["exp"].as_u64().unwrap(), iat + 120);
            iat
        })
        .collect();
    assert_eq!(iats.len(), 3, "three signed requests");
    about("first iat", iats[0], started);
    about("second iat", iats[1], stepped_now);

    // Retry-After as a date, against the child's clock when it arrived.
    let delay: i64 = said
        .iter()
        .find_map(|line| line.strip_prefix("retry-after "))
        .expect("a retry-after line")
        .parse()
        .unwrap();
    assert!((60..=120).contains(&delay), "Retry-After read as {delay} s");

    // The stored expiry is on the stepped clock: another replica whose
    // clock is right reads it as an hour from the write.
    let state = FileStore::new(dir.path().join("written.json"))
        .load(&stored_grant(&server.base).store_key().unwrap())
        .await
        .unwrap()
        .expect("a stored state");
    about(
        "stored expiry",
        unix(state.expires_at().unwrap()),
        stepped_now + 3600,
    );

    // The token stored before the step is two hours old: not served.
    assert!(
        said.contains(&"served fresh".to_owned()),
        "an expired stored token was served: {said:?}"
    );
}
