//! A batch as the API shows it: OpenAI's batch object, merged from the ledger record and what
//! only the API knows (kept in `api/batches/<batch_id>.json`), and the metadata rules.

use std::collections::BTreeMap;

use batchyard_jobs::batch::{BatchRecord, BatchState, DEFAULT_TENANT};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::super::files::{ResultKind, result_file_id};
use super::super::http_error::ApiError;
use super::super::state::ApiState;

pub const ENDPOINT: &str = "/v1/chat/completions";
pub const WINDOW: &str = "24h";
pub const WINDOW_SECS: u64 = 24 * 3600;
/// OpenAI's metadata rules: at most 16 pairs, keys up to 64 and values up to 512 characters.
const MAX_METADATA_KEYS: usize = 16;
const MAX_KEY_CHARS: usize = 64;
const MAX_VALUE_CHARS: usize = 512;
/// One entry of a batch's `errors.data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchErrorItem {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u64>,
}

/// What the API keeps about a batch beside the ledger record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiBatch {
    pub id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<BTreeMap<String, String>>,
    pub created_at: u64,
    #[serde(default)]
    pub errors: Vec<BatchErrorItem>,
    /// The tenant whose token created it; records from before tenants are the `default`'s.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

fn record_path(state: &ApiState, batch_id: &str) -> object_store::path::Path {
    state
        .app
        .store
        .path_of(&batchyard_jobs::keys::api_batch(batch_id))
}

pub(in crate::api) async fn load_api(
    state: &ApiState,
    batch_id: &str,
) -> Result<Option<ApiBatch>, ApiError> {
    match state.app.store.get(&record_path(state, batch_id)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::internal("a batch's API record is not valid JSON", &e)),
        Err(batchyard_jobs::error::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The batch's `manifest.json`, or `None` when it has none (its input failed validation).
pub(in crate::api) async fn read_manifest(
    state: &ApiState,
    id: &str,
) -> Result<Option<Value>, ApiError> {
    let path = state.app.store.manifest_path(id);
    match state.app.store.get(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::internal("a batch manifest is not valid JSON", &e)),
        Err(batchyard_jobs::error::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn save_api(state: &ApiState, api: &ApiBatch) -> Result<(), ApiError> {
    let body = serde_json::to_vec(api)
        .map_err(|e| ApiError::internal("encoding a batch's API record failed", &e))?;
    Ok(state
        .app
        .store
        .put(&record_path(state, &api.id), Bytes::from(body))
        .await?)
}

/// Deletes the API's record of a batch that was refused before anything was enqueued. A
/// record left behind only shows as a batch that never started.
pub(super) async fn forget_api(state: &ApiState, batch_id: &str) {
    if let Err(e) = state.app.store.delete(&record_path(state, batch_id)).await {
        tracing::warn!(batch_id, error = %e, "cannot delete a refused batch's API record");
    }
}

/// The OpenAI batch object, merged from the ledger record and the API's own record.
pub fn batch_object(id: &str, record: Option<&BatchRecord>, api: Option<&ApiBatch>) -> Value {
    let state = record.map_or(BatchState::Validating, |r| r.state);
    let created_at = api
        .map(|a| a.created_at)
        .or(record.map(|r| r.created_at))
        .unwrap_or(0);
    let ended = record.and_then(|r| r.completed_at);
    let stamp = |s: BatchState| if state == s { ended } else { None };
    let counts = record.map(|r| r.counts).unwrap_or_default();
    let finished = state.is_terminal();
    let file = |kind, n: u64| (finished && n > 0).then(|| result_file_id(id, kind));
    // Refusals the API recorded, or a whole-batch failure from the ledger (a submit cut off,
    // results lost from storage).
    let errors = api
        .filter(|a| !a.errors.is_empty())
        .map(|a| json!({"object": "list", "data": a.errors}))
        .or_else(|| {
            record.and_then(|r| r.failure.as_ref()).map(|f| {
                json!({"object": "list", "data": [
                    {"code": f.code, "message": f.message, "param": null, "line": null}
                ]})
            })
        });
    json!({
        "id": id,
        "object": "batch",
        "endpoint": api.map_or(ENDPOINT, |a| a.endpoint.as_str()),
        "errors": errors,
        // The SDK requires a string. A batch submitted from the CLI (or a pipeline) was not
        // uploaded through `/v1/files`, so it gets an id that names its input, and that id is
        // never mistaken for an upload.
        "input_file_id": api.map_or_else(|| input_file_id(id), |a| a.input_file_id.clone()),
        "completion_window": api.map_or(WINDOW, |a| a.completion_window.as_str()),
        "status": state.as_str(),
        "output_file_id": file(ResultKind::Output, counts.completed),
        "error_file_id": file(ResultKind::Errors, counts.failed),
        "created_at": created_at,
        "in_progress_at": record.and_then(|r| r.in_progress_at),
        // Batches of the CLI have no window; API records from before windows were stored
        // had OpenAI's 24 h.
        "expires_at": record
            .and_then(|r| r.expires_at)
            .or(api.map(|_| created_at + WINDOW_SECS)),
        "finalizing_at": record.and_then(|r| r.finalizing_at),
        "completed_at": stamp(BatchState::Completed),
        "failed_at": stamp(BatchState::Failed),
        "expired_at": stamp(BatchState::Expired),
        "cancelling_at": record.and_then(|r| r.cancel_requested_at),
        "cancelled_at": stamp(BatchState::Cancelled),
        "request_counts": counts,
        "metadata": api.and_then(|a| a.metadata.as_ref()),
        // Known once the batch is finished, from its manifest: see [`add_usage`].
        "model": null,
        "usage": null,
        // batchyard's own, beside OpenAI's fields.
        "cost_usd": record.map(BatchRecord::cost_usd),
        "tenant": record
            .map(|r| r.tenant.as_str())
            .or(api.map(|a| a.tenant.as_str())),
        "priority": record.map(|r| r.priority.to_string()),
        "budget_usd": record.and_then(|r| r.budget_usd),
        "task": record.and_then(|r| r.task.as_deref()),
    })
}

/// The `input_file_id` of a batch that was not created through the API.
pub fn input_file_id(batch_id: &str) -> String {
    format!("file-{batch_id}-input")
}

/// Fills OpenAI's `usage` and `model` of a finished batch from its `manifest.json`: tokens as
/// the finalizer counted them (cached input as the providers reported it; batchyard does not
/// track reasoning tokens, so that detail is 0), and the model that answered most items
/// (`null` when none did).
pub fn add_usage(object: &mut Value, manifest: Option<&Value>) {
    let Some(m) = manifest else { return };
    let tokens = |k: &str| m.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (tokens("input_tokens"), tokens("output_tokens"));
    object["usage"] = json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": tokens("cached_input_tokens")},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input.saturating_add(output),
    });
    let top = m
        .get("spend_by_model")
        .and_then(Value::as_object)
        .and_then(|models| {
            models
                .iter()
                .map(|(k, v)| (v.get("requests").and_then(Value::as_u64).unwrap_or(0), k))
                .filter(|(n, _)| *n > 0)
                .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        });
    if let Some((_, model)) = top {
        object["model"] = json!(model);
    }
}

/// What a batch's metadata asks of batchyard.
#[derive(Debug, Default, PartialEq)]
pub(super) struct MetaOptions {
    pub task: Option<String>,
    pub budget_usd: Option<f64>,
    /// `batchyard_deadline`, or `batchyard_offload: "auto"` (the completion window's end):
    /// the batch opts into the offload lane. Unix seconds.
    pub deadline_at: Option<u64>,
    /// `batchyard_notify`: the webhook announcing the batch's end.
    pub notify_url: Option<String>,
    /// `batchyard_priority`: `high`, `normal`, `low` or a number (capped by the tenant's
    /// `max_priority` when the batch is submitted).
    pub priority: Option<batchyard_jobs::priority::Priority>,
}

pub(super) fn check_metadata(
    metadata: Option<&BTreeMap<String, String>>,
    state: &ApiState,
) -> Result<MetaOptions, ApiError> {
    let Some(m) = metadata else {
        return Ok(MetaOptions::default());
    };
    let bad = |msg: String| ApiError::invalid(msg).with_param("metadata");
    if m.len() > MAX_METADATA_KEYS {
        return Err(bad(format!(
            "metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed",
            m.len()
        )));
    }
    if let Some((k, _)) = m
        .iter()
        .find(|(k, v)| k.chars().count() > MAX_KEY_CHARS || v.chars().count() > MAX_VALUE_CHARS)
    {
        return Err(bad(format!(
            "metadata key {k:?} or its value is too long (keys up to {MAX_KEY_CHARS}, values up to {MAX_VALUE_CHARS} characters)"
        )));
    }
    let task = m.get("batchyard_task").cloned();
    if let Some(t) = &task
        && state.app.settings.catalog.task(t).is_none()
    {
        let known: Vec<String> = state.app.settings.catalog.task_keys().into_iter().collect();
        return Err(bad(format!(
            "unknown task {t:?} in metadata.batchyard_task; configured tasks: {}",
            known.join(", ")
        )));
    }
    let budget = match m.get("batchyard_budget_usd") {
        None => None,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(b) if b.is_finite() && b >= 0.0 => Some(b),
            _ => {
                return Err(bad(format!(
                    "metadata.batchyard_budget_usd must be a number of dollars, 0 or more, as a string (e.g. \"2.50\"), not {s:?}"
                )));
            }
        },
    };
    let window = state.completion_window.as_secs();
    let deadline_at = deadline(m, batchyard_jobs::batch::now_secs(), window).map_err(bad)?;
    let notify_url = m.get("batchyard_notify").map(|u| u.trim().to_owned());
    if let Some(url) = &notify_url {
        crate::config::notify::check_url(url)
            .map_err(|why| bad(format!("metadata.batchyard_notify {why}")))?;
    }
    let priority = match m.get("batchyard_priority") {
        None => None,
        Some(p) => Some(
            p.parse::<batchyard_jobs::priority::Priority>()
                .map_err(|why| bad(format!("metadata.batchyard_priority: {why}")))?,
        ),
    };
    Ok(MetaOptions {
        task,
        budget_usd: budget,
        deadline_at,
        notify_url,
        priority,
    })
}

/// The offload opt-in: `batchyard_deadline` (a span such as `12h`, or an RFC 3339 time) or
/// `batchyard_offload: "auto"` (the end of the completion window). OpenAI's mandatory
/// `completion_window` alone does not opt in. A deadline must fall within the window: items
/// still queued when it ends are expired, whatever the deadline says.
fn deadline(m: &BTreeMap<String, String>, now: u64, window: u64) -> Result<Option<u64>, String> {
    let end = now.saturating_add(window);
    let offload = match m.get("batchyard_offload").map(|v| v.trim()) {
        None | Some("off") => false,
        Some("auto") => true,
        Some(other) => {
            return Err(format!(
                "metadata.batchyard_offload must be \"auto\" (use the providers' batch APIs until the completion window ends) or \"off\", not {other:?}"
            ));
        }
    };
    let Some(text) = m.get("batchyard_deadline") else {
        return Ok(offload.then_some(end));
    };
    let at = crate::deadline::parse(text)
        .map_err(|e| format!("metadata.batchyard_deadline: {e}"))?
        .unix(now);
    if at <= now {
        return Err(format!(
            "metadata.batchyard_deadline {text:?} has passed; give a time in the future"
        ));
    }
    if at > end {
        return Err(format!(
            "metadata.batchyard_deadline {text:?} is after the completion window ends ({window} s from now); give a deadline within it"
        ));
    }
    Ok(Some(at))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::batch::RequestCounts;

    fn record(state: BatchState) -> BatchRecord {
        BatchRecord {
            state,
            counts: RequestCounts {
                total: 3,
                completed: 2,
                failed: 1,
            },
            spent_nanos: 1_500_000_000,
            budget_usd: Some(5.0),
            in_progress_at: Some(101),
            finalizing_at: Some(110),
            completed_at: Some(120),
            expires_at: Some(100 + WINDOW_SECS),
            ..BatchRecord::new("batch_1".into(), 0, "memory://".into(), 100)
        }
    }

    #[test]
    fn terminal_times_follow_the_state() {
        let done = batch_object("batch_1", Some(&record(BatchState::Completed)), None);
        assert_eq!(done["completed_at"], 120);
        assert!(done["cancelled_at"].is_null() && done["failed_at"].is_null());
        assert_eq!(done["output_file_id"], "file-batch_1-output");
        assert_eq!(done["error_file_id"], "file-batch_1-errors");
        assert_eq!(done["expires_at"], 100 + WINDOW_SECS);
        assert_eq!(done["cost_usd"], 1.5);
        assert_eq!(done["endpoint"], ENDPOINT);
        let cancelled = batch_object("batch_1", Some(&record(BatchState::Cancelled)), None);
        assert_eq!(cancelled["cancelled_at"], 120);
        assert!(cancelled["completed_at"].is_null());
        let running = batch_object("batch_1", Some(&record(BatchState::InProgress)), None);
        assert!(running["output_file_id"].is_null() && running["completed_at"].is_null());
        let mut cli = record(BatchState::InProgress);
        cli.expires_at = None;
        assert!(batch_object("batch_1", Some(&cli), None)["expires_at"].is_null());
        let api = ApiBatch {
            id: "batch_1".into(),
            input_file_id: "f".into(),
            endpoint: ENDPOINT.into(),
            completion_window: WINDOW.into(),
            metadata: None,
            created_at: 100,
            errors: Vec::new(),
            tenant: DEFAULT_TENANT.into(),
        };
        let old = batch_object("batch_1", Some(&cli), Some(&api));
        assert_eq!(old["expires_at"], 100 + WINDOW_SECS);
        let validating = batch_object("batch_1", None, None);
        assert_eq!(validating["status"], "validating");
    }

    #[test]
    fn metadata_opts_into_the_lane_only_when_asked() {
        let meta = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let day = 86_400;
        assert_eq!(deadline(&meta(&[]), 1_000, day), Ok(None));
        assert_eq!(
            deadline(&meta(&[("batchyard_offload", "off")]), 1_000, day),
            Ok(None)
        );
        assert_eq!(
            deadline(&meta(&[("batchyard_offload", "auto")]), 1_000, day),
            Ok(Some(1_000 + day))
        );
        assert_eq!(
            deadline(&meta(&[("batchyard_deadline", "2h")]), 1_000, day),
            Ok(Some(8_200))
        );
        assert_eq!(
            deadline(
                &meta(&[("batchyard_deadline", "1970-01-01T01:00:00Z")]),
                1_000,
                day
            ),
            Ok(Some(3_600))
        );
        for (pairs, says) in [
            (&[("batchyard_offload", "yes")][..], "batchyard_offload"),
            (&[("batchyard_deadline", "soon")][..], "24h"),
            (
                &[("batchyard_deadline", "1970-01-01T00:00:01Z")][..],
                "passed",
            ),
            (&[("batchyard_deadline", "2d")][..], "completion window"),
        ] {
            let e = deadline(&meta(pairs), 1_000, day).unwrap_err();
            assert!(e.contains(says), "{pairs:?}: {e}");
            assert!(e.contains("metadata.batchyard_"), "{e}");
        }
    }

    #[test]
    fn usage_reports_the_manifests_cached_input() {
        let mut object = json!({});
        let manifest = json!({
            "input_tokens": 300, "cached_input_tokens": 160, "cache_write_input_tokens": 40,
            "output_tokens": 20,
            "spend_by_model": {"claude": {"requests": 2}, "gpt": {"requests": 1}},
        });
        add_usage(&mut object, Some(&manifest));
        assert_eq!(object["usage"]["input_tokens"], 300);
        assert_eq!(
            object["usage"]["input_tokens_details"]["cached_tokens"],
            160
        );
        assert_eq!(object["usage"]["total_tokens"], 320);
        assert_eq!(object["model"], "claude");
        // A manifest from before cached tokens were counted.
        add_usage(
            &mut object,
            Some(&json!({"input_tokens": 5, "output_tokens": 1})),
        );
        assert_eq!(object["usage"]["input_tokens_details"]["cached_tokens"], 0);
    }
}
