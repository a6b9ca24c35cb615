//! A job: one item of a batch, as it travels through the queue.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// How the worker chooses a model for a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Route {
    /// `body.model` named a configured model: validated but never rerouted.
    Pinned { model: String },
    /// The router chooses among models adequate for this task.
    Task { task: String },
    /// The router chooses with no task constraints.
    Auto,
}

/// One item of a batch. Serialised as JSON into the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub batch_id: String,
    /// Derived from batch id and custom id, so a re-enqueue of the same item is the same job.
    pub job_id: String,
    /// Position of the item in the batch (0-based); indexes the ledger's settled bitmap.
    pub seq: u64,
    pub custom_id: String,
    /// An OpenAI chat completions request body, without routing decided yet.
    pub body: Map<String, Value>,
    pub route: Route,
    /// Job-level attempts so far (deliveries after a retry-later decision); 0 on first run.
    #[serde(default)]
    pub attempt: u32,
    /// The last job-level error, kept so a dead letter can name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What earlier runs of this item cost (a replay after a failure), so the item's line
    /// carries its whole spend.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub prior_cost_usd: f64,
    /// The answer a provider batch gave for this item (the offload lane): the cascade uses it
    /// in place of a call to that model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefetched: Option<Box<Prefetched>>,
    /// Models this item has already been sent to through a provider batch; its cascade does
    /// not offload to them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offloaded_to: Vec<String>,
    /// The offload lane gave this item back to run real-time from now on (its group was
    /// too small for a provider batch, or the deadline came near).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub realtime: bool,
    /// What the item's earlier waves recorded (its trail, tokens, escalations), carried so
    /// its line tells the whole story.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub carried: Option<Box<crate::outcome::Extension>>,
}

/// One item's outcome from a provider batch, as the offload lane hands it to the cascade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prefetched {
    /// The model key (`[models.<key>]`) the provider batch ran.
    pub model: String,
    /// The provider batch's id, for the item's trail.
    pub provider_batch: String,
    /// An OpenAI chat completion body, when the item succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion: Option<Value>,
    /// Why it did not (a provider error code and message), when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<(String, String)>,
}

impl Job {
    /// A job on its first run: nothing attempted, prefetched, offloaded or carried yet.
    pub fn first_run(
        batch_id: &str,
        job_id: String,
        seq: u64,
        custom_id: String,
        body: Map<String, Value>,
        route: Route,
    ) -> Self {
        Self {
            batch_id: batch_id.to_string(),
            job_id,
            seq,
            custom_id,
            body,
            route,
            attempt: 0,
            last_error: None,
            prior_cost_usd: 0.0,
            prefetched: None,
            offloaded_to: Vec::new(),
            realtime: false,
            carried: None,
        }
    }
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

/// The job id for an item: stable across re-submissions of the same batch, safe as an object key.
pub fn job_id_for(batch_id: &str, custom_id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(batch_id.as_bytes());
    hasher.update([0u8]);
    hasher.update(custom_id.as_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..12])
}

/// A fresh batch id, sortable by creation time.
pub fn new_batch_id() -> String {
    format!("batch_{}", ulid::Ulid::new().to_string().to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_stable_and_key_safe() {
        let a = job_id_for("b1", "../../etc/passwd");
        assert_eq!(a, job_id_for("b1", "../../etc/passwd"));
        assert_ne!(a, job_id_for("b2", "../../etc/passwd"));
        assert_eq!(a.len(), 24);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
