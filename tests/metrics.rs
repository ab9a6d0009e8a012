//! The `metrics` feature: what a scripted scenario on paused time emits,
//! read back through a `DebuggingRecorder`.
//!
//! The recorder is installed for the test's thread only
//! (`set_default_local_recorder`), so tests running in parallel do not see
//! each other's metrics. `#[tokio::test]` runs a current-thread runtime: the
//! cache's background task is polled on that same thread, so its events land
//! in the same recorder as the requests'.

mod support;

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use http::{header::WWW_AUTHENTICATE, Request, Response, StatusCode};
use metrics_util::{
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
    MetricKind,
};
use support::scripted::{Reply, Scripted};
use tower::{service_fn, Layer, ServiceBuilder, ServiceExt};
use tower_oauth2::{
    layer::{replay::CloneBody, Replay},
    BearerAuthLayer, Error, Expect, Lease, RefreshPolicy, Saved, StoreErrorKind, StoreKey,
    TokenCache, TokenState, TokenStore,
};

const HOUR: Duration = Duration::from_secs(3600);
/// How long every scripted token request takes.
const LATENCY: Duration = Duration::from_millis(250);

/// One metric: its kind, name and labels (sorted).
type Id = (MetricKind, String, Vec<(String, String)>);

/// Everything the recorder holds, read once (a snapshot drains counters).
struct Recorded(HashMap<Id, DebugValue>);

impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Self {
        let mut all = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            all.insert((kind, key.name().to_owned(), labels), value);
        }
        Self(all)
    }

    fn get(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        labels.sort();
        self.0.get(&(kind, name.to_owned(), labels))
    }

    /// A counter's value; 0 when it was never incremented.
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.get(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            other => panic!("{name} is not a counter: {other:?}"),
        }
    }

    fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.get(MetricKind::Gauge, name, labels)? {
            DebugValue::Gauge(value) => Some(value.into_inner()),
            other => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.get(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(values)) => values.iter().map(|v| v.into_inner()).collect(),
            None => Vec::new(),
            other => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.0.keys().map(|(_, name, _)| name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    fn labels(&self) -> impl Iterator<Item = &(String, String)> {
        self.0.keys().flat_map(|(_, _, labels)| labels)
    }
}

/// A store whose first save fails (a full disk, say), and whose later saves work.
#[derive(Clone, Default)]
struct FailsOnce {
    saves: Arc<AtomicUsize>,
}

impl TokenStore for FailsOnce {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        Ok(None)
    }

    async fn save(&self, _: &StoreKey, _: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        if self.saves.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(Error::store(StoreErrorKind::WriteFailed, "disk full"))
        } else {
            Ok(Saved::Written)
        }
    }
}

fn unix_now() -> f64 {
    std::time::UNIX_EPOCH.elapsed().unwrap().as_secs_f64()
}

/// Lets the background task run whatever is due now.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_scripted_day_is_counted_exactly() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let script = Scripted::exactly(vec![
        // The cold start meets one transient failure, retried 100 ms later.
        Reply::Fail(Error::custom("endpoint unavailable", true)),
        // token-2: rejected by the API at once.
        Reply::Token(Some(HOUR)),
        // token-3: fetched for the replay.
        Reply::Token(Some(HOUR)),
        // token-4: its refresh ahead of expiry.
        Reply::Token(Some(HOUR)),
        // The refresh of token-4 fails for good, waits the permanent backoff,
        Reply::Fail(Error::custom("invalid_client", false)),
        // and then the grant is gone: the cache stops, serving token-4 until it expires.
        Reply::Fail(Error::reauthorization_required("refresh token revoked")),
    ])
    .latency(LATENCY);
    let store = FailsOnce::default();
    let cache = TokenCache::builder(script.source())
        .policy(
            RefreshPolicy::new()
                .jitter(0.0)
                .max_backoff(Duration::from_secs(60)),
        )
        .store(store.clone())
        .metrics_name("officernd")
        .build();

    // An API that rejects the first token it sees, then accepts any.
    let rejected = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let api = service_fn({
        let (rejected, seen) = (rejected.clone(), seen.clone());
        move |request: Request<String>| {
            let auth = request.headers()[http::header::AUTHORIZATION]
                .to_str()
                .unwrap()
                .to_owned();
            seen.lock().unwrap().push(auth);
            let mut response = Response::new(String::new());
            if !rejected.swap(true, Ordering::SeqCst) {
                *response.status_mut() = StatusCode::UNAUTHORIZED;
                response.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    r#"Bearer error="invalid_token""#.parse().unwrap(),
                );
            }
            async move { Ok::<_, Infallible>(response) }
        }
    });
    let client = ServiceBuilder::new()
        .retry(Replay::new().copy_body(CloneBody))
        .layer(BearerAuthLayer::new(cache.clone()))
        .service(api);

    let response = client
        .clone()
        .oneshot(Request::new(String::from("{}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer token-2", "Bearer token-3"],
        "token-2 rejected, the replay carried token-3"
    );
    // Past token-3's refresh point (2995 s after it was sent), token-4's
    // (2995 s later), and the 60 s backoff after its failure; token-4
    // (expiring at about 6596 s) is still served.
    tokio::time::sleep(Duration::from_secs(6200)).await;
    settle().await;
    let response = client.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        seen.lock().unwrap().last().map(String::as_str),
        Some("Bearer token-4")
    );
    assert_eq!(script.calls(), 6);

    let recorded = Recorded::take(&snapshotter);
    let cache_label = [("cache", "officernd")];
    let requests = |outcome| {
        recorded.counter(
            "tower_oauth2_token_requests_total",
            &[("cache", "officernd"), ("outcome", outcome)],
        )
    };
    assert_eq!(requests("ok"), 3);
    assert_eq!(requests("transient"), 1);
    assert_eq!(requests("permanent"), 1);
    assert_eq!(requests("reauthorization"), 1);
    // Every token request took the scripted latency, exactly (paused time).
    let took = |outcome| {
        recorded.histogram(
            "tower_oauth2_token_request_duration_seconds",
            &[("cache", "officernd"), ("outcome", outcome)],
        )
    };
    assert_eq!(took("ok"), [0.25; 3]);
    assert_eq!(took("transient"), [0.25]);
    assert_eq!(took("permanent"), [0.25]);
    assert_eq!(took("reauthorization"), [0.25]);
    // The first request waited (cold cache), and so did its replay (the
    // rejected token was dropped); the last request found token-4 ready.
    assert_eq!(
        recorded.counter("tower_oauth2_token_waits_total", &cache_label),
        2
    );
    assert_eq!(
        recorded.counter("tower_oauth2_token_invalidations_total", &cache_label),
        1
    );
    assert_eq!(
        recorded.counter("tower_oauth2_replays_total", &cache_label),
        1
    );
    assert_eq!(
        recorded.counter("tower_oauth2_refreshes_ahead_total", &cache_label),
        1
    );
    // token-2's save failed; token-3's save (which carried the newest state)
    // and token-4's worked.
    assert_eq!(
        recorded.counter("tower_oauth2_store_saves_total", &cache_label),
        2
    );
    assert_eq!(
        recorded.counter("tower_oauth2_store_save_failures_total", &cache_label),
        1
    );
    assert_eq!(store.saves.load(Ordering::SeqCst), 3);
    assert_eq!(
        recorded.counter("tower_oauth2_tokens_adopted_total", &cache_label),
        0
    );
    // Set when token-4 was published (exact values: the next test).
    let expiry = recorded
        .gauge("tower_oauth2_token_expiry_timestamp_seconds", &cache_label)
        .unwrap();
    assert!((expiry - unix_now()).abs() < 86_400.0, "{expiry}");

    // The metrics agree with the cache's own counts.
    let stats = cache.stats();
    assert_eq!(stats.token_requests, 6);
    assert_eq!(stats.failures, 3);
    assert_eq!(
        (stats.waits, stats.invalidations, stats.refreshes_ahead),
        (2, 1, 1)
    );
    assert_eq!((stats.saves, stats.save_failures), (2, 1));

    // Nothing else was emitted, and every label is bounded and secret-free.
    assert_eq!(
        recorded.names(),
        [
            "tower_oauth2_refreshes_ahead_total",
            "tower_oauth2_replays_total",
            "tower_oauth2_store_save_failures_total",
            "tower_oauth2_store_saves_total",
            "tower_oauth2_token_expiry_timestamp_seconds",
            "tower_oauth2_token_invalidations_total",
            "tower_oauth2_token_request_duration_seconds",
            "tower_oauth2_token_requests_total",
            "tower_oauth2_token_waits_total",
        ]
    );
    for (key, value) in recorded.labels() {
        assert!(
            key == "cache" && value == "officernd"
                || key == "outcome"
                    && ["ok", "transient", "permanent", "reauthorization"]
                        .contains(&value.as_str()),
            "unexpected label {key}={value}"
        );
        assert!(!value.contains("token-"), "a token in a label: {value}");
        assert!(!value.contains("Bearer"), "a header in a label: {value}");
    }
}

#[tokio::test(start_paused = true)]
async fn an_unnamed_cache_is_default_and_its_expired_token_zeroes_the_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    // One token of a minute, then an endpoint that is down for good.
    let script = Scripted::new(|n| match n {
        1 => Reply::Token(Some(Duration::from_secs(60))),
        _ => Reply::Fail(Error::custom("endpoint unavailable", true)),
    });
    let cache = TokenCache::with_policy(
        script.source(),
        RefreshPolicy::new()
            .jitter(0.0)
            .max_backoff(Duration::from_secs(5)),
    );
    cache.token().await.unwrap();
    // Nothing waits on a token that is ready: only the first call counts.
    for _ in 0..100 {
        cache.token().await.unwrap();
    }
    // Past its expiry, with every refresh failing.
    tokio::time::sleep(Duration::from_secs(61)).await;
    settle().await;

    let recorded = Recorded::take(&snapshotter);
    let default = [("cache", "default")];
    assert_eq!(
        recorded.counter(
            "tower_oauth2_token_requests_total",
            &[("cache", "default"), ("outcome", "ok")]
        ),
        1
    );
    assert!(
        recorded.counter(
            "tower_oauth2_token_requests_total",
            &[("cache", "default"), ("outcome", "transient")]
        ) >= 1
    );
    assert_eq!(
        recorded.counter("tower_oauth2_token_waits_total", &default),
        1
    );
    assert_eq!(
        recorded.gauge("tower_oauth2_token_expiry_timestamp_seconds", &default),
        Some(0.0),
        "dropped without a replacement"
    );
}

/// The expiry gauge is a Unix timestamp, not a countdown: two caches that
/// publish at the same instant a minute token and an hour token are 59
/// minutes apart, and near the wall clock.
#[tokio::test(start_paused = true)]
async fn the_expiry_gauge_is_a_timestamp() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);

    let minute_script = Scripted::tokens(Duration::from_secs(60));
    let hour_script = Scripted::tokens(HOUR);
    let minute = TokenCache::builder(minute_script.source())
        .metrics_name("minute")
        .build();
    let hour = TokenCache::builder(hour_script.source())
        .metrics_name("hour")
        .build();
    let (a, b) = tokio::join!(minute.token(), hour.token());
    assert_eq!(a.unwrap().issued_at(), b.unwrap().issued_at());
    settle().await;

    let recorded = Recorded::take(&snapshotter);
    let gauge = |name| {
        recorded
            .gauge(
                "tower_oauth2_token_expiry_timestamp_seconds",
                &[("cache", name)],
            )
            .unwrap()
    };
    let (minute_expiry, hour_expiry) = (gauge("minute"), gauge("hour"));
    assert!((hour_expiry - minute_expiry - 3540.0).abs() < 1e-3);
    // A wall-clock time, not seconds left. The crate's wall clock follows
    // Tokio's paused clock from wherever the tests of this binary anchored
    // it, so only within a day of the real one.
    let ahead = minute_expiry - unix_now();
    assert!((-86_400.0..86_400.0).contains(&ahead), "{ahead}");
}

#[tokio::test]
async fn the_reqwest_middleware_counts_what_the_layer_counts() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let upstream = support::upstream::Upstream::start().await;
    let cache = TokenCache::builder(Scripted::tokens(HOUR).source())
        .metrics_name("api")
        .build();
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(tower_oauth2::BearerAuthMiddleware::new(cache.clone()).replay(true))
        .build();
    let token = cache.token().await.unwrap();
    upstream.revoke(token.header_value().to_str().unwrap());
    let response = client.get(&upstream.url).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.seen(), ["Bearer token-1", "Bearer token-2"]);
    let recorded = Recorded::take(&snapshotter);
    let api = [("cache", "api")];
    assert_eq!(
        recorded.counter("tower_oauth2_token_invalidations_total", &api),
        1
    );
    assert_eq!(recorded.counter("tower_oauth2_replays_total", &api), 1);
}

/// A shared store whose lease another replica holds for the first two
/// looks: this replica waits, then takes it.
#[derive(Clone, Default)]
struct BusyTwice {
    acquires: Arc<AtomicUsize>,
}

impl TokenStore for BusyTwice {
    async fn load(&self, _: &StoreKey) -> Result<Option<TokenState>, Error> {
        Ok(None)
    }

    async fn save(&self, _: &StoreKey, _: &TokenState, _: Expect<'_>) -> Result<Saved, Error> {
        Ok(Saved::Written)
    }

    async fn acquire(&self, _: &StoreKey, _: &str, _: Duration) -> Result<Lease, Error> {
        Ok(match self.acquires.fetch_add(1, Ordering::SeqCst) {
            0 | 1 => Lease::Busy,
            _ => Lease::Acquired,
        })
    }
}

/// The fleet's lease and the origin rules are visible: leases taken and
/// the waits for another replica's, and requests sent without a token.
#[tokio::test(start_paused = true)]
async fn lease_waits_and_requests_without_a_token_are_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let store = BusyTwice::default();
    let cache = TokenCache::builder(Scripted::tokens(HOUR).source())
        .metrics_name("fleet")
        .store(store.clone())
        .store_key(StoreKey::new(
            "client_credentials",
            "svc",
            "https://a.example/token",
            &[],
        ))
        .build();
    cache.token().await.unwrap();
    let stats = cache.stats();
    assert_eq!(stats.leases, 1);

    let layer = BearerAuthLayer::new(cache)
        .allow_origin("https://api.example.com")
        .unwrap();
    let client = layer.clone().layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    for uri in [
        "https://other.example.com/",
        "/relative",
        "https://api.example.com/",
    ] {
        let request = Request::builder().uri(uri).body(()).unwrap();
        client.clone().oneshot(request).await.unwrap();
    }
    assert_eq!(layer.withheld(), 2);

    let recorded = Recorded::take(&snapshotter);
    let fleet = [("cache", "fleet")];
    assert_eq!(recorded.counter("tower_oauth2_leases_total", &fleet), 1);
    let waits = recorded.histogram("tower_oauth2_lease_wait_seconds", &fleet);
    assert_eq!(waits.len(), 2, "two looks while another replica held it");
    assert!(waits.iter().all(|w| *w > 0.0), "{waits:?}");
    for reason in ["other_origin", "relative_uri"] {
        assert_eq!(
            recorded.counter(
                "tower_oauth2_requests_without_token_total",
                &[("reason", reason)]
            ),
            1,
            "{reason}"
        );
    }
}
