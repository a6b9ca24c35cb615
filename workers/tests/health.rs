//! Model health: the breaker, the half-open probe, pauses and the retry budget, with the same
//! scenarios run against two `RedisHealth` instances on separate connections (two workers on
//! one real redis-server) and against one shared `MemoryHealth`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use batchyard_jobs::redis_conn::connect;
use batchyard_jobs::retry::Retryable as _;
use batchyard_testkit::TestRedis;
use batchyard_workers::call::health::memory::MemoryHealth;
use batchyard_workers::call::health::redis::RedisHealth;
use batchyard_workers::call::health::{HealthPolicy, ModelHealth, ModelState};
use batchyard_workers::provider::ProviderErrorKind as Kind;

/// A model name no other test uses.
fn model(test: &str) -> String {
    format!("m-{test}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

type Health = Arc<dyn ModelHealth>;

/// The bound on every polling loop.
const LIMIT: Duration = Duration::from_secs(5);

/// Two workers' views of the same health: two Redis connections, or one shared memory.
async fn redis_pair(redis: &TestRedis, policy: &HealthPolicy) -> (Health, Health) {
    let a = RedisHealth::new(connect(&redis.url).await.unwrap(), policy.clone());
    let b = RedisHealth::new(connect(&redis.url).await.unwrap(), policy.clone());
    (Arc::new(a), Arc::new(b))
}

fn memory_pair(policy: &HealthPolicy) -> (Health, Health) {
    let h: Health = Arc::new(MemoryHealth::new(policy.clone()));
    (h.clone(), h)
}

fn policy() -> HealthPolicy {
    HealthPolicy {
        failure_threshold: 3,
        cooldown: Duration::from_millis(300),
        retry_budget_ratio: 0.2,
        retry_budget_min: 2,
        window: Duration::from_secs(1),
        probe_lease: Duration::from_secs(10),
    }
}

/// Polls `done` until it holds; bounded by [`LIMIT`].
async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !done().await {
        assert!(started.elapsed() < LIMIT, "never {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_half_open(h: &Health, m: &str) {
    wait_for("half-open", async || {
        h.state(m).await.unwrap() == ModelState::HalfOpen
    })
    .await;
}

async fn fail(h: &Health, m: &str, kind: Kind) {
    fail_with(h, m, kind, "boom").await;
}

async fn fail_with(h: &Health, m: &str, kind: Kind, reason: &str) {
    h.record(m, Err(kind), reason).await.unwrap();
}

fn is_cooling(s: &ModelState) -> bool {
    matches!(s, ModelState::CoolingDown { .. })
}

/// K transient failures, reported through both views, open the breaker for both. A success
/// resets the streak; malformed responses count like transient errors.
async fn breaker_opens_after_k_failures(a: Health, b: Health) {
    let m = model("open");
    fail(&a, &m, Kind::Transient).await;
    fail(&b, &m, Kind::MalformedResponse).await;
    b.record(&m, Ok(()), "").await.unwrap();
    fail(&a, &m, Kind::Transient).await;
    fail(&b, &m, Kind::Transient).await;
    assert_eq!(a.state(&m).await.unwrap(), ModelState::Healthy);
    assert!(a.admit(&m).await.unwrap() && b.admit(&m).await.unwrap());

    fail(&a, &m, Kind::MalformedResponse).await;
    for h in [&a, &b] {
        let s = h.state(&m).await.unwrap();
        assert!(is_cooling(&s), "{s:?}");
        assert!(!h.admit(&m).await.unwrap());
    }
    // A straggler's success during the cooldown does not cut it short.
    b.record(&m, Ok(()), "").await.unwrap();
    assert!(is_cooling(&a.state(&m).await.unwrap()));
    // Other models are untouched.
    assert!(a.admit(&model("other")).await.unwrap());
}

/// After the cooldown exactly one of many concurrent callers (on both views) is the probe.
/// A failed probe re-opens the breaker; a successful one heals it.
async fn one_probe_then_reopen_or_heal(a: Health, b: Health) {
    let m = model("probe");
    for _ in 0..3 {
        fail(&a, &m, Kind::Transient).await;
    }
    let first_until = match a.state(&m).await.unwrap() {
        ModelState::CoolingDown { until_ms } => until_ms,
        other => panic!("not cooling: {other:?}"),
    };
    wait_half_open(&b, &m).await;
    assert_eq!(probes(&a, &b, &m, 16).await, 1);
    assert_eq!(probes(&a, &b, &m, 4).await, 0, "the probe is still out");

    // The probe fails: another full cooldown.
    fail(&b, &m, Kind::Transient).await;
    match a.state(&m).await.unwrap() {
        ModelState::CoolingDown { until_ms } => assert!(until_ms > first_until),
        other => panic!("a failed probe must re-open: {other:?}"),
    }
    assert!(!a.admit(&m).await.unwrap());

    wait_half_open(&a, &m).await;
    assert_eq!(probes(&a, &b, &m, 16).await, 1);
    a.record(&m, Ok(()), "").await.unwrap();
    for h in [&a, &b] {
        assert_eq!(h.state(&m).await.unwrap(), ModelState::Healthy);
        assert!(h.admit(&m).await.unwrap());
    }
    // Healed means a fresh streak: K-1 failures do not re-open.
    fail(&a, &m, Kind::Transient).await;
    fail(&b, &m, Kind::Transient).await;
    assert_eq!(a.state(&m).await.unwrap(), ModelState::Healthy);
}

/// How many of `n` concurrent admits (alternating views) were let through.
async fn probes(a: &Health, b: &Health, m: &str, n: usize) -> usize {
    let barrier = Arc::new(tokio::sync::Barrier::new(n));
    let mut tasks = Vec::new();
    for i in 0..n {
        let h = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (m, barrier) = (m.to_string(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            h.admit(&m).await.unwrap()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    admitted
}

/// A prober that dies without reporting holds the probe only until its lease expires.
async fn dead_probers_lease_expires(a: Health, b: Health) {
    let m = model("lease");
    for _ in 0..3 {
        fail(&b, &m, Kind::Transient).await;
    }
    wait_half_open(&a, &m).await;
    assert!(a.admit(&m).await.unwrap(), "the first caller probes");
    assert!(!b.admit(&m).await.unwrap());
    // ... and is never heard of again.
    let started = Instant::now();
    wait_for("re-probed", async || b.admit(&m).await.unwrap()).await;
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
}

/// Auth and quota failures pause the model, visibly to every worker, until an operator
/// resumes it. Successes and failures meanwhile change nothing.
async fn auth_and_quota_pause_until_resumed(a: Health, b: Health) {
    let m = model("auth");
    fail_with(&a, &m, Kind::Auth, "401 from provider").await;
    let since = match b.state(&m).await.unwrap() {
        ModelState::Paused { reason, since_ms } => {
            assert_eq!(reason, "auth: 401 from provider");
            since_ms
        }
        other => panic!("auth must pause: {other:?}"),
    };
    assert!(since > 1_600_000_000_000, "since is epoch ms: {since}");
    assert!(!a.admit(&m).await.unwrap() && !b.admit(&m).await.unwrap());
    b.record(&m, Ok(()), "").await.unwrap();
    for _ in 0..5 {
        fail(&b, &m, Kind::Transient).await;
    }
    fail_with(&b, &m, Kind::QuotaExhausted, "later").await;
    match a.state(&m).await.unwrap() {
        ModelState::Paused { reason, since_ms } => {
            assert_eq!(reason, "auth: 401 from provider", "the first cause is kept");
            assert_eq!(since_ms, since);
        }
        other => panic!("still paused: {other:?}"),
    }

    b.resume(&m).await.unwrap();
    assert_eq!(a.state(&m).await.unwrap(), ModelState::Healthy);
    assert!(a.admit(&m).await.unwrap());

    let q = model("quota");
    fail_with(&b, &q, Kind::QuotaExhausted, "insufficient_quota").await;
    assert!(matches!(
        a.state(&q).await.unwrap(),
        ModelState::Paused { reason, .. } if reason == "quota_exhausted: insufficient_quota"
    ));
    a.resume(&q).await.unwrap();
    assert!(b.admit(&q).await.unwrap());
}

/// An operator pause works on any state, overrides an open breaker, and resume clears both.
async fn operator_pause_and_resume(a: Health, b: Health) {
    let m = model("operator");
    for _ in 0..3 {
        fail(&a, &m, Kind::Transient).await;
    }
    b.pause(&m, "maintenance window").await.unwrap();
    assert!(matches!(
        a.state(&m).await.unwrap(),
        ModelState::Paused { reason, .. } if reason == "maintenance window"
    ));
    a.pause(&m, "still maintaining").await.unwrap();
    assert!(matches!(
        b.state(&m).await.unwrap(),
        ModelState::Paused { reason, .. } if reason == "still maintaining"
    ));
    a.resume(&m).await.unwrap();
    assert_eq!(b.state(&m).await.unwrap(), ModelState::Healthy);
    assert!(b.admit(&m).await.unwrap());
    // Resuming a healthy model is harmless.
    a.resume(&model("never-sick")).await.unwrap();
}

/// Rate limits and per-request errors neither open the breaker nor reset a streak.
async fn rate_limits_do_not_open_the_breaker(a: Health, b: Health) {
    let m = model("ratelimit");
    for _ in 0..20 {
        fail(&a, &m, Kind::RateLimited).await;
    }
    let per_request = [
        Kind::InvalidRequest,
        Kind::ContextOverflow,
        Kind::ContentFilter,
    ];
    for kind in per_request.repeat(5) {
        fail(&b, &m, kind).await;
    }
    assert_eq!(a.state(&m).await.unwrap(), ModelState::Healthy);
    assert!(b.admit(&m).await.unwrap());

    fail(&a, &m, Kind::Transient).await;
    fail(&a, &m, Kind::Transient).await;
    fail(&b, &m, Kind::RateLimited).await;
    fail(&b, &m, Kind::InvalidRequest).await;
    assert_eq!(a.state(&m).await.unwrap(), ModelState::Healthy);
    fail(&b, &m, Kind::Transient).await;
    assert!(is_cooling(&a.state(&m).await.unwrap()));
}

/// Grants retries while retries < max(min, floor(ratio × calls)), shared by both views,
/// until the window ends.
async fn retry_budget_caps_and_resets(a: Health, b: Health) {
    let m = model("budget");
    let started = Instant::now();
    // No calls yet: the minimum (2) is always allowed.
    assert_eq!(grants(&a, &b, &m).await, 2);
    for i in 0..20 {
        let h = if i % 2 == 0 { &a } else { &b };
        h.record(&m, Ok(()), "").await.unwrap();
    }
    // 20 calls: 0.2 × 20 = 4 retries, 2 of them spent.
    assert_eq!(grants(&a, &b, &m).await, 2);
    for _ in 0..4 {
        fail(&b, &m, Kind::RateLimited).await;
    }
    // 24 calls: floor(4.8) = 4, all spent.
    assert_eq!(grants(&a, &b, &m).await, 0);
    a.record(&m, Ok(()), "").await.unwrap();
    // 25 calls: 5.
    assert_eq!(grants(&a, &b, &m).await, 1);
    let spent = started.elapsed();
    assert!(
        spent < Duration::from_millis(900),
        "too slow for the window: {spent:?}"
    );

    // The window ends a second after its first count; a new one starts from zero.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed())).await;
    assert_eq!(grants(&a, &b, &m).await, 2);
}

/// Retries granted until the first refusal, alternating views; bounded.
async fn grants(a: &Health, b: &Health, m: &str) -> usize {
    for n in 0..100 {
        let h = if n % 2 == 0 { a } else { b };
        if !h.allow_retry(m).await.unwrap() {
            return n;
        }
    }
    panic!("the retry budget never ran out");
}

macro_rules! redis_and_memory {
    ($($scenario:ident($policy:expr) => $redis_test:ident, $memory_test:ident;)*) => {$(
        #[tokio::test]
        async fn $redis_test() {
            let Some(redis) = TestRedis::start(stringify!($redis_test)) else { return };
            let (a, b) = redis_pair(&redis, &$policy).await;
            $scenario(a, b).await;
        }

        #[tokio::test]
        async fn $memory_test() {
            let (a, b) = memory_pair(&$policy);
            $scenario(a, b).await;
        }
    )*};
}

redis_and_memory! {
    breaker_opens_after_k_failures(policy()) => redis_breaker_opens_after_k_failures_across_workers, memory_breaker_opens_after_k_failures;
    one_probe_then_reopen_or_heal(policy()) => redis_half_open_admits_one_probe_then_reopens_or_heals, memory_half_open_admits_one_probe_then_reopens_or_heals;
    auth_and_quota_pause_until_resumed(policy()) => redis_auth_and_quota_pause_until_resumed, memory_auth_and_quota_pause_until_resumed;
    operator_pause_and_resume(policy()) => redis_operator_pause_and_resume, memory_operator_pause_and_resume;
    rate_limits_do_not_open_the_breaker(policy()) => redis_rate_limits_do_not_open_the_breaker, memory_rate_limits_do_not_open_the_breaker;
    retry_budget_caps_and_resets(policy()) => redis_retry_budget_caps_and_resets_with_the_window, memory_retry_budget_caps_and_resets_with_the_window;
    dead_probers_lease_expires(short_lease()) => redis_dead_probers_lease_expires, memory_dead_probers_lease_expires;
}

fn short_lease() -> HealthPolicy {
    HealthPolicy {
        probe_lease: Duration::from_millis(300),
        ..policy()
    }
}

/// Keys: the health hash is gone once healthy, the budget counter expires, nothing else left.
#[tokio::test]
async fn redis_keys_expire_or_are_cleared() {
    let Some(redis) = TestRedis::start("redis_keys_expire_or_are_cleared") else {
        return;
    };
    let h = RedisHealth::new(connect(&redis.url).await.unwrap(), policy());
    let mut raw = connect(&redis.url).await.unwrap();
    let m = model("keys");
    let (hk, bk) = (
        format!("by:health:{{{m}}}"),
        format!("by:health:{{{m}}}:budget"),
    );
    for _ in 0..2 {
        h.record(&m, Err(Kind::Transient), "x").await.unwrap();
    }
    assert!(h.allow_retry(&m).await.unwrap());
    assert_eq!(h.budget(&m).await.unwrap(), (2, 1));
    let ttl = int(&mut raw, "PTTL", &bk).await;
    assert!((1..=1000).contains(&ttl), "budget ttl {ttl}");
    let exists = int(&mut raw, "EXISTS", &hk).await;
    assert_eq!(exists, 1, "the streak is kept");
    h.record(&m, Ok(()), "").await.unwrap();
    let exists = int(&mut raw, "EXISTS", &hk).await;
    assert_eq!(exists, 0, "a healthy model leaves no health hash");
}

async fn int(raw: &mut batchyard_jobs::redis_conn::RedisConn, cmd: &str, key: &str) -> i64 {
    redis::cmd(cmd).arg(key).query_async(raw).await.unwrap()
}

/// Redis going away is weather: the error says so, and nothing panics.
#[tokio::test]
async fn redis_unavailable_is_a_retryable_error() {
    let Some(redis) = TestRedis::start("redis_unavailable_is_a_retryable_error") else {
        return;
    };
    let h = RedisHealth::new(connect(&redis.url).await.unwrap(), policy());
    assert!(h.admit("m").await.unwrap());
    drop(redis); // SIGKILL
    let started = Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(15), h.admit("m"))
        .await
        .expect("admit hung on a dead redis")
        .expect_err("redis is gone");
    assert!(err.is_retryable(), "{err}");
    eprintln!("dead redis noticed in {:?}: {err}", started.elapsed());
}
