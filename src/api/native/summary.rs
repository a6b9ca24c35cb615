//! A batch summarised for a dashboard: progress, rate and ETA from the ledger record alone.

use batchyard_jobs::batch::{BatchRecord, BatchState};
use serde_json::{Value, json};

/// Items settled per second since the batch went in progress, and the seconds left at that
/// rate. A plain average: honest about the whole run, slow to show a recent change.
fn rate_and_eta(r: &BatchRecord, now: u64) -> (Option<f64>, Option<u64>) {
    let Some(started) = r.in_progress_at else {
        return (None, None);
    };
    // A cancel or an expiry settles every queued item at once without running it, so the
    // settled count stops measuring work (a cancelled batch showed 500 items/s).
    if matches!(
        r.state,
        BatchState::Cancelling | BatchState::Cancelled | BatchState::Expired
    ) {
        return (None, None);
    }
    let finished = r.state.is_terminal();
    let end = if finished {
        r.completed_at.or(r.finalizing_at).unwrap_or(now)
    } else {
        now
    };
    // Stamps are whole seconds; a batch that ran within one still ran for some time.
    let elapsed = end.saturating_sub(started).max(1) as f64;
    let settled = r.settled();
    let rate = settled as f64 / elapsed;
    let remaining = r.counts.total.saturating_sub(settled);
    let eta = (!finished && rate > 0.0).then(|| (remaining as f64 / rate).ceil() as u64);
    (Some(rate), eta)
}

/// `{id, status, task, request_counts, progress, rate_per_sec, eta_secs, cost_usd, budget_usd,
/// created_at, completed_at, expires_at, deadline_at, realtime_at}`. `completed_at` is when the batch ended, in any
/// terminal state.
pub fn summary(r: &BatchRecord, now: u64) -> Value {
    let total = r.counts.total;
    let progress = if total == 0 {
        // Nothing to run: done only if it completed; a batch refused at validation ran nothing.
        if r.state == BatchState::Completed {
            1.0
        } else {
            0.0
        }
    } else {
        (r.settled() as f64 / total as f64).min(1.0)
    };
    let (rate, eta) = rate_and_eta(r, now);
    json!({
        "id": r.id,
        "status": r.state.as_str(),
        "task": r.task,
        "request_counts": r.counts,
        "progress": progress,
        "rate_per_sec": rate,
        "eta_secs": eta,
        "cost_usd": r.cost_usd(),
        "budget_usd": r.budget_usd,
        "created_at": r.created_at,
        "completed_at": r.state.is_terminal().then_some(r.completed_at).flatten(),
        "expires_at": r.expires_at,
        // The offload lane: `/api/batches/{id}` has the rest.
        "deadline_at": r.deadline_at,
        "realtime_at": r.realtime_at,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::batch::{BatchState, RequestCounts};

    fn record(state: BatchState, completed: u64, failed: u64) -> BatchRecord {
        BatchRecord {
            state,
            counts: RequestCounts {
                total: 10,
                completed,
                failed,
            },
            spent_nanos: 2_000_000_000,
            task: Some("t".into()),
            in_progress_at: Some(100),
            ..BatchRecord::new("batch_1".into(), 0, "memory://".into(), 90)
        }
    }

    #[test]
    fn running_batches_get_a_rate_and_an_eta() {
        let s = summary(&record(BatchState::InProgress, 3, 1), 110);
        assert_eq!(s["progress"], 0.4);
        assert_eq!(s["rate_per_sec"], 0.4);
        assert_eq!(s["eta_secs"], 15);
        assert!(s["completed_at"].is_null());
        assert_eq!(s["cost_usd"], 2.0);
        // Nothing settled yet: the rate is 0 and the ETA unknown.
        let idle = summary(&record(BatchState::InProgress, 0, 0), 110);
        assert_eq!(idle["rate_per_sec"], 0.0);
        assert!(idle["eta_secs"].is_null());
    }

    #[test]
    fn finished_batches_have_no_eta() {
        let mut r = record(BatchState::Completed, 9, 1);
        r.completed_at = Some(105);
        let s = summary(&r, 500);
        assert_eq!(s["progress"], 1.0);
        assert_eq!(s["rate_per_sec"], 2.0);
        assert!(s["eta_secs"].is_null());
        assert_eq!(s["completed_at"], 105);
        let mut validating = record(BatchState::Validating, 0, 0);
        validating.in_progress_at = None;
        let v = summary(&validating, 500);
        assert!(v["rate_per_sec"].is_null() && v["eta_secs"].is_null());
    }

    #[test]
    fn cancelled_and_refused_batches_show_no_rate_and_no_progress() {
        // 2 items ran, 8 were cancelled in the same second.
        let mut cancelled = record(BatchState::Cancelled, 2, 8);
        cancelled.completed_at = Some(101);
        assert!(summary(&cancelled, 500)["rate_per_sec"].is_null());
        let mut refused = record(BatchState::Failed, 0, 0);
        refused.counts.total = 0;
        refused.in_progress_at = None;
        assert_eq!(summary(&refused, 500)["progress"], 0.0);
    }
}
