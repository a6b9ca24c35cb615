//! The OpenAI-compatible provider and the retry policy over real HTTP on loopback, against
//! `batchyard-fake-provider`.
//!
//! Each test starts its own fake provider process (so `/stats` counts only its requests) and
//! kills it when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::{
    ChatCall, OpenAiConfig, OpenAiProvider, ProviderErrorKind, Secret,
};
use serde_json::{Map, Value, json};
use support::fake_provider::{OpenAiFake as _, body_for, call, content, fast_policy, with_retry};

#[tokio::test]
async fn openai_success_parses_usage_and_finish_reason() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let text = "Summarise this report about quarterly widget sales in the north region";
    let body = body_for(text);
    let done = provider
        .complete(call("small-1", &body))
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
    assert!(
        done.request_id.starts_with("fakereq-"),
        "{}",
        done.request_id
    );
    assert_eq!(done.body["model"], "small-1", "model is set from the call");
    let first40: String = text.chars().take(40).collect();
    assert_eq!(
        content(&done),
        format!("fake reply from small-1: {first40}")
    );
    assert!(!done.simulated);
    assert_eq!(server.count(200), 1);
}

#[tokio::test]
async fn prompt_cache_reads_and_writes_are_read_from_the_usage() {
    let server = FakeProvider::start(&[]);
    let text = "A long shared prefix for every item of the batch, then this item. ".repeat(8);
    // Per item, in the text.
    let body = body_for(&format!("{text}[[cached_tokens=96]]"));
    let done = server
        .provider()
        .complete(call("small-1", &body))
        .await
        .unwrap();
    assert!(done.input_tokens > 96, "{}", done.input_tokens);
    assert_eq!(done.cached_input_tokens, 96);
    assert_eq!(done.cache_write_input_tokens, 0);
    let details = &done.body["usage"]["prompt_tokens_details"];
    assert_eq!(details["cached_tokens"], 96);
    assert!(details.get("cache_write_tokens").is_none(), "{details}");
    // Per provider, in headers (a gateway that bills cache writes too); the fake never
    // reports more cached than the prompt.
    let provider = server.provider_with(OpenAiConfig {
        headers: vec![
            ("x-fake-cached-tokens".into(), "100000".into()),
            ("x-fake-cache-write-tokens".into(), "7".into()),
        ],
        ..OpenAiConfig::default()
    });
    let done = provider
        .complete(call("small-1", &body_for(&text)))
        .await
        .unwrap();
    assert_eq!(done.cached_input_tokens, done.input_tokens);
    assert_eq!(done.cache_write_input_tokens, 0);
    // Without a marker nothing is cached, and the detail says so as OpenAI's does.
    let done = server
        .provider()
        .complete(call("small-1", &body_for(&text)))
        .await
        .unwrap();
    assert_eq!(
        (done.cached_input_tokens, done.cache_write_input_tokens),
        (0, 0)
    );
    assert_eq!(
        done.body["usage"]["prompt_tokens_details"]["cached_tokens"],
        0
    );
}

#[tokio::test]
async fn default_max_tokens_is_sent_only_when_the_body_sets_none() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("a long enough message to need more than two tokens in reply");
    let done = provider
        .complete(ChatCall {
            model_name: "small-1",
            body: &body,
            default_max_tokens: Some(2),
        })
        .await
        .expect("a completion");
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
    assert_eq!(done.output_tokens, 2);

    let mut own_limit = body.clone();
    own_limit.insert("max_tokens".into(), json!(500));
    let done = provider
        .complete(ChatCall {
            model_name: "small-1",
            body: &own_limit,
            default_max_tokens: Some(2),
        })
        .await
        .expect("a completion");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
}

#[tokio::test]
async fn rate_limited_once_is_retried_and_honours_retry_after_ms() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("please summarise FAKE:429_ONCE document 7");
    let started = Instant::now();
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    let elapsed = started.elapsed();
    let done = result.expect("success after one retry");
    assert_eq!(attempts, 2);
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    // The backoff alone is at most 5 ms; the 50 ms wait comes from `retry-after-ms: 50`.
    assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
    assert_eq!(server.count(429), 1);
    assert_eq!(server.count(200), 1);
}

#[tokio::test]
async fn rate_limit_error_carries_the_hint() {
    let server = FakeProvider::start(&["--fail-rate-429", "1"]);
    let provider = server.provider();
    let body = body_for("anything");
    let (result, attempts) = with_retry(&provider, &fast_policy(3), &body).await;
    let err = result.expect_err("always rate limited");
    assert_eq!(err.kind, ProviderErrorKind::RateLimited);
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_millis(50)));
    assert_eq!(attempts, 3);
    assert_eq!(server.count(429), 3);
}

#[tokio::test]
async fn server_error_always_is_transient_after_max_attempts() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("FAKE:500_ALWAYS");
    let policy = fast_policy(4);
    let (result, attempts) = with_retry(&provider, &policy, &body).await;
    let err = result.expect_err("always 500");
    assert_eq!(err.kind, ProviderErrorKind::Transient);
    assert_eq!(err.status, Some(500));
    assert_eq!(attempts, policy.max_attempts);
    assert_eq!(server.count(500), u64::from(policy.max_attempts));
}

#[tokio::test]
async fn server_error_once_then_success() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("FAKE:500_ONCE then fine");
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    assert!(result.is_ok());
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn context_overflow_is_not_retried() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("a very long document FAKE:CONTEXT");
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    let err = result.expect_err("context overflow");
    assert_eq!(err.kind, ProviderErrorKind::ContextOverflow);
    assert_eq!(err.status, Some(400));
    assert_eq!(attempts, 1);
    assert_eq!(server.count(400), 1);
}

#[tokio::test]
async fn malformed_response_is_classified_and_retried_once() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let body = body_for("FAKE:MALFORMED");
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    let err = result.expect_err("malformed");
    assert_eq!(err.kind, ProviderErrorKind::MalformedResponse);
    assert!(err.message.contains("not json"), "{}", err.message);
    assert_eq!(attempts, 2, "a malformed response is retried at most once");
    assert_eq!(server.count(200), 2);
}

#[tokio::test]
async fn a_reply_without_choices_is_malformed() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider_with(OpenAiConfig {
        headers: vec![("x-fake-fault".into(), "no_choices".into())],
        ..OpenAiConfig::default()
    });
    let err = provider
        .complete(call("small-1", &body_for("hello")))
        .await
        .expect_err("no choices");
    assert_eq!(err.kind, ProviderErrorKind::MalformedResponse);
}

#[tokio::test]
async fn quota_exhausted_is_not_retried() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body_for("FAKE:QUOTA")).await;
    assert_eq!(
        result.expect_err("quota").kind,
        ProviderErrorKind::QuotaExhausted
    );
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn content_filter_by_header_fault_is_not_retried() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider_with(OpenAiConfig {
        headers: vec![("x-fake-fault".into(), "filter".into())],
        ..OpenAiConfig::default()
    });
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body_for("hello")).await;
    assert_eq!(
        result.expect_err("filtered").kind,
        ProviderErrorKind::ContentFilter
    );
    assert_eq!(attempts, 1);
}

#[tokio::test]
async fn auth_failure_is_classified_and_never_leaks_the_key() {
    let good = "sk-fake-good-0123456789";
    let wrong = "sk-test-WRONG-abc123xyz";
    let server = FakeProvider::start(&["--require-key", good]);
    let body = body_for("hello");

    // The fake echoes the wrong key in its message, as OpenAI does (partly): it must be scrubbed.
    let provider = server.provider_with(OpenAiConfig {
        api_key: Some(Secret::new(wrong.to_owned())),
        ..OpenAiConfig::default()
    });
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    let err = result.expect_err("wrong key");
    assert_eq!(err.kind, ProviderErrorKind::Auth);
    assert_eq!(err.status, Some(401));
    assert_eq!(attempts, 1, "auth errors are not retried in place");
    for shown in [format!("{err:?}"), err.to_string(), format!("{provider:?}")] {
        assert!(!shown.contains(wrong), "the key leaked: {shown}");
        assert!(
            !shown.contains("WRONG-abc"),
            "part of the key leaked: {shown}"
        );
    }
    assert!(err.message.contains("api key"), "{}", err.message);

    let anonymous = server.provider();
    let err = anonymous
        .complete(call("small-1", &body))
        .await
        .expect_err("no key");
    assert_eq!(err.kind, ProviderErrorKind::Auth);

    let provider = server.provider_with(OpenAiConfig {
        api_key: Some(Secret::new(good.to_owned())),
        ..OpenAiConfig::default()
    });
    let done = provider
        .complete(call("small-1", &body))
        .await
        .expect("the right key works");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert!(!format!("{provider:?}").contains(good));
}

#[tokio::test]
async fn a_timeout_is_transient() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider_with(OpenAiConfig {
        timeout: Duration::from_millis(200),
        headers: vec![("x-fake-latency-ms".into(), "3000".into())],
        ..OpenAiConfig::default()
    });
    let started = Instant::now();
    let err = provider
        .complete(call("small-1", &body_for("slow")))
        .await
        .expect_err("timed out");
    assert_eq!(err.kind, ProviderErrorKind::Transient);
    assert!(err.message.contains("timed out"), "{}", err.message);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let provider = OpenAiProvider::new(OpenAiConfig {
        base_url: format!("http://127.0.0.1:{port}/v1"),
        api_key: Some(Secret::new("sk-never-shown-999".into())),
        connect_timeout: Duration::from_secs(2),
        ..OpenAiConfig::default()
    })
    .expect("provider");
    let (result, attempts) = with_retry(&provider, &fast_policy(2), &body_for("hi")).await;
    let err = result.expect_err("nothing listens there");
    assert_eq!(err.kind, ProviderErrorKind::Transient);
    assert!(err.message.contains("could not connect"), "{}", err.message);
    assert!(!format!("{err:?}").contains("sk-never-shown-999"));
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn one_client_serves_many_concurrent_calls() {
    let server = FakeProvider::start(&["--latency-ms", "5"]);
    let provider = server.provider();
    let bodies: Vec<Map<String, Value>> = (0..64).map(|i| body_for(&format!("doc {i}"))).collect();
    let results = futures::future::join_all(
        bodies
            .iter()
            .map(|body| provider.complete(call("small-1", body))),
    )
    .await;
    for (i, result) in results.iter().enumerate() {
        let done = result.as_ref().expect("a completion");
        assert!(content(done).ends_with(&format!("doc {i}")));
    }
    assert_eq!(server.count(200), 64);
}

#[test]
fn the_fake_provider_refuses_to_bind_beyond_loopback() {
    let output = Command::new(batchyard_testkit::fake_provider_bin())
        .args(["--addr", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the fake provider");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

#[tokio::test]
async fn the_providers_remaining_limits_are_reported() {
    let server = FakeProvider::start(&["--rpm", "100", "--tpm", "100000"]);
    let provider = server.provider();
    let body = body_for("how much is left");
    let first = provider.complete(call("small-1", &body)).await.unwrap();
    let report = first.rate_limits.expect("x-ratelimit-* headers were sent");
    assert_eq!(report.remaining_requests, Some(99));
    assert!(report.remaining_tokens.is_some_and(|t| t < 100_000));
    assert!(
        report
            .reset
            .is_some_and(|r| r <= std::time::Duration::from_secs(60))
    );
    let second = provider.complete(call("small-1", &body)).await.unwrap();
    assert_eq!(second.rate_limits.unwrap().remaining_requests, Some(98));
    let plain = FakeProvider::start(&[]);
    let done = plain
        .provider()
        .complete(call("small-1", &body))
        .await
        .unwrap();
    assert!(done.rate_limits.is_none(), "no headers, no report");
}
