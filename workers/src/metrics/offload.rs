//! The offload lane's metrics: items by lane and provider batches by phase, summed over the
//! batches this process leads (one leader per batch, so a sum over workers counts each batch
//! once), and provider batches created, by model. No per-batch label: `status` and the API
//! show each batch.

use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};

/// Items of the active deadline batches this worker leads, by `lane` (`realtime`,
/// `offloaded`, `waiting`).
pub const OFFLOAD_ITEMS: &str = "batchyard_offload_items";
/// Provider batches not yet ingested of the batches this worker leads, by `state`
/// (`creating`, `running`, `cancelling`).
pub const PROVIDER_BATCHES: &str = "batchyard_provider_batches";
/// Provider batches sent, by model.
pub const PROVIDER_BATCHES_CREATED: &str = "batchyard_provider_batches_created_total";

pub(super) fn describe() {
    describe_gauge!(
        OFFLOAD_ITEMS,
        Unit::Count,
        "Items of the deadline batches this worker leads, by lane (realtime, offloaded, waiting)"
    );
    describe_gauge!(
        PROVIDER_BATCHES,
        Unit::Count,
        "Open provider batches of the deadline batches this worker leads, by state"
    );
    describe_counter!(
        PROVIDER_BATCHES_CREATED,
        Unit::Count,
        "Provider batches sent to a batch API, by model"
    );
}

/// The lanes and the open provider batches, summed over the batches led at this tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LaneTotals {
    pub realtime: u64,
    pub offloaded: u64,
    pub waiting: u64,
    pub creating: u64,
    pub running: u64,
    pub cancelling: u64,
}

/// Sets [`OFFLOAD_ITEMS`] and [`PROVIDER_BATCHES`].
pub fn lanes(t: LaneTotals) {
    for (lane, n) in [
        ("realtime", t.realtime),
        ("offloaded", t.offloaded),
        ("waiting", t.waiting),
    ] {
        gauge!(OFFLOAD_ITEMS, "lane" => lane).set(n as f64);
    }
    for (state, n) in [
        ("creating", t.creating),
        ("running", t.running),
        ("cancelling", t.cancelling),
    ] {
        gauge!(PROVIDER_BATCHES, "state" => state).set(n as f64);
    }
}

/// One provider batch was sent for `model`.
pub fn provider_batch_created(model: &str) {
    counter!(PROVIDER_BATCHES_CREATED, "model" => model.to_string()).increment(1);
}
