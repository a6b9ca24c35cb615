//! Every user-visible error code, defined once: the `error.code` of an `errors.jsonl` line
//! (item codes and the provider taxonomy), a batch's failure code, a dead letter's code and
//! the codes of a batch's input errors. Other modules name these constants, never the strings:
//! they are part of the output format, so each value stays byte-identical across releases.

// What became of an item, beyond the provider taxonomy.
pub const INVALID_INPUT: &str = "invalid_input";
pub const VALIDATION_FAILED: &str = "validation_failed";
pub const BUDGET_EXHAUSTED: &str = "budget_exhausted";
pub const CANCELLED: &str = "cancelled";
pub const EXPIRED: &str = "expired";
pub const WORKER_LOST: &str = "worker_lost";
pub const NO_ADEQUATE_MODEL: &str = "no_adequate_model";
/// The item's stored result went missing after it was settled (deleted from storage); as a
/// batch failure code, results of settled items went missing before the batch files were
/// written.
pub const RESULT_LOST: &str = "result_lost";
/// Every adequate model stayed cooling down (failing) through the item's attempts.
pub const MODEL_UNAVAILABLE: &str = "model_unavailable";
/// The item's only adequate models are paused (auth, quota, operator) and nothing can
/// resume them for this run.
pub const MODEL_PAUSED: &str = "model_paused";

// The provider taxonomy: what a provider call failed with.
pub const RATE_LIMITED: &str = "rate_limited";
pub const TRANSIENT: &str = "transient";
pub const CONTEXT_OVERFLOW: &str = "context_overflow";
pub const INVALID_REQUEST: &str = "invalid_request";
pub const AUTH: &str = "auth";
pub const QUOTA_EXHAUSTED: &str = "quota_exhausted";
pub const CONTENT_FILTER: &str = "content_filter";
pub const MALFORMED_RESPONSE: &str = "malformed_response";
pub const RESPONSE_TOO_LARGE: &str = "response_too_large";

// A batch's failure.
/// `submit` stopped before the whole input was staged; nothing of the batch ran.
pub const SUBMIT_INTERRUPTED: &str = "submit_interrupted";

// A dead letter no worker could decode.
pub const MALFORMED_JOB: &str = "malformed_job";

// A batch's input errors (the API's `errors` list).
/// The uploaded file as a whole could not be read as batch input.
pub const INVALID_FILE: &str = "invalid_file";

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are an output format: pin every value.
    #[test]
    fn codes_are_pinned() {
        let all = [
            (INVALID_INPUT, "invalid_input"),
            (VALIDATION_FAILED, "validation_failed"),
            (BUDGET_EXHAUSTED, "budget_exhausted"),
            (CANCELLED, "cancelled"),
            (EXPIRED, "expired"),
            (WORKER_LOST, "worker_lost"),
            (NO_ADEQUATE_MODEL, "no_adequate_model"),
            (RESULT_LOST, "result_lost"),
            (MODEL_UNAVAILABLE, "model_unavailable"),
            (MODEL_PAUSED, "model_paused"),
            (RATE_LIMITED, "rate_limited"),
            (TRANSIENT, "transient"),
            (CONTEXT_OVERFLOW, "context_overflow"),
            (INVALID_REQUEST, "invalid_request"),
            (AUTH, "auth"),
            (QUOTA_EXHAUSTED, "quota_exhausted"),
            (CONTENT_FILTER, "content_filter"),
            (MALFORMED_RESPONSE, "malformed_response"),
            (RESPONSE_TOO_LARGE, "response_too_large"),
            (SUBMIT_INTERRUPTED, "submit_interrupted"),
            (MALFORMED_JOB, "malformed_job"),
            (INVALID_FILE, "invalid_file"),
        ];
        for (code, pinned) in all {
            assert_eq!(code, pinned);
        }
    }
}
