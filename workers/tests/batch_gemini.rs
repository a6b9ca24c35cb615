//! The Gemini batch client (`BatchApi::Gemini`, inline requests) over real HTTP against the
//! fake's `batchGenerateContent` and `/v1beta/batches`: submit, state, inline responses mapped
//! as real-time answers and errors, cancel, delete, and `find` by the tag kept as the batch's
//! display name.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::batch::{BatchApi, EndedAs, Found, ItemResult, RemoteState};
use batchyard_workers::provider::{GeminiConfig, Provider, ProviderErrorKind, Secret};
use support::batch::{assert_answered_as_real_time, item, results, wait_ended};
use support::fake_provider::GeminiFake as _;

const KEY: &str = "gem-batch-secret-9";

fn config() -> GeminiConfig {
    GeminiConfig {
        api_key: Some(Secret::new(KEY.to_owned())),
        ..GeminiConfig::default()
    }
}

#[tokio::test]
async fn a_batch_is_answered_as_real_time_and_found_by_its_tag() {
    let fake = FakeProvider::start(&["--require-key", KEY, "--batch-turnaround-ms", "300"]);
    let provider = Provider::Gemini(fake.provider_with(config()));
    let api = BatchApi::of(&provider).unwrap();
    let items = vec![
        item("g0", "gemini-test", "first question"),
        item("g1", "gemini-test", "second question"),
        item("g2", "gemini-test", "FAKE:CONTEXT too long"),
    ];
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(api.find("w1-gem-0", since, 3).await.unwrap(), Found::None);
    let id = api.submit("w1-gem-0", &items).await.unwrap();
    assert!(id.starts_with("batches/"), "{id}");
    assert_eq!(
        api.find("w1-gem-0", since, 3).await.unwrap(),
        Found::Sure(id.clone())
    );
    assert_eq!(api.find("w2-gem-0", since, 3).await.unwrap(), Found::None);
    let running = api.status(&id).await.unwrap();
    assert_eq!((running.state, running.total), (RemoteState::Running, 3));
    let ended = wait_ended(&api, &id).await;
    assert_eq!(ended.state, RemoteState::Ended(EndedAs::Completed));
    assert_eq!((ended.completed, ended.failed), (2, 1));

    let got = results(&api, &id).await;
    assert_eq!(got.len(), 3);
    let real_time = fake.provider_with(config());
    assert_answered_as_real_time(&got, &items, &["g0", "g1"], &real_time).await;
    match &got["g2"] {
        ItemResult::Error(e) => assert_eq!(e.kind, ProviderErrorKind::ContextOverflow, "{e}"),
        other => panic!("{other:?}"),
    }
    api.forget(&id).await.unwrap();
    assert_eq!(fake.stats()["batches"]["gemini"]["deleted"], 1);
    let gone = api.status(&id).await.unwrap_err();
    assert_eq!(gone.status, Some(404), "{gone}");
}

#[tokio::test]
async fn a_cancelled_batch_ends_cancelled_without_answers() {
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "60000"]);
    let provider = Provider::Gemini(fake.provider_with(config()));
    let api = BatchApi::of(&provider).unwrap();
    let items: Vec<_> = (0..4)
        .map(|i| item(&format!("c{i}"), "gemini-test", "q"))
        .collect();
    let id = api.submit("w1-gem-0", &items).await.unwrap();
    assert!(
        api.forget(&id).await.is_err(),
        "a running batch is not deleted"
    );
    api.cancel(&id).await.unwrap();
    let ended = wait_ended(&api, &id).await;
    assert_eq!(ended.state, RemoteState::Ended(EndedAs::Cancelled));
    assert!(results(&api, &id).await.is_empty());
    api.forget(&id).await.unwrap();
    assert_eq!(fake.stats()["batches"]["gemini"]["cancelled"], 1);
}
