//! `manifest.json` and the reports in it.

use std::collections::BTreeMap;

use serde::Serialize;

/// One model's share of a batch: every call counts, accepted or escalated from.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct ModelSpend {
    /// Items whose final answer (or final failure) came from this model.
    pub requests: u64,
    /// Answers this model gave (provider calls plus cache hits).
    pub calls: u64,
    /// Answers that passed the checks, and answers that didn't (escalated or failed).
    pub passes: u64,
    pub fails: u64,
    pub cache_hits: u64,
    pub cost_usd: f64,
    pub input_tokens: u64,
    /// Parts of `input_tokens`: read from and written to the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    #[serde(skip)]
    pub(super) cost_nanos: i64,
}

/// The budget at the end, and what is left of it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetReport {
    pub budget_usd: f64,
    pub remaining_usd: f64,
    /// True when a call was refused for lack of budget.
    pub exhausted: bool,
}

/// Prompt tokens estimated before the calls vs what the providers counted.
#[derive(Debug, Default, Clone, Serialize, PartialEq)]
pub struct EstimateReport {
    pub estimated_input_tokens: u64,
    pub actual_input_tokens: u64,
    /// actual / estimated (1.0 is a perfect estimate); absent when nothing was estimated.
    pub ratio: Option<f64>,
}

/// `manifest.json`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Manifest {
    pub batch_id: String,
    pub status: String,
    pub request_counts: batchyard_jobs::batch::RequestCounts,
    /// The sum of every line's `cost_usd`.
    pub cost_usd: f64,
    pub spend_by_model: BTreeMap<String, ModelSpend>,
    pub errors_by_code: BTreeMap<String, u64>,
    pub input_tokens: u64,
    /// Parts of `input_tokens`: read from and written to the provider's prompt cache.
    pub cached_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    /// Times an answer was refused and the next model asked.
    pub escalations: u64,
    /// Answers served from the result cache (they cost nothing).
    pub cache_hits: u64,
    pub budget: Option<BudgetReport>,
    pub estimate: EstimateReport,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: u64,
    pub duration_secs: u64,
    pub output_file: String,
    pub error_file: String,
    /// True when any line came from the built-in simulated provider.
    pub simulated: bool,
    /// Lines written vs the ledger's total; they differ only if results went missing.
    pub lines_written: u64,
    /// What the ledger counted as spent: every paid call, including a second run's call
    /// whose answer was not kept (a stalled worker's), which no line carries.
    pub ledger_cost_usd: f64,
    /// True only when the files, the ledger and this manifest agree: a line per item, and
    /// the ledger's spend equal to the sum of the lines' costs.
    pub reconciled: bool,
}
