//! The cascade's side of fail-closed budgets: reserve a candidate's worst case before its call,
//! and replace the reservation with the actual spend after it.

use std::time::Duration;

use batchyard_jobs::batch::{nanos_to_usd, usd_to_nanos};
use batchyard_jobs::job::Job;
use batchyard_jobs::ledger::Reservation;
use batchyard_jobs::outcome::{OutputLine, codes};

use super::{Run, carry};
use crate::retry::backoff_delay;
use crate::router::{Candidate, DEFAULT_OUTPUT_TOKENS, requested_output_tokens};
use crate::runner::{Decision, JobRunner};

/// How long a job waits when the budget's room is held by calls in flight.
const BUDGET_WAIT: Duration = Duration::from_millis(250);

/// The `max_tokens` to send when the body sets none. Under a budget a call must not produce
/// more than the allowance its worst case reserved, so the router's default allowance is sent
/// when neither the request nor the task sets a limit.
pub(super) fn max_tokens_to_send(
    budgeted: bool,
    task_default: Option<u32>,
    body: &serde_json::Map<String, serde_json::Value>,
    model: &crate::catalog::ModelSpec,
) -> Option<u32> {
    if task_default.is_some() || !budgeted || requested_output_tokens(body, None).is_some() {
        return task_default;
    }
    let allowance = u32::try_from(DEFAULT_OUTPUT_TOKENS).unwrap_or(u32::MAX);
    Some(
        model
            .max_output_tokens
            .map_or(allowance, |cap| cap.min(allowance)),
    )
}

impl JobRunner {
    /// Reserves the candidate's worst case against the batch budget. `Ok(true)` when a
    /// reservation is held; `Err` ends the run (budget spent, or the ledger unreachable).
    pub(super) async fn reserve(
        &self,
        job: &Job,
        cand: &Candidate,
    ) -> Result<bool, Box<dyn FnOnce(Run) -> Decision + Send>> {
        let worst = usd_to_nanos(cand.worst_case_usd).max(1);
        match self.ledger.reserve(&job.batch_id, &job.job_id, worst).await {
            Ok(Reservation::Granted) => Ok(true),
            Ok(Reservation::Unlimited) => Ok(false),
            Ok(Reservation::Denied {
                spent_nanos,
                reserved_nanos,
                budget_nanos,
            }) if spent_nanos.saturating_add(worst) <= budget_nanos => {
                // Calls in flight hold the room; it frees as they settle to actual costs.
                tracing::debug!(reserved_nanos, "budget held by calls in flight; waiting");
                let again = job.clone();
                Err(Box::new(move |run: Run| Decision::Later {
                    uncommitted_nanos: usd_to_nanos(run.cost) - run.committed_nanos,
                    job: carry(again, &run),
                    delay: BUDGET_WAIT,
                }))
            }
            Ok(Reservation::Denied {
                spent_nanos,
                reserved_nanos,
                budget_nanos,
            }) => {
                let message = format!(
                    "the batch budget of ${:.4} can't cover the next call (worst case ${:.6} on {}; spent ${:.4}, ${:.4} in flight); give it more with `batchyard retry {} --budget-usd USD`",
                    nanos_to_usd(budget_nanos),
                    cand.worst_case_usd,
                    cand.model.key,
                    nanos_to_usd(spent_nanos),
                    nanos_to_usd(reserved_nanos),
                    job.batch_id,
                );
                tracing::warn!(model = %cand.model.key, "budget exhausted; the batch stops spending");
                let (job_id, custom_id) = (job.job_id.clone(), job.custom_id.clone());
                Err(Box::new(move |run: Run| {
                    run.end(
                        |ext| {
                            OutputLine::failure(
                                &job_id,
                                &custom_id,
                                codes::BUDGET_EXHAUSTED,
                                message,
                                ext,
                            )
                        },
                        true,
                    )
                }))
            }
            Err(e) => {
                // Fail closed: no reservation, no call.
                tracing::warn!(error = %e, "cannot reserve budget; the job will run later");
                let again = job.clone();
                let delay = backoff_delay(&self.retry, job.attempt + 1).max(Duration::from_secs(1));
                Err(Box::new(move |run: Run| Decision::Later {
                    job: carry(again, &run),
                    delay,
                    uncommitted_nanos: usd_to_nanos(run.cost) - run.committed_nanos,
                }))
            }
        }
    }

    /// Replaces a reservation with the actual spend (or records unreserved spend as it is).
    pub(super) async fn commit(&self, job: &Job, reserved: bool, spent: f64, run: &mut Run) {
        if !reserved {
            return;
        }
        let nanos = usd_to_nanos(spent);
        match self.ledger.commit(&job.batch_id, &job.job_id, nanos).await {
            Ok(()) => run.committed_nanos += nanos,
            // Not counted yet: settlement adds it, so no spend is lost.
            Err(e) => {
                tracing::warn!(error = %e, "cannot commit the call's cost; it will be settled with the job")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn model(cap: Option<u32>) -> crate::catalog::ModelSpec {
        crate::catalog::ModelSpec {
            key: "m".into(),
            provider: "p".into(),
            name: "m-1".into(),
            input_usd_per_mtok: 1.0,
            output_usd_per_mtok: 1.0,
            cached_input_usd_per_mtok: None,
            context_window: 100_000,
            max_output_tokens: cap,
            tier: 1,
            capabilities: Default::default(),
            rpm: None,
            tpm: None,
        }
    }

    #[test]
    fn a_budgeted_call_without_a_limit_is_sent_the_allowance_it_reserved() {
        let body = |text: &str| -> serde_json::Map<String, serde_json::Value> {
            serde_json::from_str(text).unwrap()
        };
        let bare = body(r#"{"messages":[]}"#);
        assert_eq!(
            max_tokens_to_send(true, None, &bare, &model(None)),
            Some(512)
        );
        assert_eq!(
            max_tokens_to_send(true, None, &bare, &model(Some(100))),
            Some(100)
        );
        // Unbudgeted, or with a limit of its own, nothing changes.
        assert_eq!(max_tokens_to_send(false, None, &bare, &model(None)), None);
        assert_eq!(
            max_tokens_to_send(true, Some(300), &bare, &model(None)),
            Some(300)
        );
        let limited = body(r#"{"messages":[],"max_tokens":40}"#);
        assert_eq!(max_tokens_to_send(true, None, &limited, &model(None)), None);
    }
}
