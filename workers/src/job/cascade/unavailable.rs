//! When every adequate model of an item is cooling down or paused.
//!
//! Each such delivery counts as one of the item's attempts, so an item ends in bounded time
//! (`model_unavailable`) when its models keep failing, instead of waiting out one cooldown
//! after another while a single probe per window moves the batch. Items whose models are all
//! paused keep waiting for `batchyard models resume` where an operator can run it (Redis);
//! in an in-process `run` nothing can, so they end as `model_paused` after their attempts.

use std::time::Duration;

use batchyard_jobs::batch::now_millis;
use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{OutputLine, codes};

use super::{Cascade, Decision, Run};
use crate::call::health::ModelState;

/// The least wait before an item whose models are cooling down runs again. The cooldown's end
/// is on the health store's clock: a worker whose clock runs ahead must not spend an item's
/// attempts in a burst.
const MIN_DELAY: Duration = Duration::from_secs(1);

/// The models a run found unavailable, with their state.
#[derive(Debug, Default)]
pub(super) struct Unavailable {
    models: Vec<(String, ModelState)>,
}

impl Unavailable {
    pub(super) fn add(&mut self, model: &str, state: ModelState) {
        self.models.push((model.to_owned(), state));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    fn all_paused(&self) -> bool {
        self.models
            .iter()
            .all(|(_, s)| matches!(s, ModelState::Paused { .. }))
    }

    /// How long until the first model may be asked again, when one is cooling down.
    fn soonest(&self, now_ms: u64) -> Option<Duration> {
        self.models
            .iter()
            .filter_map(|(_, s)| match s {
                ModelState::CoolingDown { until_ms } => {
                    Some(Duration::from_millis(until_ms.saturating_sub(now_ms)))
                }
                _ => None,
            })
            .min()
    }

    /// `small (cooling down for 12 s), large (paused: auth: 401 from provider)`.
    fn describe(&self, now_ms: u64) -> String {
        self.models
            .iter()
            .map(|(model, state)| match state {
                ModelState::CoolingDown { until_ms } => format!(
                    "{model} (cooling down after repeated failures, {} s left)",
                    until_ms.saturating_sub(now_ms).div_ceil(1000)
                ),
                ModelState::Paused { reason, .. } => format!("{model} (paused: {reason})"),
                ModelState::HalfOpen => format!("{model} (being probed after a cooldown)"),
                ModelState::Healthy => format!("{model} (refused a call)"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Cascade {
    /// Puts the item back until a model may answer, counting an attempt, or ends it once its
    /// attempts are used up.
    pub(super) async fn all_unavailable(&self, job: &Job, why: &Unavailable, run: Run) -> Decision {
        let paused = why.all_paused();
        if paused && !self.options.paused_ends_items {
            // Only `batchyard models resume` fixes a paused model; README says items wait for it.
            return self
                .later(job.clone(), self.options.unavailable_delay, run)
                .await;
        }
        let now_ms = now_millis();
        let models = why.describe(now_ms);
        let mut next = job.clone();
        next.attempt += 1;
        if next.attempt >= self.options.max_attempts {
            let last = job
                .last_error
                .as_deref()
                .map(|e| format!(" (last error: {e})"))
                .unwrap_or_default();
            let (code, message) = if paused {
                (
                    codes::MODEL_PAUSED,
                    format!(
                        "no model could take the item: {models}; nothing can resume a model \
                         inside this `batchyard run`: fix the provider's key or quota, then run \
                         the same command again{last}"
                    ),
                )
            } else {
                (
                    codes::MODEL_UNAVAILABLE,
                    format!(
                        "no model could answer in {} attempts: {models}{last}; check the \
                         provider, then rerun the failed items with `batchyard retry {}` (or \
                         run the input again)",
                        next.attempt, job.batch_id
                    ),
                )
            };
            tracing::warn!(code, models = %models, "every adequate model stayed unavailable; the item ends");
            return run.end(
                |ext| OutputLine::failure(&job.job_id, &job.custom_id, code, message, ext),
                true,
            );
        }
        if next.last_error.is_none() {
            next.last_error = Some(format!("{}: {models}", codes::MODEL_UNAVAILABLE));
        }
        let delay = why
            .soonest(now_ms)
            .map_or(self.options.unavailable_delay, |d| d.max(MIN_DELAY));
        self.later(next, delay, run).await
    }
}
