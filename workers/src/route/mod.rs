//! Which models a job may run on, in order of expected cost.
//!
//! - [`router`]: hard constraints, cost estimates and the cascade plan for one job.
//! - [`adequacy`]: learned pass probabilities per model, task and length bucket (Beta
//!   posteriors shared through Redis, Thompson sampling).
//!
//! May use: `catalog`. Used by: `job`.
pub mod adequacy;
pub mod router;

pub use router::Router;
