//! A batch record as the Redis hash holds it: fields read back into a `BatchRecord`, and
//! which timestamp field a state stamps.

use std::collections::HashMap;

use crate::batch::{BatchFailure, BatchRecord, BatchState, RequestCounts, SubmitProgress};

pub(super) fn parse_record(id: &str, map: &HashMap<String, String>) -> Option<BatchRecord> {
    let num = |k: &str| map.get(k).and_then(|v| v.parse::<u64>().ok());
    let state = BatchState::parse(map.get("state")?)?;
    Some(BatchRecord {
        id: id.to_string(),
        state,
        counts: RequestCounts {
            total: num("total").unwrap_or(0),
            completed: num("completed").unwrap_or(0),
            failed: num("failed").unwrap_or(0),
        },
        spent_nanos: map
            .get("spent_nanos")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        budget_usd: map.get("budget_usd").and_then(|v| v.parse().ok()),
        task: map.get("task").cloned(),
        storage_url: map.get("storage_url").cloned().unwrap_or_default(),
        created_at: num("created_at").unwrap_or(0),
        in_progress_at: num("in_progress_at"),
        finalizing_at: num("finalizing_at"),
        completed_at: num("completed_at"),
        cancel_requested_at: num("cancel_requested_at"),
        reserved_nanos: map
            .get("reserved_nanos")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        budget_exhausted_at: num("budget_exhausted_at"),
        no_cache: map.get("no_cache").is_some_and(|v| v == "1"),
        expires_at: num("expires_at"),
        submit: map.get("fingerprint").map(|fingerprint| SubmitProgress {
            lease_until_ms: num("submit_lease_until_ms").unwrap_or(0),
            fingerprint: fingerprint.clone(),
            sealed: map.get("sealed").is_some_and(|v| v == "1"),
            staging: map.get("staging").cloned(),
        }),
        failure: map.get("failure_code").map(|code| BatchFailure {
            code: code.clone(),
            message: map.get("failure_message").cloned().unwrap_or_default(),
        }),
        deadline_at: num("deadline_at"),
        realtime_at: num("realtime_at"),
        notify_url: map.get("notify_url").cloned(),
        tenant: map
            .get("tenant")
            .cloned()
            .unwrap_or_else(|| crate::batch::DEFAULT_TENANT.to_string()),
        priority: map
            .get("priority")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
    })
}

pub(super) fn state_stamp_field(state: BatchState) -> Option<&'static str> {
    match state {
        BatchState::InProgress => Some("in_progress_at"),
        BatchState::Finalizing => Some("finalizing_at"),
        s if s.is_terminal() => Some("completed_at"),
        _ => None,
    }
}
