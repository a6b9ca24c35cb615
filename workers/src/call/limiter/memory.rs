//! The in-process limiter for the embedded `run` mode: the algorithm of [`super`] (guard plus
//! pacer per meter, pauses, provider reports) over a mutex, on the local monotonic clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{
    Admission, DEFAULT_REPORT_HOLD, LimitSpec, Limiter, LimiterError, MeterParams, Reservation,
    Tuning, normalize, wait_from_us,
};

/// Scopes idle this many admissions are swept when nothing holds them any more.
const SWEEP_EVERY: u64 = 256;

/// Limits held in this process only.
pub struct MemoryLimiter {
    tuning: Tuning,
    started: Instant,
    /// The wall clock at `started`, in µs since the epoch: bucket numbers and grant times
    /// are on this base, advanced by the monotonic clock.
    base_us: f64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    scopes: HashMap<String, Scope>,
    calls: u64,
}

#[derive(Default)]
struct Scope {
    pause_until: f64,
    req: Meter,
    tok: Meter,
}

#[derive(Default)]
struct Meter {
    /// The pacer's theoretical arrival time (µs); `None` before the first call.
    tat: Option<f64>,
    /// The guard: units admitted per bucket, and their sum.
    buckets: BTreeMap<i64, u64>,
    sum: u64,
    /// The provider's last report: units remaining until a time (µs).
    cap: Option<(u64, f64)>,
}

/// The guard's bucket grid at one instant.
#[derive(Debug, Clone, Copy)]
struct Grid {
    now: f64,
    bw: i64,
    nb: i64,
    cur: i64,
}

impl Grid {
    fn keep(&self) -> i64 {
        self.cur - self.nb
    }
}

fn bump(wait: &mut f64, us: f64) {
    if us > *wait {
        *wait = us;
    }
}

impl Meter {
    fn evict(&mut self, g: &Grid) {
        let kept = self.buckets.split_off(&g.keep());
        let gone: u64 = self.buckets.values().sum();
        self.sum = self.sum.saturating_sub(gone);
        self.buckets = kept;
        if self.cap.is_some_and(|(_, until)| until <= g.now) {
            self.cap = None;
        }
    }

    fn check(&self, p: &MeterParams, w: u64, g: &Grid, wait: &mut f64) {
        if w == 0 {
            return;
        }
        if let Some((cap, until)) = self.cap
            && cap < w
        {
            bump(wait, until - g.now);
        }
        if p.limit == 0 {
            return;
        }
        // The pacer.
        let level = self.tat.map_or(0.0, |t| (t - g.now).max(0.0));
        let cost = w as f64 * p.unit_us;
        if cost <= p.capacity_us {
            bump(wait, level + cost - p.capacity_us);
        } else {
            // Bigger than the burst: admitted once the pacer is idle.
            bump(wait, level);
        }
        // The guard: wait until enough old buckets leave the window.
        if self.sum + w > p.limit {
            let mut over = self.sum + w - p.limit;
            let mut freed_at = None;
            for (&i, &v) in &self.buckets {
                if v >= over {
                    freed_at = Some(((i + g.nb + 1) * g.bw) as f64);
                    break;
                }
                over -= v;
            }
            bump(wait, freed_at.map_or(g.bw as f64, |t| t - g.now));
        }
    }

    fn commit(&mut self, p: &MeterParams, w: u64, g: &Grid) {
        if w == 0 {
            return;
        }
        if let Some((cap, _)) = &mut self.cap {
            *cap = cap.saturating_sub(w);
        }
        if p.limit == 0 {
            return;
        }
        let tat = self.tat.map_or(g.now, |t| t.max(g.now));
        self.tat = Some(tat + w as f64 * p.unit_us);
        *self.buckets.entry(g.cur).or_default() += w;
        self.sum += w;
    }

    /// Moves this meter by `diff` units counted at `bucket`.
    fn adjust(&mut self, p: &MeterParams, diff: i64, bucket: i64, g: &Grid) {
        if let Some((cap, _)) = &mut self.cap {
            *cap = cap.saturating_add_signed(-diff);
        }
        if p.limit == 0 {
            return;
        }
        if let Some(tat) = &mut self.tat {
            *tat += diff as f64 * p.unit_us;
        }
        if let Some(v) = self.buckets.get_mut(&bucket) {
            let new = v.saturating_add_signed(diff);
            self.sum = (self.sum + new).saturating_sub(*v);
            *v = new;
        } else if diff > 0 {
            // Its bucket has left the window: count the extra now.
            *self.buckets.entry(g.cur).or_default() += diff.unsigned_abs();
            self.sum += diff.unsigned_abs();
        }
    }

    /// Whether anything in this meter still matters at `now`.
    fn busy(&self, g: &Grid) -> bool {
        self.sum > 0
            || self.cap.is_some_and(|(_, until)| until > g.now)
            || self.tat.is_some_and(|t| t > g.now)
    }
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::with_tuning(Tuning::default())
    }

    pub fn with_tuning(tuning: Tuning) -> Self {
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            tuning,
            started: Instant::now(),
            base_us: base.as_micros() as f64,
            state: Mutex::new(State::default()),
        }
    }

    fn grid(&self) -> Grid {
        let now = self.base_us + self.started.elapsed().as_micros() as f64;
        let bw = self.tuning.bucket_us();
        Grid {
            now,
            bw,
            nb: self.tuning.buckets(),
            cur: (now / bw as f64).floor() as i64,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(&self, specs: &[LimitSpec], tokens: u64) -> Result<Admission, LimiterError> {
        let specs = normalize(specs, tokens)?;
        let g = self.grid();
        let mut state = self.lock();
        state.calls += 1;
        if state.calls.is_multiple_of(SWEEP_EVERY) {
            state
                .scopes
                .retain(|_, s| s.pause_until > g.now || s.req.busy(&g) || s.tok.busy(&g));
        }
        let mut wait = 0.0f64;
        for spec in &specs {
            let scope = state.scopes.entry(spec.scope.clone()).or_default();
            scope.req.evict(&g);
            scope.tok.evict(&g);
            bump(&mut wait, scope.pause_until - g.now);
            let (req, tok) = self.tuning.meters(spec);
            scope.req.check(&req, 1, &g, &mut wait);
            scope.tok.check(&tok, tokens, &g, &mut wait);
        }
        if wait > 0.0 {
            return Ok(Admission::Wait(wait_from_us(wait)));
        }
        for spec in &specs {
            let scope = state.scopes.entry(spec.scope.clone()).or_default();
            let (req, tok) = self.tuning.meters(spec);
            scope.req.commit(&req, 1, &g);
            scope.tok.commit(&tok, tokens, &g);
        }
        Ok(Admission::Granted(Reservation {
            scopes: specs.into_iter().map(|s| (s.scope, s.tpm)).collect(),
            tokens,
            bucket: g.cur,
            granted_at: Duration::from_micros(g.now as u64),
        }))
    }
}

impl Default for MemoryLimiter {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Limiter for MemoryLimiter {
    async fn try_acquire(
        &self,
        specs: &[LimitSpec],
        tokens: u64,
    ) -> Result<Admission, LimiterError> {
        self.admit(specs, tokens)
    }

    async fn settle(
        &self,
        reservation: Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimiterError> {
        let diff = token_diff(actual_tokens, reservation.tokens);
        if diff == 0 {
            return Ok(());
        }
        let g = self.grid();
        let mut state = self.lock();
        for (scope, tpm) in &reservation.scopes {
            let params = self.tuning.meter(*tpm, self.tuning.token_burst);
            let scope = state.scopes.entry(scope.clone()).or_default();
            scope.tok.evict(&g);
            scope.tok.adjust(&params, diff, reservation.bucket, &g);
        }
        Ok(())
    }

    async fn pause(&self, scope: &str, for_: Duration) -> Result<(), LimiterError> {
        let g = self.grid();
        let until = g.now + for_.as_micros() as f64;
        let mut state = self.lock();
        let scope = state.scopes.entry(scope.to_string()).or_default();
        scope.pause_until = scope.pause_until.max(until);
        Ok(())
    }

    async fn observe_remaining(
        &self,
        scope: &str,
        remaining_requests: Option<u64>,
        remaining_tokens: Option<u64>,
        reset: Option<Duration>,
    ) -> Result<(), LimiterError> {
        let g = self.grid();
        let until = g.now + reset.unwrap_or(DEFAULT_REPORT_HOLD).as_micros() as f64;
        let mut state = self.lock();
        let scope = state.scopes.entry(scope.to_string()).or_default();
        // The latest report replaces an older one; our own limits still apply on top.
        if let Some(n) = remaining_requests {
            scope.req.cap = Some((n, until));
        }
        if let Some(n) = remaining_tokens {
            scope.tok.cap = Some((n, until));
        }
        Ok(())
    }
}

/// `actual - estimate`, saturated to `i64`.
pub(crate) fn token_diff(actual: u64, estimate: u64) -> i64 {
    let diff = i128::from(actual) - i128::from(estimate);
    i64::try_from(diff).unwrap_or(if diff < 0 { i64::MIN } else { i64::MAX })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn the_pacer_spaces_requests_after_the_burst() {
        let lim = MemoryLimiter::new();
        let specs = [spec("model:a", Some(600), None)];
        // Burst of 6 (1% of 600), then ~100 ms apart.
        for _ in 0..6 {
            granted(lim.try_acquire(&specs, 0).await.unwrap());
        }
        let w = waited(lim.try_acquire(&specs, 0).await.unwrap());
        assert!(
            w > Duration::from_millis(80) && w < Duration::from_millis(110),
            "{w:?}"
        );
    }

    #[tokio::test]
    async fn the_guard_is_exact_over_its_window() {
        let tuning = Tuning {
            window: Duration::from_secs(1),
            buckets: 10,
            pace: 1.0,
            request_burst: 1.0,
            token_burst: 1.0,
        };
        let lim = MemoryLimiter::with_tuning(tuning);
        let specs = [spec("model:a", Some(5), None)];
        for _ in 0..5 {
            granted(lim.try_acquire(&specs, 0).await.unwrap());
        }
        // Six would fit the pacer's burst (5 + refill), but the window holds only five.
        let w = waited(lim.try_acquire(&specs, 0).await.unwrap());
        assert!(
            w > Duration::from_millis(900) && w <= Duration::from_millis(1100),
            "{w:?}"
        );
    }

    #[tokio::test]
    async fn tokens_refunded_by_settle_are_usable_at_once() {
        let lim = MemoryLimiter::new();
        let specs = [spec("model:a", None, Some(24_000))];
        // Token burst is 5% of 24,000 = 1,200.
        let r = granted(lim.try_acquire(&specs, 1000).await.unwrap());
        waited(lim.try_acquire(&specs, 1000).await.unwrap());
        lim.settle(r, 200).await.unwrap();
        granted(lim.try_acquire(&specs, 1000).await.unwrap());
    }

    #[tokio::test]
    async fn all_or_nothing_across_scopes() {
        let lim = MemoryLimiter::new();
        let model = spec("model:a", Some(600), None);
        let provider = spec("provider:p", Some(60), None);
        granted(
            lim.try_acquire(std::slice::from_ref(&provider), 0)
                .await
                .unwrap(),
        );
        // The provider is spent (burst 1); the model is not charged by the refusal.
        for _ in 0..3 {
            waited(
                lim.try_acquire(&[model.clone(), provider.clone()], 0)
                    .await
                    .unwrap(),
            );
        }
        for _ in 0..6 {
            granted(
                lim.try_acquire(std::slice::from_ref(&model), 0)
                    .await
                    .unwrap(),
            );
        }
        waited(lim.try_acquire(&[model], 0).await.unwrap());
    }

    #[tokio::test]
    async fn pauses_and_reports_make_everyone_wait() {
        let lim = MemoryLimiter::new();
        let specs = [spec("model:a", None, None)];
        lim.pause("model:a", Duration::from_millis(300))
            .await
            .unwrap();
        let w = waited(lim.try_acquire(&specs, 0).await.unwrap());
        assert!(w > Duration::from_millis(250) && w <= Duration::from_millis(300));
        lim.observe_remaining("model:b", Some(0), None, Some(Duration::from_secs(1)))
            .await
            .unwrap();
        let w = waited(
            lim.try_acquire(&[spec("model:b", Some(1000), None)], 0)
                .await
                .unwrap(),
        );
        assert!(w > Duration::from_millis(900) && w <= Duration::from_secs(1));
        // Two tokens remain: one call of 2 passes, the next waits for the reset.
        lim.observe_remaining("model:c", None, Some(2), Some(Duration::from_secs(1)))
            .await
            .unwrap();
        let c = [spec("model:c", None, None)];
        granted(lim.try_acquire(&c, 2).await.unwrap());
        waited(lim.try_acquire(&c, 1).await.unwrap());
        granted(lim.try_acquire(&c, 0).await.unwrap());
    }
}
