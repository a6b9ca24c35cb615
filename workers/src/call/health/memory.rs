//! In-process model health for embedded runs: the same rules as the Redis one, in a mutex.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;

use super::{
    Effect, HealthError, HealthPolicy, ModelHealth, ModelState, bounded, millis, outcome_reason,
};
use crate::provider::ProviderErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Breaker {
    #[default]
    Closed,
    Open,
    Paused,
}

#[derive(Debug, Default)]
struct Entry {
    breaker: Breaker,
    streak: u32,
    /// Open: when the cooldown ends.
    until_ms: u64,
    /// Half-open: the probe's lease runs until then.
    probe_until_ms: Option<u64>,
    reason: String,
    since_ms: u64,
    /// Retry budget: the current window's end, calls and retries.
    window_end_ms: u64,
    calls: u64,
    retries: u64,
}

impl Entry {
    fn roll_window(&mut self, now: u64, window_ms: u64) {
        if now >= self.window_end_ms {
            self.window_end_ms = now.saturating_add(window_ms);
            self.calls = 0;
            self.retries = 0;
        }
    }

    fn open(&mut self, now: u64, cooldown_ms: u64) {
        self.breaker = Breaker::Open;
        self.until_ms = now.saturating_add(cooldown_ms);
        self.probe_until_ms = None;
    }

    fn close(&mut self) {
        self.breaker = Breaker::Closed;
        self.streak = 0;
        self.until_ms = 0;
        self.probe_until_ms = None;
    }
}

/// Model health for one process.
#[derive(Debug, Default)]
pub struct MemoryHealth {
    policy: HealthPolicy,
    models: Mutex<HashMap<String, Entry>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl MemoryHealth {
    pub fn new(policy: HealthPolicy) -> Self {
        Self {
            policy,
            models: Mutex::new(HashMap::new()),
        }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock leaves plain counters behind; keep going.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with<T>(&self, model: &str, f: impl FnOnce(&mut Entry, u64) -> T) -> T {
        let now = now_ms();
        let mut models = self.lock();
        let entry = models.entry(model.to_string()).or_default();
        f(entry, now)
    }
}

#[async_trait]
impl ModelHealth for MemoryHealth {
    async fn admit(&self, model: &str) -> Result<bool, HealthError> {
        let lease_ms = millis(self.policy.probe_lease);
        Ok(self.with(model, |e, now| match e.breaker {
            Breaker::Closed => true,
            Breaker::Paused => false,
            Breaker::Open if now < e.until_ms => false,
            Breaker::Open => match e.probe_until_ms {
                Some(lease_end) if now < lease_end => false,
                _ => {
                    e.probe_until_ms = Some(now.saturating_add(lease_ms));
                    true
                }
            },
        }))
    }

    async fn record(
        &self,
        model: &str,
        outcome: Result<(), ProviderErrorKind>,
        reason: &str,
    ) -> Result<(), HealthError> {
        let effect = Effect::of(outcome);
        let threshold = self.policy.threshold();
        let cooldown_ms = millis(self.policy.cooldown);
        let window_ms = millis(self.policy.window);
        self.with(model, |e, now| {
            e.roll_window(now, window_ms);
            e.calls = e.calls.saturating_add(1);
            match (effect, e.breaker) {
                (Effect::Ignore, _) | (_, Breaker::Paused) => {}
                // Stragglers from before the breaker opened: the cooldown runs its course.
                (Effect::Success | Effect::Failure, Breaker::Open) if now < e.until_ms => {}
                (Effect::Success, Breaker::Open) => e.close(),
                (Effect::Success, Breaker::Closed) => e.streak = 0,
                // The probe failed: another cooldown.
                (Effect::Failure, Breaker::Open) => e.open(now, cooldown_ms),
                (Effect::Failure, Breaker::Closed) => {
                    e.streak = e.streak.saturating_add(1);
                    if e.streak >= threshold {
                        e.open(now, cooldown_ms);
                    }
                }
                (Effect::Pause, _) => {
                    e.breaker = Breaker::Paused;
                    e.reason = outcome_reason(outcome, reason);
                    e.since_ms = now;
                    e.probe_until_ms = None;
                }
            }
        });
        Ok(())
    }

    async fn allow_retry(&self, model: &str) -> Result<bool, HealthError> {
        let window_ms = millis(self.policy.window);
        Ok(self.with(model, |e, now| {
            e.roll_window(now, window_ms);
            if e.retries < self.policy.retries_allowed(e.calls) {
                e.retries += 1;
                true
            } else {
                false
            }
        }))
    }

    async fn state(&self, model: &str) -> Result<ModelState, HealthError> {
        let now = now_ms();
        let models = self.lock();
        let Some(e) = models.get(model) else {
            return Ok(ModelState::Healthy);
        };
        Ok(match e.breaker {
            Breaker::Closed => ModelState::Healthy,
            Breaker::Open if now < e.until_ms => ModelState::CoolingDown {
                until_ms: e.until_ms,
            },
            Breaker::Open => ModelState::HalfOpen,
            Breaker::Paused => ModelState::Paused {
                reason: e.reason.clone(),
                since_ms: e.since_ms,
            },
        })
    }

    async fn resume(&self, model: &str) -> Result<(), HealthError> {
        self.with(model, |e, _| {
            e.close();
            e.reason.clear();
            e.since_ms = 0;
        });
        Ok(())
    }

    async fn pause(&self, model: &str, reason: &str) -> Result<(), HealthError> {
        let reason = bounded(reason);
        self.with(model, |e, now| {
            if e.breaker != Breaker::Paused {
                e.since_ms = now;
            }
            e.breaker = Breaker::Paused;
            e.reason = reason;
            e.probe_until_ms = None;
        });
        Ok(())
    }
}
