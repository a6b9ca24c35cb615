//! Result segments: the outcomes of a batch, many to an object.
//!
//! A worker gathers the outcomes its slots produce and writes them together as one JSONL
//! object, `batches/<id>/segments/<writer>-<seq>.jsonl` (see [`crate::keys::segment`]), one
//! [`Record`] a line; a job is acked only once the segment holding its outcome is written.
//! Objects are written whole, so a segment is either all there or not at all.
//!
//! One job can have more than one record: an attempt whose worker died after its segment was
//! written and before the ledger settled it is run again, and a replay (`batchyard retry`)
//! runs failures again. Of a job's records the one with the highest [`Record::rank`] (written
//! last) is its outcome. A later attempt only writes when the ledger has not settled the job
//! (a reclaimed job whose settlement is in looks before it runs), so the record written last
//! is the attempt the ledger settled.
//!
//! Batches written before segments existed keep one `results/<job>.json` per item; they are
//! read too ([`read`]), ranked below every segment record of the same job.
//!
//! - [`read`]: listing and reading a batch's outcomes, in parallel; the [`read::Index`] that
//!   picks each job's one outcome.

pub mod read;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::outcome::OutputLine;
use crate::storage::ResultStore;

/// One outcome in a segment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub job_id: String,
    /// The job's number in its batch (the ledger's settlement bit).
    pub seq: u64,
    /// When this attempt's outcome was written (unix milliseconds).
    pub at_ms: u64,
    /// Deliveries of the attempt (1 unless it was reclaimed).
    #[serde(default)]
    pub deliveries: u64,
    /// The job's attempt number (runs again after a transient failure count up).
    #[serde(default)]
    pub attempt: u32,
    pub line: OutputLine,
}

impl Record {
    pub fn new(job_id: &str, seq: u64, deliveries: u64, attempt: u32, line: OutputLine) -> Self {
        Self {
            job_id: job_id.to_owned(),
            seq,
            at_ms: now_ms(),
            deliveries,
            attempt,
            line,
        }
    }

    /// The order of a job's records: later written first, then more deliveries, then a
    /// higher attempt. Never 0 (0 means "no record" in the index).
    pub fn rank(&self) -> u64 {
        let at = self.at_ms & ((1 << 44) - 1);
        let deliveries = self.deliveries.min(0xfff);
        let attempt = u64::from(self.attempt.min(0xff));
        ((at << 20) | (deliveries << 8) | attempt).max(1)
    }

    /// The record as one JSONL line, newline included.
    pub fn encode(&self) -> serde_json::Result<Vec<u8>> {
        let mut bytes = crate::jsonl::to_line(self)?;
        bytes.push(b'\n');
        Ok(bytes)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Writes one segment of already encoded records (each a line, see [`Record::encode`]).
pub async fn write(
    store: &ResultStore,
    batch_id: &str,
    writer: &str,
    seq: u64,
    body: Bytes,
) -> Result<(), StoreError> {
    let path = store.path_of(&crate::keys::segment(batch_id, writer, seq));
    store.put(&path, body).await
}

/// Writes `records` as one segment named by `writer` and `seq` (steps that end many items
/// at once: a cancel's drain, results found lost, invalid input lines).
pub async fn write_records(
    store: &ResultStore,
    batch_id: &str,
    writer: &str,
    seq: u64,
    records: &[Record],
) -> Result<(), StoreError> {
    let path = crate::keys::segment(batch_id, writer, seq);
    let mut body = Vec::new();
    for record in records {
        let line = record.encode().map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            message: e.to_string(),
        })?;
        body.extend_from_slice(&line);
    }
    write(store, batch_id, writer, seq, Bytes::from(body)).await
}

/// A fresh writer name: unique per process and start, safe in a path.
pub fn writer_name(role: &str) -> String {
    format!(
        "{role}-{}",
        ulid::Ulid::new().to_string().to_ascii_lowercase()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::outcome::{Extension, codes};

    #[test]
    fn later_records_rank_higher_and_round_trip() {
        let line = OutputLine::failure("j", "c", codes::TRANSIENT, "x", Extension::default());
        let mut a = Record::new("j", 3, 1, 0, line.clone());
        let mut b = a.clone();
        b.deliveries = 2;
        assert!(b.rank() > a.rank());
        b.at_ms = a.at_ms - 1;
        assert!(b.rank() < a.rank(), "the time written comes first");
        a.at_ms = 0;
        a.deliveries = 0;
        assert_eq!(a.rank(), 1, "never 0");
        let back: Record = serde_json::from_slice(&b.encode().unwrap()).unwrap();
        assert_eq!((back.seq, back.rank()), (3, b.rank()));
        assert_eq!(back.line, line);
    }
}
