//! Reading Redis replies of the stream commands, tolerant of RESP2 and RESP3 shapes, and
//! turning undecodable entries into dead letters instead of errors.

use redis::Value;
use serde_json::{Map, Value as Json};

use crate::job::{Job, Route};

/// One stream entry as read: its id, delivery count and the raw `j` field (empty if absent).
#[derive(Debug)]
pub(super) struct RawEntry {
    pub id: String,
    pub deliveries: u64,
    pub job: Vec<u8>,
}

pub(super) fn as_bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.as_bytes().to_vec()),
        Value::VerbatimString { text, .. } => Some(text.as_bytes().to_vec()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

pub(super) fn as_string(v: &Value) -> Option<String> {
    as_bytes(v).and_then(|b| String::from_utf8(b).ok())
}

pub(super) fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => as_string(other).and_then(|s| s.parse().ok()),
    }
}

/// The items of an array-like reply (arrays, sets, and maps flattened to key, value pairs).
fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) | Value::Set(a) => a.iter().collect(),
        Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
        Value::Attribute { data, .. } => items(data),
        _ => Vec::new(),
    }
}

/// The entries of an `XREADGROUP` reply for one stream. `Nil` (timeout) is no entries.
/// Entries of the shape `[id, nil]` (deleted while pending) are skipped.
pub(super) fn read_group_entries(reply: &Value) -> Vec<RawEntry> {
    let mut out = Vec::new();
    let streams = items(reply);
    // RESP2: [[key, entries], ...]; RESP3: a map flattened to [key, entries, ...].
    let entry_lists: Vec<&Value> = match reply {
        Value::Map(_) => streams.iter().skip(1).step_by(2).copied().collect(),
        _ => streams
            .iter()
            .filter_map(|s| items(s).get(1).copied())
            .collect(),
    };
    for list in entry_lists {
        for entry in items(list) {
            let parts = items(entry);
            let Some(id) = parts.first().and_then(|v| as_string(v)) else {
                continue;
            };
            let Some(fields) = parts.get(1) else {
                continue;
            };
            if matches!(fields, Value::Nil) {
                continue;
            }
            let fields = items(fields);
            let job = fields
                .chunks(2)
                .find(|kv| kv.first().and_then(|k| as_bytes(k)).as_deref() == Some(b"j"))
                .and_then(|kv| kv.get(1).and_then(|v| as_bytes(v)))
                .unwrap_or_default();
            out.push(RawEntry {
                id,
                deliveries: 1,
                job,
            });
        }
    }
    out
}

/// The entries returned by `reclaim.lua`: `[[id, deliveries, job], ...]`.
pub(super) fn reclaimed_entries(reply: &Value) -> Vec<RawEntry> {
    items(reply)
        .into_iter()
        .filter_map(|e| {
            let parts = items(e);
            let id = as_string(parts.first()?)?;
            let deliveries = parts.get(1).and_then(|v| as_u64(v)).unwrap_or(1);
            let job = parts.get(2).and_then(|v| as_bytes(v)).unwrap_or_default();
            Some(RawEntry {
                id,
                deliveries,
                job,
            })
        })
        .collect()
}

/// A stand-in job for an entry that could not be decoded, keeping whatever identifying
/// fields could be read, so the dead letter can still be traced to its batch and item.
pub(super) fn placeholder_job(raw: &[u8]) -> Job {
    let parsed: Option<Map<String, Json>> = serde_json::from_slice(raw).ok();
    let text = |key: &str| {
        parsed
            .as_ref()
            .and_then(|m| m.get(key))
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let seq = parsed
        .as_ref()
        .and_then(|m| m.get("seq"))
        .and_then(Json::as_u64)
        .unwrap_or_default();
    Job::first_run(
        &text("batch_id"),
        text("job_id"),
        seq,
        text("custom_id"),
        Map::new(),
        Route::Auto,
    )
}

/// At most `max` bytes of `raw`, lossily as text, for an error message.
pub(super) fn excerpt(raw: &[u8], max: usize) -> String {
    let cut = raw.len().min(max);
    let mut s = String::from_utf8_lossy(&raw[..cut]).into_owned();
    if raw.len() > max {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_resp2_xreadgroup_replies() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("j"), bulk("{}")])]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
                Value::Array(vec![bulk("3-0"), Value::Array(vec![bulk("x"), bulk("y")])]),
            ]),
        ])]);
        let entries = read_group_entries(&reply);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].id, "1-0");
        assert_eq!(entries[0].job, b"{}");
        assert_eq!(entries[1].id, "3-0");
        assert!(entries[1].job.is_empty());
        assert!(read_group_entries(&Value::Nil).is_empty());
    }

    #[test]
    fn placeholder_keeps_identifying_fields() {
        let job = placeholder_job(br#"{"batch_id":"b","job_id":"j1","seq":4,"route":7}"#);
        assert_eq!(
            (job.batch_id.as_str(), job.job_id.as_str(), job.seq),
            ("b", "j1", 4)
        );
        let job = placeholder_job(b"\xff garbage");
        assert_eq!(job.batch_id, "");
        assert_eq!(excerpt(b"abcdef", 3), "abc…");
    }
}
