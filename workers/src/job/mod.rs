//! One job from claim to ack.
//!
//! - [`pool`]: the generic worker: claim, run with bounded concurrency (apalis), drain; it
//!   knows nothing of what a job does.
//! - [`runner`]: the job body: decide (cancelled, expired, out of budget, already stored), run
//!   the cascade, store the outcome, settle, ack; finalize when the batch is done.
//! - `cascade`: one job's walk down its plan, owned by the runner: for each candidate the
//!   result cache, a budget reservation, the guarded call, the checks, escalation.
//! - [`budget`]: fail-closed budgets: reserve a candidate's worst case, then settle to the
//!   actual spend.
//! - [`cache`]: the content-addressed result cache across batches.
//! - [`segments`]: group commit: the process's one writer of result segments, shared by its
//!   slots; a job is acked only once the segment holding its outcome is written.
//!
//! May use every wing below it: `finalize`, `call`, `route`, `metrics`, `catalog`, `provider`.
pub mod budget;
pub mod cache;
mod cascade;
pub mod pool;
pub mod runner;
pub mod segments;

pub use runner::{JobRunner, RunnerOptions};
