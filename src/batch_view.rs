//! The batch object printed by `--json` and `status BATCH_ID`.

use batchyard_jobs::batch::{BatchRecord, nanos_to_usd, usd_to_nanos};
use batchyard_jobs::storage::ResultStore;
use batchyard_workers::offload::view::LaneView;
use serde_json::{Value, json};

/// One JSON value as a line of output: U+2028/U+2029 escaped, so a reader that splits on
/// Unicode line breaks still sees one record.
pub fn json_line<T: serde::Serialize + ?Sized>(value: &T) -> String {
    batchyard_jobs::jsonl::to_line_string(value).unwrap_or_default()
}

pub fn batch_json(record: &BatchRecord, store: &ResultStore) -> Value {
    let finished = record.state.is_terminal();
    let location = |path| finished.then(|| store.display_location(&path));
    // OpenAI's shape for a whole-batch failure, e.g. `submit_interrupted`.
    let errors = record.failure.as_ref().map(|f| {
        json!({"object": "list", "data": [
            {"code": f.code, "message": f.message, "param": null, "line": null}
        ]})
    });
    // A submit under way: a `validating` batch is not visible to workers until sealed.
    let submit = record
        .submit
        .as_ref()
        .map(|s| json!({"sealed": s.sealed, "lease_until_ms": s.lease_until_ms}));
    json!({
        "id": record.id,
        "object": "batch",
        "status": record.state.as_str(),
        "request_counts": record.counts,
        "created_at": record.created_at,
        "in_progress_at": record.in_progress_at,
        "finalizing_at": record.finalizing_at,
        "completed_at": record.completed_at,
        "expires_at": record.expires_at,
        "output_file": location(store.output_path(&record.id)),
        "error_file": location(store.errors_path(&record.id)),
        "manifest": location(store.manifest_path(&record.id)),
        "cost_usd": record.cost_usd(),
        "budget_usd": record.budget_usd,
        // In nano-dollars, as the ledger counts: `b - cost` in f64 prints 0.0019616500000000002.
        "budget_remaining_usd": record.budget_usd.map(|b| {
            nanos_to_usd(usd_to_nanos(b).saturating_sub(record.spent_nanos).max(0))
        }),
        "budget_exhausted": record.budget_exhausted_at.is_some(),
        "reserved_usd": nanos_to_usd(record.reserved_nanos),
        "task": record.task,
        "tenant": record.tenant,
        "priority": record.priority,
        "errors": errors,
        "submit": submit,
    })
}

/// The offload lane of `record` (`None` without a deadline): counts that can't be read are
/// shown as unknown, never an error.
pub async fn lane(app: &crate::app::App, record: &BatchRecord) -> Option<LaneView> {
    batchyard_workers::offload::view::lane_view(
        &app.store,
        app.queue.as_ref(),
        record,
        batchyard_jobs::batch::now_secs(),
    )
    .await
}

/// A Unix time as RFC 3339 UTC, e.g. `2026-12-06T08:00:00Z`.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(
            || unix.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        )
}

/// The lane as text lines (`deadline`, `lanes`, one `provider` line per provider batch),
/// each starting with an 11-character label as `status` prints them.
pub fn lane_lines(view: &LaneView) -> Vec<String> {
    let mut out = vec![
        format!(
            "deadline   {} ({})",
            rfc3339(view.deadline_at),
            view.left_text()
        ),
        format!("lanes      {}", view.lanes_text()),
    ];
    for pb in &view.provider_batches {
        let ended = pb
            .ended
            .as_deref()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        let given = if pb.given_back {
            ", given back to real-time"
        } else {
            ""
        };
        out.push(format!(
            "provider   {} {} {} {}{ended}, {} items, {} old{given}",
            pb.key,
            pb.model,
            pb.provider_id.as_deref().unwrap_or("(no id yet)"),
            pb.phase,
            pb.items,
            batchyard_workers::offload::view::clock(pb.age_secs),
        ));
    }
    out
}

/// What queued items may be waiting for: models paused (by an operator, or for auth or
/// quota) or cooling down, each with what to do. Empty when every model is healthy or the
/// health store can't be read.
pub async fn waiting_for(app: &crate::app::App) -> Vec<String> {
    use batchyard_workers::call::health::ModelState;
    let mut out = Vec::new();
    for key in app.settings.catalog.model_keys() {
        match app.health.state(&key).await {
            Ok(ModelState::Paused { reason, .. }) => out.push(format!(
                "model {key} is paused ({reason}): its items wait; fix the cause, then `batchyard models resume {key}`"
            )),
            Ok(ModelState::CoolingDown { until_ms }) => out.push(format!(
                "model {key} is cooling down after failures ({}s left): its items wait or go to the next model",
                until_ms
                    .saturating_sub(batchyard_jobs::batch::now_millis())
                    .div_ceil(1000)
            )),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn printed_json_keeps_unicode_line_breaks_escaped() {
        let line = json_line(&json!({"task": "a\u{2028}b\u{2029}c"}));
        assert!(
            !line.contains('\u{2028}') && !line.contains('\u{2029}'),
            "{line}"
        );
        assert!(line.contains(r"a\u2028b\u2029c"), "{line}");
        let back: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(back["task"], "a\u{2028}b\u{2029}c");
    }
}
