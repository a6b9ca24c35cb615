//! What a user sees of one batch's lane: how many items are in each lane, each provider batch,
//! the deadline and the time left. Read-only and cheap (one read of `offload/state.json`, one
//! count of the parked jobs), so `status`, `watch`, the API, the dashboard and `/metrics` can
//! all show it. A store or Redis that does not answer makes the counts unknown, never the
//! caller fail.

use std::time::Duration;

use batchyard_jobs::batch::BatchRecord;
use batchyard_jobs::queue::Queue;
use batchyard_jobs::storage::ResultStore;
use serde::Serialize;

use super::state::{self, Phase};
use crate::catalog::{Catalog, ModelSpec};
use crate::provider::batch::BatchApi;

/// One read may take this long: a view waits no longer for a store or Redis that hangs.
const READ_TIMEOUT: Duration = Duration::from_secs(3);

/// One batch's lane, as `status --json` and the API show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LaneView {
    /// Unix seconds.
    pub deadline_at: u64,
    /// Until the deadline, 0 once it passed.
    pub seconds_left: u64,
    /// When the lane handed everything left to real-time (Unix seconds), if it did.
    pub realtime_at: Option<u64>,
    /// Items per lane; `None` when the store or Redis did not answer (see `unknown`).
    pub lanes: Option<Lanes>,
    /// Waves cut so far; `None` when the lane's state could not be read.
    pub waves: Option<u64>,
    /// Oldest first; empty when the lane's state could not be read.
    pub provider_batches: Vec<ProviderBatchView>,
    /// Why some of the above is unknown, e.g. the store did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unknown: Option<String>,
}

/// Items of a batch by where they are now. The four add up to the batch's total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Lanes {
    /// Queued, running or being judged real-time (an ingested answer is judged here too).
    pub realtime: u64,
    /// In provider batches that have not ended.
    pub offloaded: u64,
    /// Parked for the next wave.
    pub waiting: u64,
    /// Settled: completed or failed.
    pub done: u64,
}

/// One provider batch, as shown.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProviderBatchView {
    /// batchyard's name for it (`w<wave>-<model>-<n>`).
    pub key: String,
    pub model: String,
    /// The provider's id, once known.
    pub provider_id: Option<String>,
    /// `creating`, `running`, `cancelling` or `done`.
    pub phase: &'static str,
    pub items: u64,
    /// How it ended (`completed`, `expired`, `cancelled`, `failed: <code>`), once it has.
    pub ended: Option<String>,
    /// Its items were handed to real-time before it ended.
    pub given_back: bool,
    pub created_at: u64,
    pub age_secs: u64,
}

impl LaneView {
    /// `12 real-time, 300 offloaded, 0 waiting, 88 done`, or `lanes unknown (why)`.
    pub fn lanes_text(&self) -> String {
        match (&self.lanes, &self.unknown) {
            (Some(l), _) => format!(
                "{} real-time, {} offloaded, {} waiting for the next wave, {} done",
                l.realtime, l.offloaded, l.waiting, l.done
            ),
            (None, Some(why)) => format!("unknown ({why})"),
            (None, None) => "unknown".into(),
        }
    }

    /// `in 3h12m` or `passed`, with `real-time since …` once switched.
    pub fn left_text(&self) -> String {
        let left = if self.seconds_left == 0 {
            "passed".to_owned()
        } else {
            format!("{} left", clock(self.seconds_left))
        };
        match self.realtime_at {
            Some(_) => format!("{left}; switched to real-time"),
            None => left,
        }
    }
}

/// `1h02m`, `3m05s`, `42s`, `2d03h`.
pub fn clock(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86_400 => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d{:02}h", secs / 86_400, (secs % 86_400) / 3600),
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Creating => "creating",
        Phase::Running => "running",
        Phase::Cancelling => "cancelling",
        Phase::Done => "done",
    }
}

/// The lane of `record`, or `None` when the batch has no deadline (it never used the lane).
pub async fn lane_view(
    store: &ResultStore,
    queue: &dyn Queue,
    record: &BatchRecord,
    now: u64,
) -> Option<LaneView> {
    let deadline_at = record.deadline_at?;
    let (lane, parked) = tokio::join!(
        tokio::time::timeout(READ_TIMEOUT, state::load(store, &record.id)),
        tokio::time::timeout(READ_TIMEOUT, queue.parked_count(&record.id)),
    );
    let mut unknown = Vec::new();
    let lane = answer(
        lane,
        "the lane's state could not be read",
        "the store",
        &mut unknown,
    );
    let parked = answer(
        parked,
        "the parked items could not be counted",
        "redis",
        &mut unknown,
    );
    let lanes = match (&lane, parked) {
        (Some(lane), Some(parked)) => {
            // A given-back provider batch's items already run real-time.
            let in_open: u64 = lane
                .open()
                .filter(|pb| !pb.given_back)
                .map(|pb| pb.items)
                .sum();
            Some(split(record, parked, in_open))
        }
        _ => None,
    };
    let provider_batches = lane
        .as_ref()
        .map(|l| {
            l.provider_batches
                .iter()
                .map(|pb| ProviderBatchView {
                    key: pb.key.clone(),
                    model: pb.model.clone(),
                    provider_id: pb.remote_id.clone(),
                    phase: phase_name(pb.phase),
                    items: pb.items,
                    ended: pb.ended.clone(),
                    given_back: pb.given_back,
                    created_at: pb.created_at,
                    age_secs: now.saturating_sub(pb.created_at),
                })
                .collect()
        })
        .unwrap_or_default();
    Some(LaneView {
        deadline_at,
        seconds_left: deadline_at.saturating_sub(now),
        realtime_at: record.realtime_at,
        lanes,
        waves: lane.as_ref().map(|l| l.waves),
        provider_batches,
        unknown: (!unknown.is_empty()).then(|| unknown.join("; ")),
    })
}

/// A read's value, or `None` with why in `unknown`.
fn answer<T, E: std::fmt::Display>(
    read: Result<Result<T, E>, tokio::time::error::Elapsed>,
    failed: &str,
    service: &str,
    unknown: &mut Vec<String>,
) -> Option<T> {
    match read {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) => {
            unknown.push(format!("{failed}: {e}"));
            None
        }
        Err(_) => {
            unknown.push(format!("{service} did not answer in time"));
            None
        }
    }
}

/// Splits a batch's items: parked ones are offloaded (as many as open provider batches hold)
/// or waiting; what is neither parked nor settled runs real-time.
fn split(record: &BatchRecord, parked: u64, in_open: u64) -> Lanes {
    let done = record.settled();
    let offloaded = in_open.min(parked);
    Lanes {
        realtime: record
            .counts
            .total
            .saturating_sub(done)
            .saturating_sub(parked),
        offloaded,
        waiting: parked - offloaded,
        done,
    }
}

/// Whether `model` can go through its provider's batch API: it has batch prices and its
/// provider's kind has a batch API batchyard speaks. Any other model runs real-time even in
/// a batch with a deadline.
pub fn has_batch_api(catalog: &Catalog, model: &ModelSpec) -> bool {
    model.batch.is_some()
        && catalog
            .provider(&model.provider)
            .is_some_and(|p| BatchApi::of(p).is_some())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::batch::RequestCounts;

    fn record(total: u64, completed: u64, failed: u64) -> BatchRecord {
        BatchRecord {
            counts: RequestCounts {
                total,
                completed,
                failed,
            },
            deadline_at: Some(1_000),
            ..BatchRecord::new("batch_1".into(), total, "memory://".into(), 0)
        }
    }

    #[test]
    fn the_lanes_add_up_to_the_total() {
        let l = split(&record(100, 10, 5), 60, 40);
        assert_eq!(
            l,
            Lanes {
                realtime: 25,
                offloaded: 40,
                waiting: 20,
                done: 15
            }
        );
        // Items of an open provider batch already released (an ingest under way) are not
        // counted twice.
        let l = split(&record(10, 0, 0), 3, 8);
        assert_eq!((l.offloaded, l.waiting, l.realtime), (3, 0, 7));
    }

    #[test]
    fn clock_and_texts() {
        assert_eq!(clock(42), "42s");
        assert_eq!(clock(185), "3m05s");
        assert_eq!(clock(3720), "1h02m");
        assert_eq!(clock(90_000), "1d01h");
        let view = LaneView {
            deadline_at: 100,
            seconds_left: 0,
            realtime_at: Some(50),
            lanes: None,
            waves: None,
            provider_batches: Vec::new(),
            unknown: Some("redis did not answer in time".into()),
        };
        assert_eq!(view.left_text(), "passed; switched to real-time");
        assert_eq!(view.lanes_text(), "unknown (redis did not answer in time)");
    }

    #[tokio::test]
    async fn a_batch_without_a_deadline_has_no_lane_and_a_missing_state_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = ResultStore::open(&url, &Default::default()).unwrap();
        let queue = batchyard_jobs::queue::memory::MemoryQueue::new(Default::default());
        let mut r = record(4, 1, 0);
        r.deadline_at = None;
        assert!(lane_view(&store, &queue, &r, 10).await.is_none());
        r.deadline_at = Some(70);
        let view = lane_view(&store, &queue, &r, 10).await.unwrap();
        assert_eq!(view.seconds_left, 60);
        assert_eq!(
            view.lanes,
            Some(Lanes {
                realtime: 3,
                offloaded: 0,
                waiting: 0,
                done: 1
            })
        );
        assert!(view.provider_batches.is_empty() && view.unknown.is_none());
    }
}
