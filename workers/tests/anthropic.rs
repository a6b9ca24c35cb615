//! The Anthropic provider over real HTTP, against the fake provider's `/v1/messages`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_jobs::retry::Retryable as _;
use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::{AnthropicConfig, ProviderError, ProviderErrorKind, Secret};
use serde_json::json;
use support::fake_provider::{AnthropicFake as _, ask, fails, messages, user};

const MODEL: &str = "claude-test";

#[tokio::test]
async fn text_and_usage_map_to_an_openai_completion() {
    let server = FakeProvider::start(&[]);
    let text = "Summarise the quarterly report on widgets and gadgets, please.";
    let done = ask(&server.provider(), MODEL, &user(text)).await.unwrap();
    let first40: String = text.chars().take(40).collect();
    let expected = format!("fake reply from claude-test: {first40}");
    assert_eq!(done.body["object"], "chat.completion");
    assert_eq!(done.body["model"], "claude-test");
    assert!(done.body["id"].as_str().unwrap().starts_with("msg_fake"));
    assert_eq!(done.body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(done.body["choices"][0]["message"]["content"], expected);
    assert_eq!(done.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert!(
        done.request_id.starts_with("req_fake"),
        "{}",
        done.request_id
    );
    // The fake counts four characters a token, plus four a message.
    let prompt = (text.chars().count() / 4 + 4) as u64;
    let completion = (expected.chars().count() as u64).div_ceil(4);
    assert_eq!(
        (done.input_tokens, done.output_tokens),
        (prompt, completion)
    );
    assert_eq!(done.body["usage"]["prompt_tokens"], prompt);
    assert_eq!(done.body["usage"]["completion_tokens"], completion);
    assert_eq!(done.body["usage"]["total_tokens"], prompt + completion);
    assert!(!done.simulated);
}

#[tokio::test]
async fn prompt_cache_reads_and_writes_are_parts_of_the_input() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let text = "A long shared prefix for every item of the batch, then this item. ".repeat(8);
    let plain = ask(&provider, MODEL, &user(&text)).await.unwrap();
    assert_eq!(
        (plain.cached_input_tokens, plain.cache_write_input_tokens),
        (0, 0)
    );
    // The fake reports Anthropic's three counts; batchyard's input is their sum.
    let marked = format!("{text}[[cache_write_tokens=40]][[cached_tokens=60]]");
    let done = ask(&provider, MODEL, &user(&marked)).await.unwrap();
    let prompt = (marked.chars().count() / 4 + 4) as u64;
    assert_eq!(done.input_tokens, prompt);
    assert_eq!(done.cached_input_tokens, 60);
    assert_eq!(done.cache_write_input_tokens, 40);
    let details = &done.body["usage"]["prompt_tokens_details"];
    assert_eq!(details["cached_tokens"], 60);
    assert_eq!(details["cache_write_tokens"], 40);
    assert_eq!(done.body["usage"]["prompt_tokens"], prompt);
}

#[tokio::test]
async fn system_messages_go_to_the_top_level_system_field() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let system = "You are a careful assistant who answers in exactly three bullet points.";
    // The fake refuses any role but user/assistant in `messages`, as the real API does, and
    // counts the top-level system prompt in the input tokens.
    let with = messages(json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "hello"},
    ]));
    let done = ask(&provider, MODEL, &with).await.unwrap();
    let without = ask(&provider, MODEL, &user("hello")).await.unwrap();
    let system_tokens = (system.chars().count() + 5) / 4 - 5 / 4;
    assert_eq!(
        done.input_tokens,
        without.input_tokens + system_tokens as u64
    );
    assert_eq!(
        done.body["choices"][0]["message"]["content"],
        "fake reply from claude-test: hello"
    );

    // A conversation with an earlier assistant turn keeps its order.
    let turns = messages(json!([
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"},
    ]));
    let done = ask(&provider, MODEL, &turns).await.unwrap();
    assert_eq!(
        done.body["choices"][0]["message"]["content"],
        "fake reply from claude-test: second question"
    );
}

#[tokio::test]
async fn max_tokens_stop_maps_to_finish_reason_length() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let mut short = user("a question that needs a long answer");
    short.insert("max_tokens".into(), json!(3));
    let done = ask(&provider, MODEL, &short).await.unwrap();
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
    assert_eq!(done.body["choices"][0]["finish_reason"], "length");
    assert_eq!(done.output_tokens, 3);

    for done in [
        ask(&provider, MODEL, &user("FAKE:LENGTH please"))
            .await
            .unwrap(),
        ask(&server.faulty("length"), MODEL, &user("hi"))
            .await
            .unwrap(),
    ] {
        assert_eq!(done.finish_reason.as_deref(), Some("length"));
    }
}

#[tokio::test]
async fn overloaded_529_is_transient() {
    let server = FakeProvider::start(&[]);
    let err = fails(&server.faulty("529"), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
    assert_eq!(err.status, Some(529));
    assert!(err.is_retryable());
    let err = fails(&server.faulty("500"), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
    // A 200 carrying an error object is typed by its error type.
    let err = fails(&server.faulty("error_200"), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
}

#[tokio::test]
async fn rate_limits_are_rate_limited_with_a_retry_hint() {
    // The injected 429: retry-after 1 and a requests reset one second ahead.
    let server = FakeProvider::start(&[]);
    let err = fails(&server.faulty("429"), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::RateLimited, "{err}");
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_secs(1)));

    // The enforced limit: retry-after and the anthropic-ratelimit-requests-reset say when the
    // minute window ends.
    let server = FakeProvider::start(&["--rpm", "1"]);
    let provider = server.provider();
    ask(&provider, MODEL, &user("first")).await.unwrap();
    let err = fails(&provider, MODEL, "second").await;
    assert_eq!(err.kind, ProviderErrorKind::RateLimited, "{err}");
    let hint = err.retry_after.expect("a retry hint");
    assert!(
        hint > Duration::ZERO && hint <= Duration::from_secs(60),
        "{hint:?}"
    );
}

#[tokio::test]
async fn a_bad_key_is_auth_and_never_leaks() {
    let good = "sk-ant-good-0123456789";
    let bad = "sk-ant-wrong-9876543210";
    let server = FakeProvider::start(&["--require-key", good]);
    let provider = server.provider_with(AnthropicConfig {
        api_key: Some(Secret::new(bad.to_owned())),
        ..AnthropicConfig::default()
    });
    assert!(!format!("{provider:?}").contains(bad));
    // The fake echoes the key it was given; the provider must scrub it.
    let err = fails(&provider, MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
    assert_eq!(err.status, Some(401));
    for shown in [err.to_string(), format!("{err:?}"), err.message.clone()] {
        assert!(!shown.contains(bad), "the key leaked: {shown}");
        assert!(
            !shown.contains("sk-ant-wrong"),
            "part of the key leaked: {shown}"
        );
    }
    assert!(err.message.contains("***"), "{}", err.message);

    let err = fails(&server.provider(), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");

    let provider = server.provider_with(AnthropicConfig {
        api_key: Some(Secret::new(good.to_owned())),
        ..AnthropicConfig::default()
    });
    ask(&provider, MODEL, &user("hi")).await.unwrap();
}

#[tokio::test]
async fn malformed_bodies_are_malformed_responses() {
    let server = FakeProvider::start(&[]);
    for fault in ["malformed", "html", "huge", "no_choices"] {
        let err = fails(&server.faulty(fault), MODEL, "hi").await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::MalformedResponse,
            "{fault}: {err}"
        );
        assert_eq!(err.status, Some(200), "{fault}");
        assert!(
            err.message.len() < 1000,
            "{fault}: {} bytes",
            err.message.len()
        );
    }
    let err = fails(&server.provider(), MODEL, "FAKE:MALFORMED").await;
    assert_eq!(err.kind, ProviderErrorKind::MalformedResponse, "{err}");
}

#[tokio::test]
async fn other_faults_are_typed() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let kind = |e: ProviderError| e.kind;
    assert_eq!(
        kind(fails(&provider, MODEL, "FAKE:CONTEXT").await),
        ProviderErrorKind::ContextOverflow
    );
    assert_eq!(
        kind(fails(&provider, MODEL, "FAKE:QUOTA").await),
        ProviderErrorKind::QuotaExhausted
    );
    assert_eq!(
        kind(fails(&provider, MODEL, "FAKE:FILTER").await),
        ProviderErrorKind::ContentFilter
    );
    assert_eq!(
        kind(fails(&provider, MODEL, "FAKE:DROP").await),
        ProviderErrorKind::Transient
    );

    let server = FakeProvider::start(&["--hang-secs", "30"]);
    let provider = server.provider_with(AnthropicConfig {
        timeout: Duration::from_secs(1),
        ..AnthropicConfig::default()
    });
    let started = Instant::now();
    let err = fails(&provider, MODEL, "FAKE:HANG").await;
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
    assert!(err.message.contains("timed out"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
}
