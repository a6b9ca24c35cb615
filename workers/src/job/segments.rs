//! Group commit of outcomes: one writer per worker process, shared by its slots, gathers the
//! outcomes they produce and writes them per batch as one segment
//! (`batches/<id>/segments/<writer>-<seq>.jsonl`, see `batchyard_jobs::segments`).
//!
//! A job hands its outcome over, frees its slot (the pool's [`Held`](super::pool::Held)) and
//! waits; it hears back only once the segment holding it is written, and only then settles and
//! acks. A segment that can't be written (after a few tries in place) fails every outcome in
//! it: none of those jobs is acked, each goes back to the queue. A segment is written when it
//! holds `max_items` outcomes, when its oldest waited `max_wait`, or at once when a quarter of
//! the jobs the pool may hold past their slots wait on the writer (so a slow write fills the
//! next segment, and the pool's bound is met only when the store falls behind). Memory stays
//! bounded: the pool holds at most [`HELD_PER_SLOT`] waiting jobs per slot, one outcome each.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use batchyard_jobs::error::StoreError;
use batchyard_jobs::retry::{FullJitter, retry};
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::pool::HELD_PER_SLOT;
use crate::call::retry::RetryPolicy;

/// Tries at writing a segment in place before its jobs go back to the queue.
const WRITE_TRIES: u32 = 3;
/// Segments written at once.
const IN_FLIGHT: usize = 4;

/// How outcomes are gathered into segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentOptions {
    /// Outcomes in one segment at most (`[worker] segment_max_items`).
    pub max_items: usize,
    /// How long an outcome waits for others at most (`[worker] segment_max_wait_ms`).
    pub max_wait: Duration,
    /// The worker's slots (its concurrency): once a quarter of the jobs its pool may hold
    /// past their slots wait, the segment is written without waiting longer.
    pub slots: usize,
    /// Tests only (`BATCHYARD_TEST_CRASH_AT=after_segment`): the process aborts once its first
    /// segment is written, before any job in it is settled or acked, as a `kill -9` there would.
    pub crash_after_write: bool,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        Self {
            max_items: 1000,
            max_wait: Duration::from_millis(200),
            slots: 64,
            crash_after_write: false,
        }
    }
}

impl SegmentOptions {
    fn ready_at(&self) -> usize {
        (self.slots.saturating_mul(HELD_PER_SLOT) / 4).clamp(1, self.max_items.max(1))
    }
}

struct Entry {
    batch_id: String,
    bytes: Vec<u8>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

#[derive(Default)]
struct Buffer {
    body: Vec<u8>,
    waiters: Vec<oneshot::Sender<Result<(), StoreError>>>,
    since: Option<Instant>,
}

/// The process's segment writer (see the module docs).
pub struct SegmentWriter {
    store: ResultStore,
    options: SegmentOptions,
    name: String,
    tx: OnceLock<mpsc::Sender<Entry>>,
}

impl SegmentWriter {
    pub fn new(store: ResultStore, options: SegmentOptions) -> Self {
        Self {
            store,
            options,
            name: batchyard_jobs::segments::writer_name("w"),
            tx: OnceLock::new(),
        }
    }

    /// Writes one encoded record (a JSONL line, see `Record::encode`) as part of a segment of
    /// `batch_id`; returns once that segment is written, or with the error that stopped it.
    pub async fn append(&self, batch_id: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        self.hand_over(batch_id, bytes).await.wait().await
    }

    /// Hands one encoded record over to be written as part of a segment of `batch_id`; the
    /// answer's [`Written::wait`] returns once that segment is written (or failed).
    pub async fn hand_over(&self, batch_id: &str, bytes: Vec<u8>) -> Written {
        let tx = self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::channel(self.options.slots.clamp(16, 4096));
            let collector = Collector {
                store: self.store.clone(),
                options: self.options,
                name: self.name.clone(),
                seq: 0,
                permits: Arc::new(Semaphore::new(IN_FLIGHT)),
                buffers: HashMap::new(),
                waiting: 0,
            };
            tokio::spawn(collector.run(rx));
            tx
        });
        let (done, written) = oneshot::channel();
        let entry = Entry {
            batch_id: batch_id.to_owned(),
            bytes,
            done,
        };
        match tx.send(entry).await {
            Ok(()) => Written(Some(written)),
            Err(_) => Written(None),
        }
    }
}

/// A record handed over to the [`SegmentWriter`], its segment not yet known to be written.
pub struct Written(Option<oneshot::Receiver<Result<(), StoreError>>>);

impl Written {
    /// Waits until the segment holding the record is written, or the error that stopped it.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            Some(written) => written.await.map_err(|_| stopped())?,
            None => Err(stopped()),
        }
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable {
        path: "segments".into(),
        message: "the segment writer stopped; restart the worker".into(),
    }
}

struct Collector {
    store: ResultStore,
    options: SegmentOptions,
    name: String,
    seq: u64,
    permits: Arc<Semaphore>,
    buffers: HashMap<String, Buffer>,
    /// Outcomes in `buffers`.
    waiting: usize,
}

impl Collector {
    async fn run(mut self, mut rx: mpsc::Receiver<Entry>) {
        loop {
            let oldest = self.buffers.values().filter_map(|b| b.since).min();
            let entry = match oldest {
                Some(since) => tokio::select! {
                    entry = rx.recv() => entry,
                    () = tokio::time::sleep_until(since + self.options.max_wait) => {
                        self.flush_due();
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(entry) = entry else {
                // The runner is gone: what waits is written, then the task ends.
                self.flush_all();
                return;
            };
            let full = {
                let buffer = self.buffers.entry(entry.batch_id.clone()).or_default();
                buffer.since.get_or_insert_with(Instant::now);
                buffer.body.extend_from_slice(&entry.bytes);
                buffer.waiters.push(entry.done);
                buffer.waiters.len() >= self.options.max_items
            };
            self.waiting += 1;
            if full {
                self.flush(&entry.batch_id);
            }
            if self.waiting >= self.options.ready_at() {
                self.flush_all();
            }
        }
    }

    fn flush_due(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.since.is_some_and(|s| now >= s + self.options.max_wait))
            .map(|(id, _)| id.clone())
            .collect();
        for batch_id in due {
            self.flush(&batch_id);
        }
    }

    fn flush_all(&mut self) {
        let ids: Vec<String> = self.buffers.keys().cloned().collect();
        for batch_id in ids {
            self.flush(&batch_id);
        }
    }

    fn flush(&mut self, batch_id: &str) {
        let Some(buffer) = self.buffers.remove(batch_id) else {
            return;
        };
        self.waiting = self.waiting.saturating_sub(buffer.waiters.len());
        self.seq += 1;
        let (store, name, seq) = (self.store.clone(), self.name.clone(), self.seq);
        let (batch_id, permits) = (batch_id.to_owned(), Arc::clone(&self.permits));
        let crash = self.options.crash_after_write;
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let body = Bytes::from(buffer.body);
            let written = write_patiently(&store, &batch_id, &name, seq, body).await;
            if crash && written.is_ok() {
                tracing::error!("BATCHYARD_TEST_CRASH_AT=after_segment: aborting");
                std::process::abort();
            }
            for waiter in buffer.waiters {
                let _ = waiter.send(written.clone());
            }
        });
    }
}

/// Writes a segment, a few tries in place: a short store hiccup should not send a segment's
/// worth of paid answers back to the queue.
async fn write_patiently(
    store: &ResultStore,
    batch_id: &str,
    name: &str,
    seq: u64,
    body: Bytes,
) -> Result<(), StoreError> {
    let policy = RetryPolicy {
        base: Duration::from_millis(250),
        cap: Duration::from_secs(1),
        max_attempts: WRITE_TRIES,
    };
    let put = || batchyard_jobs::segments::write(store, batch_id, name, seq, body.clone());
    let notify = |e: &StoreError, _| {
        tracing::debug!(error = %e, "cannot write the result segment yet; trying again");
    };
    retry(FullJitter::new(&policy), put, |_| true, |_| None, notify).await
}

#[cfg(test)]
#[path = "segments_tests.rs"]
mod tests;
