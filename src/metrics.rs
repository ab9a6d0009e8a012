//! Metrics, with the `metrics` cargo feature: what the caches do, through
//! the [`metrics`](https://docs.rs/metrics) facade, so any exporter works
//! (`metrics-exporter-prometheus`, an OpenTelemetry bridge, ...). Install
//! the exporter's recorder; this crate only emits.
//!
//! ```no_run
//! # fn run(grant: tower_oauth2::ClientCredentials) {
//! use tower_oauth2::TokenCache;
//!
//! // Cargo.toml: tower-oauth2 = { version = "…", features = ["metrics"] }
//! // then any exporter, such as:
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?; // serves /metrics
//! let cache = TokenCache::builder(grant).metrics_name("officernd").build();
//! # }
//! ```
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | `tower_oauth2_token_requests_total` | counter | `cache`, `outcome` | token requests finished, by outcome (below) |
//! | `tower_oauth2_token_request_duration_seconds` | histogram | `cache`, `outcome` | how long each token request took, from sending to the answer (a timeout counts the whole timeout) |
//! | `tower_oauth2_token_waits_total` | counter | `cache` | requests (or `token()` calls) that found no token and waited for one |
//! | `tower_oauth2_token_invalidations_total` | counter | `cache` | tokens dropped because the API rejected them (a 401), or through `TokenCache::invalidate` |
//! | `tower_oauth2_replays_total` | counter | `cache` | requests sent once more by [`Replay`](crate::layer::Replay) after a rejected token |
//! | `tower_oauth2_refreshes_ahead_total` | counter | `cache` | tokens replaced before they expired |
//! | `tower_oauth2_store_saves_total` | counter | `cache` | token states saved to the cache's store |
//! | `tower_oauth2_store_save_failures_total` | counter | `cache` | saves that failed (each is retried until one succeeds) |
//! | `tower_oauth2_tokens_adopted_total` | counter | `cache` | tokens taken from a shared store, fetched by another replica |
//! | `tower_oauth2_leases_total` | counter | `cache` | times this replica took the fleet's lease to refresh (with a shared store): across the fleet, the holder changes |
//! | `tower_oauth2_lease_wait_seconds` | histogram | `cache` | how long a refresh waited while another replica held the lease |
//! | `tower_oauth2_requests_without_token_total` | counter | `reason` | requests the layer (or middleware) sent on without a token because no cache serves their origin: `other_origin`, or `relative_uri` for a URI without one (see `BearerAuthLayer::relative_uri_origin`) |
//! | `tower_oauth2_token_expiry_timestamp_seconds` | gauge | `cache` | when the current token expires, in Unix seconds; `0` once it is dropped without a replacement. Seconds until it expires: `tower_oauth2_token_expiry_timestamp_seconds - time()` in PromQL |
//!
//! `outcome` is one of
//! - `ok`: a token;
//! - `transient`: a failure that is retried with backoff (network, timeout,
//!   5xx, 429; also an `invalid_grant` answered by a newer refresh token
//!   another process stored, which is tried at once);
//! - `permanent`: a failure that waits the permanent backoff (see [`RefreshPolicy::permanent_backoff`](crate::RefreshPolicy::permanent_backoff))
//!   (`invalid_client`, `invalid_scope`, a malformed answer, ...);
//! - `reauthorization`: the cache has stopped, a person must authorize
//!   again (`invalid_grant` on a refresh).
//!
//! `cache` is the name given with
//! [`CacheBuilder::metrics_name`](crate::CacheBuilder::metrics_name)
//! (`"default"` otherwise): choose a few fixed names, one per API or
//! credential. No label ever holds a token, a secret, a client id or a URL.
//! Caches that share a name add up in the counters and histogram; the
//! gauge then shows whichever of them published a token last.
//! A `Replay` whose answer did not come through the layer counts under
//! `cache="unknown"`.
//!
//! Everything is emitted where it happens anyway: in the cache's background
//! task, when a request waits, when a token is rejected, when `Replay`
//! replays. A request that finds a token does no metrics work at all. The
//! expiry is a timestamp rather than a countdown for that reason: set once
//! when a token is published, it stays right, and the exporter's side
//! subtracts the current time (alert when it comes within a few minutes).
//! Without the feature, nothing here is compiled in.

use std::borrow::Cow;

/// The value of the `cache` label of one cache's metrics.
#[derive(Clone, Debug)]
pub(crate) struct Name {
    #[cfg(feature = "metrics")]
    value: ::metrics::SharedString,
}

impl Name {
    pub(crate) fn new(name: Cow<'static, str>) -> Self {
        #[cfg(not(feature = "metrics"))]
        drop(name);
        Self {
            #[cfg(feature = "metrics")]
            value: name.into(),
        }
    }
}

impl Default for Name {
    fn default() -> Self {
        Self::new(Cow::Borrowed("default"))
    }
}

/// How a token request ended: the `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Transient,
    Permanent,
    Reauthorization,
}

impl Outcome {
    /// The outcome of a request that ended in `error`.
    pub(crate) fn of(error: &crate::Error) -> Self {
        if error.is_reauthorization_required() {
            Self::Reauthorization
        } else if error.is_transient() {
            Self::Transient
        } else {
            Self::Permanent
        }
    }

    #[cfg(feature = "metrics")]
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Transient => "transient",
            Self::Permanent => "permanent",
            Self::Reauthorization => "reauthorization",
        }
    }
}

#[cfg(feature = "metrics")]
mod emit {
    use std::time::Duration;

    use ::metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

    use super::{Name, Outcome};

    const TOKEN_REQUESTS: &str = "tower_oauth2_token_requests_total";
    const TOKEN_REQUEST_DURATION: &str = "tower_oauth2_token_request_duration_seconds";
    const WAITS: &str = "tower_oauth2_token_waits_total";
    const INVALIDATIONS: &str = "tower_oauth2_token_invalidations_total";
    const REPLAYS: &str = "tower_oauth2_replays_total";
    const REFRESHES_AHEAD: &str = "tower_oauth2_refreshes_ahead_total";
    const SAVES: &str = "tower_oauth2_store_saves_total";
    const SAVE_FAILURES: &str = "tower_oauth2_store_save_failures_total";
    const ADOPTED: &str = "tower_oauth2_tokens_adopted_total";
    const EXPIRES_AT: &str = "tower_oauth2_token_expiry_timestamp_seconds";
    const WITHHELD: &str = "tower_oauth2_requests_without_token_total";
    const LEASES: &str = "tower_oauth2_leases_total";
    const LEASE_WAIT: &str = "tower_oauth2_lease_wait_seconds";

    /// A response extension: the rejected token came from this cache, so a
    /// replay counts under its name.
    #[derive(Clone, Debug)]
    struct RejectedBy(Name);

    /// Tells the recorder what each metric is. When a cache is built.
    pub(crate) fn describe() {
        describe_counter!(
            TOKEN_REQUESTS,
            Unit::Count,
            "Token requests finished, by outcome"
        );
        describe_histogram!(
            TOKEN_REQUEST_DURATION,
            Unit::Seconds,
            "How long token requests took"
        );
        describe_counter!(WAITS, Unit::Count, "Requests that waited for a token");
        describe_counter!(
            INVALIDATIONS,
            Unit::Count,
            "Tokens dropped because the API rejected them"
        );
        describe_counter!(
            REPLAYS,
            Unit::Count,
            "Requests replayed after a rejected token"
        );
        describe_counter!(
            REFRESHES_AHEAD,
            Unit::Count,
            "Tokens replaced before they expired"
        );
        describe_counter!(SAVES, Unit::Count, "Token states saved to the store");
        describe_counter!(SAVE_FAILURES, Unit::Count, "Token state saves that failed");
        describe_counter!(ADOPTED, Unit::Count, "Tokens adopted from a shared store");
        describe_counter!(
            WITHHELD,
            Unit::Count,
            "Requests sent without a token: no cache serves their origin"
        );
        describe_counter!(
            LEASES,
            Unit::Count,
            "Times this replica took the fleet's lease to refresh"
        );
        describe_histogram!(
            LEASE_WAIT,
            Unit::Seconds,
            "How long a refresh waited for another replica's lease"
        );
        describe_gauge!(
            EXPIRES_AT,
            Unit::Seconds,
            "When the current token expires, in Unix seconds (0: no token)"
        );
    }

    pub(crate) fn token_request(name: &Name, outcome: Outcome, took: Duration) {
        let outcome = outcome.label();
        let cache = name.value.clone();
        counter!(TOKEN_REQUESTS, "cache" => cache.clone(), "outcome" => outcome).increment(1);
        ::metrics::histogram!(TOKEN_REQUEST_DURATION, "cache" => cache, "outcome" => outcome)
            .record(took.as_secs_f64());
    }

    fn count(metric: &'static str, name: &Name) {
        counter!(metric, "cache" => name.value.clone()).increment(1);
    }

    pub(crate) fn waited(name: &Name) {
        count(WAITS, name);
    }

    pub(crate) fn invalidated(name: &Name) {
        count(INVALIDATIONS, name);
    }

    pub(crate) fn refreshed_ahead(name: &Name) {
        count(REFRESHES_AHEAD, name);
    }

    pub(crate) fn saved(name: &Name) {
        count(SAVES, name);
    }

    pub(crate) fn save_failed(name: &Name) {
        count(SAVE_FAILURES, name);
    }

    pub(crate) fn adopted(name: &Name) {
        count(ADOPTED, name);
    }

    /// A token that expires `left` from now is published (`None`: dropped).
    pub(crate) fn expires_in(name: &Name, left: Option<Duration>) {
        let at = left.map_or(0.0, |left| {
            (crate::clock::wall_now() + left)
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |since| since.as_secs_f64())
        });
        gauge!(EXPIRES_AT, "cache" => name.value.clone()).set(at);
    }

    /// A request left without a token: no cache serves its origin (or,
    /// `relative`, it has none).
    pub(crate) fn withheld(relative: bool) {
        let reason = if relative {
            "relative_uri"
        } else {
            "other_origin"
        };
        counter!(WITHHELD, "reason" => reason).increment(1);
    }

    /// This replica took the fleet's lease `taken` times, after waiting
    /// `waited` for another replica's (zero when it did not wait).
    pub(crate) fn leases(name: &Name, taken: u64, waited: Option<Duration>) {
        if taken > 0 {
            counter!(LEASES, "cache" => name.value.clone()).increment(taken);
        }
        if let Some(waited) = waited {
            ::metrics::histogram!(LEASE_WAIT, "cache" => name.value.clone())
                .record(waited.as_secs_f64());
        }
    }

    /// Marks a rejected answer with its cache's name, for [`replayed`].
    /// Only a rejected token comes here.
    pub(crate) fn rejected_by(
        extensions: &mut http::Extensions,
        cache: Option<&crate::TokenCache>,
    ) {
        if let Some(cache) = cache {
            extensions.insert(RejectedBy(cache.metrics_name().clone()));
        }
    }

    /// `Replay` sends a request once more after its token was rejected.
    pub(crate) fn replayed(extensions: &http::Extensions) {
        let cache = match extensions.get::<RejectedBy>() {
            Some(RejectedBy(name)) => name.value.clone(),
            None => "unknown".into(),
        };
        counter!(REPLAYS, "cache" => cache).increment(1);
    }
}

/// The same functions, doing nothing: the feature is off.
#[cfg(not(feature = "metrics"))]
mod emit {
    use std::time::Duration;

    use super::{Name, Outcome};

    #[inline(always)]
    pub(crate) fn describe() {}
    #[inline(always)]
    pub(crate) fn token_request(_: &Name, _: Outcome, _: Duration) {}
    #[inline(always)]
    pub(crate) fn waited(_: &Name) {}
    #[inline(always)]
    pub(crate) fn invalidated(_: &Name) {}
    #[inline(always)]
    pub(crate) fn refreshed_ahead(_: &Name) {}
    #[inline(always)]
    pub(crate) fn saved(_: &Name) {}
    #[inline(always)]
    pub(crate) fn save_failed(_: &Name) {}
    #[inline(always)]
    pub(crate) fn adopted(_: &Name) {}
    #[inline(always)]
    pub(crate) fn expires_in(_: &Name, _: Option<Duration>) {}
    #[inline(always)]
    pub(crate) fn rejected_by(_: &mut http::Extensions, _: Option<&crate::TokenCache>) {}
    #[inline(always)]
    pub(crate) fn replayed(_: &http::Extensions) {}
    #[inline(always)]
    pub(crate) fn withheld(_: bool) {}
    #[inline(always)]
    pub(crate) fn leases(_: &Name, _: u64, _: Option<Duration>) {}
}

pub(crate) use emit::*;
