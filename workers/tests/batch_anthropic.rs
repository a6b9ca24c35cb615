//! The Anthropic Message Batches client (`BatchApi::Anthropic`) over real HTTP against the
//! fake's `/v1/messages/batches`: submit, status, results mapped as real-time answers and
//! errors (expired and canceled items left out), cancel, delete, and `find` by time and count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::batch::{
    BatchApi, BatchItem, EndedAs, Found, ItemResult, RemoteState,
};
use batchyard_workers::provider::{
    AnthropicConfig, AnthropicProvider, Provider, ProviderErrorKind, Secret,
};
use serde_json::Map;
use support::batch::{assert_answered_as_real_time, results, wait_ended};
use support::fake_provider::AnthropicFake as _;

const KEY: &str = "sk-ant-batch-secret-1";

fn provider(fake: &FakeProvider) -> Provider {
    let p: AnthropicProvider = fake.provider_with(AnthropicConfig {
        api_key: Some(Secret::new(KEY.to_owned())),
        ..AnthropicConfig::default()
    });
    Provider::Anthropic(p)
}

fn item(id: &str, text: &str) -> BatchItem {
    support::batch::item(id, "claude-test", text)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_batch_is_answered_as_real_time_with_errors_classified() {
    let fake = FakeProvider::start(&["--require-key", KEY, "--batch-turnaround-ms", "300"]);
    let provider = provider(&fake);
    let api = BatchApi::of(&provider).unwrap();
    let items = vec![
        item("a0", "first question"),
        item(
            "a1",
            &format!(
                "{} [[cache_write_tokens=40]][[cached_tokens=60]]",
                "long prefix ".repeat(60)
            ),
        ),
        item("a2", "FAKE:CONTEXT too long"),
    ];
    let id = api.submit("w1-small-0", &items).await.unwrap();
    let running = api.status(&id).await.unwrap();
    assert_eq!(running.state, RemoteState::Running);
    assert_eq!(running.total, 3);
    let ended = wait_ended(&api, &id).await;
    assert_eq!(ended.state, RemoteState::Ended(EndedAs::Completed));
    assert_eq!((ended.total, ended.completed, ended.failed), (3, 2, 1));

    let got = results(&api, &id).await;
    assert_eq!(got.len(), 3);
    let real_time = fake.provider_with(AnthropicConfig {
        api_key: Some(Secret::new(KEY.to_owned())),
        ..AnthropicConfig::default()
    });
    assert_answered_as_real_time(&got, &items, &["a0", "a1"], &real_time).await;
    let ItemResult::Answer(cached) = &got["a1"] else {
        unreachable!()
    };
    let details = &cached["usage"]["prompt_tokens_details"];
    assert_eq!(
        (
            details["cached_tokens"].as_u64(),
            details["cache_write_tokens"].as_u64()
        ),
        (Some(60), Some(40))
    );
    match &got["a2"] {
        ItemResult::Error(e) => assert_eq!(e.kind, ProviderErrorKind::ContextOverflow, "{e}"),
        other => panic!("{other:?}"),
    }

    api.forget(&id).await.unwrap();
    let stats = fake.stats()["batches"]["anthropic"].clone();
    assert_eq!(stats["deleted"], 1, "{stats}");
    let gone = api.status(&id).await.unwrap_err();
    assert_eq!(gone.status, Some(404), "{gone}");
}

#[tokio::test]
async fn an_expired_batch_gives_what_it_answered_and_a_cancelled_one_too() {
    let fake = FakeProvider::start(&[
        "--batch-window-secs",
        "1",
        "--batch-expire=0.5",
        "--batch-turnaround-ms",
        "200",
    ]);
    let provider = provider(&fake);
    let api = BatchApi::of(&provider).unwrap();
    let items: Vec<BatchItem> = (0..6).map(|i| item(&format!("e{i}"), "question")).collect();
    let id = api.submit("w1-small-0", &items).await.unwrap();
    let ended = wait_ended(&api, &id).await;
    assert_eq!(
        ended.state,
        RemoteState::Ended(EndedAs::Expired),
        "{ended:?}"
    );
    let got = results(&api, &id).await;
    assert_eq!(got.len(), 3, "the expired half has no result: {got:?}");
    assert!(got.values().all(|r| matches!(r, ItemResult::Answer(_))));

    // A long batch, cancelled before anything is answered.
    let slow = FakeProvider::start(&["--batch-turnaround-ms", "60000"]);
    let provider = Provider::Anthropic(slow.provider());
    let api = BatchApi::of(&provider).unwrap();
    let id = api.submit("w1-small-0", &items).await.unwrap();
    let early = api.forget(&id).await.unwrap_err();
    assert_eq!(early.kind, ProviderErrorKind::InvalidRequest, "{early}");
    api.cancel(&id).await.unwrap();
    let ended = wait_ended(&api, &id).await;
    assert_eq!(
        ended.state,
        RemoteState::Ended(EndedAs::Cancelled),
        "{ended:?}"
    );
    assert!(results(&api, &id).await.is_empty());
    api.forget(&id).await.unwrap();
    assert_eq!(slow.stats()["batches"]["cancelled"], 1);
}

#[tokio::test]
async fn find_names_the_batches_of_that_size_created_about_then() {
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "60000"]);
    let provider = provider(&fake);
    let api = BatchApi::of(&provider).unwrap();
    let since = now();
    let three: Vec<BatchItem> = (0..3).map(|i| item(&format!("f{i}"), "q")).collect();
    assert_eq!(api.find("w1-m-0", since, 3).await.unwrap(), Found::None);
    let first = api.submit("w1-m-0", &three).await.unwrap();
    api.submit("w1-m-1", &three[..2]).await.unwrap();
    assert_eq!(
        api.find("w1-m-0", since, 3).await.unwrap(),
        Found::Maybe(vec![first.clone()])
    );
    assert_eq!(api.find("w1-m-0", since, 4).await.unwrap(), Found::None);
    // Recorded long before (past the create's timeout): the batch is not that one.
    assert_eq!(
        api.find("w1-m-0", since - 3600, 3).await.unwrap(),
        Found::None
    );
    // Another batch of the same size, about the same time: both could be it.
    let second = api.submit("w2-m-0", &three).await.unwrap();
    let Found::Maybe(both) = api.find("w1-m-0", since, 3).await.unwrap() else {
        panic!("expected candidates")
    };
    assert_eq!(
        both.into_iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([first, second])
    );
}

#[tokio::test]
async fn bad_custom_ids_and_unmappable_bodies_are_refused_before_sending() {
    let fake = FakeProvider::start(&[]);
    let provider = provider(&fake);
    let api = BatchApi::of(&provider).unwrap();
    let err = api.submit("t", &[item("a.b", "q")]).await.unwrap_err();
    assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{err}");
    let empty = BatchItem {
        custom_id: "ok".into(),
        body: Map::new(),
    };
    let err = api.submit("t", &[empty]).await.unwrap_err();
    assert!(err.message.contains("job ok"), "{err}");
    assert_eq!(fake.stats()["batches"]["created"], 0);
}
