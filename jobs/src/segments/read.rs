//! Reading a batch's outcomes back: every segment (one listing, one GET each, a bounded
//! number at once) and every per-item `results/<job>.json` of a batch written before
//! segments existed, then the one outcome of each job.
//!
//! [`outcomes`] yields every record, legacy objects first; an [`Index`] fed all of them
//! knows each job's winner (the highest [`Record::rank`]; a legacy object loses to any segment
//! record of its job). A reader that writes as it goes (the finalizer) feeds the index in
//! the same pass and needs a second pass only when a job turned up twice
//! ([`Index::note`] says so); [`winners`] is that second pass.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};

use super::Record;
use crate::error::StoreError;
use crate::outcome::OutputLine;
use crate::storage::ResultStore;

/// Objects read at once.
pub const PARALLEL: usize = 16;
/// Seq numbers beyond a batch's item count that are still taken as sound (replays of
/// resubmitted items keep their numbers; anything further is a corrupt record).
const SEQ_SLACK: u64 = 1 << 20;

/// One outcome as read: a segment record, or a legacy per-item object (`seq` unknown,
/// rank 0).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub job_id: String,
    pub seq: Option<u64>,
    pub rank: u64,
    pub line: OutputLine,
}

fn corrupt(path: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

fn legacy(path: &str, bytes: &Bytes) -> Result<Outcome, StoreError> {
    let line: OutputLine = serde_json::from_slice(bytes).map_err(|e| corrupt(path, e))?;
    let job_id = path
        .rsplit('/')
        .next()
        .and_then(|name| name.strip_suffix(".json"))
        .unwrap_or_default()
        .to_owned();
    Ok(Outcome {
        job_id,
        seq: None,
        rank: 0,
        line,
    })
}

/// The records of one segment, in order.
pub fn parse_segment(path: &str, bytes: &Bytes) -> Result<Vec<Outcome>, StoreError> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|raw| {
            let record: Record = serde_json::from_slice(raw).map_err(|e| corrupt(path, e))?;
            Ok(Outcome {
                rank: record.rank(),
                job_id: record.job_id,
                seq: Some(record.seq),
                line: record.line,
            })
        })
        .collect()
}

/// Every outcome of the batch, legacy objects first, `parallel` objects read at once.
pub fn outcomes(
    store: &ResultStore,
    batch_id: &str,
    parallel: usize,
) -> BoxStream<'static, Result<Outcome, StoreError>> {
    let parallel = parallel.max(1);
    let (s1, s2) = (store.clone(), store.clone());
    let old = store
        .list(&store.results_dir(batch_id))
        .map(move |meta| {
            let store = s1.clone();
            async move {
                let path = meta?.location;
                let bytes = store.get(&path).await?;
                legacy(path.as_ref(), &bytes)
            }
        })
        .buffer_unordered(parallel);
    let segments = store
        .list(&store.path_of(&crate::keys::segments_dir(batch_id)))
        .map(move |meta| {
            let store = s2.clone();
            async move {
                let path = meta?.location;
                let bytes = store.get(&path).await?;
                parse_segment(path.as_ref(), &bytes)
            }
        })
        .buffer_unordered(parallel)
        .map_ok(|records| futures::stream::iter(records.into_iter().map(Ok)))
        .try_flatten();
    old.chain(segments).boxed()
}

/// Which record of each job is its outcome: the best rank per seq (a word per item), and the
/// job ids of legacy objects (only batches from before segments have any).
#[derive(Debug, Default)]
pub struct Index {
    best: Vec<u64>,
    legacy: HashSet<String>,
    superseded: HashSet<String>,
    duplicates: u64,
    limit: u64,
}

impl Index {
    /// An index for a batch of `items` items.
    pub fn new(items: u64) -> Self {
        Self {
            limit: items.saturating_add(SEQ_SLACK),
            ..Self::default()
        }
    }

    /// Notes one outcome; true when it is the first of its job seen (so far the winner).
    pub fn note(&mut self, o: &Outcome) -> Result<bool, StoreError> {
        let Some(seq) = o.seq else {
            let first = self.legacy.insert(o.job_id.clone());
            if !first {
                self.duplicates += 1;
            }
            return Ok(first);
        };
        if seq >= self.limit {
            return Err(corrupt(
                &o.job_id,
                format!("item number {seq} is beyond the batch"),
            ));
        }
        let at = usize::try_from(seq).map_err(|e| corrupt(&o.job_id, e))?;
        if self.best.len() <= at {
            self.best.resize(at + 1, 0);
        }
        let mut first = self.best[at] == 0;
        self.best[at] = self.best[at].max(o.rank);
        if !self.legacy.is_empty() && self.legacy.contains(&o.job_id) {
            // A legacy object read earlier, now beaten by a segment record of its job.
            self.superseded.insert(o.job_id.clone());
            first = false;
        }
        if !first {
            self.duplicates += 1;
        }
        Ok(first)
    }

    /// Records of a job seen more than once (its first may not be its outcome).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Whether the job has any outcome.
    pub fn holds(&self, seq: u64, job_id: &str) -> bool {
        usize::try_from(seq)
            .ok()
            .and_then(|i| self.best.get(i))
            .is_some_and(|b| *b != 0)
            || self.legacy.contains(job_id)
    }
}

/// Picks winners from a second pass over [`outcomes`]: each job once, its best record.
#[derive(Debug)]
pub struct Picker {
    index: Arc<Index>,
    written: Vec<u64>,
    legacy_written: HashSet<String>,
}

impl Picker {
    pub fn new(index: Arc<Index>) -> Self {
        Self {
            written: vec![0; index.best.len().div_ceil(64)],
            index,
            legacy_written: HashSet::new(),
        }
    }

    /// True for the one outcome of its job (the first of equal best ranks).
    pub fn accept(&mut self, o: &Outcome) -> bool {
        let Some(seq) = o.seq else {
            return !self.index.superseded.contains(&o.job_id)
                && self.legacy_written.insert(o.job_id.clone());
        };
        let Ok(at) = usize::try_from(seq) else {
            return false;
        };
        if self.index.best.get(at) != Some(&o.rank) {
            return false;
        }
        let (word, bit) = (at / 64, 1u64 << (at % 64));
        match self.written.get_mut(word) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            _ => false,
        }
    }
}

/// Each job's one outcome, given an index fed every outcome of the batch.
pub fn winners(
    store: &ResultStore,
    batch_id: &str,
    index: Arc<Index>,
    parallel: usize,
) -> BoxStream<'static, Result<Outcome, StoreError>> {
    let picker = Arc::new(Mutex::new(Picker::new(index)));
    outcomes(store, batch_id, parallel)
        .try_filter(move |o| {
            let keep = picker.lock().map(|mut p| p.accept(o)).unwrap_or(false);
            futures::future::ready(keep)
        })
        .boxed()
}

/// Reads every outcome once to build the index of a batch of `items` items.
pub async fn index(store: &ResultStore, batch_id: &str, items: u64) -> Result<Index, StoreError> {
    let mut index = Index::new(items);
    let mut all = outcomes(store, batch_id, PARALLEL);
    while let Some(o) = all.try_next().await? {
        index.note(&o)?;
    }
    Ok(index)
}

#[cfg(test)]
#[path = "read_tests.rs"]
mod tests;
