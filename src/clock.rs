//! The one place the crate reads the time.
//!
//! Timers and ages run on Tokio's monotonic clock, so tests drive them with
//! `tokio::time::pause` and `advance` instead of sleeping.
//!
//! A date that leaves the process (an assertion's `iat` and `exp`, a stored
//! `issued_at`, the expiry gauge) or comes in (`Retry-After: <HTTP-date>`) is
//! worked out from the system clock read at that moment. The system clock
//! is stepped after start (NTP at boot, a VM snapshot restored), and a date
//! derived from an earlier reading stays wrong by the step for as long as
//! the process lives: every assertion dated in the past, say.
//!
//! The monotonic clock stands still while the machine is suspended (Linux's
//! `CLOCK_MONOTONIC`), so a timer set for a token's expiry fires late by the
//! suspension. A [`Deadline`] is on both clocks and has passed when either
//! says so.

use std::time::{Duration, SystemTime};

pub(crate) use tokio::time::Instant;

/// How often a [`Deadline`] being slept on looks at the wall clock: a token
/// whose expiry passed during a suspension is withdrawn at most this long
/// after the machine resumes. A wake-up every 10 s costs nothing next to
/// serving a dead token for minutes.
pub(crate) const WALL_RECHECK: Duration = Duration::from_secs(10);

/// How far past a wall-clock deadline the wall clock must be before it
/// overrules the monotonic one. Comparing the two clocks takes two reads,
/// and a thread preempted between them sees them apart by the preemption;
/// what the wall check is for (a suspension, a step) is far longer.
pub(crate) const WALL_TOLERANCE: Duration = Duration::from_secs(1);

/// Monotonic now, on Tokio's (pausable) clock.
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Wall-clock now: the system clock read now, moved by how far Tokio's
/// clock is ahead of the real monotonic one (or behind it).
///
/// That difference is nil outside paused tests: without a paused clock,
/// Tokio's `Instant::now()` is `std::time::Instant::now()`, the same clock,
/// and the two reads differ by the nanoseconds between them. With Tokio's
/// clock paused it is the time advanced less the real time elapsed since
/// the pause, so wall time is the system clock at the pause plus the time
/// advanced (to within the time between two clock reads): a token stored
/// "24 h ago" on paused time has expired when read back, and a step of the
/// system clock still shows. It is not
/// clamped at zero: a paused test that ran longer in real time than it
/// advanced would then see wall time move with real time while its timers
/// stand still, and wall and monotonic deadlines come apart.
pub(crate) fn wall_now() -> SystemTime {
    wall_time_of(now())
}

/// The wall-clock time at which the monotonic clock reads `at`, judged by
/// both clocks now: a token's expiry as a date.
pub(crate) fn wall_time_of(at: Instant) -> SystemTime {
    let real = std::time::Instant::now();
    let wall = system_now();
    let at = at.into_std();
    if at >= real {
        wall.checked_add(at - real)
    } else {
        wall.checked_sub(real - at)
    }
    .unwrap_or(wall)
}

/// The monotonic instant at which the wall clock will read (or read)
/// `wall`, judged by both clocks now: a stored date as an instant.
#[allow(dead_code)] // For the store's read path; today it subtracts an age.
pub(crate) fn instant_of(wall: SystemTime) -> Instant {
    let real = std::time::Instant::now();
    let now_wall = system_now();
    let at = match wall.duration_since(now_wall) {
        Ok(ahead) => real.checked_add(ahead),
        Err(behind) => real.checked_sub(behind.duration()),
    };
    Instant::from_std(at.unwrap_or(real))
}

/// Whether the wall clock is past `wall_expiry` (by more than
/// [`WALL_TOLERANCE`]): true after a suspension that outlasted it, which
/// the monotonic clock does not count.
pub(crate) fn wall_deadline_passed(wall_expiry: SystemTime) -> bool {
    wall_expiry
        .checked_add(WALL_TOLERANCE)
        .is_some_and(|late| wall_now() >= late)
}

/// A moment on both clocks, such as a token's expiry: fixed on the wall
/// clock when it is made, and passed when either clock has reached it.
///
/// The wall side catches a suspension; a wall clock stepped forward makes
/// it pass early (one more token request), one stepped back changes nothing
/// (the monotonic side still holds).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadline {
    at: Instant,
    wall: SystemTime,
}

impl Deadline {
    /// The deadline `at` on the monotonic clock, dated on the wall clock now.
    pub(crate) fn at(at: Instant) -> Deadline {
        Deadline {
            at,
            wall: wall_time_of(at),
        }
    }

    /// The monotonic side.
    pub(crate) fn instant(&self) -> Instant {
        self.at
    }

    /// The wall-clock side.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn wall(&self) -> SystemTime {
        self.wall
    }

    /// Whether either clock has reached it.
    pub(crate) fn passed(&self) -> bool {
        now() >= self.at || wall_deadline_passed(self.wall)
    }

    /// Sleeps until it has passed, waking at least every [`WALL_RECHECK`]
    /// to look at the wall clock. Cancel-safe: it holds no state of its own.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) async fn sleep(&self) {
        while !self.passed() {
            let step = now() + WALL_RECHECK;
            tokio::time::sleep_until(self.at.min(step)).await;
        }
    }
}

/// The system clock; unit tests step it with `step_wall_clock`.
fn system_now() -> SystemTime {
    let now = SystemTime::now();
    #[cfg(test)]
    let now = STEP.with(|step| match step.get() {
        forward if forward >= 0 => now + Duration::from_secs(forward.unsigned_abs()),
        back => now - Duration::from_secs(back.unsigned_abs()),
    });
    now
}

#[cfg(test)]
thread_local! {
    /// Seconds this thread's system clock has been stepped by.
    static STEP: std::cell::Cell<i64> = const { std::cell::Cell::new(0) };
}

/// Steps this thread's system clock by `seconds`, as NTP or a resume from
/// suspension would (the monotonic clock does not move).
#[cfg(test)]
pub(crate) fn step_wall_clock(seconds: i64) {
    STEP.with(|step| step.set(step.get() + seconds));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// `a` and `b` within `ms` milliseconds of each other.
    fn near(a: SystemTime, b: SystemTime, ms: u64) -> bool {
        let gap = a.duration_since(b).unwrap_or_else(|e| e.duration());
        gap <= Duration::from_millis(ms)
    }

    #[tokio::test]
    async fn wall_now_is_the_system_clock_when_not_paused() {
        let wall = wall_now();
        assert!(near(wall, SystemTime::now(), 50), "{wall:?}");
    }

    #[tokio::test]
    async fn wall_now_follows_a_step_of_the_system_clock() {
        // Fails on a clock read once per process: it never sees the step.
        let before = wall_now();
        step_wall_clock(-10 * 86_400);
        let after = wall_now();
        let back = before.duration_since(after).expect("stepped back");
        assert!(back >= secs(10 * 86_400 - 1), "{back:?}");
        step_wall_clock(10 * 86_400 + 3600);
        let forward = wall_now().duration_since(before).expect("stepped on");
        assert!(forward >= secs(3600) && forward < secs(3601), "{forward:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_wall_time_exactly() {
        let start = wall_now();
        // Real time passes, paused time does not: nor does wall time (a
        // difference clamped at zero would let it run with real time).
        std::thread::sleep(Duration::from_millis(100));
        assert!(near(wall_now(), start, 30), "wall time ran while paused");
        tokio::time::advance(secs(86_400)).await;
        let later = wall_now();
        assert!(near(later, start + secs(86_400), 30), "{later:?} {start:?}");
        step_wall_clock(60);
        assert!(near(wall_now(), later + secs(60), 30));
    }

    #[tokio::test(start_paused = true)]
    async fn wall_time_of_and_instant_of_agree() {
        let at = now() + secs(3600);
        let wall = wall_time_of(at);
        assert!(near(wall, wall_now() + secs(3600), 30));
        let back = instant_of(wall);
        let gap = back.max(at) - back.min(at);
        assert!(gap < Duration::from_millis(30), "{gap:?}");
        let past = instant_of(wall_now() - secs(600));
        let age = now() - past;
        assert!(
            age.abs_diff(secs(600)) < Duration::from_millis(30),
            "{age:?}"
        );
        // A date far outside what an Instant can hold does not panic.
        let _ = instant_of(UNIX_EPOCH);
        let _ = wall_time_of(now());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_on_the_monotonic_clock() {
        let deadline = Deadline::at(now() + secs(3600));
        tokio::time::advance(secs(3599)).await;
        assert!(!deadline.passed());
        tokio::time::advance(secs(1)).await;
        assert!(deadline.passed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_passes_when_a_suspension_outlasted_it() {
        // A suspension: the wall clock jumps 2 h, the monotonic one does not.
        let deadline = Deadline::at(now() + secs(3600));
        step_wall_clock(7200);
        assert!(deadline.passed());
        assert!(wall_deadline_passed(deadline.wall()));
        assert!(now() < deadline.instant(), "the monotonic side has not");
    }

    #[tokio::test(start_paused = true)]
    async fn a_deadline_ignores_a_step_back_and_small_differences() {
        let deadline = Deadline::at(now() + secs(3600));
        step_wall_clock(-86_400);
        tokio::time::advance(secs(3599)).await;
        assert!(!deadline.passed());
        tokio::time::advance(secs(1)).await;
        assert!(deadline.passed(), "the monotonic side still holds");

        let deadline = Deadline::at(now() + secs(60));
        assert!(!wall_deadline_passed(deadline.wall()));
        assert!(!wall_deadline_passed(wall_now() + secs(100 * 365 * 86_400)));
    }

    #[tokio::test(start_paused = true)]
    async fn sleeping_on_a_deadline_wakes_after_a_suspension() {
        let deadline = Deadline::at(now() + secs(3600));
        let start = now();
        let sleeper = tokio::spawn(async move { deadline.sleep().await });
        tokio::time::advance(secs(100)).await;
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished());
        // The machine slept 2 h; the monotonic clock saw none of it. The
        // sleeper runs on this thread, whose clock the step moves.
        step_wall_clock(7200);
        tokio::time::advance(WALL_RECHECK).await;
        for _ in 0..5 {
            tokio::task::yield_now().await;
        }
        assert!(sleeper.is_finished(), "woken by its wall-clock check");
        assert!(now() - start <= secs(100) + WALL_RECHECK);

        // Without a step it sleeps to the monotonic deadline, to the tick.
        let deadline = Deadline::at(now() + secs(3600));
        let start = now();
        deadline.sleep().await;
        assert_eq!(now() - start, secs(3600));
    }
}
