//! The offload lane: a batch with a deadline buys its answers through the providers' batch
//! APIs, at the batch price, in waves, and still finishes by the deadline.
//!
//! The queue and the cascade do most of it. A worker that runs an item of such a batch parks
//! it (out of the stream) for its cheapest batch-capable candidate instead of calling. This
//! wing's [`Coordinator`], which every worker process runs, leads each such batch in turn
//! (one lease holder at a time) and on each tick:
//! 1. ingests ended provider batches: each answer goes back into the queue inside its job,
//!    where the cascade judges it as it would a call's (a failed check escalates, and the
//!    next model's turn is the next wave); items with no answer go back to be parked again;
//! 2. near the deadline, hands everything to real-time: provider batches are cancelled and
//!    every parked item runs now;
//! 3. cuts the next wave: parked items grouped by model, each group big enough sent as
//!    provider batches, the rest run real-time.
//!
//! - `state`: the provider batches of a batch, kept in the object store.
//! - `tick`: one batch's step (the three above).
//! - `ingest`: one ended provider batch's results back into the queue.
//! - `money`: cutting a group by the provider's limits and the model's enqueued-token quota,
//!   and what a budget holds for a provider batch whose items went real-time.
//! - [`view`]: what a user sees of one batch's lane (items per lane, provider batches, time
//!   left), read-only, for `status`, `watch`, the API, the dashboard and `/metrics`.
//! - [`rate`]: how long the rest of a batch would take real-time (declared limits, the
//!   measured throughput, or the configured rate), which the switch is judged on.
//! - `recover`: a provider batch whose id was never recorded, found again (or known unsent).
//!
//! May use: `catalog`, `provider`, `metrics` and the jobs crate. Used by the binary.

mod ingest;
mod money;
pub mod rate;
mod recover;
pub mod state;
mod tick;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, now_secs};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::queue::Queue;
use batchyard_jobs::storage::ResultStore;
use tokio_util::sync::CancellationToken;

use crate::catalog::Catalog;
use crate::catalog::tokens::TokenEstimator;
use crate::metrics::throughput::RealtimeMeter;

/// `[offload]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OffloadOptions {
    /// `mode = "auto"`: batches with a deadline use the lane; `"off"`: none does.
    pub enabled: bool,
    /// A smaller group for one model runs real-time: a provider batch is not worth it.
    pub min_items: usize,
    /// How often provider batches are polled and waves cut.
    pub poll_interval: Duration,
    /// Real-time takes over this long before the deadline would be missed.
    pub switch_margin: Duration,
    /// The most items in one provider batch (OpenAI takes 50,000).
    pub max_items: usize,
    /// What real-time is assumed to do, in items a second, when working out how long the
    /// rest of a batch would take: the conservative default stands until measured.
    pub realtime_items_per_sec: f64,
    /// Tests only (`BATCHYARD_TEST_CRASH_AT`): the process aborts at this step, as a
    /// `kill -9` there would, so crash recovery can be tested at each step.
    pub crash_at: Option<CrashPoint>,
}

/// The steps of the lane a test can crash the process at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// A provider batch is recorded, not yet sent.
    BeforeCreate,
    /// Sent, its id not yet recorded.
    AfterCreate,
    /// Its first answer is back in the queue, the rest not.
    MidIngest,
}

impl CrashPoint {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "before_create" => Some(Self::BeforeCreate),
            "after_create" => Some(Self::AfterCreate),
            "mid_ingest" => Some(Self::MidIngest),
            _ => None,
        }
    }
}

impl OffloadOptions {
    /// Aborts the process here when a test asked for it.
    pub(crate) fn crash_point(&self, at: CrashPoint) {
        if self.crash_at == Some(at) {
            tracing::error!(?at, "BATCHYARD_TEST_CRASH_AT: aborting");
            std::process::abort();
        }
    }
}

impl Default for OffloadOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            min_items: 100,
            poll_interval: Duration::from_secs(30),
            switch_margin: Duration::from_secs(600),
            max_items: 50_000,
            realtime_items_per_sec: 2.0,
            crash_at: None,
        }
    }
}

/// A group of parked items: its batch and the model it waits for.
type GroupKey = (String, String);

/// Leads the offload lane of each batch this process may lead. Cheap to clone.
#[derive(Clone)]
pub struct Coordinator {
    queue: Arc<dyn Queue>,
    ledger: Arc<dyn Ledger>,
    store: ResultStore,
    catalog: Arc<Catalog>,
    options: OffloadOptions,
    owner: String,
    /// Each group's size at the last tick and for how many ticks it has not changed, by
    /// batch and model: a wave is cut once its group stopped growing.
    seen: Arc<std::sync::Mutex<HashMap<GroupKey, (usize, u32)>>>,
    /// The real-time throughput measured across the workers.
    meter: Arc<RealtimeMeter>,
    /// What the real-time time of each batch was last judged on, so a change is logged once.
    rate_basis: Arc<std::sync::Mutex<HashMap<String, &'static str>>>,
    /// Ended batches whose provider batches have all ended too: nothing left to poll.
    quiet: Arc<std::sync::Mutex<HashSet<String>>>,
    tokens: Arc<TokenEstimator>,
}

impl Coordinator {
    pub fn new(
        queue: Arc<dyn Queue>,
        ledger: Arc<dyn Ledger>,
        store: ResultStore,
        catalog: Arc<Catalog>,
        options: OffloadOptions,
        owner: String,
    ) -> Self {
        Self {
            queue,
            ledger,
            store,
            catalog,
            options,
            owner,
            seen: Arc::default(),
            meter: Arc::new(RealtimeMeter::in_process(1)),
            rate_basis: Arc::default(),
            quiet: Arc::default(),
            tokens: Arc::default(),
        }
    }

    /// Judges the deadline on the throughput `meter` measures (shared with the runner).
    pub fn with_meter(mut self, meter: Arc<RealtimeMeter>) -> Self {
        self.meter = meter;
        self
    }

    /// Ticks every batch with a deadline that is still running, until `cancel`.
    pub async fn run(&self, cancel: CancellationToken) {
        if !self.options.enabled {
            return;
        }
        loop {
            self.tick_all().await;
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
    }

    /// One tick over every batch this process may lead now.
    pub async fn tick_all(&self) {
        // Every worker's counts reach the fleet's window, whether it leads a batch or not.
        self.meter.push().await;
        if let Ok(mut seen) = self.rate_basis.lock()
            && seen.len() > 1_000
        {
            seen.clear();
        }
        let batches = match self.ledger.list(500).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "offload: cannot list batches; trying again next tick");
                return;
            }
        };
        let mut totals = crate::metrics::offload::LaneTotals::default();
        for record in batches {
            // An ended batch is still ticked while provider batches it sent are open: their
            // answers are paid for, so they are cancelled, polled and counted to the end.
            let quiet = record.state.is_terminal()
                && self.quiet.lock().is_ok_and(|q| q.contains(&record.id));
            if record.deadline_at.is_none() || quiet {
                continue;
            }
            match self.hold(&record.id).await {
                Ok(true) => {
                    let span = tracing::info_span!("offload", batch_id = %record.id);
                    tracing::Instrument::instrument(self.tick(&record), span).await;
                    self.count(&record, &mut totals).await;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(batch_id = %record.id, error = %e, "offload: cannot take the lease")
                }
            }
        }
        crate::metrics::offload::lanes(totals);
    }

    /// Adds a batch this process leads to the lane metrics, read as `status` reads it.
    async fn count(&self, record: &BatchRecord, totals: &mut crate::metrics::offload::LaneTotals) {
        let Some(view) = view::lane_view(&self.store, &*self.queue, record, now_secs()).await
        else {
            return;
        };
        if let Some(l) = view.lanes {
            totals.realtime += l.realtime;
            totals.offloaded += l.offloaded;
            totals.waiting += l.waiting;
        }
        for pb in &view.provider_batches {
            match pb.phase {
                "creating" => totals.creating += 1,
                "running" => totals.running += 1,
                "cancelling" => totals.cancelling += 1,
                _ => {}
            }
        }
    }

    /// Takes or renews this process's lease on a batch's lane. Long steps renew it as they
    /// go, so a lease only lapses when its holder stopped.
    pub(crate) async fn hold(
        &self,
        batch_id: &str,
    ) -> Result<bool, batchyard_jobs::error::QueueError> {
        let lease = self.options.poll_interval * 3 + Duration::from_secs(10);
        self.ledger
            .try_lock_offload(batch_id, &self.owner, lease)
            .await
    }
}
