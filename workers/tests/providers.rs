//! Providers and the retry policy over real HTTP on loopback, against `batchyard-fake-provider`.
//!
//! Each test starts its own fake provider process (so `/stats` counts only its requests) and
//! kills it when the test ends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use batchyard_workers::provider::openai::classify;
use batchyard_workers::provider::{
    ChatCall, Completion, OpenAiConfig, OpenAiProvider, ProviderError, ProviderErrorKind, Secret,
    SimulatedConfig, SimulatedProvider,
};
use batchyard_workers::retry::{RetryPolicy, call_with_retry};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};

/// A running fake provider, killed on drop.
struct FakeServer {
    child: Child,
    url: String,
}

impl FakeServer {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_batchyard-fake-provider"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake provider");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        // One line, or EOF if it died.
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = match line.trim().strip_prefix("listening on ") {
            Some(url) => url.to_owned(),
            None => {
                let _ = child.kill();
                panic!("unexpected first line from the fake provider: {line:?}");
            }
        };
        Self { child, url }
    }

    fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    fn provider(&self) -> OpenAiProvider {
        self.provider_with(OpenAiConfig::default())
    }

    fn provider_with(&self, config: OpenAiConfig) -> OpenAiProvider {
        OpenAiProvider::new(OpenAiConfig {
            base_url: self.base_url(),
            ..config
        })
        .expect("build the provider")
    }

    /// Requests served, by status code.
    async fn count(&self, status: u16) -> u64 {
        let stats: Value = reqwest::get(format!("{}/stats", self.url))
            .await
            .expect("get /stats")
            .json()
            .await
            .expect("stats json");
        stats["by_status"][status.to_string()].as_u64().unwrap_or(0)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn body_for(text: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "model": "placeholder",
        "messages": [
            {"role": "system", "content": "You summarise documents."},
            {"role": "user", "content": text},
        ],
    }) else {
        unreachable!()
    };
    map
}

fn call<'a>(model: &'a str, body: &'a Map<String, Value>) -> ChatCall<'a> {
    ChatCall {
        model_name: model,
        body,
        default_max_tokens: None,
    }
}

fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
        max_attempts,
    }
}

fn content(completion: &Completion) -> &str {
    completion.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
}

async fn with_retry(
    provider: &OpenAiProvider,
    policy: &RetryPolicy,
    body: &Map<String, Value>,
) -> (Result<Completion, ProviderError>, u32) {
    call_with_retry(policy, || provider.complete(call("small-1", body))).await
}

// ---- the OpenAI-compatible provider over HTTP ----

#[tokio::test]
async fn openai_success_parses_usage_and_finish_reason() {
    let server = FakeServer::start(&[]);
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
    assert_eq!(server.count(200).await, 1);
}

#[tokio::test]
async fn default_max_tokens_is_sent_only_when_the_body_sets_none() {
    let server = FakeServer::start(&[]);
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
    let server = FakeServer::start(&[]);
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
    assert_eq!(server.count(429).await, 1);
    assert_eq!(server.count(200).await, 1);
}

#[tokio::test]
async fn rate_limit_error_carries_the_hint() {
    let server = FakeServer::start(&["--fail-rate-429", "1"]);
    let provider = server.provider();
    let body = body_for("anything");
    let (result, attempts) = with_retry(&provider, &fast_policy(3), &body).await;
    let err = result.expect_err("always rate limited");
    assert_eq!(err.kind, ProviderErrorKind::RateLimited);
    assert_eq!(err.status, Some(429));
    assert_eq!(err.retry_after, Some(Duration::from_millis(50)));
    assert_eq!(attempts, 3);
    assert_eq!(server.count(429).await, 3);
}

#[tokio::test]
async fn server_error_always_is_transient_after_max_attempts() {
    let server = FakeServer::start(&[]);
    let provider = server.provider();
    let body = body_for("FAKE:500_ALWAYS");
    let policy = fast_policy(4);
    let (result, attempts) = with_retry(&provider, &policy, &body).await;
    let err = result.expect_err("always 500");
    assert_eq!(err.kind, ProviderErrorKind::Transient);
    assert_eq!(err.status, Some(500));
    assert_eq!(attempts, policy.max_attempts);
    assert_eq!(server.count(500).await, u64::from(policy.max_attempts));
}

#[tokio::test]
async fn server_error_once_then_success() {
    let server = FakeServer::start(&[]);
    let provider = server.provider();
    let body = body_for("FAKE:500_ONCE then fine");
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    assert!(result.is_ok());
    assert_eq!(attempts, 2);
}

#[tokio::test]
async fn context_overflow_is_not_retried() {
    let server = FakeServer::start(&[]);
    let provider = server.provider();
    let body = body_for("a very long document FAKE:CONTEXT");
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    let err = result.expect_err("context overflow");
    assert_eq!(err.kind, ProviderErrorKind::ContextOverflow);
    assert_eq!(err.status, Some(400));
    assert_eq!(attempts, 1);
    assert_eq!(server.count(400).await, 1);
}

#[tokio::test]
async fn malformed_response_is_classified_and_retried_once() {
    let server = FakeServer::start(&[]);
    let provider = server.provider();
    let body = body_for("FAKE:MALFORMED");
    let (result, attempts) = with_retry(&provider, &fast_policy(4), &body).await;
    let err = result.expect_err("malformed");
    assert_eq!(err.kind, ProviderErrorKind::MalformedResponse);
    assert!(err.message.contains("not json"), "{}", err.message);
    assert_eq!(attempts, 2, "a malformed response is retried at most once");
    assert_eq!(server.count(200).await, 2);
}

#[tokio::test]
async fn a_reply_without_choices_is_malformed() {
    let server = FakeServer::start(&[]);
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
    let server = FakeServer::start(&[]);
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
    let server = FakeServer::start(&[]);
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
    let server = FakeServer::start(&["--require-key", good]);
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
    let server = FakeServer::start(&[]);
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
    let server = FakeServer::start(&["--latency-ms", "5"]);
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
    assert_eq!(server.count(200).await, 64);
}

#[test]
fn the_fake_provider_refuses_to_bind_beyond_loopback() {
    let output = Command::new(env!("CARGO_BIN_EXE_batchyard-fake-provider"))
        .args(["--addr", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()
        .expect("run the fake provider");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}

// ---- classify() ----

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).expect("header value"));
    }
    map
}

fn openai_error(code: &str, kind: &str, message: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

#[test]
fn classify_insufficient_quota_is_quota_exhausted_not_rate_limited() {
    let none = HeaderMap::new();
    let quota = openai_error(
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota",
    );
    let err = classify(429, &none, &quota);
    assert_eq!(err.kind, ProviderErrorKind::QuotaExhausted);
    assert!(!err.is_retryable());
    // Some providers put it only in `type`.
    let quota = openai_error("", "insufficient_quota", "out of credit");
    assert_eq!(
        classify(429, &none, &quota).kind,
        ProviderErrorKind::QuotaExhausted
    );
    let limited = openai_error("rate_limit_exceeded", "requests", "slow down");
    let err = classify(429, &none, &limited);
    assert_eq!(err.kind, ProviderErrorKind::RateLimited);
    assert!(err.is_retryable());
}

#[test]
fn classify_maps_statuses_and_codes_to_kinds() {
    use ProviderErrorKind as K;
    let none = HeaderMap::new();
    let plain = openai_error("", "invalid_request_error", "bad");
    for (status, kind) in [
        (500, K::Transient),
        (502, K::Transient),
        (503, K::Transient),
        (504, K::Transient),
        (529, K::Transient),
        (408, K::Transient),
        (400, K::InvalidRequest),
        (404, K::InvalidRequest),
        (422, K::InvalidRequest),
        (401, K::Auth),
        (403, K::Auth),
    ] {
        let err = classify(status, &none, &plain);
        assert_eq!(err.kind, kind, "status {status}");
        assert_eq!(err.status, Some(status));
    }
    let context = openai_error(
        "context_length_exceeded",
        "invalid_request_error",
        "too long",
    );
    assert_eq!(classify(400, &none, &context).kind, K::ContextOverflow);
    let context_in_message = openai_error(
        "",
        "invalid_request_error",
        "error code: context_length_exceeded",
    );
    assert_eq!(
        classify(400, &none, &context_in_message).kind,
        K::ContextOverflow
    );
    for code in ["content_filter", "content_policy_violation"] {
        let filtered = openai_error(code, "invalid_request_error", "blocked");
        assert_eq!(classify(400, &none, &filtered).kind, K::ContentFilter);
    }
    // Not JSON at all (a proxy's HTML page) still classifies by status.
    assert_eq!(
        classify(503, &none, b"<html>503 Service Unavailable</html>").kind,
        K::Transient
    );
    // Messages are lowercase-led and one line.
    let err = classify(
        404,
        &none,
        &openai_error("model_not_found", "x", "no\nsuch model"),
    );
    assert!(err.message.starts_with("the provider"), "{}", err.message);
    assert!(!err.message.contains('\n'));
    assert!(err.message.contains("check the model name"));
}

/// An IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn classify_reads_retry_after_as_seconds_or_http_date() {
    let busy = openai_error("", "server_error", "overloaded");
    let err = classify(503, &headers(&[("retry-after", "7")]), &busy);
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));

    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    let in_two_minutes = http_date(SystemTime::now() + Duration::from_secs(120));
    let err = classify(429, &headers(&[("retry-after", &in_two_minutes)]), &busy);
    let hint = err.retry_after.expect("a hint from the date");
    assert!(
        hint > Duration::from_secs(115) && hint <= Duration::from_secs(120),
        "{hint:?}"
    );
    // A date in the past means "now".
    let err = classify(
        429,
        &headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]),
        &busy,
    );
    assert_eq!(err.retry_after, Some(Duration::ZERO));
    // Garbage is ignored, not fatal.
    let err = classify(429, &headers(&[("retry-after", "whenever")]), &busy);
    assert_eq!(err.retry_after, None);
    // retry-after-ms, and the larger of two hints.
    let err = classify(
        429,
        &headers(&[("retry-after-ms", "1500"), ("retry-after", "1")]),
        &busy,
    );
    assert_eq!(err.retry_after, Some(Duration::from_millis(1500)));
}

#[test]
fn classify_reads_ratelimit_reset_durations() {
    let limited = openai_error("rate_limit_exceeded", "requests", "slow down");
    let ms = Duration::from_millis;
    for (value, expected) in [
        ("1s", ms(1000)),
        ("6m0s", ms(360_000)),
        ("20ms", ms(20)),
        ("1m30.5s", ms(90_500)),
        ("0.25s", ms(250)),
    ] {
        let err = classify(
            429,
            &headers(&[("x-ratelimit-reset-requests", value)]),
            &limited,
        );
        assert_eq!(err.retry_after, Some(expected), "{value}");
        let err = classify(
            429,
            &headers(&[("x-ratelimit-reset-tokens", value)]),
            &limited,
        );
        assert_eq!(err.retry_after, Some(expected), "{value}");
    }
    // Both present: the longer wins.
    let both = headers(&[
        ("x-ratelimit-reset-requests", "20ms"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    assert_eq!(
        classify(429, &both, &limited).retry_after,
        Some(ms(360_000))
    );
    // A limit that still has room does not hold the retry back.
    let room = headers(&[
        ("x-ratelimit-reset-requests", "20ms"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-tokens", "6m0s"),
        ("x-ratelimit-remaining-tokens", "15000"),
    ]);
    assert_eq!(classify(429, &room, &limited).retry_after, Some(ms(20)));
}

// ---- the simulated provider ----

fn simulated() -> SimulatedProvider {
    SimulatedProvider::new(SimulatedConfig::default())
}

#[tokio::test]
async fn simulated_is_deterministic_and_differs_by_model() {
    let body = body_for("The board met on Tuesday to review the annual budget and hiring plan.");
    let a = simulated()
        .complete(call("small-1", &body))
        .await
        .expect("ok");
    let b = simulated()
        .complete(call("small-1", &body))
        .await
        .expect("ok");
    assert_eq!(a, b, "same input, same output");
    let c = simulated()
        .complete(call("large-1", &body))
        .await
        .expect("ok");
    assert_ne!(content(&a), content(&c), "another model, another text");
    assert_ne!(a.body["id"], c.body["id"]);
    let other = body_for("Something else entirely.");
    let d = simulated()
        .complete(call("small-1", &other))
        .await
        .expect("ok");
    assert_ne!(content(&a), content(&d));
}

#[tokio::test]
async fn simulated_replies_are_labelled_openai_shaped_and_sized() {
    let text = "The board met on Tuesday to review the annual budget and hiring plan.";
    let body = body_for(text);
    let done = simulated()
        .complete(call("small-1", &body))
        .await
        .expect("ok");
    assert!(done.simulated);
    assert_eq!(done.body["simulated"], true);
    assert_eq!(done.body["object"], "chat.completion");
    assert_eq!(done.body["model"], "small-1");
    assert!(
        done.body["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("simcmpl-"))
    );
    assert_eq!(done.body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(done.finish_reason.as_deref(), Some("stop"));
    assert!(content(&done).starts_with("[simulated small-1]"));
    let expected_input = ("You summarise documents.".len() + text.len()) as u64 / 4 + 2 * 4;
    assert_eq!(done.input_tokens, expected_input);
    assert_eq!(done.output_tokens, 20 + expected_input / 8);
    let usage = &done.body["usage"];
    assert_eq!(usage["prompt_tokens"].as_u64(), Some(done.input_tokens));
    assert_eq!(
        usage["completion_tokens"].as_u64(),
        Some(done.output_tokens)
    );
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(done.input_tokens + done.output_tokens)
    );
    // About four characters a token.
    let chars = content(&done).chars().count() as u64;
    assert!(
        chars >= done.output_tokens * 4 - 4 && chars <= done.output_tokens * 4 + 4,
        "{chars}"
    );
}

#[tokio::test]
async fn simulated_truncates_to_a_small_max_tokens() {
    let mut body = body_for("Summarise the attached forty-page contract in detail, please.");
    body.insert("max_tokens".into(), json!(8));
    let done = simulated()
        .complete(call("small-1", &body))
        .await
        .expect("ok");
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
    assert_eq!(done.output_tokens, 8);
    assert_eq!(done.body["choices"][0]["finish_reason"], "length");
    assert!(content(&done).chars().count() <= 32);

    // `max_completion_tokens` and the call's default limit work the same way.
    let mut body = body_for("Summarise the attached forty-page contract in detail, please.");
    body.insert("max_completion_tokens".into(), json!(5));
    let done = simulated()
        .complete(call("small-1", &body))
        .await
        .expect("ok");
    assert_eq!(done.output_tokens, 5);
    let body = body_for("Summarise the attached forty-page contract in detail, please.");
    let done = simulated()
        .complete(ChatCall {
            model_name: "small-1",
            body: &body,
            default_max_tokens: Some(6),
        })
        .await
        .expect("ok");
    assert_eq!(done.output_tokens, 6);
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn simulated_honours_fixed_output_tokens_and_latency() {
    let provider = SimulatedProvider::new(SimulatedConfig {
        latency: Duration::from_millis(30),
        output_tokens: Some(12),
        seed: 0,
    });
    let started = Instant::now();
    let done = provider
        .complete(call("small-1", &body_for("hi")))
        .await
        .expect("ok");
    assert!(started.elapsed() >= Duration::from_millis(30));
    assert_eq!(done.output_tokens, 12);
}

#[test]
fn simulated_is_fast() {
    let provider = simulated();
    let body = body_for(&"A paragraph of a typical document. ".repeat(40));
    let started = Instant::now();
    for _ in 0..10_000 {
        let done = provider.complete_now(call("small-1", &body));
        assert!(done.output_tokens > 0);
    }
    // Debug builds are slow; this only catches something pathological.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
