//! # batchyard-workers: what a worker does with a job
//!
//! The crate is nine wings. Each wing's `mod.rs` says what it holds and what it may use;
//! imports point down this list only (a wing uses the wings below it, never one above):
//!
//! - [`notify`]: webhooks: each ended batch announced by a signed POST, at least once.
//! - [`offload`]: the offload lane: a batch with a deadline sends its items through the
//!   providers' batch APIs at the batch price, in waves, and switches to real-time in time.
//! - [`job`]: one job from claim to ack: the generic worker [`job::pool`], the job body
//!   [`job::runner`] and the cascade it owns (cache, budget reservation, guarded call, checks,
//!   escalation), fail-closed budgets [`job::budget`] and the result cache [`job::cache`].
//! - [`finalize`]: the one finalizer per batch: `output.jsonl`, `errors.jsonl`, `manifest.json`,
//!   and the sweep that finishes what stopped workers left.
//! - [`call`]: one model call as the cluster allows it: [`call::guards`], the one provider
//!   retry module [`call::retry`], the shared rate limiter [`call::limiter`] and model health
//!   [`call::health`] (breaker, pause, retry budget).
//! - [`route`]: which models a job may run on, cheapest adequate first: [`route::router`] and
//!   the learned pass rates [`route::adequacy`].
//! - [`metrics`]: Prometheus metric names and the one-line recording calls; the sampler of
//!   queue depth and batch ETAs.
//! - [`catalog`]: models (prices, tiers, context, their provider clients) and tasks
//!   (templates, constraints), with prompt token estimates [`catalog::tokens`] and the compiled
//!   output checks [`catalog::validate`].
//! - [`provider`]: the provider boundary, an enum over `simulated`, `openai` and `anthropic`
//!   with their shared HTTP handling.
//!
//! Retries with backoff are built in exactly one place, `batchyard_jobs::retry`; the provider
//! side of it (hints, per-model retry budget) is [`call::retry`].
pub mod call;
pub mod catalog;
pub mod finalize;
pub mod job;
pub mod metrics;
pub mod notify;
pub mod offload;
pub mod provider;
pub mod route;
