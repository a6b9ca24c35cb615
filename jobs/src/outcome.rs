//! The output line: an OpenAI batch output line plus one `batchyard` extension object.
//! A result segment's record (`segments::Record::line`) holds exactly the line that ends up in
//! `output.jsonl` or `errors.jsonl`, so finalization is a plain concatenation.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Typed error codes of `errors.jsonl`, beyond the provider taxonomy (all codes live in
/// [`crate::codes`]).
pub use crate::codes;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutputLine {
    pub id: String,
    pub custom_id: String,
    pub response: Option<Response>,
    pub error: Option<LineError>,
    pub batchyard: Extension,
    /// The job itself, kept in a failure's stored outcome so `batchyard retry` can
    /// replay it; never written to `output.jsonl` or `errors.jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<crate::job::Job>>,
    /// What the settle of the run that stored this line adds to the ledger's spend (its cost
    /// not committed during the run), so whoever settles the item on that run's behalf (a
    /// reclaimer finding the line stored) counts it exactly once. Only in stored outcomes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settle_nanos: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status_code: u16,
    pub request_id: String,
    pub body: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LineError {
    pub code: String,
    pub message: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extension {
    /// The catalog key of the model that produced the accepted answer (or the last one tried).
    pub model: Option<String>,
    pub attempts: u32,
    pub escalations: u32,
    #[serde(serialize_with = "usd_in_nanos")]
    pub cost_usd: f64,
    pub input_tokens: u64,
    /// The part of `input_tokens` read from the provider's prompt cache (billed at the
    /// model's cached input price). Absent when 0, and 0 in lines written before it existed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_tokens: u64,
    /// The part of `input_tokens` written to the provider's prompt cache (billed at the
    /// model's cache write price). Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    /// Served from batchyard's result cache (not the provider's prompt cache).
    pub cached: bool,
    /// Present and true only for the built-in simulated provider.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub simulated: bool,
    /// The input line number, for invalid input and for tracing a result back to its source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Prompt tokens estimated before the calls (for the accepted or last model), to compare
    /// with `input_tokens`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub estimated_input_tokens: u64,
    /// Every model tried for this item, in order, with what became of its answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cascade: Vec<Step>,
    /// The answer that failed validation last, kept with a `validation_failed` error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_output: Option<String>,
}

/// Dollars as the ledger counts them, to the nano-dollar: a cost is tokens times a price per
/// million, and f64 writes that as 0.000018449999999999998 instead of 0.00001845.
fn usd_in_nanos<S: serde::Serializer>(usd: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(crate::batch::nanos_to_usd(crate::batch::usd_to_nanos(*usd)))
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One model's turn on an item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Step {
    pub model: String,
    /// `passed`, `failed_validation`, `truncated`, `content_filter`, `context_overflow`, or
    /// another provider error code.
    pub outcome: String,
    #[serde(serialize_with = "usd_in_nanos")]
    pub cost_usd: f64,
    pub input_tokens: u64,
    /// Parts of `input_tokens`: prompt-cache reads and writes (absent when 0).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_input_tokens: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    /// Served from batchyard's result cache.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cached: bool,
    /// The provider batch that answered, when the answer came through a batch API (billed
    /// at the model's batch price).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_batch: Option<String>,
}

impl Step {
    pub fn passed(&self) -> bool {
        self.outcome == step_outcomes::PASSED
    }
}

/// The `outcome` values of a [`Step`] that are not provider error codes.
pub mod step_outcomes {
    pub const PASSED: &str = "passed";
    pub const FAILED_VALIDATION: &str = "failed_validation";
    pub const TRUNCATED: &str = "truncated";
}

impl OutputLine {
    pub fn is_success(&self) -> bool {
        self.response.is_some() && self.error.is_none()
    }

    pub fn failure(
        job_id: &str,
        custom_id: &str,
        code: &str,
        message: impl Into<String>,
        batchyard: Extension,
    ) -> Self {
        Self {
            id: format!("batch_req_{job_id}"),
            custom_id: custom_id.to_string(),
            response: None,
            error: Some(LineError {
                code: code.to_string(),
                message: message.into(),
            }),
            batchyard,
            job: None,
            settle_nanos: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn prompt_cache_counts_are_left_out_when_0_and_default_when_absent() {
        let mut ext = Extension {
            model: Some("m".into()),
            input_tokens: 100,
            output_tokens: 5,
            cascade: vec![Step {
                model: "m".into(),
                outcome: step_outcomes::PASSED.into(),
                input_tokens: 100,
                output_tokens: 5,
                ..Step::default()
            }],
            ..Extension::default()
        };
        // An uncached line is written as it was before these fields existed.
        let plain = serde_json::to_value(&ext).unwrap();
        assert!(plain.get("cached_input_tokens").is_none(), "{plain}");
        assert!(plain.get("cache_write_input_tokens").is_none(), "{plain}");
        assert!(plain["cascade"][0].get("cached_input_tokens").is_none());
        // A line written before them reads back with zeros.
        let old: Extension = serde_json::from_value(plain).unwrap();
        assert_eq!(old, ext);

        ext.cached_input_tokens = 60;
        ext.cache_write_input_tokens = 40;
        ext.cascade[0].cached_input_tokens = 60;
        ext.cascade[0].cache_write_input_tokens = 40;
        let cached = serde_json::to_value(&ext).unwrap();
        assert_eq!(cached["cached_input_tokens"], 60);
        assert_eq!(cached["cache_write_input_tokens"], 40);
        assert_eq!(cached["cascade"][0]["cached_input_tokens"], 60);
        assert_eq!(serde_json::from_value::<Extension>(cached).unwrap(), ext);
    }
}
