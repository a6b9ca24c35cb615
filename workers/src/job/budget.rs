//! Fail-closed budgets: reserve a candidate's worst case before its call,
//! and replace the reservation with the actual spend after it.

use std::time::Duration;

use std::sync::Arc;

use batchyard_jobs::batch::{nanos_to_usd, usd_to_nanos};
use batchyard_jobs::job::Job;
use batchyard_jobs::ledger::{Ledger, Reservation};

use crate::call::retry::{RetryPolicy, backoff_delay};
use crate::route::router::{Candidate, DEFAULT_OUTPUT_TOKENS, requested_output_tokens};

/// How long a job waits when the budget's room is held by calls in flight.
const BUDGET_WAIT: Duration = Duration::from_millis(250);

/// The `max_tokens` to send when the body sets none. Under a budget a call must not produce
/// more than the allowance its worst case reserved, so the router's default allowance is sent
/// when neither the request nor the task sets a limit.
pub(crate) fn max_tokens_to_send(
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

/// What a reservation attempt left the job with.
pub(crate) enum Reserve {
    /// A reservation is held: the call may go ahead and must be committed after it.
    Held,
    /// The batch has no budget: nothing to reserve or commit.
    Unlimited,
    /// The room is held by calls in flight, or the ledger is unreachable: run the job later.
    Later(Duration),
    /// The budget can't cover the call: the item ends, with this message.
    Exhausted(String),
}

/// Fail-closed budgets against the ledger: reserve a candidate's worst case before its call,
/// replace the reservation with the actual spend after it.
#[derive(Clone)]
pub(crate) struct Budget {
    ledger: Arc<dyn Ledger>,
    retry: RetryPolicy,
}

impl Budget {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, retry: RetryPolicy) -> Self {
        Self { ledger, retry }
    }

    /// Reserves the candidate's worst case against the batch budget: at its batch price when
    /// the item goes into a provider batch (`at_batch_price`), since that is all it can cost.
    pub(crate) async fn reserve(
        &self,
        job: &Job,
        cand: &Candidate,
        at_batch_price: bool,
    ) -> Reserve {
        let worst_usd = if at_batch_price {
            cand.model
                .batch_worst_case_usd(cand.prompt_tokens, cand.max_output_tokens)
        } else {
            cand.worst_case_usd
        };
        let worst = usd_to_nanos(worst_usd).max(1);
        match self.ledger.reserve(&job.batch_id, &job.job_id, worst).await {
            Ok(Reservation::Granted) => Reserve::Held,
            Ok(Reservation::Unlimited) => Reserve::Unlimited,
            Ok(Reservation::Denied {
                spent_nanos,
                reserved_nanos,
                budget_nanos,
            }) if spent_nanos.saturating_add(worst) <= budget_nanos => {
                // Calls in flight hold the room; it frees as they settle to actual costs.
                tracing::debug!(reserved_nanos, "budget held by calls in flight; waiting");
                Reserve::Later(BUDGET_WAIT)
            }
            Ok(Reservation::Denied {
                spent_nanos,
                reserved_nanos,
                budget_nanos,
            }) => {
                tracing::warn!(model = %cand.model.key, "budget exhausted; the batch stops spending");
                Reserve::Exhausted(format!(
                    "the batch budget of ${:.4} can't cover the next call (worst case ${:.6} on {}; spent ${:.4}, ${:.4} in flight); give it more with `batchyard retry {} --budget-usd USD`",
                    nanos_to_usd(budget_nanos),
                    worst_usd,
                    cand.model.key,
                    nanos_to_usd(spent_nanos),
                    nanos_to_usd(reserved_nanos),
                    job.batch_id,
                ))
            }
            Err(e) => {
                // Fail closed: no reservation, no call.
                tracing::warn!(error = %e, "cannot reserve budget; the job will run later");
                Reserve::Later(
                    backoff_delay(&self.retry, job.attempt + 1).max(Duration::from_secs(1)),
                )
            }
        }
    }

    /// Replaces a held reservation with the actual spend; returns the nanos now in the ledger
    /// (0 when Redis refused: settlement adds them then, so no spend is lost).
    pub(crate) async fn commit(&self, job: &Job, spent: f64) -> i64 {
        let nanos = usd_to_nanos(spent);
        match self.ledger.commit(&job.batch_id, &job.job_id, nanos).await {
            Ok(()) => nanos,
            Err(e) => {
                tracing::warn!(error = %e, "cannot commit the call's cost; it will be settled with the job");
                0
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
            cache_write_usd_per_mtok: None,
            context_window: 100_000,
            max_output_tokens: cap,
            tier: 1,
            capabilities: Default::default(),
            rpm: None,
            tpm: None,
            batch: None,
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
