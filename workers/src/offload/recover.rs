//! A provider batch recorded `Creating` whose id was never recorded (its worker died between
//! the create and the save, or the create's answer was lost): found again at the provider, or
//! known never sent, without ever paying for its items twice.
//!
//! Where the provider keeps batchyard's tag (OpenAI's metadata) the answer is sure. Where it
//! keeps none (Anthropic), [`BatchApi::find`] can only name candidates (same item count, created
//! about then). None of them is adopted on sight: one could be another batchyard lane's or
//! someone else's, and adopting it would cancel or delete what is not ours. The lane keeps
//! the record `Creating` with its candidates (its items wait, as they would for their own
//! batch; near the deadline they go real-time like any other) and, as each candidate ends,
//! reads its first result lines: the custom ids are job ids, unique to one batchyard batch,
//! so the candidate whose ids are all this provider batch's jobs is it, and is adopted. A
//! candidate that proves someone else's is dropped and left alone. When none is left, the
//! create never reached the provider, and the items are grouped again.

use std::collections::HashSet;

use batchyard_jobs::batch::BatchRecord;

use super::Coordinator;
use super::state::{self, LaneState, Phase};
use crate::provider::batch::{BatchApi, Found, RemoteState};

/// Result lines read to tell whose a candidate is: job ids are 96-bit hashes, so one line is
/// proof enough; a few more guard against a stray line.
const CHECK_LINES: usize = 16;

impl Coordinator {
    /// The provider id of the `Creating` provider batch at `index`, once known; `None` while
    /// it is not (yet), or once it is known never to have been sent (then marked done, and its
    /// items are grouped again).
    pub(super) async fn recover(
        &self,
        record: &BatchRecord,
        lane: &mut LaneState,
        index: usize,
        api: &BatchApi<'_>,
    ) -> Option<String> {
        let pb = lane.provider_batches[index].clone();
        let mut candidates = pb.candidates.clone();
        if candidates.is_empty() {
            let tag = state::remote_tag(&record.id, &pb.key);
            match api.find(&tag, pb.created_at, pb.items).await {
                Ok(Found::Sure(id)) => {
                    let id = adopt(lane, index, id);
                    // Its items went real-time meanwhile: what it still answers is unused.
                    if pb.given_back && api.cancel(&id).await.is_ok() {
                        lane.provider_batches[index].phase = Phase::Cancelling;
                    }
                    return Some(id);
                }
                Ok(Found::None) => {
                    never_created(lane, index);
                    return None;
                }
                Ok(Found::Maybe(ids)) => {
                    // A batch this lane already holds is not this one.
                    let known: HashSet<&String> = lane
                        .provider_batches
                        .iter()
                        .filter_map(|b| b.remote_id.as_ref())
                        .collect();
                    candidates = ids.into_iter().filter(|id| !known.contains(id)).collect();
                    if candidates.is_empty() {
                        never_created(lane, index);
                        return None;
                    }
                    tracing::warn!(
                        key = %pb.key,
                        ?candidates,
                        "offload: a provider batch's id was not recorded and the provider keeps \
                         no tag; waiting for these candidates to end to tell by their results \
                         which one it is (none is cancelled meanwhile)"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "offload: cannot list provider batches");
                    return None;
                }
            }
        }
        let jobs: HashSet<String> = match state::load_jobs(&self.store, &record.id, &pb.key).await {
            Ok(ids) => ids.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "offload: cannot read a provider batch's jobs");
                return None;
            }
        };
        let mut left = Vec::new();
        for id in candidates {
            match self.whose(api, &id, &jobs).await {
                Some(true) => return Some(adopt(lane, index, id)),
                Some(false) => {
                    tracing::info!(key = %pb.key, candidate = %id, "offload: a candidate is another's batch; left alone");
                }
                None => left.push(id),
            }
        }
        if left.is_empty() {
            never_created(lane, index);
        } else {
            lane.provider_batches[index].candidates = left;
        }
        None
    }

    /// Whether the candidate `id` is the batch of `jobs`: `None` while it runs (or cannot be
    /// read now).
    async fn whose(&self, api: &BatchApi<'_>, id: &str, jobs: &HashSet<String>) -> Option<bool> {
        match api.status(id).await {
            Ok(s) if matches!(s.state, RemoteState::Ended(_)) => {}
            Ok(_) => return None,
            // Deleted: its owner ingested it, and only this lane would ingest its own.
            Err(e) if e.status == Some(404) => return Some(false),
            Err(e) => {
                tracing::warn!(candidate = id, error = %e, "offload: cannot read a candidate provider batch");
                return None;
            }
        }
        let mut lines = match api.results(id).await {
            Ok(lines) => lines,
            Err(e) => {
                tracing::warn!(candidate = id, error = %e, "offload: cannot read a candidate's results");
                return None;
            }
        };
        let mut seen = 0;
        while seen < CHECK_LINES {
            match lines.next().await {
                Ok(Some((custom_id, _))) if jobs.contains(&custom_id) => seen += 1,
                Ok(Some(_)) => return Some(false),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(candidate = id, error = %e, "offload: cannot read a candidate's results");
                    return None;
                }
            }
        }
        // No line at all: nothing in it was answered (all expired), so nothing was paid either;
        // the items run again whether or not it was this lane's.
        Some(seen > 0)
    }
}

fn adopt(lane: &mut LaneState, index: usize, id: String) -> String {
    let pb = &mut lane.provider_batches[index];
    tracing::info!(key = %pb.key, remote_id = %id, "offload: found a provider batch whose id was not recorded");
    pb.remote_id = Some(id.clone());
    pb.phase = Phase::Running;
    pb.candidates.clear();
    id
}

/// The create never reached the provider: the items are grouped again.
fn never_created(lane: &mut LaneState, index: usize) {
    let pb = &mut lane.provider_batches[index];
    pb.phase = Phase::Done;
    pb.ended = Some("never_created".into());
    pb.candidates.clear();
}
