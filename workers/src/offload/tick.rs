//! One batch's step of the offload lane: bring every provider batch forward (ingesting the
//! ended ones), switch to real-time when the deadline comes near, then cut the next wave.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, now_secs};
use batchyard_jobs::job::Job;
use batchyard_jobs::retry::Retryable as _;
use serde_json::Value;

use super::money::{Weight, split};
use super::state::{self, LaneState, Phase, ProviderBatch};
use super::{Coordinator, CrashPoint};
use crate::provider::batch::{BatchApi, BatchItem, EndedAs, RemoteState};

/// The code a provider batch fails with when the model's enqueued-token quota is full
/// (OpenAI's; Anthropic refuses the create with a 429 instead).
const QUOTA_REFUSED: &str = "token_limit_exceeded";

/// Ticks a group must keep its size, while items of its batch still run, before its wave is
/// cut.
const STABLE_TICKS: u32 = 3;

/// The most parked jobs one tick looks at (a page at a time), so a tick stays bounded.
const MAX_SCAN: usize = 200_000;
const PAGE: usize = 1_000;

/// One provider batch about to be sent: its jobs, their requests and what each weighs.
struct Outgoing<'a> {
    jobs: &'a [Job],
    items: &'a [BatchItem],
    weights: &'a [Weight],
}

impl Coordinator {
    pub(super) async fn tick(&self, record: &BatchRecord) {
        let mut lane = match state::load(&self.store, &record.id).await {
            Ok(lane) => lane,
            Err(e) => {
                tracing::warn!(error = %e, "offload: cannot read the lane's state; trying again next tick");
                return;
            }
        };
        if record.state.is_terminal() {
            self.drain_ended(record, &mut lane).await;
            return;
        }
        for index in 0..lane.provider_batches.len() {
            self.advance(record, &mut lane, index).await;
        }
        self.release_shares(record, &mut lane).await;
        let realtime = record.realtime_at.is_some() || record.cancel_requested_at.is_some();
        let near = self.deadline_near(record, &lane).await;
        if !realtime && near {
            tracing::info!("offload: the deadline is near; the rest runs real-time");
            if let Err(e) = self.ledger.to_realtime(&record.id).await {
                tracing::warn!(error = %e, "offload: cannot record the switch to real-time");
                return;
            }
            self.cancel_open(&mut lane).await;
        }
        if record.cancel_requested_at.is_some() {
            self.cancel_open(&mut lane).await;
        }
        let switched = realtime || near;
        if switched {
            // A cancel can take the provider minutes: the items don't wait for it. Answers
            // that still come are ingested as paid and unused.
            for pb in lane
                .provider_batches
                .iter_mut()
                .filter(|pb| pb.phase != Phase::Done && !pb.given_back)
            {
                if self.may_give_back(record, pb).await {
                    self.give_back(record, pb, true).await;
                    pb.given_back = true;
                }
            }
        }
        self.cut(record, &mut lane, switched).await;
        if let Err(e) = state::save(&self.store, &record.id, &lane).await {
            tracing::warn!(error = %e, "offload: cannot save the lane's state");
        }
    }

    /// An ended batch's open provider batches: cancelled, polled and ingested (every answer
    /// counted as paid and unused) until none is open.
    async fn drain_ended(&self, record: &BatchRecord, lane: &mut LaneState) {
        if lane.open().next().is_none() {
            if let Ok(mut quiet) = self.quiet.lock() {
                quiet.insert(record.id.clone());
            }
            self.release_shares(record, lane).await;
            return;
        }
        self.cancel_open(lane).await;
        for pb in &mut lane.provider_batches {
            pb.given_back = true;
        }
        for index in 0..lane.provider_batches.len() {
            self.advance(record, lane, index).await;
        }
        self.release_shares(record, lane).await;
        if let Err(e) = state::save(&self.store, &record.id, lane).await {
            tracing::warn!(error = %e, "offload: cannot save the lane's state");
        }
    }

    /// Whether what is left would not finish by the deadline (less the margin) unless it
    /// starts real-time now (see [`super::rate`] for how long real-time takes).
    async fn deadline_near(&self, record: &BatchRecord, lane: &LaneState) -> bool {
        let Some(deadline) = record.deadline_at else {
            return false;
        };
        let needed = self.realtime_needed(record, lane).await;
        let needed =
            Duration::from_secs_f64(needed.secs.clamp(0.0, 1e12)) + self.options.switch_margin;
        now_secs() + needed.as_secs() >= deadline
    }

    fn api(&self, model: &str) -> Option<BatchApi<'_>> {
        let spec = self.catalog.model(model)?;
        spec.batch?;
        BatchApi::of(self.catalog.provider(&spec.provider)?)
    }

    /// Moves one provider batch forward: finds one whose create was cut off, polls the others,
    /// ingests an ended one.
    async fn advance(&self, record: &BatchRecord, lane: &mut LaneState, index: usize) {
        let pb = lane.provider_batches[index].clone();
        if pb.phase == Phase::Done {
            return;
        }
        let Some(api) = self.api(&pb.model) else {
            tracing::warn!(model = %pb.model, "offload: the model has no batch API any more; its items run again");
            self.give_back(record, &pb, false).await;
            lane.provider_batches[index].phase = Phase::Done;
            return;
        };
        let remote_id = match (&pb.remote_id, pb.phase) {
            (Some(id), _) => id.clone(),
            (None, _) => match self.recover(record, lane, index, &api).await {
                Some(id) => id,
                None => return,
            },
        };
        let status = match api.status(&remote_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(remote_id, error = %e, "offload: cannot read a provider batch");
                return;
            }
        };
        let RemoteState::Ended(ended) = status.state else {
            return;
        };
        let (label, ingest) = match &ended {
            EndedAs::Completed => ("completed".to_owned(), true),
            EndedAs::Expired => ("expired".to_owned(), true),
            EndedAs::Cancelled => ("cancelled".to_owned(), true),
            EndedAs::Failed { code, message } => {
                tracing::warn!(
                    remote_id,
                    code,
                    message,
                    "offload: the provider refused a batch"
                );
                (format!("failed: {code}"), false)
            }
        };
        if ingest {
            if let Err(e) = self.ingest(record, &pb, &api, &remote_id).await {
                tracing::warn!(remote_id, error = %e, "offload: cannot ingest yet; trying again next tick");
                return;
            }
        } else if let EndedAs::Failed { code, message } = &ended
            && code == QUOTA_REFUSED
        {
            // Not the items' fault: they wait, parked, for room in the quota (or the deadline).
            self.quota_refused(&pb, message).await;
            self.give_back(record, &pb, false).await;
        } else {
            self.give_back(record, &pb, true).await;
        }
        if let Err(e) = api.forget(&remote_id).await {
            tracing::debug!(remote_id, error = %e, "offload: cannot delete the provider's files");
        }
        let done = &mut lane.provider_batches[index];
        done.phase = Phase::Done;
        done.ended = Some(label);
    }

    async fn cancel_open(&self, lane: &mut LaneState) {
        for pb in &mut lane.provider_batches {
            if pb.phase != Phase::Running {
                continue;
            }
            let (Some(api), Some(id)) = (self.api(&pb.model), pb.remote_id.clone()) else {
                continue;
            };
            match api.cancel(&id).await {
                Ok(()) => pb.phase = Phase::Cancelling,
                Err(e) => tracing::warn!(remote_id = %id, error = %e, "offload: cannot cancel"),
            }
        }
    }

    /// Every parked job not in an open provider batch, grouped by the model it waits for.
    async fn unassigned(
        &self,
        record: &BatchRecord,
        lane: &LaneState,
    ) -> Option<BTreeMap<String, Vec<Job>>> {
        let mut assigned = HashSet::new();
        for pb in lane.open() {
            match state::load_jobs(&self.store, &record.id, &pb.key).await {
                Ok(ids) => assigned.extend(ids),
                Err(e) => {
                    tracing::warn!(error = %e, "offload: cannot read a provider batch's jobs");
                    return None;
                }
            }
        }
        let mut groups: BTreeMap<String, Vec<Job>> = BTreeMap::new();
        let mut cursor = 0;
        let mut scanned = 0;
        loop {
            let (page, next) = match self.queue.parked(&record.id, cursor, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "offload: cannot read the parked jobs");
                    return None;
                }
            };
            scanned += page.len();
            for job in page {
                if assigned.contains(&job.job_id) {
                    continue;
                }
                if let Some(model) = job.offloaded_to.last().cloned() {
                    groups.entry(model).or_default().push(job);
                }
            }
            cursor = next;
            if cursor == 0 || scanned >= MAX_SCAN {
                return Some(groups);
            }
        }
    }

    /// Sends each group big enough as provider batches; the rest, or everything once
    /// `realtime`, back to the queue to run real-time.
    async fn cut(&self, record: &BatchRecord, lane: &mut LaneState, realtime: bool) {
        let Some(groups) = self.unassigned(record, lane).await else {
            return;
        };
        // Items of the batch neither settled nor parked: still running, queued, or on their
        // way to be parked. While some are, a group may still grow.
        let parked: u64 = groups.values().map(|g| g.len() as u64).sum::<u64>()
            + lane
                .open()
                .filter(|pb| !pb.given_back)
                .map(|pb| pb.items)
                .sum::<u64>();
        let moving = record
            .counts
            .total
            .saturating_sub(record.counts.completed + record.counts.failed + parked);
        let mut cut_any = false;
        for (model, jobs) in groups {
            let seen_key = (record.id.clone(), model.clone());
            let stable_ticks = self.stable_ticks(&seen_key, jobs.len());
            let api = self.api(&model);
            // A group's wave is complete once every item of the batch is parked or settled,
            // or, while others still run (slow calls, a busy fleet), once the group has not
            // grown for a few ticks: a few poll intervals against a day's window, for one
            // provider batch instead of a few and no remainder sent real-time.
            let settled = moving == 0 || stable_ticks >= STABLE_TICKS;
            if realtime || api.is_none() || (jobs.len() < self.options.min_items && settled) {
                for job in jobs {
                    self.release_realtime(job).await;
                }
                continue;
            }
            let settled = settled || jobs.len() >= self.options.max_items;
            let (Some(api), true) = (api, jobs.len() >= self.options.min_items && settled) else {
                continue;
            };
            if !cut_any {
                lane.waves += 1;
                cut_any = true;
            }
            let Some(spec) = self.catalog.model(&model) else {
                continue;
            };
            let Ok(room) = self.room(spec).await else {
                continue;
            };
            let (jobs, items) = self.checked(&api, jobs, &model).await;
            let weights = self.weigh(spec, &items);
            let chunks = split(&weights, self.options.max_items, api.max_file_bytes(), room);
            for (n, range) in chunks.into_iter().enumerate() {
                if !matches!(self.hold(&record.id).await, Ok(true)) {
                    // Another worker leads the batch now: it sends the rest.
                    return;
                }
                let key = format!("w{}-{model}-{n}", lane.waves);
                let batch = Outgoing {
                    jobs: &jobs[range.clone()],
                    items: &items[range.clone()],
                    weights: &weights[range],
                };
                self.submit(record, lane, &api, &model, key, batch).await;
            }
            if let Ok(mut s) = self.seen.lock() {
                s.remove(&seen_key);
            }
        }
    }

    /// How many ticks in a row the group at `key` has had `len` items (0: it just changed).
    fn stable_ticks(&self, key: &(String, String), len: usize) -> u32 {
        let Ok(mut seen) = self.seen.lock() else {
            return 0;
        };
        let entry = seen.entry(key.clone()).or_insert((len, 0));
        if entry.0 == len {
            entry.1 = entry.1.saturating_add(1);
        } else {
            *entry = (len, 0);
        }
        entry.1
    }

    /// Records, then sends, one provider batch: a worker killed between the two leaves a
    /// `Creating` record that the next tick resolves by the tag, never a second paid batch.
    async fn submit(
        &self,
        record: &BatchRecord,
        lane: &mut LaneState,
        api: &BatchApi<'_>,
        model: &str,
        key: String,
        batch: Outgoing<'_>,
    ) {
        let ids: Vec<String> = batch.jobs.iter().map(|j| j.job_id.clone()).collect();
        if let Err(e) = state::save_jobs(&self.store, &record.id, &key, &ids).await {
            tracing::warn!(error = %e, "offload: cannot record a provider batch's jobs");
            return;
        }
        lane.provider_batches.push(ProviderBatch {
            key: key.clone(),
            model: model.to_owned(),
            remote_id: None,
            phase: Phase::Creating,
            items: ids.len() as u64,
            created_at: now_secs(),
            ended: None,
            given_back: false,
            tokens: batch.weights.iter().map(|w| w.tokens).sum(),
            worst_nanos: batch.weights.iter().map(|w| w.worst_nanos).sum(),
            shared: true,
            candidates: Vec::new(),
        });
        if let Err(e) = state::save(&self.store, &record.id, lane).await {
            tracing::warn!(error = %e, "offload: cannot record a provider batch; not sending it");
            lane.provider_batches.pop();
            return;
        }
        let Some(pb) = lane.provider_batches.last() else {
            return;
        };
        if !self.share(record, pb, Some(pb.tokens)).await {
            // Left `Creating`: the next tick finds no such batch and groups its items again.
            return;
        }
        let items = batch.items;
        self.options.crash_point(CrashPoint::BeforeCreate);
        let sent = api
            .submit(&state::remote_tag(&record.id, &key), items)
            .await;
        if sent.is_ok() {
            self.options.crash_point(CrashPoint::AfterCreate);
        }
        match sent {
            Ok(id) => {
                tracing::info!(key, remote_id = %id, items = items.len(), model, "offload: provider batch sent");
                crate::metrics::offload::provider_batch_created(model);
                if let Some(pb) = lane.provider_batches.last_mut() {
                    pb.remote_id = Some(id);
                    pb.phase = Phase::Running;
                }
            }
            // Refused outright (auth, billing, a bad request): nothing was created, and
            // trying again would be refused again. The items run real-time, where a paused
            // provider pauses for every worker and the cascade falls back.
            Err(e) if !e.is_retryable() => {
                tracing::warn!(key, error = %e, "offload: the provider refused a provider batch; its items run real-time");
                if let Some(pb) = lane.provider_batches.last_mut() {
                    pb.phase = Phase::Done;
                    pb.ended = Some(format!("refused: {}", e.kind.code()));
                }
                if let Some(pb) = lane.provider_batches.last().cloned() {
                    self.give_back(record, &pb, true).await;
                }
            }
            // Any other 4xx (a 429: Anthropic's enqueued-token quota) is the provider's answer
            // too: nothing was made, so there is nothing to look for (a provider without tags
            // would wait on look-alikes). The items are grouped again once there is room.
            Err(e) if e.status.is_some_and(|s| (400..500).contains(&s)) => {
                tracing::warn!(key, error = %e, "offload: the provider refused a provider batch for now");
                if let Some(pb) = lane.provider_batches.last_mut() {
                    pb.phase = Phase::Done;
                    pb.ended = Some(format!("refused: {}", e.kind.code()));
                }
                if let Some(pb) = lane.provider_batches.last().cloned()
                    && e.kind == crate::provider::ProviderErrorKind::RateLimited
                {
                    self.quota_refused(&pb, &e.message).await;
                }
            }
            // Left `Creating`: the next tick looks for it, and if the provider has none,
            // groups its items again.
            Err(e) => tracing::warn!(key, error = %e, "offload: cannot send a provider batch"),
        }
        if let Err(e) = state::save(&self.store, &record.id, lane).await {
            tracing::warn!(error = %e, "offload: cannot record a sent provider batch; the next tick finds it by its tag");
        }
    }

    /// The requests of `jobs` for `model`; a job whose request the API can't take runs
    /// real-time now (where it meets its own error) instead of failing its wave.
    async fn checked(
        &self,
        api: &BatchApi<'_>,
        jobs: Vec<Job>,
        model: &str,
    ) -> (Vec<Job>, Vec<BatchItem>) {
        let mut kept = Vec::with_capacity(jobs.len());
        let mut items = Vec::with_capacity(jobs.len());
        for job in jobs {
            let item = self.item(&job, model);
            match api.check(&item) {
                Ok(()) => {
                    kept.push(job);
                    items.push(item);
                }
                Err(e) => {
                    tracing::warn!(job_id = %job.job_id, error = %e, "offload: an item the batch API can't take runs real-time");
                    self.release_realtime(job).await;
                }
            }
        }
        (kept, items)
    }

    /// The request one job sends: its body for `model`, with the task's output allowance.
    fn item(&self, job: &Job, model: &str) -> BatchItem {
        let mut body = job.body.clone();
        if let Some(spec) = self.catalog.model(model) {
            body.insert("model".into(), Value::String(spec.name.clone()));
        }
        let allowance = match &job.route {
            batchyard_jobs::job::Route::Task { task } => {
                self.catalog.task(task).and_then(|t| t.max_output_tokens)
            }
            _ => None,
        };
        if let Some(n) = allowance
            && !body.contains_key("max_tokens")
            && !body.contains_key("max_completion_tokens")
        {
            body.insert("max_tokens".into(), Value::from(n));
        }
        BatchItem {
            custom_id: job.job_id.clone(),
            body,
        }
    }

    /// Puts a parked job back to run real-time from now on.
    pub(super) async fn release_realtime(&self, mut job: Job) {
        job.offloaded_to.pop();
        job.prefetched = None;
        job.realtime = true;
        if let Err(e) = self.queue.release(&job).await {
            tracing::warn!(job_id = %job.job_id, error = %e, "offload: cannot release a job; next tick");
        }
    }
}
