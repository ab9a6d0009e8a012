//! When to refresh and how long to back off: decisions only, no I/O.

use std::time::Duration;

/// When the cache refreshes a token and how it backs off after failures.
///
/// A plain value: the cache is the mechanism, this is the policy. Every
/// decision is a pure function of the token's lifetime, the measured round
/// trip of token requests, the failure count and a random number, so each
/// can be tested without a clock.
///
/// | setting | default | |
/// |---|---|---|
/// | [`refresh_ahead`](Self::refresh_ahead) | 20 % of the planned lifetime | bounded by `min_ahead` and `max_ahead` |
/// | [`min_ahead`](Self::min_ahead) | 10 s | never more than a quarter of the planned lifetime |
/// | [`max_ahead`](Self::max_ahead) | 10 min | |
/// | [`jitter`](Self::jitter) | 0.2 | refresh up to 20 % earlier; back off up to 20 % shorter |
/// | [`expiry_margin`](Self::expiry_margin) | 5 s | at most 10 % of the lifetime but at least 1 s; at most half |
/// | [`default_lifetime`](Self::default_lifetime) | 1 h | when `expires_in` is missing |
/// | [`initial_backoff`](Self::initial_backoff) | 100 ms | doubled per failure |
/// | [`max_backoff`](Self::max_backoff) | 5 min | the longest wait after a transient error; caps `Retry-After` |
/// | [`permanent_backoff`](Self::permanent_backoff) | 30 s, doubled to 5 min | after a permanent error (`invalid_client`, ...) |
/// | [`wait_for_retry`](Self::wait_for_retry) | 250 ms | a request waits for an attempt due this soon instead of failing |
/// | [`request_timeout`](Self::request_timeout) | 30 s | bounds one fetch from any source |
/// | [`store_timeout`](Self::store_timeout) | 2 s | bounds every call to the cache's store |
/// | [`lease_ttl`](Self::lease_ttl) | 6 s | a shared store's lease; renewed every third of it while held |
/// | [`refresh_unused`](Self::refresh_unused) | on | off: a token nobody took since the last refresh is left to expire |
///
/// # Three moments in a token's life
///
/// All counted from when its token request was sent:
///
/// 1. **Refresh**: the cache asks for the next token. That is the planned
///    lifetime less the lead from `refresh_ahead`, and never later than two
///    round trips of the slowest of the last few token requests before the
///    end of the planned lifetime (at most half of it), so a slow endpoint
///    does not make requests wait.
/// 2. **Replace by** ([`replace_by`](Self::replace_by)): the lifetime less
///    the expiry margin, the *planned* lifetime. A healthy endpoint has
///    answered by then. Servers compute expiry in whole seconds and often
///    round the issue time down, so a token announced as 2 s may be valid for
///    only a little over 1 s: hence a margin of at least 1 s for short tokens.
/// 3. **Expiry**: the announced lifetime (`expires_in`). When refreshes keep
///    failing, the current token is still handed out until this moment, the
///    last one at which the server itself would accept it, while the retries
///    go on with backoff. Only then do requests fail, with the error of the
///    last attempt. The trade-off: a request sent in the last instants may
///    reach the server after the token expired and meet a `401`; the layer
///    then invalidates that token, as it does for any rejected token.
///
/// # After a failure
///
/// Attempts back off exponentially from `initial_backoff` with jitter, up to
/// `max_backoff`, and never sooner than a `Retry-After` asks (capped at
/// `max_backoff`). Permanent errors (`invalid_client`, `invalid_scope`, ...)
/// follow a schedule of their own, [`permanent_backoff`](Self::permanent_backoff):
/// 30 s after the first, doubled per further one, up to 5 min, so one
/// refusal during a key rollout costs 30 s, not 5 min, while a refusal that
/// lasts is asked about a dozen times an hour.
/// [`TokenCache::refresh_now`](crate::TokenCache::refresh_now) asks at once
/// whatever the backoff. While no valid token is left, a request that finds the
/// last attempt failed gets that error at once, unless the next attempt is
/// due within `wait_for_retry`: then it waits for that attempt. So a cold
/// start that meets one transient failure costs its requests about 100 ms,
/// not an error.
///
/// # The two timeouts
///
/// [`request_timeout`](Self::request_timeout) bounds one fetch of *any*
/// source, as the cache sees it: a custom [`TokenSource`](crate::TokenSource)
/// that hangs is cut off here. The grants' own `timeout` (30 s by default)
/// bounds their one HTTP request and reports where it stopped; it is the one
/// to tune for a slow token endpoint. With the defaults they are equal, so the
/// grant's fires first and its error is the one reported.
///
/// # Store calls and the fleet's lease
///
/// Every call to a [`TokenStore`](crate::TokenStore) (load, save, lease) is
/// bounded by [`store_timeout`](Self::store_timeout); a call that does not
/// answer in time is a transient `Store(TimedOut)` error and is retried with
/// backoff, so a hung store can hold up neither a refresh nor `shutdown`.
/// With a shared store, the replica asking the token endpoint holds a lease
/// of [`lease_ttl`](Self::lease_ttl), renewed every third of it (each renewal
/// bounded by `store_timeout`) for as long as it is held, through a slow
/// token request and through failed saves alike. So the lease never lapses
/// under a live holder that can reach the store, and a killed holder is
/// replaced within one `lease_ttl`. A holder sends a refresh token only
/// while at least half of its lease is left. Keep `lease_ttl` above three
/// times `store_timeout` (the defaults: 6 s and 2 s).
///
/// Against the anchors: Go's x/oauth2 refreshes 10 s before expiry, on the
/// request path, so an endpoint hiccup in those 10 s fails requests (and a
/// token shorter than 10 s is fetched anew for every request). Duende
/// refreshes 60 s ahead. aliri refreshes at 75 % of the lifetime. Here a
/// one-hour token (OfficeRnD's 3599 s) is refreshed 10–12 minutes ahead, which
/// leaves that long for retries with backoff before any request notices an
/// outage; a 24 h token (Orange Logic) likewise. A 60 s token is refreshed
/// after 44 s; a 2 s token after 0.75 s (after 0.5 s when token requests take
/// 250 ms or more), a 1 s token after 0.375 s.
#[derive(Debug, Clone)]
pub struct RefreshPolicy {
    refresh_ahead: f64,
    min_ahead: Duration,
    max_ahead: Duration,
    jitter: f64,
    expiry_margin: Duration,
    default_lifetime: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    permanent_first: Duration,
    permanent_max: Duration,
    wait_for_retry: Duration,
    request_timeout: Duration,
    store_timeout: Duration,
    lease_ttl: Duration,
    refresh_unused: bool,
}

/// A refresh leaves room for this many round trips of recent token requests.
const ROUND_TRIPS: u32 = 2;

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            refresh_ahead: 0.2,
            min_ahead: Duration::from_secs(10),
            max_ahead: Duration::from_secs(600),
            jitter: 0.2,
            expiry_margin: Duration::from_secs(5),
            default_lifetime: Duration::from_secs(3600),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(300),
            permanent_first: Duration::from_secs(30),
            permanent_max: Duration::from_secs(300),
            wait_for_retry: Duration::from_millis(250),
            request_timeout: Duration::from_secs(30),
            store_timeout: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(6),
            refresh_unused: true,
        }
    }
}

impl RefreshPolicy {
    /// The default policy (see the table above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Refresh when this fraction of the lifetime remains (clamped to `0..=1`).
    pub fn refresh_ahead(mut self, fraction: f64) -> Self {
        self.refresh_ahead = clamp_unit(fraction);
        self
    }

    /// Refresh at least this long before expiry (but never before three
    /// quarters of the lifetime have passed).
    pub fn min_ahead(mut self, ahead: Duration) -> Self {
        self.min_ahead = ahead;
        self
    }

    /// Refresh at most this long before expiry.
    pub fn max_ahead(mut self, ahead: Duration) -> Self {
        self.max_ahead = ahead;
        self
    }

    /// Randomisation, as a fraction (clamped to `0..=1`): refreshes start up
    /// to this much earlier and backoff delays are up to this much shorter,
    /// so a fleet started together does not move in lockstep. `0` makes the
    /// policy deterministic.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = clamp_unit(fraction);
        self
    }

    /// Plan for a token to be replaced this long before it expires (at most
    /// 10 % of its lifetime, at least 1 s, at most half). Without a
    /// replacement the token is still handed out until it expires.
    pub fn expiry_margin(mut self, margin: Duration) -> Self {
        self.expiry_margin = margin;
        self
    }

    /// The lifetime assumed when the server sends no `expires_in`.
    pub fn default_lifetime(mut self, lifetime: Duration) -> Self {
        self.default_lifetime = lifetime;
        self
    }

    /// The first delay after a failed token request; doubled per failure.
    pub fn initial_backoff(mut self, delay: Duration) -> Self {
        self.initial_backoff = delay;
        self
    }

    /// The longest delay between attempts after transient errors. Also caps
    /// `Retry-After`.
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// The wait after a permanent error (`invalid_client`, `invalid_scope`,
    /// ...): `first` after one, doubled per further one in a row, up to
    /// `max`. Permanent errors are not retried hot, but a refusal can be
    /// brief (a key rollout): the first wait is short.
    pub fn permanent_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.permanent_first = first;
        self.permanent_max = max.max(first);
        self
    }

    /// While no valid token is left, a request that finds the last attempt
    /// failed waits for the next one when it is due within `wait` (and gets
    /// its result), instead of failing at once with the last error. `ZERO`
    /// fails at once. Put `tower::timeout` outside the layer to bound a
    /// request's whole wait.
    pub fn wait_for_retry(mut self, wait: Duration) -> Self {
        self.wait_for_retry = wait;
        self
    }

    /// The longest one token fetch may take, whatever the source.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The longest one call to the cache's store may take (load, save,
    /// lease). See "Store calls and the fleet's lease" above.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// How long a shared store's lease lasts without a renewal: how soon a
    /// killed holder is replaced. Renewed every third of it while held.
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Whether a token nobody took since it was fetched is refreshed ahead
    /// of its expiry (default: yes, every token is).
    ///
    /// Off, the cache looks at the token's refresh point whether a request
    /// took it since the last look, and once more halfway from there to its
    /// expiry. A token taken meanwhile is refreshed then, as usual. One
    /// nobody took is served until it expires, and the cache then idles, with no task and no timer (see
    /// [`census`](crate::cache::census)), until a request asks again; that
    /// request waits for a token request. One cache per caller in a proxy
    /// wants this: most callers go quiet, and refreshing their tokens would
    /// cost a token request per caller per lifetime for nobody.
    ///
    /// What counts as taking the token, once it is published (the requests
    /// that waited for it do not count): [`TokenCache::token`], building a layer or middleware over the
    /// cache, and [`CacheMap::get_or_insert_with`]. Requests through a layer
    /// built once do not count (that path writes nothing shared): a cache
    /// behind a long-lived client should keep the default.
    ///
    /// [`TokenCache::token`]: crate::TokenCache::token
    /// [`CacheMap::get_or_insert_with`]: crate::CacheMap::get_or_insert_with
    pub fn refresh_unused(mut self, refresh: bool) -> Self {
        self.refresh_unused = refresh;
        self
    }

    pub(crate) fn refreshes_unused(&self) -> bool {
        self.refresh_unused
    }

    pub(crate) fn timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn store_deadline(&self) -> Duration {
        self.store_timeout
    }

    pub(crate) fn lease(&self) -> Duration {
        self.lease_ttl
    }

    pub(crate) fn retry_wait(&self) -> Duration {
        self.wait_for_retry
    }

    pub(crate) fn lifetime(&self, announced: Option<Duration>) -> Duration {
        announced.unwrap_or(self.default_lifetime)
    }

    /// How long after its request a token of `lifetime` is refreshed, before
    /// jitter (which only makes it earlier) and with token requests that
    /// answer at once. With the defaults: 2995 s for an hour, 44 s for a
    /// minute, 0.75 s for 2 s.
    pub fn refresh_after(&self, lifetime: Duration) -> Duration {
        self.refresh_point(lifetime, Duration::ZERO, 0.0)
    }

    /// How long after its request a token of `lifetime` should have been
    /// replaced: the lifetime less the expiry margin.
    pub fn replace_by(&self, lifetime: Duration) -> Duration {
        let margin = self
            .expiry_margin
            .min((lifetime / 10).max(Duration::from_secs(1)))
            .min(lifetime / 2);
        lifetime - margin
    }

    /// When to refresh a token of `lifetime`, counted from its request, when
    /// recent token requests took up to `round_trip`; `random` is uniform in
    /// `[0, 1)`.
    pub(crate) fn refresh_point(
        &self,
        lifetime: Duration,
        round_trip: Duration,
        random: f64,
    ) -> Duration {
        let replace_by = self.replace_by(lifetime);
        let room = round_trip.saturating_mul(ROUND_TRIPS).min(replace_by / 2);
        replace_by - self.ahead(replace_by, random).max(room)
    }

    /// How long before `replace_by` to refresh, by the configured fractions.
    fn ahead(&self, replace_by: Duration, random: f64) -> Duration {
        let base = replace_by
            .mul_f64(self.refresh_ahead)
            .clamp(self.min_ahead, self.max_ahead.max(self.min_ahead));
        let jittered = base.mul_f64(1.0 + self.jitter * random);
        jittered.min(replace_by / 4)
    }

    /// The delay before attempt number `failures + 1` after `failures`
    /// consecutive failures of the kind described.
    pub(crate) fn backoff(
        &self,
        failures: u32,
        transient: bool,
        retry_after: Option<Duration>,
        random: f64,
    ) -> Duration {
        let delay = if transient {
            let exp = self
                .initial_backoff
                .saturating_mul(1u32 << failures.saturating_sub(1).min(20));
            exp.min(self.max_backoff)
                .mul_f64(1.0 - self.jitter * random)
        } else {
            self.permanent_first
                .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
                .min(self.permanent_max)
        };
        let asked = retry_after.map_or(Duration::ZERO, |d| d.min(self.max_backoff));
        delay.max(asked)
    }
}

fn clamp_unit(x: f64) -> f64 {
    if x.is_nan() {
        0.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    fn at(p: &RefreshPolicy, lifetime: Duration, random: f64) -> (Duration, Duration) {
        (
            p.refresh_point(lifetime, Duration::ZERO, random),
            p.replace_by(lifetime),
        )
    }

    #[test]
    fn schedule_scales_with_lifetime() {
        let p = RefreshPolicy::new().jitter(0.0);
        let ms = Duration::from_millis;
        // (lifetime, refresh after, replace by)
        for (lifetime, refresh, replace_by) in [
            (S(3599), S(2994), S(3594)), // ceiling: 10 min ahead of a 5 s margin
            (S(24 * 3600), S(85795), S(86395)),
            (S(30 * 24 * 3600), S(2591395), S(2591995)),
            (S(1800), S(1436), S(1795)), // 20 % of the planned lifetime
            (S(60), S(44), S(55)),       // 20 % of 55 s
            (S(30), ms(20250), S(27)),   // margin 10 %; floor capped at a quarter
            (S(2), ms(750), S(1)),       // margin 1 s: whole-second expiry
            (S(1), ms(375), ms(500)),    // margin at most half
        ] {
            assert_eq!(at(&p, lifetime, 0.5), (refresh, replace_by), "{lifetime:?}");
        }
    }

    #[test]
    fn jitter_only_moves_refresh_earlier_and_stays_bounded() {
        let p = RefreshPolicy::new();
        let (plain, replace_by) = at(&p, S(3600), 0.0);
        let (early, _) = at(&p, S(3600), 0.999);
        assert_eq!((plain, replace_by), (S(2995), S(3595)));
        assert!(early < plain && early >= S(2995 - 120), "{early:?}");
        for r in [0.0, 0.3, 0.999] {
            let (refresh, replace_by) = at(&p, S(1), r);
            assert!(refresh >= Duration::from_millis(375) && refresh < replace_by);
        }
    }

    #[test]
    fn public_view_of_the_schedule() {
        let p = RefreshPolicy::new();
        assert_eq!(p.refresh_after(S(3600)), S(2995));
        assert_eq!(p.replace_by(S(3600)), S(3595));
        assert_eq!(p.refresh_after(S(2)), Duration::from_millis(750));
    }

    #[test]
    fn a_slow_endpoint_moves_the_refresh_earlier_within_bounds() {
        let p = RefreshPolicy::new().jitter(0.0);
        let ms = Duration::from_millis;
        // (lifetime, round trip, refresh after)
        for (lifetime, round_trip, refresh) in [
            (S(2), ms(100), ms(750)), // 2 round trips fit in the usual lead
            (S(2), ms(200), ms(600)),
            (S(2), ms(400), ms(500)), // at most half the planned lifetime
            (S(2), S(30), ms(500)),
            (S(3600), S(1), S(2995)), // an hour's lead dwarfs any round trip
            (S(3600), S(400), S(2795)),
            (S(60), S(10), S(35)),
        ] {
            assert_eq!(
                p.refresh_point(lifetime, round_trip, 0.0),
                refresh,
                "{lifetime:?} {round_trip:?}"
            );
        }
    }

    #[test]
    fn zero_lifetime_does_not_underflow() {
        let p = RefreshPolicy::new();
        assert_eq!(
            at(&p, Duration::ZERO, 0.5),
            (Duration::ZERO, Duration::ZERO)
        );
    }

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        assert_eq!(
            RefreshPolicy::new().jitter(0.0).backoff(1, true, None, 0.0),
            Duration::from_millis(100)
        );
        let p = RefreshPolicy::new().jitter(0.0).initial_backoff(S(1));
        let delays: Vec<_> = (1..=12).map(|n| p.backoff(n, true, None, 0.0)).collect();
        assert_eq!(&delays[..4], &[S(1), S(2), S(4), S(8)]);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*delays.last().unwrap(), S(300));
        assert_eq!(p.backoff(1, true, Some(S(120)), 0.0), S(120));
        assert_eq!(p.backoff(1, true, Some(S(100_000)), 0.0), S(300));
        assert_eq!(p.backoff(1, false, None, 0.0), S(30));
        let permanent: Vec<_> = (1..=6).map(|n| p.backoff(n, false, None, 0.0)).collect();
        assert_eq!(permanent, [S(30), S(60), S(120), S(240), S(300), S(300)]);
        let own = RefreshPolicy::new().permanent_backoff(S(5), S(20));
        assert_eq!(own.backoff(1, false, None, 0.0), S(5));
        assert_eq!(own.backoff(9, false, None, 0.0), S(20));
        assert_eq!(p.backoff(u32::MAX, true, None, 0.0), S(300));
    }

    #[test]
    fn backoff_jitter_shortens_within_bounds() {
        let p = RefreshPolicy::new().initial_backoff(S(1));
        let d = p.backoff(3, true, None, 0.999);
        assert!(d < S(4) && d >= S(4).mul_f64(0.8), "{d:?}");
    }
}
