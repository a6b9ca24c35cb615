//! One model call as the cluster allows it.
//!
//! - [`guards`]: the call path: the model must be healthy, the limiter must admit it, and
//!   in-place retries stay within the retry policy and the model's retry budget.
//! - [`retry`]: the provider side of the one retry module: which errors retry in place, and
//!   the provider's own hints honoured.
//! - [`limiter`]: shared RPM/TPM admission across all workers (Redis) or in process.
//! - [`health`]: shared model health: circuit breaker with a half-open probe, operator pause,
//!   retry budget (in memory or through Redis).
//!
//! May use: `catalog`, `provider`, `metrics`. Used by: `job`.
pub mod guards;
pub mod health;
pub mod limiter;
pub mod retry;

pub use guards::{Guards, ModelOutcome};
