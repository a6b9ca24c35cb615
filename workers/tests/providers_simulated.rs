//! The built-in simulated provider: deterministic, labelled, OpenAI-shaped replies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_workers::provider::{ChatCall, SimulatedConfig, SimulatedProvider};
use serde_json::json;
use support::fake_provider::{body_for, call, content};

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
