//! # batchyard-workers: what a worker does with a job
//!
//! - [`pool`]: the generic worker: claim, run with bounded concurrency (apalis), drain.
//! - [`runner`]: the job body: route, call with retries, store the outcome, settle, ack.
//! - [`cascade`]: one job's walk down its plan: cache, budget reservation, call, checks,
//!   escalation.
//! - [`finalize`]: the one finalizer per batch: `output.jsonl`, `errors.jsonl`, `manifest.json`.
//! - [`catalog`]: models (prices, tiers, context) and tasks (templates, constraints).
//! - [`router`]: the cheapest adequate models for a job, in order of expected cost.
//! - [`adequacy`]: learned pass probabilities per model, task and length bucket (Beta
//!   posteriors shared through Redis, Thompson sampling).
//! - [`tokens`]: prompt token estimates (tiktoken per model family, calibrated fallback).
//! - [`cache`]: the content-addressed result cache across batches.
//! - [`provider`]: the provider trait's enum dispatch: `simulated`, `openai`.
//! - [`retry`]: the one retry module: backoff with full jitter, provider hints honoured.
//! - [`limiter`]: shared RPM/TPM admission across all workers (Redis) or in process.
//! - [`health`]: shared model health: circuit breaker with a half-open probe, operator pause,
//!   retry budget (in memory or through Redis).
//! - [`metrics`]: Prometheus metric names and the one-line recording calls; the sampler of
//!   queue depth and batch ETAs.
//! - [`validate`]: checks on a task's outputs (JSON schema, regex, length, finish reason,
//!   refusals, a config-only command), compiled once from config.
pub mod adequacy;
pub mod cache;
pub mod call;
pub mod cascade;
pub mod catalog;
pub mod finalize;
pub mod health;
pub mod limiter;
pub mod metrics;
pub mod pool;
pub mod provider;
pub mod retry;
pub mod router;
pub mod runner;
pub mod tokens;
pub mod validate;
