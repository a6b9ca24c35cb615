//! The batch record: what the ledger keeps about one batch.

use serde::{Deserialize, Serialize};

/// Batch states, named as in OpenAI's Batch API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchState {
    Validating,
    InProgress,
    Finalizing,
    Completed,
    Failed,
    Expired,
    Cancelling,
    Cancelled,
}

impl BatchState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Expired | Self::Cancelled
        )
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// Money is kept in nano-dollars so that sums across workers are exact.
pub const NANOS_PER_USD: f64 = 1e9;

pub fn usd_to_nanos(usd: f64) -> i64 {
    (usd * NANOS_PER_USD).round() as i64
}

pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// Everything the ledger knows about a batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    pub id: String,
    pub state: BatchState,
    pub counts: RequestCounts,
    /// Spend so far, in nano-dollars.
    pub spent_nanos: i64,
    pub budget_usd: Option<f64>,
    pub task: Option<String>,
    /// The storage URL under which `batches/<id>/` lives.
    pub storage_url: String,
    pub created_at: u64,
    pub in_progress_at: Option<u64>,
    pub finalizing_at: Option<u64>,
    pub completed_at: Option<u64>,
    /// Set by `batchyard cancel`: queued items end as `cancelled`, the batch as `cancelled`.
    #[serde(default)]
    pub cancel_requested_at: Option<u64>,
    /// Worst-case cost of calls in flight, in nano-dollars (budgeted batches only).
    #[serde(default)]
    pub reserved_nanos: i64,
    /// Set when a reservation was denied: the batch stops dispatching until a new budget.
    #[serde(default)]
    pub budget_exhausted_at: Option<u64>,
    /// `--no-cache`: this batch neither reads nor writes the result cache.
    #[serde(default)]
    pub no_cache: bool,
    /// When the completion window ends (Unix seconds): items still queued then end as
    /// `expired` without a call, and the batch as `expired`. `None`: no window.
    #[serde(default)]
    pub expires_at: Option<u64>,
    /// While `submit` stages the input (state `validating`) and publishes it: who may still
    /// finish it, and which input it was. `None` once every job is visible to workers.
    #[serde(default)]
    pub submit: Option<SubmitProgress>,
    /// Why the batch ended `failed` as a whole (OpenAI's `errors`), e.g. `submit_interrupted`.
    #[serde(default)]
    pub failure: Option<BatchFailure>,
    /// `--deadline` (Unix seconds): the batch may use provider batch APIs (the offload lane)
    /// as long as it still finishes by then. `None`: real-time only.
    #[serde(default)]
    pub deadline_at: Option<u64>,
    /// When the offload lane handed everything left to real-time (the deadline came near,
    /// or offload stopped): from then on no item is parked.
    #[serde(default)]
    pub realtime_at: Option<u64>,
    /// Where the batch's end is announced (a signed webhook), if anywhere.
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Whose batch it is: fair share is by tenant weight. Records from before tenants read
    /// as the `default` tenant's.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Strict priority, before any fair share (already capped by the tenant's allowance).
    #[serde(default)]
    pub priority: crate::priority::Priority,
}

/// The tenant every batch without one belongs to.
pub const DEFAULT_TENANT: &str = "default";

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

/// A submission under way: the batch becomes visible to workers only once it is sealed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitProgress {
    /// The submitter renews this (Unix ms); once it lapses a sweeper ends or finishes the
    /// submission, so a submit killed without a word never leaves the batch waiting.
    pub lease_until_ms: u64,
    /// SHA-256 over the validated items, so `--resume` refuses an input that changed.
    pub fingerprint: String,
    /// Sealed: every job is staged and the batch only waits for them to be moved to the
    /// queue, which anyone may finish.
    pub sealed: bool,
    /// Where the jobs wait before they are published, when not under the batch's own id (a
    /// replay stages under `<batch>.<replay>`, so two racing replays never touch each
    /// other's jobs).
    #[serde(default)]
    pub staging: Option<String>,
}

impl SubmitProgress {
    /// The staging id of `batch_id`'s jobs.
    pub fn staging_id<'a>(&'a self, batch_id: &'a str) -> &'a str {
        self.staging.as_deref().unwrap_or(batch_id)
    }
}

/// A whole-batch failure, with a typed code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchFailure {
    pub code: String,
    pub message: String,
}

/// Batch-level failure codes.
pub mod failure_codes {
    pub use crate::codes::{RESULT_LOST, SUBMIT_INTERRUPTED};
}

impl BatchRecord {
    /// A batch of `total` items that nothing has happened to yet (`validating`, no spend, no
    /// budget, window or cache opt-out); set the rest with struct update syntax.
    pub fn new(id: String, total: u64, storage_url: String, created_at: u64) -> Self {
        Self {
            id,
            state: BatchState::Validating,
            counts: RequestCounts {
                total,
                completed: 0,
                failed: 0,
            },
            spent_nanos: 0,
            budget_usd: None,
            task: None,
            storage_url,
            created_at,
            in_progress_at: None,
            finalizing_at: None,
            completed_at: None,
            cancel_requested_at: None,
            reserved_nanos: 0,
            budget_exhausted_at: None,
            no_cache: false,
            expires_at: None,
            submit: None,
            failure: None,
            deadline_at: None,
            realtime_at: None,
            notify_url: None,
            tenant: default_tenant(),
            priority: crate::priority::Priority::NORMAL,
        }
    }

    /// Whether items of this batch may still be parked for a provider batch.
    pub fn offloading(&self) -> bool {
        self.deadline_at.is_some() && self.realtime_at.is_none()
    }

    pub fn cost_usd(&self) -> f64 {
        nanos_to_usd(self.spent_nanos)
    }

    pub fn settled(&self) -> u64 {
        self.counts.completed + self.counts.failed
    }

    /// True once the completion window has ended at `now` (Unix seconds).
    pub fn is_expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
