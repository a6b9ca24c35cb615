//! A batch record as the Redis hash holds it: the fields a new record is written with, the
//! fields read back into a `BatchRecord`, and which timestamp field a state stamps.

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

/// The hash fields a new record is written with: only what is set, so old readers and
/// defaults stay as they are.
pub(super) fn record_fields(record: &BatchRecord) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&'static str, String)> = vec![
        ("state", record.state.as_str().to_string()),
        ("total", record.counts.total.to_string()),
        ("completed", record.counts.completed.to_string()),
        ("failed", record.counts.failed.to_string()),
        ("spent_nanos", record.spent_nanos.to_string()),
        ("storage_url", record.storage_url.clone()),
        ("created_at", record.created_at.to_string()),
    ];
    if let Some(b) = record.budget_usd {
        fields.push(("budget_usd", b.to_string()));
    }
    if let Some(t) = &record.task {
        fields.push(("task", t.clone()));
    }
    if let Some(at) = record.in_progress_at {
        fields.push(("in_progress_at", at.to_string()));
    }
    if record.no_cache {
        fields.push(("no_cache", "1".to_string()));
    }
    if let Some(at) = record.budget_exhausted_at {
        fields.push(("budget_exhausted_at", at.to_string()));
    }
    if let Some(at) = record.expires_at {
        fields.push(("expires_at", at.to_string()));
    }
    if let Some(submit) = &record.submit {
        fields.push(("fingerprint", submit.fingerprint.clone()));
        fields.push(("submit_lease_until_ms", submit.lease_until_ms.to_string()));
        if submit.sealed {
            fields.push(("sealed", "1".to_string()));
        }
    }
    if let Some(failure) = &record.failure {
        fields.push(("failure_code", failure.code.clone()));
        fields.push(("failure_message", failure.message.clone()));
    }
    if let Some(at) = record.deadline_at {
        fields.push(("deadline_at", at.to_string()));
    }
    if let Some(url) = &record.notify_url {
        fields.push(("notify_url", url.clone()));
    }
    if let Some(at) = record.realtime_at {
        fields.push(("realtime_at", at.to_string()));
    }
    if record.tenant != crate::batch::DEFAULT_TENANT {
        fields.push(("tenant", record.tenant.clone()));
    }
    if record.priority != crate::priority::Priority::NORMAL {
        fields.push(("priority", record.priority.value().to_string()));
    }
    fields
}
