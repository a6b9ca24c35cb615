//! The fake provider's limits and faults over real HTTP, and what our OpenAI provider makes of
//! them: typed errors, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use batchyard_jobs::retry::Retryable as _;
use batchyard_testkit::{FakeProvider, fake_provider_bin};
use batchyard_workers::provider::openai::parse_go_duration;
use batchyard_workers::provider::{
    ChatCall, Completion, OpenAiConfig, OpenAiProvider, ProviderError, ProviderErrorKind,
};
use serde_json::{Map, Value, json};
use support::fake_provider::OpenAiFake as _;

fn user(text: &str) -> Map<String, Value> {
    json!({"model": "x", "messages": [{"role": "user", "content": text}]})
        .as_object()
        .cloned()
        .unwrap()
}

async fn call(provider: &OpenAiProvider, text: &str) -> Result<Completion, ProviderError> {
    provider
        .complete(ChatCall {
            model_name: "small-1",
            body: &user(text),
            default_max_tokens: None,
        })
        .await
}

async fn fails(provider: &OpenAiProvider, text: &str) -> ProviderError {
    match call(provider, text).await {
        Ok(done) => panic!("expected an error, got {:?}", done.body),
        Err(e) => e,
    }
}

/// Waits out the end of a minute, so a burst lands in one rate-limit window.
async fn clear_of_a_window_edge() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let into = now.as_secs_f64() % 60.0;
    if into > 54.0 {
        tokio::time::sleep(Duration::from_secs_f64(60.2 - into)).await;
    }
}

fn header<'a>(response: &'a reqwest::Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

#[tokio::test]
async fn the_rpm_limit_holds_and_429s_carry_real_looking_headers() {
    let server = FakeProvider::start(&["--rpm", "10"]);
    clear_of_a_window_edge().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.url);
    let sends = (0..30).map(|i| {
        client
            .post(&url)
            .json(
                &json!({"model": "m", "messages": [{"role": "user", "content": format!("n{i}")}]}),
            )
            .send()
    });
    let responses = futures::future::join_all(sends).await;
    let (mut ok, mut limited) = (0, 0);
    for response in responses {
        let response = response.unwrap();
        assert_eq!(header(&response, "x-ratelimit-limit-requests"), "10");
        let reset = parse_go_duration(header(&response, "x-ratelimit-reset-requests"))
            .expect("a go duration");
        assert!(reset <= Duration::from_secs(60), "{reset:?}");
        match response.status().as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                let retry: u64 = header(&response, "retry-after").parse().unwrap();
                assert!((1..=60).contains(&retry), "{retry}");
                assert_eq!(header(&response, "x-ratelimit-remaining-requests"), "0");
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limit_exceeded");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 20));

    // Our provider reads it as rate_limited, with the window's end as its hint.
    let err = fails(&server.provider(), "one more").await;
    assert_eq!(err.kind, ProviderErrorKind::RateLimited, "{err}");
    let hint = err.retry_after.unwrap();
    assert!(
        hint > Duration::ZERO && hint <= Duration::from_secs(60),
        "{hint:?}"
    );

    let stats = server.stats();
    assert_eq!(stats["rpm"], 10);
    assert_eq!(stats["max_requests_per_window"], 10);
    let windows = stats["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 1, "{stats}");
    assert_eq!(windows[0]["requests"], 10);
    assert_eq!(windows[0]["rejected"], 21);
    assert_eq!(windows[0]["start"].as_u64().unwrap() % 60, 0);
    assert_eq!(stats["by_status"]["429"], 21);
}

#[tokio::test]
async fn the_tpm_limit_holds() {
    // "hello" costs 5 prompt tokens and "fake reply from small-1: hello" 8 completion tokens:
    // 13 a call, so 4 calls fit in 60 tokens and the fifth does not.
    let server = FakeProvider::start(&["--tpm", "60"]);
    clear_of_a_window_edge().await;
    let provider = server.provider();
    for _ in 0..4 {
        let done = call(&provider, "hello").await.unwrap();
        assert_eq!(done.input_tokens + done.output_tokens, 13);
    }
    let err = fails(&provider, "hello").await;
    assert_eq!(err.kind, ProviderErrorKind::RateLimited, "{err}");
    assert!(err.message.contains("TPM"), "{err}");
    assert!(err.retry_after.is_some());
    let stats = server.stats();
    assert_eq!(stats["max_tokens_per_window"], 52);
    assert!(stats["max_tokens_per_window"].as_u64().unwrap() <= 60);
}

#[tokio::test]
async fn a_dropped_connection_is_transient() {
    let server = FakeProvider::start(&[]);
    let err = fails(&server.faulty("drop"), "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
    assert_eq!(err.status, None);
    let err = fails(&server.provider(), "FAKE:DROP").await;
    assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
    // The server is fine afterwards.
    call(&server.provider(), "hi").await.unwrap();
    let stats = server.stats();
    assert_eq!(stats["dropped"], 2);
    assert_eq!(stats["requests"], 1);
}

#[tokio::test]
async fn a_hang_is_transient_after_the_client_timeout() {
    let server = FakeProvider::start(&["--hang-secs", "60"]);
    let config = |headers: Vec<(String, String)>| OpenAiConfig {
        timeout: Duration::from_secs(1),
        headers,
        ..OpenAiConfig::default()
    };
    let by_text = server.provider_with(config(Vec::new()));
    let by_header = server.provider_with(config(vec![("x-fake-fault".into(), "hang".into())]));
    for (provider, text) in [(&by_text, "FAKE:HANG"), (&by_header, "hi")] {
        let started = Instant::now();
        let err = fails(provider, text).await;
        let took = started.elapsed();
        assert_eq!(err.kind, ProviderErrorKind::Transient, "{err}");
        assert!(err.message.contains("timed out"), "{err}");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    assert_eq!(server.stats()["hung"], 2);
}

#[tokio::test]
async fn length_faults_finish_with_length() {
    let server = FakeProvider::start(&[]);
    for done in [
        call(&server.faulty("length"), "tell me a story")
            .await
            .unwrap(),
        call(&server.provider(), "FAKE:LENGTH tell me a story")
            .await
            .unwrap(),
    ] {
        assert_eq!(done.finish_reason.as_deref(), Some("length"));
        assert_eq!(done.body["choices"][0]["finish_reason"], "length");
    }
    let server = FakeProvider::start(&["--length-rate", "1"]);
    let done = call(&server.provider(), "hi").await.unwrap();
    assert_eq!(done.finish_reason.as_deref(), Some("length"));
}

#[tokio::test]
async fn bad_bodies_end_as_typed_errors() {
    let server = FakeProvider::start(&[]);
    let cases = [
        // 5 MiB of a reply that never ends.
        ("huge", ProviderErrorKind::MalformedResponse),
        // 200 with an error object instead of choices.
        ("error_200", ProviderErrorKind::MalformedResponse),
        // 200 text/html from a proxy.
        ("html", ProviderErrorKind::MalformedResponse),
        ("malformed", ProviderErrorKind::MalformedResponse),
        ("502", ProviderErrorKind::Transient),
        ("503", ProviderErrorKind::Transient),
        ("529", ProviderErrorKind::Transient),
    ];
    for (fault, kind) in cases {
        let err = fails(&server.faulty(fault), "hi").await;
        assert_eq!(err.kind, kind, "{fault}: {err}");
        assert!(
            err.message.len() < 2000,
            "{fault}: {} bytes",
            err.message.len()
        );
    }
}

/// Issue 13 item 7: a huge or endless answer fails as `response_too_large` once it passes the
/// cap, without reading (or holding) the rest.
#[tokio::test]
async fn oversized_and_endless_bodies_fail_at_the_cap() {
    let server = FakeProvider::start(&[]);
    let with = |headers: &[(&str, &str)], cap: usize| {
        server.provider_with(OpenAiConfig {
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            max_response_bytes: cap,
            timeout: Duration::from_secs(20),
            ..OpenAiConfig::default()
        })
    };
    // 300 MiB announced by Content-Length: refused before a byte of it is read.
    let started = Instant::now();
    let err = fails(
        &with(
            &[("x-fake-fault", "huge"), ("x-fake-body-mib", "300")],
            16 << 20,
        ),
        "hi",
    )
    .await;
    assert_eq!(err.kind, ProviderErrorKind::ResponseTooLarge, "{err}");
    assert_eq!(err.kind.code(), "response_too_large");
    assert!(
        err.message.contains("300 MiB") && err.message.contains("16 MiB"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // An endless chunked body: cut at the cap, long before the 20 s timeout.
    let started = Instant::now();
    let err = fails(&with(&[("x-fake-fault", "endless")], 4 << 20), "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::ResponseTooLarge, "{err}");
    assert!(err.message.contains("4 MiB"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!err.is_retryable(), "the same call would get the same body");

    // Under the cap, the 5 MiB unterminated body is still read and found not to be JSON.
    let err = fails(&with(&[("x-fake-fault", "huge")], 16 << 20), "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::MalformedResponse, "{err}");
    // ... and over a smaller cap it is too large, by its Content-Length.
    let err = fails(&with(&[("x-fake-fault", "huge")], 1 << 20), "hi").await;
    assert_eq!(err.kind, ProviderErrorKind::ResponseTooLarge, "{err}");

    // The provider still answers normally afterwards.
    assert!(call(&server.provider(), "hi").await.is_ok());
}

#[tokio::test]
async fn random_faults_mix_and_every_outcome_is_typed() {
    let server = FakeProvider::start(&[
        "--fail-rate-503",
        "0.25",
        "--drop-rate",
        "0.25",
        "--length-rate",
        "0.25",
    ]);
    let provider = server.provider();
    let (mut ok, mut length, mut transient) = (0, 0, 0);
    for i in 0..80 {
        match call(&provider, &format!("n{i}")).await {
            Ok(done) if done.finish_reason.as_deref() == Some("length") => length += 1,
            Ok(_) => ok += 1,
            Err(e) if e.kind == ProviderErrorKind::Transient => transient += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert!(
        ok > 0 && length > 0 && transient > 0,
        "{ok} {length} {transient}"
    );
    let stats = server.stats();
    assert!(stats["dropped"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["by_status"]["503"].as_u64().unwrap() > 0, "{stats}");
}

#[tokio::test]
async fn lognormal_latency_has_its_median_near_p50_and_a_tail() {
    let server = FakeProvider::start(&["--latency-dist", "lognormal", "--latency-p50-ms", "40"]);
    let provider = server.provider();
    call(&provider, "warm up").await.unwrap();
    let mut took = Vec::new();
    for i in 0..41 {
        let started = Instant::now();
        call(&provider, &format!("n{i}")).await.unwrap();
        took.push(started.elapsed());
    }
    took.sort();
    let median = took[20];
    assert!(
        median >= Duration::from_millis(25) && median <= Duration::from_millis(80),
        "{median:?}"
    );
    assert!(took[40] > Duration::from_millis(60), "no tail: {took:?}");
}

#[test]
fn bad_flags_are_refused() {
    for args in [
        &["--fail-rate-502", "0.7", "--drop-rate", "0.5"][..],
        &["--latency-dist", "gaussian"],
        &["--rpm", "0"],
        &["--hang-rate", "2"],
    ] {
        let output = Command::new(fake_provider_bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!output.stderr.is_empty(), "{args:?}");
    }
}
