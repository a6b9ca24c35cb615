//! The result cache across batches: content-addressed completions in object storage.
//!
//! STUB: interface fixed; the helper fills in the bodies.

use std::time::Duration;

use batchyard_jobs::storage::ResultStore;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::catalog::ModelSpec;

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
    pub output_tokens: u64,
    pub finish_reason: Option<String>,
    /// When the entry was written, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

#[derive(Debug, Clone)]
pub struct ResultCache {
    store: ResultStore,
    ttl: Duration,
}

impl ResultCache {
    pub fn new(store: ResultStore, ttl: Duration) -> Self {
        Self { store, ttl }
    }

    /// The key of a call of `model` with this body (`default_max_tokens` as the call sends it).
    pub fn key(
        model: &ModelSpec,
        body: &Map<String, Value>,
        default_max_tokens: Option<u32>,
    ) -> CacheKey {
        let _ = (model, body, default_max_tokens);
        CacheKey(String::new())
    }

    /// A fresh entry, or `None` (missing, expired, unreadable: a miss, never an error).
    pub async fn get(&self, key: &CacheKey) -> Option<CachedCompletion> {
        let _ = (&self.store, self.ttl, key);
        None
    }

    /// Stores an entry; failures are logged, never fatal.
    pub async fn put(&self, key: &CacheKey, entry: &CachedCompletion) {
        let _ = (key, entry);
    }
}
