//! What the offload lane keeps per batch, in the object store beside the batch's files: its
//! provider batches (`offload/state.json`) and the job ids each holds (`offload/<key>.jobs`).
//! Only the lease holder writes them; any worker that takes the lease over reads them back, so
//! a provider batch outlives the worker that made it.

use batchyard_jobs::error::StoreError;
use batchyard_jobs::keys;
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Where one provider batch stands, as far as the lane knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Recorded before the provider was asked: it may or may not exist there.
    Creating,
    Running,
    /// Cancel asked (the deadline came near, or the batch was cancelled).
    Cancelling,
    /// Ended and ingested: every item went back to the queue.
    Done,
}

/// One provider batch of the lane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProviderBatch {
    /// batchyard's name for it: `w<wave>-<model>-<n>`; also its tag at the provider.
    pub key: String,
    /// The model key it runs.
    pub model: String,
    /// The provider's id, once known.
    pub remote_id: Option<String>,
    pub phase: Phase,
    pub items: u64,
    /// Unix seconds when it was recorded.
    pub created_at: u64,
    /// How it ended (`completed`, `expired`, `cancelled`, `failed: <code>`), once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<String>,
    /// Its items were given back to run real-time before it ended: whatever it still answers
    /// is paid for and unused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub given_back: bool,
    /// Its prompt tokens, its share of the model's enqueued-token quota.
    #[serde(default)]
    pub tokens: u64,
    /// The most its answers can cost (what a budget holds for it once its items are given
    /// to real-time before it ended).
    #[serde(default)]
    pub worst_nanos: i64,
    /// Its share may be in the model's enqueued-token account (set before it is sent, so a
    /// worker stopped in between leaves a share the next lease holder takes out).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// While `Creating` with no id: the provider batches that could be this one (a provider
    /// that keeps no tag), each checked by its results once it has ended.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<String>,
}

/// The tag a provider batch carries at the provider (OpenAI's metadata, Gemini's display name,
/// Bedrock's job name), by which a worker taking over finds one whose id was never recorded:
/// its key and the batch id's random tail, so two batches sending to one model at once never
/// take each other's.
pub fn remote_tag(batch_id: &str, key: &str) -> String {
    let tail: String = batch_id
        .chars()
        .rev()
        .take(10)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{tail}-{key}")
}

/// The lane's state of one batch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LaneState {
    /// Waves cut so far.
    pub waves: u64,
    pub provider_batches: Vec<ProviderBatch>,
}

impl LaneState {
    /// Provider batches not yet ingested.
    pub fn open(&self) -> impl Iterator<Item = &ProviderBatch> {
        self.provider_batches
            .iter()
            .filter(|pb| pb.phase != Phase::Done)
    }
}

pub async fn load(store: &ResultStore, batch_id: &str) -> Result<LaneState, StoreError> {
    let path = store.path_of(&keys::offload_state(batch_id));
    match store.get(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
            path: path.to_string(),
            message: e.to_string(),
        }),
        Err(StoreError::NotFound { .. }) => Ok(LaneState::default()),
        Err(e) => Err(e),
    }
}

pub async fn save(
    store: &ResultStore,
    batch_id: &str,
    state: &LaneState,
) -> Result<(), StoreError> {
    let path = store.path_of(&keys::offload_state(batch_id));
    let bytes = serde_json::to_vec(state).map_err(|e| StoreError::Corrupt {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    store.put(&path, Bytes::from(bytes)).await
}

pub async fn save_jobs(
    store: &ResultStore,
    batch_id: &str,
    key: &str,
    job_ids: &[String],
) -> Result<(), StoreError> {
    let path = store.path_of(&keys::offload_jobs(batch_id, key));
    let mut text = job_ids.join("\n");
    text.push('\n');
    store.put(&path, Bytes::from(text)).await
}

pub async fn load_jobs(
    store: &ResultStore,
    batch_id: &str,
    key: &str,
) -> Result<Vec<String>, StoreError> {
    let path = store.path_of(&keys::offload_jobs(batch_id, key));
    match store.get(&path).await {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()),
        Err(StoreError::NotFound { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn two_batches_waves_on_one_model_carry_different_tags() {
        let a = remote_tag("batch_01m935s3ae1317n44dtfqk9nyx", "w1-small-0");
        let b = remote_tag("batch_01m935s3ae1317n44dtfqk9nyz", "w1-small-0");
        assert_eq!(a, "4dtfqk9nyx-w1-small-0");
        assert_ne!(a, b);
        assert!(a.ends_with("-w1-small-0"));
    }
}
