//! The chaos suite: a fleet of replica processes sharing one rotating refresh
//! token through a real `redis-server`, under a random schedule of the
//! faults production meets, judged at the end by what the token endpoint and
//! the replicas saw.
//!
//! # The setup
//!
//! - A strict token endpoint ([`Rotating`]): every refresh rotates the
//!   refresh token, a refresh token sent twice revokes the family. Access
//!   tokens live 3 s, so the fleet rotates every 2 s or so. Each answer takes
//!   200 ms. The replicas reach it through one TCP proxy (one URL, so one
//!   store key for the fleet).
//! - 4 to 8 replica processes (this test binary again, running the ignored
//!   test `chaos_replica`): each a `TokenCache` over a `RefreshToken` grant
//!   configured with the first refresh token, over a `RedisStore`, asking for
//!   a token every 50 ms and printing each answer with its start and end
//!   (wall clock, ms). A request unanswered after 5 s is a failure.
//! - Each replica reaches Redis through a TCP proxy of its own ([`Proxy`]),
//!   which can hold Redis' replies past the client's 1 s response timeout
//!   (the command is applied, its reply is late), or drop the connections.
//!   The proxy also keeps what the replica sent: the lease holder is the
//!   replica whose bytes contain the value of the lease key (any key named
//!   `*lease*` holding a string; when none is found within 6 s, the fault
//!   falls back to a random replica and is counted as `kill` or `stop`).
//!
//! # The faults
//!
//! A schedule drawn from a seed, printed first as `CHAOS_SEED=<n>`; set
//! `CHAOS_SEED` to replay a schedule (the faults and their parameters; the
//! interleavings depend on the machine); `CHAOS_FAULTS=kill_holder,cut`
//! keeps only the kinds named. Between faults, 2 to 6 s of quiet.
//!
//! - `kill`, `kill_holder`: SIGKILL of a random replica, or of the lease
//!   holder while its token request is on the wire; restarted 0.5-3 s later.
//! - `stop`, `stop_holder`: SIGSTOP of a random replica or of the lease
//!   holder, SIGCONT 8-20 s later (longer than the lease, 2 s request
//!   timeout + 5 s today); runs alongside the next faults.
//! - `redis_empty`: redis-server killed, restarted empty 0.5-5 s later.
//! - `redis_snapshot`: redis-server killed, restarted 0.5-3 s later from an
//!   RDB snapshot taken 3-20 s earlier (older than the last rotations).
//! - `reply_hold`: the Redis proxy of every replica, or of one, holds replies
//!   for 1.5-4 s (then delivers them) during a 2-6 s window.
//! - `cut`: the Redis proxy of every replica, or of one, drops its
//!   connections.
//!
//! A replica is never killed or stopped between the moment the token
//! endpoint rotated its refresh token and the moment the replica stored the
//! answer: then the newest refresh token exists only in that process, and
//! no protocol can save the grant (tests/crash.rs calls it the unavoidable
//! window). So before a kill or a stop, the token proxy holds every token
//! request for 400 ms (longer than an answer and its save); a lease holder
//! found then has its request stuck in the proxy, not at the endpoint, and
//! that request is dropped with the proxy's connections after the fault.
//! "The lease holder killed mid-request" is exactly that request, lost on
//! the wire.
//!
//! # The invariants, checked at the end
//!
//! 1. **No refresh token sent twice** (`reuse 0`): the endpoint received
//!    each refresh token at most once.
//! 2. **The family is never revoked** (`revocations 0`).
//! 3. **No request failed while a replica held a token the server accepts**
//!    (`failed 0`). A failed request (an error, or no answer within 5 s)
//!    of replica R, ending at time T, counts unless one of these excuses it:
//!    - *no accepted token*: no replica that was running from its answer
//!      until T (not killed nor stopped in between) had served, by T - 1 s,
//!      a token the endpoint accepts from T - 1 s to T + 0.5 s (issued, not
//!      expired, family not revoked). The 1 s lets a replica adopt a token
//!      another one stored; the 0.5 s excuses a token about to expire;
//!    - *Redis unreachable*: the request overlaps a time R could not reach
//!      Redis (redis-server down, R's proxy holding replies or just cut),
//!      plus 2 s for its connection to come back. A replica that cannot read
//!      the store cannot adopt the token another one stored, and must not
//!      send its refresh token without the fleet's lease, so its
//!      `Store(Unavailable)` once its own token expired is the right answer;
//!    - *paused*: the request overlaps a SIGSTOP of R (plus 1 s).
//! 4. **Every replica serves again within 15 s after the last fault** (the
//!    last SIGCONT, restart, or end of a proxy fault), and fails no request
//!    after that.
//! 5. **No replica served a token the endpoint no longer accepted** (expired
//!    by the server's clock more than 200 ms before the request started).
//!    One exception, counted apart as `served_on_thaw`: a replica resumed
//!    after a SIGSTOP longer than its token's life withdraws that token on
//!    its first scheduler turn, and a request that starts within 100 ms of
//!    the SIGCONT, polled in that same turn, can still get it (the hot path
//!    reads no clock; the API's 401 then invalidates it).
//!
//! A revocation ends the schedule early (nothing after it can be judged:
//! every replica needs a person), followed by 15 s of quiet.
//!
//! The summary line (`CHAOS SUMMARY ...`) gives the seed, the faults by
//! kind, token requests, reuse, revocations, failed and excused requests,
//! the slowest recovery, and (for information, not checked) the longest
//! time no replica served at all; run with `--nocapture` to see it on
//! success. A time-ordered log of the faults, the endpoint's events and each
//! replica's answers and warnings is written next to the build's temporary
//! files (its path is printed).

mod support;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use rand::{rngs::StdRng, Rng, SeedableRng};
use secrecy::ExposeSecret;
use support::{
    proxy::Proxy,
    redis::{RedisServer, Snapshot},
    rotating::Rotating,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    process::Child,
};
use tower_oauth2::{RedisStore, RefreshPolicy, RefreshToken, TokenCache};

/// Access token lifetime, in seconds.
const LIFETIME: u64 = 3;
/// How long the token endpoint takes to answer.
const ENDPOINT_LATENCY: Duration = Duration::from_millis(200);
/// The replicas' request timeout (and their grant's HTTP timeout).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// A replica asks for a token this often.
const PACE: Duration = Duration::from_millis(50);
/// A request unanswered this long is a failure.
const DEADLINE: Duration = Duration::from_secs(5);
/// Faults are started during this long.
const FAULT_PHASE: Duration = Duration::from_secs(100);
/// Every replica serves again within this long after the last fault.
const RECOVERY: Duration = Duration::from_secs(15);
/// Quiet run after the last fault.
const TAIL: Duration = Duration::from_secs(20);
/// Token requests are held this long before a kill or a stop, so an answer
/// already under way is received and stored first.
const SETTLE: Duration = Duration::from_millis(400);

/// How long around its SIGCONT (noted just after the signal is sent) a
/// replica's request may still get the token that expired while it was
/// stopped: its first scheduler turn.
const THAW_MS: u64 = 100;
/// How long a replica may take to adopt a token another one stored.
const ADOPT_MS: u64 = 1_000;
/// A token this close to its expiry does not count as held.
const EXPIRY_SLACK_MS: u64 = 500;
/// A connection to Redis is back this long after the fault ended.
const RECONNECT_MS: u64 = 2_000;

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A replica: requests back to back until killed, one line per answer:
/// `OK <start> <end> <access token>` or `ERR <start> <end> <kind> | <error>`.
#[tokio::test]
#[ignore = "a replica process of the chaos suite, started by it"]
async fn chaos_replica() {
    let env = |name: &str| std::env::var(name).expect(name);
    let _ = tracing_subscriber::fmt()
        .with_env_filter("tower_oauth2=info")
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .try_init();
    let grant = RefreshToken::builder()
        .token_url(env("CHAOS_TOKEN_URL"))
        .client_id("chaos-app")
        .client_secret("secret")
        .refresh_token("rt-0")
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let cache = TokenCache::builder(grant)
        .policy(RefreshPolicy::new().request_timeout(REQUEST_TIMEOUT))
        .store(RedisStore::new(&env("CHAOS_REDIS_URL")).unwrap())
        .build();
    println!("READY");
    loop {
        let start = now_ms();
        // The fake endpoint's access tokens are `at-<n>`: no secret.
        match tokio::time::timeout(DEADLINE, cache.token()).await {
            Ok(Ok(token)) => println!(
                "OK {start} {} {}",
                now_ms(),
                token.access_token().expose_secret()
            ),
            Ok(Err(error)) => println!("ERR {start} {} {:?} | {error}", now_ms(), error.kind()),
            Err(_) => println!(
                "ERR {start} {} Timeout | no answer in {DEADLINE:?}",
                now_ms()
            ),
        }
        tokio::time::sleep(PACE).await;
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill { holder: bool, down: u64 },
    Stop { holder: bool, pause: u64 },
    RedisEmpty { down: u64 },
    RedisSnapshot { down: u64 },
    ReplyHold { all: bool, delay: u64, window: u64 },
    Cut { all: bool },
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill { holder: false, .. } => "kill",
            Fault::Kill { holder: true, .. } => "kill_holder",
            Fault::Stop { holder: false, .. } => "stop",
            Fault::Stop { holder: true, .. } => "stop_holder",
            Fault::RedisEmpty { .. } => "redis_empty",
            Fault::RedisSnapshot { .. } => "redis_snapshot",
            Fault::ReplyHold { .. } => "reply_hold",
            Fault::Cut { .. } => "cut",
        }
    }

    /// Roughly how long the schedule is busy with it (stops run alongside).
    fn busy(self) -> u64 {
        match self {
            Fault::Kill { down, .. } => down + 500,
            Fault::Stop { .. } | Fault::Cut { .. } => 500,
            Fault::RedisEmpty { down } | Fault::RedisSnapshot { down } => down + 300,
            Fault::ReplyHold { window, .. } => window,
        }
    }
}

/// The whole schedule, drawn from the seed before anything runs: (quiet
/// time before it in ms, fault, a number that picks the target).
/// Only the faults named in `allowed` are kept (drawn again otherwise).
fn plan(rng: &mut StdRng, allowed: Option<&[String]>) -> Vec<(u64, Fault, u64)> {
    let mut plan = Vec::new();
    let mut elapsed = 0;
    let phase = u64::try_from(FAULT_PHASE.as_millis()).unwrap();
    while elapsed < phase {
        let gap = rng.random_range(2_000..6_000);
        let fault = loop {
            let fault = draw(rng);
            if allowed.is_none_or(|names| names.iter().any(|n| n == fault.name())) {
                break fault;
            }
        };
        elapsed += gap + fault.busy();
        plan.push((gap, fault, rng.random()));
    }
    plan
}

fn draw(rng: &mut StdRng) -> Fault {
    match rng.random_range(0..11) {
        0 | 1 => Fault::Kill {
            holder: rng.random_bool(0.5),
            down: rng.random_range(500..3_000),
        },
        2 | 3 => Fault::Stop {
            holder: rng.random_bool(0.5),
            pause: rng.random_range(8_000..20_000),
        },
        4 | 5 => Fault::RedisEmpty {
            down: rng.random_range(500..5_000),
        },
        6 | 7 => Fault::RedisSnapshot {
            down: rng.random_range(500..3_000),
        },
        8 | 9 => Fault::ReplyHold {
            all: rng.random_bool(0.5),
            delay: rng.random_range(1_500..4_000),
            window: rng.random_range(2_000..6_000),
        },
        _ => Fault::Cut {
            all: rng.random_bool(0.5),
        },
    }
}

/// One line a replica printed, with which replica (slot) printed it.
struct Line {
    slot: usize,
    /// When the parent read it (wall clock, ms).
    at: u64,
    text: String,
}

/// A request as a replica reported it.
struct Request {
    slot: usize,
    start: u64,
    end: u64,
    /// The access token served, or the error's kind.
    outcome: Result<String, String>,
}

/// A time a replica (or all of them) was impaired.
#[derive(Clone, Copy)]
struct Window {
    slot: Option<usize>,
    from: u64,
    to: u64,
}

impl Window {
    fn covers(&self, slot: usize, from: u64, to: u64) -> bool {
        self.slot.is_none_or(|s| s == slot) && self.from <= to && from <= self.to
    }
}

struct Replica {
    child: Option<Child>,
    redis: Proxy,
    /// When it was stopped, while it is.
    stopped: Option<u64>,
}

impl Replica {
    fn running(&self) -> bool {
        self.child.is_some() && self.stopped.is_none()
    }
}

fn signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the replica is alive").to_string();
    let status = Command::new("kill").args([signal, &pid]).status().unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

struct Chaos {
    started: u64,
    redis: RedisServer,
    server: Rotating,
    token_proxy: Proxy,
    replicas: Vec<Replica>,
    journal: Arc<Mutex<Vec<Line>>>,
    timeline: Vec<(u64, String)>,
    faults: BTreeMap<&'static str, u32>,
    /// Times replicas could not reach Redis.
    unreachable: Vec<Window>,
    /// Times replicas were stopped (`paused`) or dead.
    paused: Vec<Window>,
    dead: Vec<Window>,
    /// SIGCONTs due: (slot, when).
    resumes: Vec<(usize, Instant)>,
    snapshot: Option<(Snapshot, Instant)>,
    last_fault_end: u64,
}

impl Chaos {
    fn note(&mut self, text: impl Into<String>) {
        let now = now_ms();
        self.timeline.push((now, text.into()));
    }

    fn spawn(&mut self, slot: usize) {
        let mut child = support::child::spawn(
            "chaos_replica",
            [
                ("CHAOS_TOKEN_URL", self.token_url()),
                ("CHAOS_REDIS_URL", self.replicas[slot].redis.redis_url()),
            ],
        );
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let journal = self.journal.clone();
        tokio::spawn(async move {
            while let Ok(Some(text)) = lines.next_line().await {
                let at = now_ms();
                journal.lock().unwrap().push(Line { slot, at, text });
            }
        });
        self.replicas[slot].redis.forget_sent();
        self.replicas[slot].child = Some(child);
    }

    fn token_url(&self) -> String {
        format!("http://{}/token", self.token_proxy.addr)
    }

    /// Waits `duration`, sending the SIGCONTs that fall due meanwhile.
    async fn idle(&mut self, duration: Duration) {
        let until = Instant::now() + duration;
        loop {
            let now = Instant::now();
            let due: Vec<usize> = self
                .resumes
                .iter()
                .filter(|(_, at)| *at <= now)
                .map(|(slot, _)| *slot)
                .collect();
            self.resumes.retain(|(_, at)| *at > now);
            for slot in due {
                self.resume(slot);
            }
            if now >= until {
                return;
            }
            tokio::time::sleep((until - now).min(Duration::from_millis(50))).await;
        }
    }

    fn resume(&mut self, slot: usize) {
        let replica = &mut self.replicas[slot];
        let Some(from) = replica.stopped.take() else {
            return;
        };
        signal(replica.child.as_ref().unwrap(), "-CONT");
        let to = now_ms();
        self.paused.push(Window {
            slot: Some(slot),
            from,
            to,
        });
        self.last_fault_end = self.last_fault_end.max(to);
        self.note(format!("SIGCONT replica {slot}"));
    }

    fn running(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|&s| self.replicas[s].running())
            .collect()
    }

    /// The replica holding the fleet's lease, if one does within `within`:
    /// the lease key's value (its owner) is in the bytes that replica sent.
    async fn holder(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        let client = redis::Client::open(self.redis.url.as_str()).unwrap();
        let mut connection = None;
        while Instant::now() < deadline {
            if connection.is_none() {
                connection = tokio::time::timeout(
                    Duration::from_millis(500),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .ok()
                .and_then(Result::ok);
            }
            if let Some(c) = connection.as_mut() {
                let owners = async {
                    let keys: Vec<String> =
                        redis::cmd("KEYS").arg("*lease*").query_async(c).await?;
                    let mut owners = Vec::new();
                    for key in keys {
                        let value: Option<String> = redis::cmd("GET")
                            .arg(&key)
                            .query_async(c)
                            .await
                            .unwrap_or(None);
                        owners.extend(value);
                    }
                    Ok::<_, redis::RedisError>(owners)
                };
                match tokio::time::timeout(Duration::from_millis(500), owners).await {
                    Ok(Ok(owners)) => {
                        for owner in owners {
                            // The owner id is the longest run of letters and
                            // digits in the value, whatever wraps it.
                            let needle = owner
                                .split(|c: char| !c.is_ascii_alphanumeric())
                                .max_by_key(|piece| piece.len())
                                .unwrap_or_default();
                            if needle.len() < 8 {
                                continue;
                            }
                            if let Some(slot) = self
                                .running()
                                .into_iter()
                                .find(|&s| self.replicas[s].redis.sent_contains(needle.as_bytes()))
                            {
                                return Some(slot);
                            }
                        }
                    }
                    _ => connection = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        None
    }

    /// Picks the victim of a kill or a stop, with every token request held
    /// in the token proxy (see the module's docs); `None` when too few
    /// replicas run to spare one.
    async fn victim(&mut self, holder: bool, pick: u64) -> Option<(usize, bool)> {
        let running = self.running();
        if running.len() < 3 {
            return None;
        }
        self.token_proxy.hold_requests();
        self.idle(SETTLE).await;
        if holder {
            if let Some(slot) = self.holder(Duration::from_secs(6)).await {
                return Some((slot, true));
            }
        }
        let running = self.running();
        let slot = running[usize::try_from(pick).unwrap() % running.len()];
        Some((slot, false))
    }

    /// Drops the token requests held for a kill or a stop, then lets them
    /// flow again.
    fn release_token_requests(&self) {
        self.token_proxy.cut();
        self.token_proxy.pass();
    }

    async fn inject(&mut self, fault: Fault, pick: u64) {
        let name = fault.name();
        match fault {
            Fault::Kill { holder, down } => {
                let Some((slot, found)) = self.victim(holder, pick).await else {
                    self.note(format!("{name}: skipped, too few replicas running"));
                    return;
                };
                let mut child = self.replicas[slot].child.take().unwrap();
                child.start_kill().unwrap();
                let _ = child.wait().await;
                let from = now_ms();
                self.release_token_requests();
                self.note(format!(
                    "SIGKILL replica {slot}{}",
                    if found { " (the lease holder)" } else { "" }
                ));
                *self
                    .faults
                    .entry(if found { "kill_holder" } else { "kill" })
                    .or_default() += 1;
                self.idle(Duration::from_millis(down)).await;
                self.spawn(slot);
                let to = now_ms();
                self.dead.push(Window {
                    slot: Some(slot),
                    from,
                    to,
                });
                self.last_fault_end = self.last_fault_end.max(to);
                self.note(format!("replica {slot} restarted"));
            }
            Fault::Stop { holder, pause } => {
                let Some((slot, found)) = self.victim(holder, pick).await else {
                    self.note(format!("{name}: skipped, too few replicas running"));
                    return;
                };
                signal(self.replicas[slot].child.as_ref().unwrap(), "-STOP");
                self.replicas[slot].stopped = Some(now_ms());
                self.release_token_requests();
                self.resumes
                    .push((slot, Instant::now() + Duration::from_millis(pause)));
                self.note(format!(
                    "SIGSTOP replica {slot}{} for {pause} ms",
                    if found { " (the lease holder)" } else { "" }
                ));
                *self
                    .faults
                    .entry(if found { "stop_holder" } else { "stop" })
                    .or_default() += 1;
            }
            Fault::RedisEmpty { down } | Fault::RedisSnapshot { down } => {
                let snapshot = match fault {
                    Fault::RedisSnapshot { .. } => {
                        let (snapshot, taken) = self.snapshot.clone().unwrap();
                        let age = taken.elapsed();
                        if age < Duration::from_secs(3) {
                            self.idle(Duration::from_secs(3) - age).await;
                        }
                        Some((snapshot, taken.elapsed()))
                    }
                    _ => None,
                };
                let from = now_ms();
                tokio::task::block_in_place(|| self.redis.stop());
                self.note("redis-server killed");
                self.idle(Duration::from_millis(down)).await;
                match &snapshot {
                    Some((snapshot, age)) => {
                        tokio::task::block_in_place(|| self.redis.restart_from(snapshot));
                        self.note(format!(
                            "redis-server restarted from a snapshot {} ms old",
                            age.as_millis()
                        ));
                    }
                    None => {
                        tokio::task::block_in_place(|| self.redis.restart());
                        self.note("redis-server restarted empty");
                    }
                }
                let to = now_ms();
                self.unreachable.push(Window {
                    slot: None,
                    from,
                    to,
                });
                self.last_fault_end = self.last_fault_end.max(to);
                *self.faults.entry(name).or_default() += 1;
            }
            Fault::ReplyHold { all, delay, window } => {
                let slots: Vec<usize> = if all {
                    (0..self.replicas.len()).collect()
                } else {
                    vec![usize::try_from(pick).unwrap() % self.replicas.len()]
                };
                let from = now_ms();
                for &slot in &slots {
                    self.replicas[slot]
                        .redis
                        .delay_replies(Duration::from_millis(delay));
                }
                self.note(format!(
                    "Redis replies to replicas {slots:?} held {delay} ms, for {window} ms"
                ));
                self.idle(Duration::from_millis(window)).await;
                for &slot in &slots {
                    self.replicas[slot].redis.pass();
                }
                // The last replies held arrive `delay` after the window.
                let to = now_ms() + delay;
                for slot in slots {
                    self.unreachable.push(Window {
                        slot: Some(slot),
                        from,
                        to,
                    });
                }
                self.last_fault_end = self.last_fault_end.max(to);
                *self.faults.entry(name).or_default() += 1;
            }
            Fault::Cut { all } => {
                let slots: Vec<usize> = if all {
                    (0..self.replicas.len()).collect()
                } else {
                    vec![usize::try_from(pick).unwrap() % self.replicas.len()]
                };
                let now = now_ms();
                for &slot in &slots {
                    self.replicas[slot].redis.cut();
                    self.unreachable.push(Window {
                        slot: Some(slot),
                        from: now,
                        to: now,
                    });
                }
                self.note(format!("Redis connections of replicas {slots:?} dropped"));
                self.last_fault_end = self.last_fault_end.max(now);
                *self.faults.entry(name).or_default() += 1;
            }
        }
    }

    /// A fresh RDB snapshot now and then, for `redis_snapshot` to go back to.
    fn maybe_snapshot(&mut self) {
        let stale = self
            .snapshot
            .as_ref()
            .is_none_or(|(_, taken)| taken.elapsed() > Duration::from_secs(12));
        if stale && self.redis.running() {
            let snapshot = tokio::task::block_in_place(|| self.redis.snapshot());
            self.snapshot = Some((snapshot, Instant::now()));
            self.note("RDB snapshot taken");
        }
    }
}

fn parse(line: &Line) -> Option<Request> {
    let mut words = line.text.splitn(4, ' ');
    let status = words.next()?;
    if status != "OK" && status != "ERR" {
        return None;
    }
    let start = words.next()?.parse().ok()?;
    let end = words.next()?.parse().ok()?;
    let rest = words.next()?.to_owned();
    Some(Request {
        slot: line.slot,
        start,
        end,
        outcome: if status == "OK" {
            Ok(rest)
        } else {
            Err(rest.split(" | ").next().unwrap_or_default().to_owned())
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("CHAOS_SEED={seed}");
    eprintln!("CHAOS_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let count = rng.random_range(4..=8usize);
    // `CHAOS_FAULTS=kill_holder,stop_holder` keeps only those kinds.
    let allowed: Option<Vec<String>> = std::env::var("CHAOS_FAULTS")
        .ok()
        .map(|names| names.split(',').map(|n| n.trim().to_owned()).collect());
    const KINDS: [&str; 8] = [
        "kill",
        "kill_holder",
        "stop",
        "stop_holder",
        "redis_empty",
        "redis_snapshot",
        "reply_hold",
        "cut",
    ];
    if let Some(names) = &allowed {
        assert!(
            names.iter().all(|n| KINDS.contains(&n.as_str())),
            "CHAOS_FAULTS names kinds among {KINDS:?}"
        );
    }
    let schedule = plan(&mut rng, allowed.as_deref());

    let redis = RedisServer::start();
    let server = Rotating::start(Some("rt-0"), None).await;
    server.lifetime(LIFETIME);
    server.latency(ENDPOINT_LATENCY);
    let endpoint = server.url.trim_start_matches("http://");
    let endpoint = endpoint[..endpoint.find('/').unwrap()].parse().unwrap();
    let token_proxy = Proxy::start(endpoint).await;
    let mut replicas = Vec::new();
    for _ in 0..count {
        replicas.push(Replica {
            child: None,
            redis: Proxy::start(redis.addr()).await,
            stopped: None,
        });
    }
    let mut chaos = Chaos {
        started: now_ms(),
        redis,
        server,
        token_proxy,
        replicas,
        journal: Arc::default(),
        timeline: Vec::new(),
        faults: BTreeMap::new(),
        unreachable: Vec::new(),
        paused: Vec::new(),
        dead: Vec::new(),
        resumes: Vec::new(),
        snapshot: None,
        last_fault_end: 0,
    };
    chaos.note(format!(
        "seed {seed}: {count} replicas, {} faults planned",
        schedule.len()
    ));
    for slot in 0..count {
        chaos.spawn(slot);
    }
    // Every replica serves once before the first fault.
    let warm = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let served: std::collections::HashSet<usize> = chaos
                .journal
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.text.starts_with("OK "))
                .map(|l| l.slot)
                .collect();
            if served.len() == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(warm.is_ok(), "seed {seed}: a replica never served at start");
    chaos.note("every replica serves");
    chaos.maybe_snapshot();
    chaos.idle(Duration::from_secs(2)).await;

    let phase_end = Instant::now() + FAULT_PHASE;
    for (gap, fault, pick) in schedule {
        chaos.idle(Duration::from_millis(gap)).await;
        if Instant::now() >= phase_end {
            break;
        }
        // Nothing after a revocation can be judged: every replica needs a
        // person now.
        if chaos.server.revoked_at().is_some() {
            chaos.note("the family was revoked: no more faults");
            break;
        }
        chaos.maybe_snapshot();
        chaos.inject(fault, pick).await;
    }
    // The last pauses end, then the fleet is left alone.
    while !chaos.resumes.is_empty() {
        chaos.idle(Duration::from_millis(100)).await;
    }
    chaos.last_fault_end = chaos.last_fault_end.max(now_ms());
    chaos.note("last fault over");
    chaos
        .idle(if chaos.server.revoked_at().is_some() {
            RECOVERY
        } else {
            TAIL
        })
        .await;
    chaos.note("end");
    for replica in &mut chaos.replicas {
        if let Some(child) = replica.child.as_mut() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    judge(&chaos, seed, count);
}

/// Checks the invariants, prints the summary, and fails with every broken
/// one, the timeline and the log's path.
fn judge(chaos: &Chaos, seed: u64, count: usize) {
    let server = &chaos.server;
    let journal = chaos.journal.lock().unwrap();
    let requests: Vec<Request> = journal.iter().filter_map(parse).collect();
    let mut per_slot: Vec<Vec<&Request>> = vec![Vec::new(); count];
    for request in &requests {
        per_slot[request.slot].push(request);
    }
    for requests in &mut per_slot {
        requests.sort_by_key(|r| r.end);
    }
    let impaired: Vec<Window> = chaos.paused.iter().chain(&chaos.dead).copied().collect();
    // Whether some replica held at `t` a token the server accepts: the
    // token of its last answer by `t - ADOPT_MS`, accepted from then until
    // `t + EXPIRY_SLACK_MS`, the replica running without a break since.
    let accepted_held = |t: u64| -> bool {
        let by = t.saturating_sub(ADOPT_MS);
        (0..count).any(|slot| {
            let answered = per_slot[slot].partition_point(|r| r.end <= by);
            let Some(last) = per_slot[slot][..answered]
                .iter()
                .rev()
                .find(|r| r.outcome.is_ok())
            else {
                return false;
            };
            let token = last.outcome.as_deref().unwrap_or_default();
            !impaired.iter().any(|w| w.covers(slot, last.end, t))
                && server.accepts(token, at(by))
                && server.accepts(token, at(t + EXPIRY_SLACK_MS))
        })
    };

    let (mut ok, mut failed, mut unreachable, mut paused, mut no_token, mut stale) =
        (0u64, Vec::new(), 0u64, 0u64, 0u64, Vec::new());
    let mut thawed = 0u64;
    for request in &requests {
        match &request.outcome {
            Ok(token) => {
                ok += 1;
                let expired = server.access_window(token).is_none_or(|(_, expires)| {
                    at(request.start) > expires + Duration::from_millis(200)
                });
                // A process frozen past its token's expiry (SIGSTOP, a VM
                // pause) withdraws it on its first scheduler turn after
                // SIGCONT; a request polled in that same turn can still
                // get it (the hot path reads no clock). Counted apart.
                let first_turn = chaos.paused.iter().any(|w| {
                    // `to` is noted just after the SIGCONT is sent; the
                    // replica may start its request first.
                    w.slot == Some(request.slot)
                        && (w.to.saturating_sub(THAW_MS)..=w.to + THAW_MS).contains(&request.start)
                });
                if expired && first_turn {
                    thawed += 1;
                } else if expired {
                    stale.push(request);
                }
            }
            Err(_) => {
                let (s, e) = (request.start, request.end);
                let after = |w: &Window, ms: u64| Window {
                    to: w.to + ms,
                    ..*w
                };
                if chaos
                    .paused
                    .iter()
                    .any(|w| after(w, ADOPT_MS).covers(request.slot, s, e))
                {
                    paused += 1;
                } else if chaos
                    .unreachable
                    .iter()
                    .any(|w| after(w, RECONNECT_MS).covers(request.slot, s, e))
                {
                    unreachable += 1;
                } else if !accepted_held(e) {
                    no_token += 1;
                } else {
                    failed.push(request);
                }
            }
        }
    }

    // Recovery after the last fault.
    let last = chaos.last_fault_end;
    let recovery = u64::try_from(RECOVERY.as_millis()).unwrap();
    let mut slowest = None;
    let mut not_recovered = Vec::new();
    for (slot, requests) in per_slot.iter().enumerate() {
        let first_ok = requests
            .iter()
            .find(|r| r.start >= last && r.outcome.is_ok())
            .map(|r| r.end - last);
        let late_failure = requests
            .iter()
            .any(|r| r.start >= last + recovery && r.outcome.is_err());
        match first_ok {
            Some(took) if took <= recovery && !late_failure => slowest = slowest.max(Some(took)),
            Some(took) => {
                not_recovered.push(format!(
                    "replica {slot} (served after {took} ms{})",
                    if late_failure {
                        ", then failed again"
                    } else {
                        ""
                    }
                ));
            }
            None => not_recovered.push(format!("replica {slot} (never served again)")),
        }
    }

    // Informational: the longest time no replica served anything.
    let mut served: Vec<u64> = requests
        .iter()
        .filter(|r| r.outcome.is_ok())
        .map(|r| r.end)
        .collect();
    served.extend(requests.iter().map(|r| r.end).max());
    served.sort_unstable();
    let outage = served
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or_default();
    let resent = server.resent();
    let sent_twice = server.sent_twice();
    let revocations = server.reuses();
    let faults: Vec<String> = chaos
        .faults
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let total: u32 = chaos.faults.values().sum();
    let run = (now_ms() - chaos.started) / 1000;
    let summary = format!(
        "CHAOS SUMMARY seed={seed} replicas={count} run={run}s faults={total} ({}) \
         token_requests={} issued={} reuse={sent_twice} revocations={revocations} \
         requests={} ok={ok} failed={} excused(unreachable={unreachable} paused={paused} \
         no_accepted_token={no_token}) stale_served={} served_on_thaw={thawed} not_recovered={} slowest_recovery={} \
         longest_fleet_outage={}ms(at {}s)",
        faults.join(" "),
        server.requests(),
        server.issued(),
        requests.len(),
        failed.len(),
        stale.len(),
        not_recovered.len(),
        slowest.map_or("-".to_owned(), |ms| format!("{ms}ms")),
        outage.0,
        outage.1.saturating_sub(chaos.started) / 1000,
    );
    println!("{summary}");
    eprintln!("{summary}");

    let mut broken = Vec::new();
    if let Some((token, when)) = resent.first() {
        let ms = u64::try_from(when.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        let after = chaos
            .timeline
            .iter()
            .rfind(|(t, text)| *t <= ms && !text.starts_with("RDB"))
            .map_or("-", |(_, text)| text.as_str());
        broken.push(format!(
            "reuse {sent_twice}: refresh tokens sent twice, first {token} at {} s, after \"{after}\"",
            (ms - chaos.started) / 1000
        ));
    }
    if revocations > 0 {
        broken.push(format!("revocations {revocations}: the family was revoked"));
    }
    if !failed.is_empty() {
        broken.push(format!(
            "failed {}: requests failed while a replica held a token the server accepts",
            failed.len()
        ));
    }
    if !not_recovered.is_empty() {
        broken.push(format!(
            "not serving within {RECOVERY:?} after the last fault: {}",
            not_recovered.join(", ")
        ));
    }
    if !stale.is_empty() {
        broken.push(format!(
            "stale_served {}: tokens served after the server's expiry",
            stale.len()
        ));
    }

    // The log: faults, token endpoint events, the replicas' warnings and
    // failures, in time order.
    let relative = |ms: u64| format!("{:>8.3}", (ms as f64 - chaos.started as f64) / 1000.0);
    let mut events: Vec<(u64, String)> = chaos
        .timeline
        .iter()
        .map(|(t, text)| (*t, format!("FAULT {text}")))
        .collect();
    for (token, when) in &resent {
        let ms = u64::try_from(when.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        events.push((ms, format!("ENDPOINT received {token} again")));
    }
    for (token, when) in server.receipts() {
        let ms = u64::try_from(when.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        events.push((ms, format!("ENDPOINT refresh with {token}")));
    }
    if let Some(when) = server.revoked_at() {
        let ms = u64::try_from(when.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
        events.push((ms, "ENDPOINT family revoked".to_owned()));
    }
    for request in &failed {
        events.push((
            request.end,
            format!(
                "FAILED replica {} {:?} (asked at {})",
                request.slot,
                request.outcome.as_ref().unwrap_err(),
                relative(request.start)
            ),
        ));
    }
    for request in &stale {
        let token = request.outcome.as_deref().unwrap_or_default();
        let expired = server
            .access_window(token)
            .map_or("never issued".to_owned(), |(_, e)| {
                let e = u64::try_from(e.duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap();
                format!("expired at {}", relative(e))
            });
        events.push((
            request.start,
            format!("STALE replica {} served {token} ({expired})", request.slot),
        ));
    }
    events.sort_by_key(|(t, _)| *t);
    // The log has, besides, each replica's answers as runs (one line per
    // run of the same token or the same error) and its other output.
    let mut all = events.clone();
    for (slot, requests) in per_slot.iter().enumerate() {
        let mut runs: Vec<(u64, u64, String, u64)> = Vec::new();
        for request in requests {
            let what = match &request.outcome {
                Ok(token) => format!("OK {token}"),
                Err(kind) => format!("ERR {kind}"),
            };
            match runs.last_mut() {
                Some(run) if run.2 == what => {
                    run.1 = request.end;
                    run.3 += 1;
                }
                _ => runs.push((request.start, request.end, what, 1)),
            }
        }
        for (from, to, what, n) in runs {
            all.push((from, format!("[{slot}] {what} x{n} until {}", relative(to))));
        }
    }
    for line in journal
        .iter()
        .filter(|l| parse(l).is_none() && !l.text.trim().is_empty())
    {
        all.push((line.at, format!("[{}] {}", line.slot, line.text)));
    }
    all.sort_by_key(|(t, _)| *t);
    let mut log = String::new();
    let _ = writeln!(log, "{summary}");
    let _ = writeln!(
        log,
        "times in seconds from the start, {} ms after the epoch",
        chaos.started
    );
    for (t, text) in &all {
        let _ = writeln!(log, "{} {text}", relative(*t));
    }
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chaos-{seed}.log"));
    let _ = std::fs::write(&path, &log);
    println!("log: {}", path.display());

    if !broken.is_empty() {
        // The timeline without the replicas' raw output, and a few of the
        // failed requests, are enough to start from; the log has the rest.
        let mut shown = String::new();
        let mut failures_shown = 0;
        for (t, text) in &events {
            if text.starts_with("FAILED") {
                failures_shown += 1;
                if failures_shown > 20 {
                    continue;
                }
            }
            let _ = writeln!(shown, "{} {text}", relative(*t));
        }
        panic!(
            "CHAOS_SEED={seed}: {}\n{summary}\n{shown}log: {}",
            broken.join("; "),
            path.display()
        );
    }
}

/// The proxy passes bytes, holds replies and delivers them late, holds
/// requests until released, and drops its connections with what they hold.
#[tokio::test]
async fn the_proxy_holds_replies_and_requests_and_cuts_connections() {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = echo.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::<u8>::new()));
    tokio::spawn({
        let received = received.clone();
        async move {
            loop {
                let (mut socket, _) = echo.accept().await.unwrap();
                let received = received.clone();
                tokio::spawn(async move {
                    let mut buffer = [0u8; 64];
                    while let Ok(n @ 1..) = socket.read(&mut buffer).await {
                        received.lock().unwrap().extend(&buffer[..n]);
                        if socket.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    let proxy = Proxy::start(upstream).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut one = [0u8; 1];
    let quick = Duration::from_millis(300);

    client.write_all(b"a").await.unwrap();
    tokio::time::timeout(quick, client.read_exact(&mut one))
        .await
        .expect("passed through")
        .unwrap();
    assert_eq!(&one, b"a");

    // A held reply misses a short timeout, and still arrives.
    proxy.delay_replies(Duration::from_millis(700));
    let sent = Instant::now();
    client.write_all(b"b").await.unwrap();
    assert!(tokio::time::timeout(quick, client.read_exact(&mut one))
        .await
        .is_err());
    assert_eq!(*received.lock().unwrap(), b"ab", "the request was applied");
    proxy.pass();
    client.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"b");
    assert!(sent.elapsed() >= Duration::from_millis(650));

    // A held request does not reach the server until released.
    proxy.hold_requests();
    client.write_all(b"c").await.unwrap();
    assert!(tokio::time::timeout(quick, client.read_exact(&mut one))
        .await
        .is_err());
    assert_eq!(*received.lock().unwrap(), b"ab");
    proxy.pass();
    client.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"c");

    // A cut drops the connection and the request it held.
    proxy.hold_requests();
    client.write_all(b"d").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.cut();
    let closed = tokio::time::timeout(quick, client.read(&mut one))
        .await
        .expect("the connection closes");
    assert!(matches!(closed, Ok(0) | Err(_)));
    proxy.pass();
    let mut again = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    again.write_all(b"e").await.unwrap();
    tokio::time::timeout(quick, again.read_exact(&mut one))
        .await
        .expect("a new connection passes")
        .unwrap();
    assert_eq!(&one, b"e");
    assert_eq!(
        *received.lock().unwrap(),
        b"abce",
        "the held request was dropped"
    );
    assert!(proxy.sent_contains(b"abce") && !proxy.sent_contains(b"d"));
    assert_eq!(proxy.connections(), 2);
}

/// `redis-server` restarts empty, or from an older snapshot, on its port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarts_empty_or_from_an_older_snapshot() {
    let mut redis = RedisServer::start();
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let set = |key: &'static str| {
        let client = client.clone();
        async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            redis::cmd("SET")
                .arg(key)
                .arg(1)
                .query_async::<()>(&mut c)
                .await
                .unwrap();
        }
    };
    let keys = || {
        let client = client.clone();
        async move {
            let mut c = client.get_multiplexed_async_connection().await.unwrap();
            let mut keys: Vec<String> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut c)
                .await
                .unwrap();
            keys.sort();
            keys
        }
    };
    set("older").await;
    let snapshot = tokio::task::block_in_place(|| redis.snapshot());
    set("newer").await;
    assert_eq!(keys().await, ["newer", "older"]);
    tokio::task::block_in_place(|| redis.restart_from(&snapshot));
    assert_eq!(keys().await, ["older"]);
    tokio::task::block_in_place(|| redis.restart());
    assert!(keys().await.is_empty());
    // The snapshot stays usable after an empty restart.
    tokio::task::block_in_place(|| redis.restart_from(&snapshot));
    assert_eq!(keys().await, ["older"]);
}
