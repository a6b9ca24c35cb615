//! The result cache: keys, round trips, expiry and damaged entries.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use batchyard_jobs::batch::now_millis;
use batchyard_jobs::storage::ResultStore;
use batchyard_workers::catalog::ModelSpec;
use batchyard_workers::job::cache::{CacheKey, CachedCompletion, ResultCache};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use support::{body, model_spec};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn base() -> Map<String, Value> {
    body(json!({
        "messages": [{"role": "user", "content": "Classify: great product"}],
        "temperature": 0,
        "max_tokens": 16,
    }))
}

fn entry(created_at_ms: u64) -> CachedCompletion {
    CachedCompletion {
        model: "fast".into(),
        body: json!({"choices": [{"message": {"content": "positive"}}]}),
        request_id: "req-1".into(),
        input_tokens: 12,
        cached_input_tokens: 0,
        cache_write_input_tokens: 0,
        output_tokens: 1,
        finish_reason: Some("stop".into()),
        created_at_ms,
    }
}

fn key_of(b: Value) -> CacheKey {
    ResultCache::key(&model_spec("fast", "openai", "gpt-4o-mini"), &body(b), None)
}

#[test]
fn key_is_hex_sha256() {
    let key = ResultCache::key(&model_spec("fast", "openai", "gpt-4o-mini"), &base(), None);
    assert_eq!(key.0.len(), 64);
    assert!(
        key.0
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
}

#[test]
fn key_ignores_key_order_and_delivery_fields() {
    let a = key_of(json!({
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"b": 1, "a": 2}}},
    }));
    let b = key_of(json!({
        "response_format": {"json_schema": {"schema": {"a": 2, "b": 1}, "name": "x"}, "type": "json_schema"},
        "temperature": 0.2,
        "messages": [{"content": "hi", "role": "user"}],
        "model": "whatever",
        "stream": true,
        "stream_options": {"include_usage": true},
        "user": "u-42",
        "metadata": {"run": "7"},
        "store": true,
        "service_tier": "flex",
    }));
    assert_eq!(a, b);
    // Integral floats ask for the same thing as integers.
    assert_eq!(
        key_of(json!({"messages": [], "temperature": 1})),
        key_of(json!({"messages": [], "temperature": 1.0}))
    );
}

#[test]
fn key_changes_with_what_changes_the_answer() {
    let fast = model_spec("fast", "openai", "gpt-4o-mini");
    let k = |m: &ModelSpec, b: &Map<String, Value>| ResultCache::key(m, b, None);
    let reference = k(&fast, &base());
    let mut variants = Vec::new();
    variants.push(k(&model_spec("fast", "azure", "gpt-4o-mini"), &base()));
    variants.push(k(&model_spec("fast", "openai", "gpt-4o"), &base()));
    for (field, value) in [
        (
            "messages",
            json!([{"role": "user", "content": "Classify: bad product"}]),
        ),
        ("temperature", json!(0.7)),
        ("max_tokens", json!(17)),
        ("seed", json!(7)),
        ("n", json!(2)),
    ] {
        let mut b = base();
        b.insert(field.into(), value);
        variants.push(k(&fast, &b));
    }
    let mut b = base();
    b.remove("max_tokens");
    b.insert("max_completion_tokens".into(), json!(16));
    variants.push(k(&fast, &b));
    for (i, v) in variants.iter().enumerate() {
        assert_ne!(v, &reference, "variant {i}");
    }
    let distinct: BTreeSet<_> = variants.iter().map(|k| k.0.clone()).collect();
    assert_eq!(distinct.len(), variants.len());
}

#[test]
fn default_max_tokens_counts_only_when_the_body_has_none() {
    let m = model_spec("fast", "openai", "gpt-4o-mini");
    // The body sets its own limit: the default is never sent, so it does not matter.
    assert_eq!(
        ResultCache::key(&m, &base(), Some(64)),
        ResultCache::key(&m, &base(), Some(128))
    );
    assert_eq!(
        ResultCache::key(&m, &base(), None),
        ResultCache::key(&m, &base(), Some(64))
    );
    let mut open = base();
    open.remove("max_tokens");
    let none = ResultCache::key(&m, &open, None);
    let d64 = ResultCache::key(&m, &open, Some(64));
    assert_ne!(none, d64);
    assert_ne!(d64, ResultCache::key(&m, &open, Some(128)));
    // A default of 64 is the same call as an explicit max_tokens of 64.
    let mut explicit = open.clone();
    explicit.insert("max_tokens".into(), json!(64));
    assert_eq!(d64, ResultCache::key(&m, &explicit, None));
    // `null` sets no limit, so the default applies.
    let mut null = open.clone();
    null.insert("max_tokens".into(), Value::Null);
    assert_eq!(d64, ResultCache::key(&m, &null, Some(64)));
}

#[test]
fn catalog_key_is_not_hashed_but_the_model_name_is() {
    let b = base();
    assert_eq!(
        ResultCache::key(&model_spec("fast", "openai", "gpt-4o-mini"), &b, None),
        ResultCache::key(&model_spec("cheap", "openai", "gpt-4o-mini"), &b, None)
    );
    // The same catalog key pointed at another model gets other answers.
    assert_ne!(
        ResultCache::key(&model_spec("fast", "openai", "gpt-4o-mini"), &b, None),
        ResultCache::key(
            &model_spec("fast", "openai", "gpt-4o-mini-2024-07-18"),
            &b,
            None
        )
    );
}

#[test]
fn path_is_sharded_under_the_store_root() {
    let cache = ResultCache::new(ResultStore::in_memory(), DAY);
    let key = key_of(json!({"messages": []}));
    let path = cache.path(&key);
    assert_eq!(
        path.as_ref(),
        format!("cache/v1/{}/{}.json", &key.0[..2], key.0)
    );
    // A hand-made key cannot climb out of the cache folder.
    let odd = cache.path(&CacheKey("../../x/y".into()));
    assert!(odd.as_ref().starts_with("cache/v1/"), "{odd}");
    assert_eq!(odd.parts().count(), 4, "{odd}");
}

async fn round_trip(store: ResultStore) {
    let cache = ResultCache::new(store.clone(), DAY);
    let key = key_of(json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(cache.get(&key).await, None);
    let stored = entry(now_millis());
    cache.put(&key, &stored).await;
    assert_eq!(cache.get(&key).await, Some(stored.clone()));
    assert!(matches!(store.exists(&cache.path(&key)).await, Ok(true)));
    // Another key is still a miss.
    let other = key_of(json!({"messages": [{"role": "user", "content": "bye"}]}));
    assert_eq!(cache.get(&other).await, None);
    // A later put replaces the entry.
    let mut newer = stored.clone();
    newer.request_id = "req-2".into();
    cache.put(&key, &newer).await;
    assert_eq!(
        cache.get(&key).await.map(|e| e.request_id),
        Some("req-2".into())
    );
}

#[tokio::test]
async fn round_trip_in_memory() {
    round_trip(ResultStore::in_memory()).await;
}

#[tokio::test]
async fn round_trip_on_files() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("data").display());
    let store = ResultStore::open(&url, &BTreeMap::new()).unwrap();
    round_trip(store.clone()).await;
    let key = key_of(json!({"messages": [{"role": "user", "content": "hi"}]}));
    let file = dir
        .path()
        .join(format!("data/cache/v1/{}/{}.json", &key.0[..2], key.0));
    assert!(file.exists(), "{}", file.display());
    // A new process sees the same entry.
    let again = ResultCache::new(ResultStore::open(&url, &BTreeMap::new()).unwrap(), DAY);
    assert!(again.get(&key).await.is_some());
}

#[tokio::test]
async fn expired_entries_are_misses() {
    let store = ResultStore::in_memory();
    let key = key_of(json!({"messages": []}));
    let cache = ResultCache::new(store.clone(), DAY);
    cache
        .put(&key, &entry(now_millis() - 2 * 24 * 3600 * 1000))
        .await;
    assert_eq!(cache.get(&key).await, None);
    cache.put(&key, &entry(now_millis() - 3600 * 1000)).await;
    assert!(cache.get(&key).await.is_some());
    // No time to live: nothing is fresh.
    let zero = ResultCache::new(store, Duration::ZERO);
    zero.put(&key, &entry(now_millis())).await;
    assert_eq!(zero.get(&key).await, None);
}

#[tokio::test]
async fn corrupt_entries_are_misses() {
    let store = ResultStore::in_memory();
    let cache = ResultCache::new(store.clone(), DAY);
    let key = key_of(json!({"messages": []}));
    for bytes in [&b"not json"[..], b"{\"model\": \"fast\"}", b"", b"[1,2]"] {
        store
            .put(&cache.path(&key), Bytes::copy_from_slice(bytes))
            .await
            .unwrap();
        assert_eq!(cache.get(&key).await, None);
    }
    // Rewriting heals it.
    cache.put(&key, &entry(now_millis())).await;
    assert!(cache.get(&key).await.is_some());
}

#[tokio::test]
async fn unreadable_store_is_a_miss_and_put_is_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("data").display());
    let store = ResultStore::open(&url, &BTreeMap::new()).unwrap();
    let cache = ResultCache::new(store, DAY);
    let key = key_of(json!({"messages": []}));
    // A folder where the entry should be: reading and writing it both fail.
    std::fs::create_dir_all(
        dir.path()
            .join("data")
            .join(cache.path(&key).as_ref())
            .join("x"),
    )
    .unwrap();
    assert_eq!(cache.get(&key).await, None);
    cache.put(&key, &entry(now_millis())).await;
    assert_eq!(cache.get(&key).await, None);
}
