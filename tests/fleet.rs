//! A fleet of replicas sharing token state in a real `redis-server`: one
//! token request at a time per credential across all of them, a rotating
//! refresh token that is never sent twice, a lease holder that dies, Redis
//! going away, and tokens encrypted at rest.

mod support;

use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use support::{redis::RedisServer, rotating::Rotating};
use tower_oauth2::{
    ErrorKind, Expect, Lease, RedisStore, RefreshToken, Saved, StoreErrorKind, StoreKey,
    TokenCache, TokenState, TokenStore,
};

fn grant(url: &str) -> RefreshToken {
    // Every replica is built from the same configuration: the first refresh
    // token, which only the first lease holder ever sends.
    RefreshToken::builder()
        .token_url(url)
        .client_id("fleet-app")
        .client_secret("secret")
        .refresh_token("rt-0")
        .build()
        .unwrap()
}

fn key(server: &Rotating) -> StoreKey {
    StoreKey::new("refresh_token", "fleet-app", &server.url, &[])
}

/// A replica: its own cache, its own Redis connection.
fn replica(server: &Rotating, redis: &RedisServer) -> TokenCache {
    TokenCache::builder(grant(&server.url))
        .store(RedisStore::new(&redis.url).unwrap())
        .build()
}

/// Requests from every replica, back to back, for `run`: returns how many
/// succeeded, after checking none got an expired token.
async fn traffic(replicas: &[TokenCache], run: Duration) -> usize {
    let end = Instant::now() + run;
    let tasks: Vec<_> = replicas
        .iter()
        .map(|cache| {
            let cache = cache.clone();
            tokio::spawn(async move {
                let mut served = 0;
                while Instant::now() < end {
                    let token = cache.token().await.expect("no request fails");
                    // A timer withdraws a token at its expiry, late by a
                    // timer tick or a busy core (as in `outage`): after a
                    // Redis restart a 2 s token may run out while the fleet
                    // keeps quiet before it sends a refresh token.
                    let (now, expires_at) =
                        (tokio::time::Instant::now(), token.expires_at().unwrap());
                    assert!(
                        now <= expires_at + Duration::from_millis(100),
                        "handed out {:?} after its expiry",
                        now - expires_at
                    );
                    served += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                served
            })
        })
        .collect();
    let mut served = 0;
    for task in tasks {
        served += task.await.unwrap();
    }
    served
}

/// Requests from every replica for `run` while the store is down for a
/// refresh-token fleet: each gets a token that was valid when it asked, or
/// `Store(Unavailable)`; both happen (the tokens expire meanwhile).
async fn outage(replicas: &[TokenCache], run: Duration) {
    let end = Instant::now() + run;
    let (mut served, mut unavailable) = (0, 0);
    while Instant::now() < end {
        for cache in replicas {
            let asked = tokio::time::Instant::now();
            match cache.token().await {
                Ok(token) => {
                    // A timer withdraws a token at its expiry, late by a
                    // timer tick or a busy core; not by a store call (up to
                    // its 1 s timeout), which is what this would catch.
                    let slack = Duration::from_millis(100);
                    let expires_at = token.expires_at().unwrap();
                    assert!(
                        asked <= expires_at + slack,
                        "handed out {:?} after its expiry",
                        asked - expires_at
                    );
                    served += 1;
                }
                Err(error) => {
                    assert_eq!(
                        error.kind(),
                        &ErrorKind::Store(StoreErrorKind::Unavailable),
                        "{error}"
                    );
                    assert!(error.is_transient());
                    unavailable += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        served > 0,
        "the current tokens were served until they expired"
    );
    assert!(unavailable > 0, "expired tokens are not served");
}

/// Waits (60 s at most) until every replica hands out a token again.
async fn recovered(replicas: &[TokenCache]) {
    for cache in replicas {
        let back = tokio::time::timeout(Duration::from_secs(60), async {
            while cache.token().await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        assert!(
            back.is_ok(),
            "a replica did not recover once the store was back"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_replicas_share_each_token_and_never_send_a_refresh_token_twice() {
    // 37, 38
    let redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(2);
    let replicas: Vec<_> = (0..8).map(|_| replica(&server, &redis)).collect();
    // Long enough for 20 rotations.
    let run = Duration::from_secs(17);
    let served = traffic(&replicas, run).await;
    for cache in &replicas {
        cache.shutdown().await.unwrap();
    }
    let issued = server.issued();
    let adopted: u64 = replicas.iter().map(|c| c.stats().adopted).sum();
    let fetched: u64 = replicas.iter().map(|c| c.stats().token_requests).sum();
    println!(
        "8 replicas, 2 s tokens, {run:?}: {served} requests, {issued} token requests \
         ({:.1} per lifetime for the fleet), {adopted} tokens adopted",
        issued as f64 / (run.as_secs_f64() / 2.0)
    );
    assert_eq!(server.reuses(), 0, "a refresh token was sent twice");
    assert!(!server.revoked(), "a person would have to authorize again");
    assert_eq!(
        fetched, issued,
        "only the token endpoint's answers were fetched"
    );
    // One process alone refreshes a 2 s token every 0.5-0.75 s (23 to 35 in
    // 17 s); the fleet as a whole does the same, not 8 times as much.
    assert!(
        (20..=35).contains(&issued),
        "{issued} token requests for the fleet"
    );
    assert!(
        adopted >= 7 * issued / 2,
        "{adopted} adopted for {issued} fetched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lease_holder_is_replaced_once_its_lease_expires() {
    let redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    // A replica took the lease, then died before it could fetch or release.
    let store = RedisStore::new(&redis.url).unwrap();
    let lease = store
        .acquire(&key(&server), "a-dead-replica", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(lease, Lease::Acquired);
    let started = Instant::now();
    let cache = replica(&server, &redis);
    let token = cache.token().await.expect("another replica takes over");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "it waited for the lease: {waited:?}"
    );
    assert_eq!(token.access_token().expose_secret(), "at-1");
    assert_eq!(server.issued(), 1);
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_replica_keeps_serving_and_rejoins_when_it_returns() {
    let mut redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(2);
    let cache = replica(&server, &redis);
    let alone = std::slice::from_ref(&cache);
    assert!(traffic(alone, Duration::from_secs(1)).await > 0);
    let before = server.requests();
    redis.stop();
    // Two lifetimes without Redis: the token is served until it expires;
    // the refresh token is not sent without the lease, even by a lone
    // replica (it cannot know it is alone).
    outage(alone, Duration::from_secs(4)).await;
    assert!(server.requests() <= before + 1);
    redis.restart();
    recovered(alone).await;
    traffic(alone, Duration::from_secs(3)).await;
    assert!(cache.store_error().is_none(), "{:?}", cache.store_error());
    // Alone, a replica never mistakes the token it stored for another's.
    assert_eq!(cache.stats().adopted, 0);
    cache.shutdown().await.unwrap();
    let stored = RedisStore::new(&redis.url)
        .unwrap()
        .load(&key(&server))
        .await
        .unwrap()
        .expect("saved after Redis came back");
    assert_eq!(
        stored.refresh_token().map(|t| t.expose_secret().to_owned()),
        server.current()
    );
    assert_eq!(server.reuses(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_at_rest_are_encrypted_and_keys_hold_no_secret() {
    let redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    let sealed = || {
        RedisStore::new(&redis.url)
            .unwrap()
            .namespace("sealed")
            .encryption_key([42; 32])
    };
    let cache = TokenCache::builder(grant(&server.url))
        .store(sealed())
        .build();
    let token = cache.token().await.unwrap();
    cache.shutdown().await.unwrap();

    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!keys.is_empty());
    let access = token.access_token().expose_secret().to_owned();
    for key in &keys {
        assert!(!key.contains(&access) && !key.contains("rt-"), "{key}");
        let value: Option<String> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await
            .unwrap_or(None);
        if let Some(value) = value {
            // `g<generation>:`, then the sealed document.
            let sealed = value.split_once(':').map_or("", |(_, rest)| rest);
            assert!(
                value.starts_with('g') && sealed.starts_with("enc1:"),
                "{key} is not sealed"
            );
            assert!(!value.contains(&access) && !value.contains("rt-1"));
        }
    }
    // The same key opens it; no key, or another, is a typed error.
    let state: TokenState = sealed().load(&key(&server)).await.unwrap().unwrap();
    assert_eq!(state.refresh_token().unwrap().expose_secret(), "rt-1");
    for other in [
        RedisStore::new(&redis.url).unwrap().namespace("sealed"),
        RedisStore::new(&redis.url)
            .unwrap()
            .namespace("sealed")
            .encryption_key([7; 32]),
    ] {
        let error = other.load(&key(&server)).await.unwrap_err();
        assert_eq!(error.kind(), &ErrorKind::Store(StoreErrorKind::Corrupt));
    }
}

/// A replica in a process of its own: requests back to back for
/// `FLEET_RUN_MS`, then a clean shutdown. Exits non-zero if any failed.
#[tokio::test]
#[ignore = "a replica process of the fleet tests, started by them"]
async fn replica_process() {
    let env = |name: &str| std::env::var(name).expect(name);
    let cache = TokenCache::builder(grant(&env("FLEET_TOKEN_URL")))
        .store(RedisStore::new(&env("FLEET_REDIS_URL")).unwrap())
        .build();
    let run = Duration::from_millis(env("FLEET_RUN_MS").parse().unwrap());
    let served = traffic(std::slice::from_ref(&cache), run).await;
    cache.shutdown().await.unwrap();
    println!("SERVED {served} FETCHED {}", cache.stats().token_requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replica_processes_share_each_token() {
    let redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(2);
    let children: Vec<_> = (0..4)
        .map(|_| {
            support::child::spawn(
                "replica_process",
                [
                    ("FLEET_TOKEN_URL", server.url.as_str()),
                    ("FLEET_REDIS_URL", redis.url.as_str()),
                    ("FLEET_RUN_MS", "8000"),
                ],
            )
        })
        .collect();
    let (mut served, mut fetched) = (0u64, 0u64);
    for child in children {
        let output = child.wait_with_output().await.unwrap();
        assert!(output.status.success(), "a replica process failed");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .find(|l| l.starts_with("SERVED"))
            .expect("the replica reports");
        let numbers: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        served += numbers[0];
        fetched += numbers[1];
    }
    let issued = server.issued();
    println!("4 processes, 8 s: {served} requests, {issued} token requests");
    assert!(served > 1000);
    assert_eq!(fetched, issued);
    assert_eq!(server.reuses(), 0);
    assert!(!server.revoked());
    // One process alone: 11 to 17 in 8 s, less the first 1.5 s, when a
    // process that has just started sends no refresh token (the others may
    // hold a newer one than the store: see `cache::protocol`).
    assert!(
        (7..=18).contains(&issued),
        "{issued} token requests for 4 processes"
    );
}

/// A client-credentials replica in a process of its own, with 1 s token
/// requests: requests back to back for `FLEET_RUN_MS`, printing its count
/// of token requests every 50 ms. Exits non-zero if a request failed.
#[tokio::test]
#[ignore = "a replica process of the fleet tests, started by them"]
async fn credentials_replica_process() {
    let env = |name: &str| std::env::var(name).expect(name);
    // The defaults: a token request may take 30 s.
    let grant = tower_oauth2::ClientCredentials::builder()
        .token_url(env("FLEET_TOKEN_URL"))
        .client_id("fleet-cc")
        .client_secret("secret")
        .build()
        .unwrap();
    let cache = TokenCache::builder(grant)
        .store(RedisStore::new(&env("FLEET_REDIS_URL")).unwrap())
        .build();
    let report = tokio::spawn({
        let cache = cache.clone();
        async move {
            loop {
                println!("FETCHED {}", cache.stats().token_requests);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let run = Duration::from_millis(env("FLEET_RUN_MS").parse().unwrap());
    traffic(std::slice::from_ref(&cache), run).await;
    report.abort();
    cache.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_holder_killed_mid_request_is_replaced_and_no_request_fails() {
    let redis = RedisServer::start();
    let server = Rotating::start(None, None).await;
    // 30 s tokens, with the default request timeout (30 s): refreshed after
    // about 20 s, and still valid for the 6 s a dead holder's lease lasts.
    // (When the lease was sized to outlive the longest token request, 35 s
    // here, the others waited for it past the token's expiry and their
    // requests failed.)
    server.lifetime(30);
    let (counts, mut updates) = tokio::sync::mpsc::unbounded_channel();
    let spawn = |index: usize| {
        let mut child = support::child::spawn(
            "credentials_replica_process",
            [
                ("FLEET_TOKEN_URL", server.url.as_str()),
                ("FLEET_REDIS_URL", redis.url.as_str()),
                ("FLEET_RUN_MS", "31000"),
            ],
        );
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(
            child.stdout.take().unwrap(),
        ));
        let counts = counts.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(n) = line
                    .strip_prefix("FETCHED ")
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    let _ = counts.send((index, n));
                }
            }
        });
        child
    };
    // The first replica fetches the first token; the others start from it.
    let mut replicas = vec![spawn(0)];
    // Bounded, so a replica that died at start fails the test, not CI's clock.
    let first_token = async {
        while server.issued() < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), first_token)
        .await
        .expect("the first replica fetched no token within 30 s");
    tokio::time::sleep(Duration::from_millis(300)).await;
    replicas.push(spawn(1));
    replicas.push(spawn(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // From now on the token endpoint hangs: the first replica to refresh
    // takes the lease and waits.
    server.latency(Duration::from_secs(60));
    let mut fetched = [0u64; 3];
    let holder = async {
        loop {
            let (index, n) = updates.recv().await.unwrap();
            if n > fetched[index] && server.requests() >= 2 {
                break index;
            }
            fetched[index] = fetched[index].max(n);
        }
    };
    let holder = tokio::time::timeout(Duration::from_secs(30), holder)
        .await
        .expect("no replica started a refresh within 30 s");
    // SIGKILL while its request is under way.
    replicas[holder].start_kill().unwrap();
    server.latency(Duration::ZERO);
    let mut survivors = 0;
    for (index, replica) in replicas.iter_mut().enumerate() {
        let status = replica.wait().await.unwrap();
        if index != holder {
            assert!(status.success(), "replica {index} had a request fail");
            survivors += 1;
        }
    }
    assert_eq!(survivors, 2);
    // The first token, the dead holder's (issued, never received), and one
    // more by the replica that took over: not one per survivor.
    assert_eq!(server.requests(), 3, "{} token requests", server.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_for_thirty_seconds_fails_no_request_and_the_fleet_rejoins() {
    let mut redis = RedisServer::start();
    let server = Rotating::start(None, None).await;
    server.lifetime(2);
    let replicas: Vec<_> = (0..2)
        .map(|_| {
            let grant = tower_oauth2::ClientCredentials::builder()
                .token_url(&server.url)
                .client_id("fleet-cc")
                .client_secret("secret")
                .build()
                .unwrap();
            TokenCache::builder(grant)
                .store(RedisStore::new(&redis.url).unwrap())
                .build()
        })
        .collect();
    let adopted = |replicas: &[TokenCache]| replicas.iter().map(|c| c.stats().adopted).sum::<u64>();
    traffic(&replicas, Duration::from_secs(2)).await;
    redis.stop();
    // 15 token lifetimes without Redis: every replica refreshes on its own
    // and keeps serving (`traffic` fails on any failed request).
    traffic(&replicas, Duration::from_secs(30)).await;
    assert!(replicas.iter().all(|c| c.store_error().is_some()));
    let before = adopted(&replicas);
    redis.restart();
    traffic(&replicas, Duration::from_secs(5)).await;
    assert!(
        replicas.iter().all(|c| c.store_error().is_none()),
        "saves resumed"
    );
    assert!(
        adopted(&replicas) > before,
        "the replicas share tokens again once Redis is back"
    );
    for cache in &replicas {
        cache.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_save_wakes_the_replicas_waiting_for_that_credential() {
    let redis = RedisServer::start();
    let key = StoreKey::new("client_credentials", "wake", "http://127.0.0.1/token", &[]);
    let waiting = RedisStore::new(&redis.url).unwrap();
    let waiter = tokio::spawn({
        let (waiting, key) = (waiting.clone(), key.clone());
        async move { waiting.changed(&key, Duration::from_secs(120)).await }
    });
    // Another replica saves (again and again, in case the first came before
    // the subscription): the waiter must return long before its 120 s.
    let saver = RedisStore::new(&redis.url).unwrap();
    let woken = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            saver
                .save(&key, &TokenState::default(), Expect::new(0, None))
                .await
                .unwrap();
            if waiter.is_finished() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(woken.is_ok(), "a save did not wake the waiting replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_another_replicas_lease() {
    let redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    // Another replica holds the lease for a minute.
    RedisStore::new(&redis.url)
        .unwrap()
        .acquire(&key(&server), "another-replica", Duration::from_secs(60))
        .await
        .unwrap();
    let cache = replica(&server, &redis);
    let waiting = tokio::spawn({
        let cache = cache.clone();
        async move { cache.token().await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = tokio::time::timeout(Duration::from_secs(10), cache.shutdown()).await;
    assert!(
        stopped.is_ok(),
        "shutdown waited for the other replica's lease"
    );
    assert_eq!(
        waiting.await.unwrap().unwrap_err().kind(),
        &ErrorKind::Closed
    );
    assert_eq!(
        server.requests(),
        0,
        "nothing was fetched without the lease"
    );
}

/// With Redis down, a rotating refresh token is never sent without the
/// fleet's lease: the replicas serve their token until it expires, then fail
/// with `Store(Unavailable)` (a person never has to authorize again), and
/// refresh again once Redis is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_never_lets_two_replicas_send_one_refresh_token() {
    let mut redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(2);
    let replicas: Vec<_> = (0..2).map(|_| replica(&server, &redis)).collect();
    traffic(&replicas, Duration::from_secs(3)).await;
    let before = server.requests();
    redis.stop();

    // Three lifetimes without Redis.
    outage(&replicas, Duration::from_secs(6)).await;
    // At most the refresh that held the lease when Redis went down.
    assert!(server.requests() <= before + 1);

    redis.restart();
    recovered(&replicas).await;
    traffic(&replicas, Duration::from_secs(3)).await;
    assert_eq!(server.reuses(), 0, "a refresh token was sent twice");
    assert!(!server.revoked());
    for cache in &replicas {
        cache.shutdown().await.unwrap();
    }
}

/// Redis restarts empty (no persistence) while the replicas hold the newest
/// refresh token in memory, and then a replica restarts with the
/// configuration's first refresh token. The replicas that hold the newest
/// state write it back (the store is behind their generation), and the
/// restarted one waits for that before it sends anything: no refresh token
/// is sent twice. (Before, the restarted replica took the lease on the empty
/// store and sent the configured, long-rotated token: the family was
/// revoked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_is_repaired_and_a_restarted_replica_reuses_nothing() {
    // 39
    let mut redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(2);
    let mut replicas: Vec<_> = (0..3).map(|_| replica(&server, &redis)).collect();
    traffic(&replicas, Duration::from_secs(3)).await;
    let before = server.issued();
    assert!(before >= 2, "the refresh token has rotated");

    redis.restart();
    // A replica restarts meanwhile: nothing stored, `rt-0` configured.
    replicas.push(replica(&server, &redis));
    recovered(&replicas).await;
    traffic(&replicas, Duration::from_secs(4)).await;
    for cache in &replicas {
        cache.shutdown().await.unwrap();
    }
    assert_eq!(server.reuses(), 0, "a spent refresh token was sent again");
    assert!(!server.revoked());
    assert!(
        server.issued() > before,
        "the fleet refreshed after the restart"
    );
    // The store holds the newest refresh token again.
    let stored = RedisStore::new(&redis.url)
        .unwrap()
        .load(&key(&server))
        .await
        .unwrap()
        .expect("written back");
    assert_eq!(
        stored.refresh_token().map(|t| t.expose_secret().to_owned()),
        server.current()
    );
}

/// Redis restarts from an RDB snapshot taken before the last rotations:
/// the store holds a refresh token the server has already rotated. No
/// replica adopts or sends it: they hold a newer generation, write it back,
/// and the fleet carries on. (Before, the next lease holder read the old
/// state and sent its refresh token: the family was revoked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_from_an_older_snapshot_is_not_obeyed() {
    // 39
    let mut redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(2);
    let replicas: Vec<_> = (0..3).map(|_| replica(&server, &redis)).collect();
    traffic(&replicas, Duration::from_secs(2)).await;
    let snapshot = redis.snapshot();
    let at_snapshot = server.issued();
    traffic(&replicas, Duration::from_secs(3)).await;
    assert!(server.issued() > at_snapshot, "rotated since the snapshot");

    redis.restart_from(&snapshot);
    recovered(&replicas).await;
    traffic(&replicas, Duration::from_secs(3)).await;
    for cache in &replicas {
        cache.shutdown().await.unwrap();
    }
    assert_eq!(server.reuses(), 0, "the snapshot's refresh token was sent");
    assert!(!server.revoked());
    let stored = RedisStore::new(&redis.url)
        .unwrap()
        .load(&key(&server))
        .await
        .unwrap()
        .expect("a state");
    assert_eq!(
        stored.refresh_token().map(|t| t.expose_secret().to_owned()),
        server.current()
    );
}

/// The store's half of the protocol, on a real Redis: a save is fenced by
/// the generation its writer read and by the lease; a lease taken again by
/// its owner (a `SET` whose answer was lost) is the owner's, not busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_saves_are_fenced_and_a_lease_knows_its_owner() {
    // 40, 41
    let redis = RedisServer::start();
    let key = StoreKey::new("refresh_token", "fence", "http://127.0.0.1/token", &[]);
    let (a, b) = (
        RedisStore::new(&redis.url).unwrap(),
        RedisStore::new(&redis.url).unwrap(),
    );
    let ttl = Duration::from_secs(60);
    assert_eq!(a.acquire(&key, "a", ttl).await.unwrap(), Lease::Acquired);
    // The same owner again: its own lease (renewed), not another's.
    assert_eq!(a.acquire(&key, "a", ttl).await.unwrap(), Lease::Acquired);
    assert_eq!(b.acquire(&key, "b", ttl).await.unwrap(), Lease::Busy);

    let state = |rt: &str, generation| {
        TokenState::default()
            .with_refresh_token(rt)
            .with_generation(generation)
    };
    let saved = a
        .save(&key, &state("rt-1", 1), Expect::new(0, Some("a")))
        .await
        .unwrap();
    assert!(matches!(saved, Saved::Written), "{saved:?}");
    // Written over generation 0 by someone who read 0 too: refused, and told
    // what is there.
    match b
        .save(&key, &state("rt-x", 1), Expect::new(0, None))
        .await
        .unwrap()
    {
        Saved::Conflict(Some(current)) => {
            assert_eq!(current.generation(), 1);
            assert_eq!(current.refresh_token().unwrap().expose_secret(), "rt-1");
        }
        other => panic!("{other:?}"),
    }
    // The lease lapses (here: removed) and `b` takes it; `a` wakes up late.
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("DEL")
        .arg(format!("tower-oauth2:{key}:lease"))
        .query_async::<i64>(&mut connection)
        .await
        .unwrap();
    assert_eq!(b.acquire(&key, "b", ttl).await.unwrap(), Lease::Acquired);
    let late = a
        .save(&key, &state("rt-late", 2), Expect::new(1, Some("a")))
        .await
        .unwrap();
    assert!(matches!(late, Saved::NotLeaseHolder), "{late:?}");
    let saved = b
        .save(&key, &state("rt-2", 2), Expect::new(1, Some("b")))
        .await
        .unwrap();
    assert!(matches!(saved, Saved::Written), "{saved:?}");
    let stored = a.load(&key).await.unwrap().unwrap();
    assert_eq!(
        (
            stored.generation(),
            stored.refresh_token().unwrap().expose_secret()
        ),
        (2, "rt-2")
    );
}
