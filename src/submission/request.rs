//! What a submit is asked for, and what it answers.

use batchyard_jobs::batch::BatchRecord;

#[derive(Debug, Clone)]
pub struct SubmitRequest {
    pub input: String,
    pub task: Option<String>,
    pub budget_usd: Option<f64>,
    pub skip_invalid: bool,
    pub no_cache: bool,
    /// OpenAI's `completion_window`: items still queued when it ends are `expired`, not run.
    pub completion_window: Option<std::time::Duration>,
    /// Continue this batch's interrupted submit (same input) instead of starting a new one.
    pub resume: Option<String>,
    /// Of a folder, follow symbolic links whose targets stay inside it.
    pub follow_symlinks: bool,
    /// `--deadline`, in Unix seconds: the batch may use the offload lane until then.
    pub deadline_at: Option<u64>,
    /// `--notify`: where the batch's end is announced.
    pub notify_url: Option<String>,
    /// `--tenant` (default: `default`); an unknown one is refused.
    pub tenant: Option<String>,
    /// `--priority` (default: `normal`), capped by the tenant's `max_priority`.
    pub priority: Option<batchyard_jobs::priority::Priority>,
}

#[derive(Debug, Clone)]
pub struct Submitted {
    pub record: BatchRecord,
    pub invalid: u64,
    /// Set when the priority asked for was above the tenant's allowance and was lowered: the
    /// line a CLI prints to stderr.
    pub capped: Option<String>,
}
