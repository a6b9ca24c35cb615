//! A provider batch driven through `BatchApi` to its end, and its results read whole.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use batchyard_workers::provider::batch::{
    BatchApi, BatchItem, ItemResult, RemoteState, RemoteStatus,
};
use serde_json::{Value, json};

use super::fake_provider::Completes;

/// An item asking `model` about `text`, with a system message.
pub fn item(id: &str, model: &str, text: &str) -> BatchItem {
    let body = json!({"model": model, "max_tokens": 50,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]});
    let Value::Object(body) = body else {
        unreachable!()
    };
    BatchItem {
        custom_id: id.to_owned(),
        body,
    }
}

/// Polls until the batch has ended (at most 20 s).
pub async fn wait_ended(api: &BatchApi<'_>, id: &str) -> RemoteStatus {
    let started = Instant::now();
    loop {
        let status = api.status(id).await.unwrap();
        if matches!(status.state, RemoteState::Ended(_)) {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every result of an ended batch by custom id; each custom id at most once.
pub async fn results(api: &BatchApi<'_>, id: &str) -> BTreeMap<String, ItemResult> {
    let mut lines = api.results(id).await.unwrap();
    let mut out = BTreeMap::new();
    for _ in 0..10_000 {
        let Some((id, result)) = lines.next().await.unwrap() else {
            return out;
        };
        assert!(out.insert(id, result).is_none(), "one line per item");
    }
    panic!("too many lines")
}

/// Each of `ids` got an answer, the same (choices and usage) as `real_time` gives its request.
pub async fn assert_answered_as_real_time(
    got: &BTreeMap<String, ItemResult>,
    items: &[BatchItem],
    ids: &[&str],
    real_time: &impl Completes,
) {
    for n in ids {
        let Some(ItemResult::Answer(body)) = got.get(*n) else {
            panic!("{n}: {:?}", got.get(*n))
        };
        let sent = items.iter().find(|i| i.custom_id == *n).unwrap();
        let live = real_time.complete_call(sent.call()).await.unwrap();
        assert_eq!(body["choices"], live.body["choices"], "{n}");
        assert_eq!(body["usage"], live.body["usage"], "{n}");
    }
}
