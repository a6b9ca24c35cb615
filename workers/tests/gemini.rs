//! The Gemini provider over real HTTP, against the fake provider's
//! `/v1beta/models/{model}:generateContent`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_jobs::retry::Retryable as _;
use batchyard_testkit::FakeProvider;
use batchyard_workers::call::retry::{RetryPolicy, call_with_retry};
use batchyard_workers::provider::{GeminiConfig, GeminiProvider, ProviderErrorKind, Secret};
use serde_json::json;
use support::fake_provider::{GeminiFake as _, ask, fails, messages, user};

const MODEL: &str = "gemini-test";

#[tokio::test]
async fn text_usage_and_finish_reason_map_to_an_openai_completion() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let system = "You are a careful assistant who answers in exactly three bullet points.";
    let text = "Summarise the quarterly report on widgets and gadgets, please.";
    let with_system = messages(json!([
        {"role": "system", "content": system},
        {"role": "user", "content": "an earlier question"},
        {"role": "assistant", "content": "an earlier answer"},
        {"role": "user", "content": text},
    ]));
    let done = ask(&provider, MODEL, &with_system).await.unwrap();
    let first40: String = text.chars().take(40).collect();
    let expected = format!("fake reply from gemini-test: {first40}");
    assert_eq!(done.body["object"], "chat.completion");
    assert_eq!(done.body["model"], "gemini-test");
    assert_eq!(done.body["choices"][0]["message"]["content"], expected);
    assert_eq!(done.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert!(
        done.request_id.starts_with("fakegen-"),
        "{}",
        done.request_id
    );
    // The fake counts four characters a token over systemInstruction and every content, plus
    // four a content: proof the system prompt and both earlier turns arrived.
    let chars = system.chars().count()
        + "an earlier question".len()
        + "an earlier answer".len()
        + text.chars().count();
    let prompt = (chars / 4 + 3 * 4) as u64;
    let completion = (expected.chars().count() as u64).div_ceil(4);
    assert_eq!(
        (done.input_tokens, done.output_tokens),
        (prompt, completion)
    );
    assert_eq!(done.body["usage"]["prompt_tokens"], prompt);
    assert_eq!(done.body["usage"]["total_tokens"], prompt + completion);
    assert!(!done.simulated);

    // A proxy without the version prefix: the fake serves `/models/...` too.
    let bare = GeminiProvider::new(GeminiConfig {
        base_url: server.url.clone(),
        ..GeminiConfig::default()
    })
    .unwrap();
    assert_eq!(
        ask(&bare, MODEL, &user("hi")).await.unwrap().body["choices"][0]["message"]["content"],
        "fake reply from gemini-test: hi"
    );

    // maxOutputTokens reaches the model: a short limit ends in MAX_TOKENS, i.e. length.
    let mut short = user("a question that needs a long answer");
    short.insert("max_tokens".into(), json!(3));
    let done = ask(&provider, MODEL, &short).await.unwrap();
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
    assert_eq!(done.output_tokens, 3);
}

#[tokio::test]
async fn a_429_with_retry_info_is_retried_after_its_hint() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let err = fails(&server.faulty("429"), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::RateLimited, "{err}");
    assert_eq!(err.status, Some(429));
    assert_eq!(
        err.retry_after,
        Some(Duration::from_secs(1)),
        "RetryInfo 1s"
    );

    // The first call for this text gets the 429 (retryDelay 1s); the retry module waits the
    // hint out, not its 1 ms backoff, and the second call succeeds.
    let policy = RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
        max_attempts: 3,
    };
    let request = user("FAKE:429_ONCE for gemini");
    let started = Instant::now();
    let (result, attempts) = call_with_retry(&policy, || ask(&provider, MODEL, &request)).await;
    let waited = started.elapsed();
    let done = result.unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert!(waited >= Duration::from_secs(1), "{waited:?}");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert_eq!(server.count(429), 2);

    // The enforced limit: retryDelay says when the minute window ends.
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
async fn safety_stops_are_content_filter_and_others_are_typed() {
    let server = FakeProvider::start(&[]);
    let provider = server.provider();
    let err = fails(&provider, MODEL, "FAKE:FILTER").await;
    assert_eq!(err.kind, ProviderErrorKind::ContentFilter, "{err}");
    assert!(err.message.contains("SAFETY"), "{err}");
    assert_eq!(
        fails(&provider, MODEL, "FAKE:CONTEXT").await.kind,
        ProviderErrorKind::ContextOverflow
    );
    assert_eq!(
        fails(&provider, MODEL, "FAKE:QUOTA").await.kind,
        ProviderErrorKind::QuotaExhausted
    );
    for fault in ["500", "503", "error_200"] {
        let err = fails(&server.faulty(fault), MODEL, "hi").await;
        assert_eq!(err.kind, ProviderErrorKind::Transient, "{fault}: {err}");
        assert!(err.is_retryable());
    }
    for fault in ["malformed", "html", "huge", "no_choices"] {
        let err = fails(&server.faulty(fault), MODEL, "hi").await;
        assert_eq!(
            err.kind,
            ProviderErrorKind::MalformedResponse,
            "{fault}: {err}"
        );
    }
    // An unknown method on the path is Google's 404: the provider never sends one, but a
    // wrong base_url gets it.
    let lost = GeminiProvider::new(GeminiConfig {
        base_url: format!("{}/v1beta/models/x", server.url),
        ..GeminiConfig::default()
    })
    .unwrap();
    assert_eq!(
        fails(&lost, MODEL, "hi").await.kind,
        ProviderErrorKind::InvalidRequest
    );
}

#[tokio::test]
async fn a_bad_key_is_auth_and_never_leaks() {
    let good = "AIzaSyGood0123456789";
    let bad = "AIzaSyWrong9876543210";
    let server = FakeProvider::start(&["--require-key", good]);
    let provider = server.provider_with(GeminiConfig {
        api_key: Some(Secret::new(bad.to_owned())),
        ..GeminiConfig::default()
    });
    assert!(!format!("{provider:?}").contains(bad));
    // The fake echoes the key it was given; the provider must scrub it.
    let err = fails(&provider, MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
    assert_eq!(err.status, Some(400), "Google answers a wrong key with 400");
    for shown in [err.to_string(), format!("{err:?}"), err.message.clone()] {
        assert!(!shown.contains(bad), "the key leaked: {shown}");
        assert!(
            !shown.contains("AIzaSyWrong"),
            "part of the key leaked: {shown}"
        );
    }
    assert!(err.message.contains("***"), "{}", err.message);
    assert!(!err.is_retryable());

    // No key at all: 403 PERMISSION_DENIED.
    let err = fails(&server.provider(), MODEL, "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Auth, "{err}");
    assert_eq!(err.status, Some(403));

    let provider = server.provider_with(GeminiConfig {
        api_key: Some(Secret::new(good.to_owned())),
        ..GeminiConfig::default()
    });
    ask(&provider, MODEL, &user("hi")).await.unwrap();
}
