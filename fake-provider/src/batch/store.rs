//! What the batch APIs hold, in memory and under one byte cap: uploaded and result files,
//! OpenAI batches, Anthropic message batches (each item's answer is computed when the batch is
//! created and revealed as its clock says; an OpenAI batch's answers move into its result files
//! when it ends, so deleting those frees them), and the counts `/stats` reports.

use std::collections::BTreeMap;

use axum::body::Bytes;
use serde_json::{Value, json};

use super::answer::Answer;
use super::clock::{Phase, Timeline};

/// One request of a batch, with the answer the real-time endpoint gave it.
#[derive(Debug, Clone)]
pub struct Item {
    pub custom_id: String,
    pub answer: Answer,
}

/// An OpenAI file: an uploaded batch input, or a batch's output or error file.
#[derive(Debug, Clone)]
pub struct File {
    /// Its place in upload order, for the list.
    pub seq: u64,
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub created_at: u64,
    pub content: Bytes,
}

impl File {
    pub fn json(&self) -> Value {
        json!({
            "id": self.id, "object": "file", "bytes": self.content.len(),
            "created_at": self.created_at, "filename": self.filename,
            "purpose": self.purpose, "status": "processed", "status_details": null,
            "expires_at": null,
        })
    }
}

#[derive(Debug, Clone)]
pub struct OpenAiBatch {
    pub id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Value,
    pub model: Option<String>,
    pub timeline: Timeline,
    pub items: Vec<Item>,
    /// Validation (or quota) errors: `errors.data[]`; the batch fails when validating ends.
    pub errors: Vec<Value>,
    /// Estimated input tokens, by model, for the enqueued-token quota.
    pub tokens: BTreeMap<String, u64>,
    /// Set once the batch has ended and its files were written.
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub files_written: bool,
    pub bytes: u64,
}

#[derive(Debug, Clone)]
pub struct MessageBatch {
    pub id: String,
    pub timeline: Timeline,
    pub items: Vec<Item>,
    pub tokens: BTreeMap<String, u64>,
    pub bytes: u64,
}

/// A Gemini batch (`batchGenerateContent` with inline requests): a message batch of one
/// model, with the display name it was given.
#[derive(Debug, Clone)]
pub struct GeminiBatch {
    pub batch: MessageBatch,
    pub model: String,
    pub display_name: String,
}

/// What `/stats` counts beyond the current states.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub openai_created: u64,
    pub openai_cancelled: u64,
    pub anthropic_created: u64,
    pub anthropic_cancelled: u64,
    /// Anthropic creates refused with 429 by the enqueued-token limit.
    pub anthropic_refused: u64,
    pub anthropic_deleted: u64,
    pub gemini_created: u64,
    pub gemini_cancelled: u64,
    pub gemini_deleted: u64,
    pub files_uploaded: u64,
    pub files_deleted: u64,
}

#[derive(Debug, Default)]
pub struct Store {
    pub files: BTreeMap<String, File>,
    /// In creation order (lists show them newest first).
    pub openai: Vec<OpenAiBatch>,
    pub anthropic: Vec<MessageBatch>,
    pub gemini: Vec<GeminiBatch>,
    pub bytes: u64,
    pub counts: Counts,
    next: u64,
}

impl Store {
    /// A fresh number for an id.
    pub fn next(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Stores a file (its bytes already reserved, or admitted with its batch): its id.
    pub fn add_file(&mut self, filename: &str, purpose: &str, content: Bytes) -> String {
        let seq = self.next();
        let id = format!("file-fake{seq}");
        let file = File {
            seq,
            id: id.clone(),
            filename: filename.to_owned(),
            purpose: purpose.to_owned(),
            created_at: super::now_ms() / 1000,
            content,
        };
        self.files.insert(id.clone(), file);
        id
    }

    /// Takes `bytes` of the cap, or says no.
    pub fn reserve(&mut self, bytes: u64, max: u64) -> bool {
        if self.bytes.saturating_add(bytes) > max {
            return false;
        }
        self.bytes += bytes;
        true
    }

    pub fn release(&mut self, bytes: u64) {
        self.bytes = self.bytes.saturating_sub(bytes);
    }

    /// Estimated input tokens of `model` in OpenAI batches that have not ended at `now`.
    pub fn openai_enqueued(&self, model: &str, now: u64) -> u64 {
        self.openai
            .iter()
            .filter(|b| b.timeline.at(now).0.ended_at().is_none() && !b.timeline.failed)
            .filter_map(|b| b.tokens.get(model))
            .sum()
    }

    pub fn anthropic_enqueued(&self, model: &str, now: u64) -> u64 {
        self.anthropic
            .iter()
            .filter(|b| b.timeline.at(now).0.ended_at().is_none())
            .filter_map(|b| b.tokens.get(model))
            .sum()
    }

    pub fn openai_index(&self, id: &str) -> Option<usize> {
        self.openai.iter().position(|b| b.id == id)
    }

    pub fn anthropic_index(&self, id: &str) -> Option<usize> {
        self.anthropic.iter().position(|b| b.id == id)
    }

    pub fn gemini_index(&self, id: &str) -> Option<usize> {
        self.gemini.iter().position(|b| b.batch.id == id)
    }

    /// `/stats`' `batches` object at `now`.
    pub fn stats(&self, now: u64) -> Value {
        let mut openai: BTreeMap<&str, u64> = BTreeMap::new();
        for b in &self.openai {
            *openai.entry(b.timeline.at(now).0.name()).or_default() += 1;
        }
        let mut anthropic: BTreeMap<&str, u64> = BTreeMap::new();
        for b in &self.anthropic {
            *anthropic
                .entry(processing_status(b.timeline.at(now).0))
                .or_default() += 1;
        }
        let mut all = openai.clone();
        for (status, n) in &anthropic {
            *all.entry(status).or_default() += n;
        }
        let c = self.counts;
        json!({
            "created": c.openai_created + c.anthropic_created + c.gemini_created,
            "by_status": all,
            "cancelled": c.openai_cancelled + c.anthropic_cancelled + c.gemini_cancelled,
            "files_uploaded": c.files_uploaded,
            "files_deleted": c.files_deleted,
            "stored_bytes": self.bytes,
            "openai": {"created": c.openai_created, "by_status": openai,
                "cancelled": c.openai_cancelled},
            "anthropic": {"created": c.anthropic_created, "by_status": anthropic,
                "cancelled": c.anthropic_cancelled, "refused": c.anthropic_refused,
                "deleted": c.anthropic_deleted},
            "gemini": {"created": c.gemini_created, "cancelled": c.gemini_cancelled,
                "deleted": c.gemini_deleted},
        })
    }
}

/// Anthropic's `processing_status` for a phase.
pub fn processing_status(phase: Phase) -> &'static str {
    match phase {
        Phase::Cancelling => "canceling",
        p if p.ended_at().is_some() => "ended",
        _ => "in_progress",
    }
}

/// The items' indexes in a stable shuffle: results come back in no particular order, as the
/// real APIs say, so clients that assume input order fail here too.
pub fn shuffled(items: &[Item]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_cached_key(|i| {
        (crate::skill::hash01("batch-order", &items[*i].custom_id) * (1u64 << 53) as f64) as u64
    });
    order
}

/// `s` as a JSON string.
pub fn quoted(s: &str) -> String {
    Value::from(s).to_string()
}
