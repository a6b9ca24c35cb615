//! What the lines of a batch add up to: counts, tokens and spend per model, errors per code,
//! and from them the batch's end state and its manifest.

use std::collections::BTreeMap;

use batchyard_jobs::batch::{BatchRecord, BatchState, nanos_to_usd, now_secs, usd_to_nanos};
use batchyard_jobs::outcome::{OutputLine, codes};

use super::manifest::{BudgetReport, EstimateReport, Manifest, ModelSpend};

/// The running sums over the lines written so far.
#[derive(Debug, Default)]
pub(super) struct Tally {
    spend: BTreeMap<String, ModelSpend>,
    errors_by_code: BTreeMap<String, u64>,
    ok: u64,
    failed: u64,
    input_tokens: u64,
    cached_input_tokens: u64,
    cache_write_input_tokens: u64,
    output_tokens: u64,
    cost_nanos: i64,
    simulated: bool,
    escalations: u64,
    cache_hits: u64,
    estimate: EstimateReport,
}

impl Tally {
    /// Counts one line; true when it is a success (it goes to `output.jsonl`).
    pub(super) fn add(&mut self, line: &OutputLine) -> bool {
        let ext = &line.batchyard;
        let nanos = usd_to_nanos(ext.cost_usd);
        self.cost_nanos += nanos;
        self.input_tokens += ext.input_tokens;
        self.cached_input_tokens += ext.cached_input_tokens;
        self.cache_write_input_tokens += ext.cache_write_input_tokens;
        self.output_tokens += ext.output_tokens;
        self.simulated |= ext.simulated;
        self.escalations += u64::from(ext.escalations);
        if ext.estimated_input_tokens > 0 {
            self.estimate.estimated_input_tokens += ext.estimated_input_tokens;
            // Only the answer the estimate was for: the last step.
            self.estimate.actual_input_tokens += ext
                .cascade
                .last()
                .map_or(ext.input_tokens, |s| s.input_tokens);
        }
        if let Some(model) = &ext.model {
            self.spend.entry(model.clone()).or_default().requests += 1;
        }
        let mut counted_nanos = 0i64;
        for step in &ext.cascade {
            let entry = self.spend.entry(step.model.clone()).or_default();
            let step_nanos = usd_to_nanos(step.cost_usd);
            counted_nanos += step_nanos;
            entry.cost_nanos += step_nanos;
            entry.input_tokens += step.input_tokens;
            entry.cached_input_tokens += step.cached_input_tokens;
            entry.cache_write_input_tokens += step.cache_write_input_tokens;
            entry.output_tokens += step.output_tokens;
            if step.input_tokens + step.output_tokens > 0 || step.cached {
                entry.calls += 1;
            }
            if step.cached {
                entry.cache_hits += 1;
                self.cache_hits += 1;
            }
            if step.passed() {
                entry.passes += 1;
            } else {
                entry.fails += 1;
            }
        }
        // Spend from earlier runs (a replay) or without a cascade goes to the final model,
        // so the per-model costs add up to the total.
        if let Some(model) = &ext.model {
            let entry = self.spend.entry(model.clone()).or_default();
            entry.cost_nanos += nanos - counted_nanos;
            if ext.cascade.is_empty() {
                entry.input_tokens += ext.input_tokens;
                entry.cached_input_tokens += ext.cached_input_tokens;
                entry.cache_write_input_tokens += ext.cache_write_input_tokens;
                entry.output_tokens += ext.output_tokens;
            }
        }
        if line.is_success() {
            self.ok += 1;
            true
        } else {
            self.failed += 1;
            if let Some(e) = &line.error {
                *self.errors_by_code.entry(e.code.clone()).or_default() += 1;
            }
            false
        }
    }

    pub(super) fn written(&self) -> u64 {
        self.ok + self.failed
    }

    pub(super) fn counts(&self) -> (u64, u64) {
        (self.ok, self.failed)
    }

    /// Items whose result is not in the files: no line at all, or a `result_lost` line.
    pub(super) fn lost(&self, record: &BatchRecord) -> u64 {
        record.counts.total.saturating_sub(self.written())
            + self
                .errors_by_code
                .get(codes::RESULT_LOST)
                .copied()
                .unwrap_or(0)
    }

    /// The batch's end state, as the files show it.
    pub(super) fn state(&self, record: &BatchRecord) -> BatchState {
        // OpenAI: a batch whose window ended with items not run is `expired`, with partial
        // results; a cancel said more about intent, so it wins.
        if self.lost(record) > 0 {
            // A status never says more than the files show: incomplete is `failed` (the
            // OpenAI SDK knows no other word for it), with the reason in `errors`.
            BatchState::Failed
        } else if record.cancel_requested_at.is_some() {
            BatchState::Cancelled
        } else if self.errors_by_code.contains_key(codes::EXPIRED) {
            BatchState::Expired
        } else if self.ok == 0 && self.written() > 0 {
            BatchState::Failed
        } else {
            BatchState::Completed
        }
    }

    /// `manifest.json` for the lines counted.
    pub(super) fn into_manifest(
        mut self,
        record: &BatchRecord,
        output_file: String,
        error_file: String,
    ) -> Manifest {
        let (written, lost, state) = (self.written(), self.lost(record), self.state(record));
        for s in self.spend.values_mut() {
            s.cost_usd = nanos_to_usd(s.cost_nanos);
        }
        let completed_at = now_secs();
        let estimate = self.estimate;
        Manifest {
            batch_id: record.id.clone(),
            status: state.as_str().to_string(),
            request_counts: batchyard_jobs::batch::RequestCounts {
                total: record.counts.total,
                completed: self.ok,
                failed: self.failed,
            },
            cost_usd: nanos_to_usd(self.cost_nanos),
            spend_by_model: self.spend,
            errors_by_code: self.errors_by_code,
            input_tokens: self.input_tokens,
            cached_input_tokens: self.cached_input_tokens,
            cache_write_input_tokens: self.cache_write_input_tokens,
            output_tokens: self.output_tokens,
            escalations: self.escalations,
            cache_hits: self.cache_hits,
            budget: record.budget_usd.map(|budget| BudgetReport {
                budget_usd: budget,
                remaining_usd: (budget - record.cost_usd()).max(0.0),
                exhausted: record.budget_exhausted_at.is_some(),
            }),
            estimate: EstimateReport {
                ratio: (estimate.estimated_input_tokens > 0).then(|| {
                    estimate.actual_input_tokens as f64 / estimate.estimated_input_tokens as f64
                }),
                ..estimate
            },
            created_at: record.created_at,
            in_progress_at: record.in_progress_at,
            finalizing_at: record.finalizing_at,
            completed_at,
            duration_secs: completed_at.saturating_sub(record.created_at),
            output_file,
            error_file,
            simulated: self.simulated,
            lines_written: written,
            ledger_cost_usd: record.cost_usd(),
            // Per-line rounding to nano-dollars may differ by a nano-dollar a line.
            reconciled: written == record.counts.total
                && lost == 0
                && (record.spent_nanos - self.cost_nanos).unsigned_abs()
                    <= record.counts.total.max(1000),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::outcome::{Extension, Step, step_outcomes};

    fn line(ext: Extension) -> OutputLine {
        OutputLine::failure("j", "j", codes::TRANSIENT, "x", ext)
    }

    fn step(model: &str, cached: u64, written: u64) -> Step {
        Step {
            model: model.into(),
            outcome: step_outcomes::FAILED_VALIDATION.into(),
            cost_usd: 0.001,
            input_tokens: 100,
            cached_input_tokens: cached,
            cache_write_input_tokens: written,
            output_tokens: 5,
            cached: false,
            provider_batch: None,
        }
    }

    #[test]
    fn prompt_cache_tokens_are_summed_per_model_and_for_the_batch() {
        let mut tally = Tally::default();
        // An escalation: the small model's answer (a cache write), then the large one's (a read).
        tally.add(&line(Extension {
            model: Some("large".into()),
            cost_usd: 0.002,
            input_tokens: 200,
            cached_input_tokens: 80,
            cache_write_input_tokens: 30,
            output_tokens: 10,
            cascade: vec![step("small", 0, 30), step("large", 80, 0)],
            ..Extension::default()
        }));
        // A replayed line without a cascade: its counts go to its model.
        tally.add(&line(Extension {
            model: Some("small".into()),
            cost_usd: 0.001,
            input_tokens: 100,
            cached_input_tokens: 7,
            output_tokens: 5,
            ..Extension::default()
        }));
        let record = BatchRecord::new("b".into(), 2, "file:///x".into(), 1);
        let m = tally.into_manifest(&record, String::new(), String::new());
        assert_eq!(
            (m.cached_input_tokens, m.cache_write_input_tokens),
            (87, 30)
        );
        let small = &m.spend_by_model["small"];
        assert_eq!(
            (small.cached_input_tokens, small.cache_write_input_tokens),
            (7, 30)
        );
        let large = &m.spend_by_model["large"];
        assert_eq!(
            (large.cached_input_tokens, large.cache_write_input_tokens),
            (80, 0)
        );
    }
}
