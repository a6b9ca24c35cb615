//! The result cache across batches: content-addressed completions in object storage.
//!
//! ```text
//! cache/v1/<first 2 hex>/<sha-256 hex>.json   one CachedCompletion per distinct call
//! ```
//!
//! A call is cached whatever its `temperature` or `n`: a batch asks for one answer per item,
//! and a rerun getting the same answer back for free is the point. A `seed` is part of the body,
//! so it is part of the key.

use std::time::Duration;

use batchyard_jobs::batch::now_millis;
use batchyard_jobs::error::ErrorKind;
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::catalog::ModelSpec;

/// Bumped when the key derivation or the entry format changes; old entries are then ignored.
const VERSION: &str = batchyard_jobs::keys::CACHE_VERSION;

/// Body fields that change how an answer is delivered or accounted, not what it says.
const IGNORED_FIELDS: [&str; 7] = [
    "model",
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
];

/// A hex SHA-256 over the model, the rendered messages and the generation parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(pub String);

/// What a cache entry holds: enough to rebuild the provider's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedCompletion {
    /// The catalog key of the model that answered.
    pub model: String,
    pub body: Value,
    pub request_id: String,
    pub input_tokens: u64,
    /// Prompt-cache reads and writes within `input_tokens` (0 in entries older than them).
    #[serde(default)]
    pub cached_input_tokens: u64,
    #[serde(default)]
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    pub finish_reason: Option<String>,
    /// When the entry was written, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ResultCache {
    store: ResultStore,
    ttl: Duration,
    /// The store's root (its URL's prefix), under which `cache/` lives.
    root: Path,
}

impl ResultCache {
    pub fn new(store: ResultStore, ttl: Duration) -> Self {
        // The store keeps its prefix private; a batch folder sits two levels below it.
        let root = store
            .batch_dir("_")
            .parent()
            .and_then(|p| p.parent())
            .unwrap_or_default();
        Self { store, ttl, root }
    }

    /// The key of a call of `model` with this body (`default_max_tokens` as the call sends it).
    ///
    /// The provider-side name, not the catalog key, is hashed: two catalog entries calling the
    /// same model share answers, and repointing a catalog key at another model does not.
    pub fn key(
        model: &ModelSpec,
        body: &Map<String, Value>,
        default_max_tokens: Option<u32>,
    ) -> CacheKey {
        let mut body = body.clone();
        for field in IGNORED_FIELDS {
            body.remove(field);
        }
        // A `null` limit is no limit, so a provider that applies the default would answer
        // differently for different defaults.
        let has_limit = ["max_tokens", "max_completion_tokens"]
            .iter()
            .any(|k| body.get(*k).is_some_and(|v| !v.is_null()));
        if !has_limit {
            body.remove("max_tokens");
            body.remove("max_completion_tokens");
            if let Some(n) = default_max_tokens {
                body.insert("max_tokens".into(), Value::from(n));
            }
        }
        let mut doc = Map::new();
        doc.insert("version".into(), Value::from(VERSION));
        doc.insert("provider".into(), Value::from(model.provider.as_str()));
        doc.insert("model".into(), Value::from(model.name.as_str()));
        doc.insert("body".into(), Value::Object(body));
        let canonical = canonical(Value::Object(doc)).to_string();
        CacheKey(hex::encode(Sha256::digest(canonical.as_bytes())))
    }

    /// Where the entry of `key` is stored.
    pub fn path(&self, key: &CacheKey) -> Path {
        // Joined part by part, so a hand-made key cannot climb out of the cache folder.
        batchyard_jobs::keys::cache_entry(&key.0)
            .into_iter()
            .fold(self.root.clone(), |path, part| path.join(part))
    }

    /// A fresh entry, or `None` (missing, expired, unreadable: a miss, never an error).
    pub async fn get(&self, key: &CacheKey) -> Option<CachedCompletion> {
        let path = self.path(key);
        let bytes = match self.store.get(&path).await {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "cannot read a result cache entry; treating it as a miss");
                return None;
            }
        };
        let entry: CachedCompletion = match serde_json::from_slice(&bytes) {
            Ok(entry) => entry,
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "corrupt result cache entry; treating it as a miss");
                return None;
            }
        };
        let age_ms = now_millis().saturating_sub(entry.created_at_ms);
        (u128::from(age_ms) < self.ttl.as_millis()).then_some(entry)
    }

    /// Stores an entry; failures are logged, never fatal.
    pub async fn put(&self, key: &CacheKey, entry: &CachedCompletion) {
        let path = self.path(key);
        let bytes = match serde_json::to_vec(entry) {
            Ok(bytes) => Bytes::from(bytes),
            Err(e) => {
                tracing::warn!(path = %path, error = %e, "cannot encode a result cache entry; not cached");
                return;
            }
        };
        if let Err(e) = self.store.put(&path, bytes).await {
            tracing::warn!(path = %path, error = %e, "cannot write a result cache entry; not cached");
        }
    }
}

/// `value` with every object's keys in sorted order and integral floats as integers, so the
/// same request always serializes the same (whether or not serde_json preserves key order).
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        Value::Number(n) => Value::Number(canonical_number(n)),
        other => other,
    }
}

/// `1.0` and `1` ask for the same thing; only floats exactly representable as integers fold.
fn canonical_number(n: serde_json::Number) -> serde_json::Number {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match n.as_f64() {
        Some(f) if !n.is_i64() && !n.is_u64() && f.fract() == 0.0 && f.abs() < EXACT => {
            serde_json::Number::from(f as i64)
        }
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn canonical_sorts_nested_keys_and_folds_integral_floats() {
        let a = canonical(json!({"b": [{"y": 1.0, "x": 2.5}], "a": -0.0}));
        assert_eq!(a.to_string(), r#"{"a":0,"b":[{"x":2.5,"y":1}]}"#);
        let big = canonical(json!(1e300));
        assert_eq!(big, json!(1e300));
        assert_eq!(canonical(json!(u64::MAX)), json!(u64::MAX));
    }
}
