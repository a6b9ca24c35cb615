//! The `azure_openai` provider over real HTTP on loopback, against the fake provider's Azure
//! route (`/openai/deployments/{deployment}/chat/completions?api-version=...`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use batchyard_workers::call::retry::call_with_retry;
use batchyard_workers::provider::{
    AzureAuth, AzureOpenAiConfig, AzureOpenAiProvider, ProviderErrorKind, Secret,
};
use support::fake_provider::{AzureFake as _, body_for, call, content, fast_policy};

const KEY: &str = "azkey-0123456789abcdef";

fn keyed(server: &FakeProvider, auth: AzureAuth) -> AzureOpenAiProvider {
    server.provider_with(AzureOpenAiConfig {
        auth,
        ..AzureOpenAiConfig::default()
    })
}

fn api_key(key: &str) -> AzureAuth {
    AzureAuth::ApiKey(Secret::new(key.to_owned()))
}

#[tokio::test]
async fn a_deployment_answers_with_usage_finish_reason_and_limits() {
    let server = FakeProvider::start(&["--require-key", KEY, "--rpm", "100"]);
    let provider = keyed(&server, api_key(KEY));
    let text = "Summarise this report about quarterly widget sales in the north region";
    let body = body_for(text);
    let done = provider
        .complete(call("gpt-4o-mini-prod", &body))
        .await
        .expect("a completion");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    let expected_input = ("You summarise documents.".len() + text.len()) as u64 / 4 + 2 * 4;
    assert_eq!(done.input_tokens, expected_input);
    assert!(done.output_tokens > 0);
    assert_eq!(
        done.body["usage"]["completion_tokens"].as_u64(),
        Some(done.output_tokens)
    );
    // The fake answers as the deployment named in the URL.
    assert!(
        content(&done).starts_with("fake reply from gpt-4o-mini-prod: "),
        "{}",
        content(&done)
    );
    let limits = done.rate_limits.expect("x-ratelimit-remaining-requests");
    assert_eq!(limits.remaining_requests, Some(99));
    assert_eq!(server.count(200), 1);

    // An Entra ID token goes as a bearer token instead.
    let token = keyed(&server, AzureAuth::AdToken(Secret::new(KEY.to_owned())));
    let done = token
        .complete(call("other-deployment", &body))
        .await
        .expect("a completion with the token");
    assert!(content(&done).starts_with("fake reply from other-deployment"));
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_auth_and_never_shows_the_key() {
    let server = FakeProvider::start(&["--require-key", KEY]);
    let body = body_for("hello");
    let wrong = "azkey-wrong-secret-999";
    for auth in [
        api_key(wrong),
        AzureAuth::AdToken(Secret::new(wrong.to_owned())),
        AzureAuth::None,
    ] {
        let provider = keyed(&server, auth);
        let err = provider
            .complete(call("dep", &body))
            .await
            .expect_err("refused");
        assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
        assert_eq!(err.status, Some(401));
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(wrong), "{shown}");
        assert!(shown.contains("AZURE_OPENAI_AD_TOKEN"), "{shown}");
    }
    assert_eq!(server.count(401), 3);
}

#[tokio::test]
async fn an_unknown_api_version_is_an_invalid_request_that_says_so() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider_with(AzureOpenAiConfig {
        api_version: "2024-10-21-beta".into(),
        ..AzureOpenAiConfig::default()
    });
    let err = provider
        .complete(call("dep", &body_for("hello")))
        .await
        .expect_err("refused");
    assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{err}");
    assert_eq!(err.status, Some(400));
    assert!(err.message.contains("api_version"), "{err}");

    // Without any api-version Azure answers 404; the fake does too.
    let url = format!("{}/openai/deployments/dep/chat/completions", server.url);
    let status = reqwest::Client::new()
        .post(url)
        .json(&body_for("hello"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 404);
}

#[tokio::test]
async fn a_429_is_retried_after_the_retry_after_ms_hint() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("please summarise FAKE:429_ONCE azure document 7");
    let started = Instant::now();
    let (result, attempts) =
        call_with_retry(&fast_policy(4), || provider.complete(call("dep", &body))).await;
    let elapsed = started.elapsed();
    result.expect("success after one retry");
    assert_eq!(attempts, 2);
    // The backoff alone is at most 5 ms; the 300 ms come from `retry-after-ms: 300`.
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert_eq!(server.count(429), 1);

    // Over the fake's rpm: Azure's 429 with the wait to the window's end.
    let server = FakeProvider::start(&["--rpm", "1"]);
    let provider = server.provider();
    provider
        .complete(call("dep", &body_for("one")))
        .await
        .unwrap();
    let err = provider
        .complete(call("dep", &body_for("two")))
        .await
        .expect_err("over the limit");
    assert_eq!(err.kind, ProviderErrorKind::RateLimited);
    let hint = err.retry_after.expect("retry-after-ms");
    assert!(
        hint > Duration::ZERO && hint <= Duration::from_secs(60),
        "{hint:?}"
    );
}

#[tokio::test]
async fn content_filter_and_server_errors_are_typed() {
    let server = FakeProvider::start(&[]);
    let err = server
        .faulty("filter")
        .complete(call("dep", &body_for("hello")))
        .await
        .expect_err("filtered");
    assert_eq!(err.kind, ProviderErrorKind::ContentFilter, "{err}");
    let err = server
        .faulty("503")
        .complete(call("dep", &body_for("hello")))
        .await
        .expect_err("unavailable");
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
}
