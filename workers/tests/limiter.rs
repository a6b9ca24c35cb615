//! The shared limiter against a real redis-server: exactness and utilisation under
//! concurrency from several independent instances, token settling, all-or-nothing
//! admission, shared pauses and provider reports, and `acquire`'s waiting.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::retry::Retryable as _;
use batchyard_testkit::TestRedis;
use batchyard_workers::call::limiter::memory::MemoryLimiter;
use batchyard_workers::call::limiter::redis::RedisLimiter;
use batchyard_workers::call::limiter::{
    Admission, LimitSpec, Limiter, LimiterError, Reservation, Tuning, acquire,
};
use redis::AsyncCommands;

async fn limiter(redis: &TestRedis, tuning: Tuning) -> RedisLimiter {
    let conn = batchyard_jobs::redis_conn::connect(redis.url())
        .await
        .unwrap();
    RedisLimiter::with_tuning(conn, "t", tuning)
}

fn spec(scope: &str, rpm: Option<u32>, tpm: Option<u64>) -> LimitSpec {
    LimitSpec {
        scope: scope.into(),
        rpm,
        tpm,
    }
}

fn granted(a: Admission) -> Reservation {
    match a {
        Admission::Granted(r) => r,
        Admission::Wait(w) => panic!("expected a grant, got a wait of {w:?}"),
    }
}

fn waited(a: Admission) -> Duration {
    match a {
        Admission::Wait(w) => w,
        Admission::Granted(_) => panic!("expected a wait, got a grant"),
    }
}

/// Drives `tasks` tasks per limiter calling `acquire` in a loop for `run`, each call
/// estimated at 100 tokens and settled at 80; returns every grant time (µs, by the
/// limiter's clock: Redis TIME for Redis), sorted.
async fn load_for(
    limiters: Vec<Arc<dyn Limiter>>,
    tasks: usize,
    specs: Vec<LimitSpec>,
    run: Duration,
) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + run;
    let mut handles = Vec::new();
    for lim in &limiters {
        for _ in 0..tasks {
            let lim = Arc::clone(lim);
            let specs = specs.clone();
            handles.push(tokio::spawn(async move {
                let mut times = Vec::new();
                while tokio::time::Instant::now() < deadline {
                    let left = deadline - tokio::time::Instant::now();
                    match acquire(lim.as_ref(), &specs, 100, left).await.unwrap() {
                        Ok(r) => {
                            times.push(r.granted_at().as_micros() as u64);
                            lim.settle(r, 80).await.unwrap();
                        }
                        Err(_) => break,
                    }
                }
                times
            }));
        }
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.await.unwrap());
    }
    all.sort_unstable();
    all
}

/// The most grants inside any closed window of `len` µs.
fn max_in_window(times: &[u64], len: u64) -> usize {
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] > len {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_stay_under_the_rate_and_use_it() {
    let Some(redis) = TestRedis::start("three_instances_stay_under_the_rate_and_use_it") else {
        return;
    };
    let mut limiters: Vec<Arc<dyn Limiter>> = Vec::new();
    for _ in 0..3 {
        limiters.push(Arc::new(limiter(&redis, Tuning::default()).await));
    }
    // 600 RPM = 10/s; the pacer's burst is 1% of 600 = 6 requests.
    let specs = vec![spec("model:m", Some(600), Some(1_000_000))];
    let started = Instant::now();
    let times = load_for(limiters, 8, specs, Duration::from_secs(6)).await;
    let ran = started.elapsed().as_secs_f64();
    let span = (times[times.len() - 1] - times[0]) as f64 / 1e6;
    let peak = max_in_window(&times, 1_000_000);
    // Steady state: after the first second (the burst), grants per second between the
    // first and last of them. The pacer runs at 98.5% of 10/s.
    let steady: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| *t >= times[0] + 1_000_000)
        .collect();
    let rate = (steady.len() - 1) as f64 / ((steady[steady.len() - 1] - steady[0]) as f64 / 1e6);
    println!(
        "grants {} in {span:.2} s (ran {ran:.2} s), peak in any 1 s window {peak}, \
         steady {rate:.3}/s = {:.1}% of 10/s",
        times.len(),
        rate * 10.0
    );
    assert!(peak <= 10 + 6, "peak {peak} in 1 s exceeds rate + burst");
    assert!((9.0..=10.0).contains(&rate), "steady rate {rate:.2}/s");
    let total = times.len() as f64 / (10.0 * ran);
    assert!((0.9..=1.1).contains(&total), "total {total:.3} of 10/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_guard_is_exact_even_against_a_full_burst() {
    let Some(redis) = TestRedis::start("the_guard_is_exact_even_against_a_full_burst") else {
        return;
    };
    // A 1 s window of 10 buckets; a pacer at full rate with a burst of half the limit would
    // allow 15 in a second: the guard must cut every 1 s window to 10.
    let tuning = Tuning {
        window: Duration::from_secs(1),
        buckets: 10,
        pace: 1.0,
        request_burst: 0.5,
        token_burst: 1.0,
    };
    let mut limiters: Vec<Arc<dyn Limiter>> = Vec::new();
    for _ in 0..3 {
        limiters.push(Arc::new(limiter(&redis, tuning).await));
    }
    let run = Duration::from_millis(2500);
    // Requests: 10 per 1 s window, exactly.
    let specs = vec![spec("model:r", Some(10), None)];
    let times = load_for(limiters.clone(), 8, specs, run).await;
    let peak = max_in_window(&times, 1_000_000);
    println!(
        "requests: {} grants, peak in any 1 s window {peak}",
        times.len()
    );
    assert!(peak <= 10, "peak {peak}");
    assert!(times.len() >= 20, "too few grants: {}", times.len());
    // Tokens: 100 estimated, 80 settled, 1000 per 1 s window. Refunds make room, and the
    // estimate must fit on admission, so at most 1 + (1000 - 100) / 80 = 12 calls (960
    // tokens) fall in one window.
    let specs = vec![spec("model:t", None, Some(1000))];
    let times = load_for(limiters, 8, specs, run).await;
    let peak = max_in_window(&times, 1_000_000);
    println!(
        "tokens: {} grants, peak in any 1 s window {peak} calls",
        times.len()
    );
    assert!(peak <= 12, "peak {peak}");
    assert!(times.len() >= 20, "too few grants: {}", times.len());
}

#[tokio::test]
async fn the_guard_is_exact_for_requests_in_memory_too() {
    let tuning = Tuning {
        window: Duration::from_secs(1),
        buckets: 10,
        pace: 1.0,
        request_burst: 0.5,
        token_burst: 1.0,
    };
    let lim: Arc<dyn Limiter> = Arc::new(MemoryLimiter::with_tuning(tuning));
    let specs = vec![spec("model:g", Some(10), None)];
    let times = load_for(vec![lim], 16, specs, Duration::from_secs(3)).await;
    let peak = max_in_window(&times, 1_000_000);
    println!("memory: grants {} peak {peak}", times.len());
    assert!(peak <= 10, "peak {peak}");
    assert!(times.len() >= 25, "{}", times.len());
}

#[tokio::test]
async fn settled_tokens_are_refunded_at_once() {
    let Some(redis) = TestRedis::start("settled_tokens_are_refunded_at_once") else {
        return;
    };
    let lim = limiter(&redis, Tuning::default()).await;
    // Token burst is 5% of 24,000 = 1,200.
    let specs = [spec("model:t", None, Some(24_000))];
    let r = granted(lim.try_acquire(&specs, 1000).await.unwrap());
    assert_eq!(r.tokens(), 1000);
    waited(lim.try_acquire(&specs, 1000).await.unwrap());
    lim.settle(r, 200).await.unwrap();
    let r2 = granted(lim.try_acquire(&specs, 1000).await.unwrap());
    let mut raw = redis.raw().await;
    let sum: u64 = raw.hget(lim.key("model:t"), "tsum").await.unwrap();
    assert_eq!(sum, 1200);
    // A charge over the estimate counts too.
    lim.settle(r2, 1500).await.unwrap();
    let sum: u64 = raw.hget(lim.key("model:t"), "tsum").await.unwrap();
    assert_eq!(sum, 1700);
    let ttl: i64 = raw.pttl(lim.key("model:t")).await.unwrap();
    assert!(
        ttl > 60_000,
        "idle scopes expire, but not before the window: {ttl}"
    );
    // A call that can never fit is an error, not an endless wait.
    let err = lim.try_acquire(&specs, 30_000).await.unwrap_err();
    assert!(matches!(err, LimiterError::TooLarge { .. }) && !err.is_retryable());
}

#[tokio::test]
async fn admission_is_all_or_nothing_across_scopes() {
    let Some(redis) = TestRedis::start("admission_is_all_or_nothing_across_scopes") else {
        return;
    };
    let lim = limiter(&redis, Tuning::default()).await;
    let model = spec("model:a", Some(600), Some(100_000));
    let provider = spec("provider:p", Some(60), None);
    granted(
        lim.try_acquire(std::slice::from_ref(&provider), 0)
            .await
            .unwrap(),
    );
    // The provider is spent (burst 1); the model has room but must not be charged.
    for _ in 0..5 {
        let w = waited(
            lim.try_acquire(&[model.clone(), provider.clone()], 500)
                .await
                .unwrap(),
        );
        assert!(w > Duration::from_millis(900), "{w:?}");
    }
    let mut raw = redis.raw().await;
    let key = lim.key("model:a");
    assert!(key.starts_with("{t:lim}:"), "{key}");
    let rsum: Option<u64> = raw.hget(&key, "rsum").await.unwrap();
    let tsum: Option<u64> = raw.hget(&key, "tsum").await.unwrap();
    assert_eq!((rsum.unwrap_or(0), tsum.unwrap_or(0)), (0, 0));
    // The whole model burst (6) is still there.
    for _ in 0..6 {
        granted(
            lim.try_acquire(std::slice::from_ref(&model), 500)
                .await
                .unwrap(),
        );
    }
    waited(lim.try_acquire(&[model], 500).await.unwrap());
}

#[tokio::test]
async fn a_pause_holds_every_instance() {
    let Some(redis) = TestRedis::start("a_pause_holds_every_instance") else {
        return;
    };
    let a = limiter(&redis, Tuning::default()).await;
    let b = limiter(&redis, Tuning::default()).await;
    let specs = [spec("model:a", Some(6000), None)];
    granted(b.try_acquire(&specs, 0).await.unwrap());
    a.pause("model:a", Duration::from_millis(500))
        .await
        .unwrap();
    let w = waited(b.try_acquire(&specs, 0).await.unwrap());
    assert!(
        w > Duration::from_millis(400) && w <= Duration::from_millis(500),
        "{w:?}"
    );
    // Another scope is untouched.
    granted(
        b.try_acquire(&[spec("model:z", None, None)], 0)
            .await
            .unwrap(),
    );
    tokio::time::sleep(w + Duration::from_millis(20)).await;
    granted(b.try_acquire(&specs, 0).await.unwrap());
}

#[tokio::test]
async fn a_provider_report_tightens_until_its_reset() {
    let Some(redis) = TestRedis::start("a_provider_report_tightens_until_its_reset") else {
        return;
    };
    let a = limiter(&redis, Tuning::default()).await;
    let b = limiter(&redis, Tuning::default()).await;
    let specs = [spec("provider:p", Some(6000), Some(1_000_000))];
    a.observe_remaining("provider:p", Some(0), None, Some(Duration::from_secs(1)))
        .await
        .unwrap();
    let w = waited(b.try_acquire(&specs, 10).await.unwrap());
    assert!(
        w > Duration::from_millis(900) && w <= Duration::from_secs(1),
        "{w:?}"
    );
    // Tokens: 300 remain; 200 + 100 pass, the next waits for the reset.
    a.observe_remaining("provider:q", None, Some(300), Some(Duration::from_secs(2)))
        .await
        .unwrap();
    let q = [spec("provider:q", None, None)];
    granted(b.try_acquire(&q, 200).await.unwrap());
    granted(b.try_acquire(&q, 100).await.unwrap());
    let w = waited(b.try_acquire(&q, 1).await.unwrap());
    assert!(w > Duration::from_millis(1500), "{w:?}");
}

/// Counts the admission attempts of another limiter.
struct Counting<L> {
    inner: L,
    calls: AtomicUsize,
}

#[async_trait]
impl<L: Limiter> Limiter for Counting<L> {
    async fn try_acquire(&self, s: &[LimitSpec], t: u64) -> Result<Admission, LimiterError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.try_acquire(s, t).await
    }
    async fn settle(&self, r: Reservation, t: u64) -> Result<(), LimiterError> {
        self.inner.settle(r, t).await
    }
    async fn pause(&self, s: &str, d: Duration) -> Result<(), LimiterError> {
        self.inner.pause(s, d).await
    }
    async fn observe_remaining(
        &self,
        s: &str,
        r: Option<u64>,
        t: Option<u64>,
        d: Option<Duration>,
    ) -> Result<(), LimiterError> {
        self.inner.observe_remaining(s, r, t, d).await
    }
}

async fn check_acquire_sleeps(lim: &dyn Limiter, calls: &AtomicUsize) {
    let specs = [spec("model:s", Some(600), None)];
    lim.pause("model:s", Duration::from_millis(200))
        .await
        .unwrap();
    let started = Instant::now();
    let r = acquire(lim, &specs, 0, Duration::from_secs(2))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(r.is_ok());
    let n = calls.load(Ordering::SeqCst);
    assert!((2..=3).contains(&n), "{n} attempts for one 200 ms wait");
    assert!(took >= Duration::from_millis(190) && took < Duration::from_millis(400));
    // Past max_wait: the delay comes back at once instead of a sleep.
    lim.pause("model:s", Duration::from_secs(3)).await.unwrap();
    let started = Instant::now();
    let r = acquire(lim, &specs, 0, Duration::from_millis(500))
        .await
        .unwrap();
    let delay = r.unwrap_err();
    assert!(delay > Duration::from_millis(2900) && delay <= Duration::from_secs(3));
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn acquire_sleeps_and_gives_up_past_max_wait() {
    let memory = Counting {
        inner: MemoryLimiter::new(),
        calls: AtomicUsize::new(0),
    };
    check_acquire_sleeps(&memory, &memory.calls).await;
    let Some(redis) = TestRedis::start("acquire_sleeps_and_gives_up_past_max_wait") else {
        return;
    };
    let shared = Counting {
        inner: limiter(&redis, Tuning::default()).await,
        calls: AtomicUsize::new(0),
    };
    check_acquire_sleeps(&shared, &shared.calls).await;
}

/// Not a gate (timing-sensitive on a busy machine): the utilisation at 6,000 RPM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn utilisation_at_6000_rpm() {
    let Some(redis) = TestRedis::start("utilisation_at_6000_rpm") else {
        return;
    };
    let mut limiters: Vec<Arc<dyn Limiter>> = Vec::new();
    for _ in 0..3 {
        limiters.push(Arc::new(limiter(&redis, Tuning::default()).await));
    }
    let specs = vec![spec("model:fast", Some(6000), Some(2_000_000))];
    let times = load_for(limiters, 16, specs, Duration::from_secs(5)).await;
    let steady: Vec<u64> = times
        .iter()
        .copied()
        .filter(|t| *t >= times[0] + 1_000_000)
        .collect();
    let rate = (steady.len() - 1) as f64 / ((steady[steady.len() - 1] - steady[0]) as f64 / 1e6);
    let peak = max_in_window(&times, 1_000_000);
    println!(
        "6000 rpm: {} grants, steady {rate:.1}/s = {:.1}% of 100/s, peak 1 s {peak}",
        times.len(),
        rate
    );
    assert!(peak <= 100 + 60, "peak {peak}");
}
