//! Prompt token estimates: exact counts for OpenAI families, calibration for the rest.

mod support;

use batchyard_workers::catalog::tokens::{
    Encoding, TokenEstimator, encoding_for, rough_prompt_tokens,
};
use serde_json::json;
use support::body;

fn o200k(text: &str) -> u64 {
    tiktoken_rs::o200k_base_singleton()
        .encode_ordinary(text)
        .len() as u64
}

fn model(key: &str, name: &str) -> batchyard_workers::catalog::ModelSpec {
    support::model_spec(key, "p", name)
}

#[test]
fn families_map_to_encodings() {
    let table = [
        ("gpt-4o", Encoding::O200k),
        ("gpt-4o-mini-2024-07-18", Encoding::O200k),
        ("GPT-4O", Encoding::O200k),
        ("openai/gpt-4o", Encoding::O200k),
        ("azure/openai/gpt-4.1-nano", Encoding::O200k),
        ("gpt-4.1", Encoding::O200k),
        ("gpt-4.5-preview", Encoding::O200k),
        ("gpt-5", Encoding::O200k),
        ("gpt-5-mini", Encoding::O200k),
        ("o1-preview", Encoding::O200k),
        ("o3-mini", Encoding::O200k),
        ("o4-mini", Encoding::O200k),
        ("chatgpt-4o-latest", Encoding::O200k),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", Encoding::O200k),
        ("gpt-4", Encoding::Cl100k),
        ("gpt-4-0613", Encoding::Cl100k),
        ("gpt-4-turbo", Encoding::Cl100k),
        ("openai/GPT-4-32k", Encoding::Cl100k),
        ("gpt-3.5-turbo", Encoding::Cl100k),
        ("text-embedding-3-small", Encoding::Cl100k),
        ("gpt-4.2", Encoding::Calibrated),
        ("gpt-oss-20b", Encoding::Calibrated),
        ("claude-sonnet-4-5", Encoding::Calibrated),
        ("anthropic/claude-3-haiku", Encoding::Calibrated),
        ("azure/my-deployment", Encoding::Calibrated),
        ("llama-3.1-8b", Encoding::Calibrated),
        ("sim-small", Encoding::Calibrated),
        ("", Encoding::Calibrated),
        ("o", Encoding::Calibrated),
        ("gpt-ö", Encoding::Calibrated),
    ];
    for (name, want) in table {
        assert_eq!(encoding_for(name), want, "{name}");
    }
    assert_eq!(Encoding::O200k.name(), "o200k_base");
    assert_eq!(Encoding::Cl100k.name(), "cl100k_base");
}

#[test]
fn known_counts() {
    assert_eq!(o200k("hello world"), 2);
    let cl = tiktoken_rs::cl100k_base_singleton();
    assert_eq!(cl.encode_ordinary("hello world").len(), 2);
}

#[test]
fn chat_body_is_content_plus_overhead() {
    let est = TokenEstimator::new();
    let m = model("fast", "gpt-4o-mini");
    let b = body(json!({
        "model": "ignored",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "hello world", "name": "ann"},
        ]
    }));
    let content = o200k("system") + o200k("You are terse.") + o200k("user") + o200k("hello world");
    let name = o200k("ann") + 1;
    assert_eq!(est.prompt_tokens(&m, &b), content + name + 2 * 3 + 3);
}

#[test]
fn cl100k_models_count_with_cl100k() {
    let est = TokenEstimator::new();
    let b = body(json!({"messages": [{"role": "user", "content": "hello world"}]}));
    let cl = tiktoken_rs::cl100k_base_singleton();
    let want = cl.encode_ordinary("user").len() as u64 + 2 + 3 + 3;
    assert_eq!(est.prompt_tokens(&model("old", "gpt-3.5-turbo"), &b), want);
}

#[test]
fn parts_count_text_and_images() {
    let est = TokenEstimator::new();
    let m = model("vision", "gpt-4o");
    let b = body(json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", "A".repeat(50_000))}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]}]}));
    let want = o200k("user") + o200k("what is in this picture?") + 2 * 85 + 3 + 3;
    assert_eq!(est.prompt_tokens(&m, &b), want);
    // The rough estimate does not count an image's data URL as text either.
    assert!(rough_prompt_tokens(&b) < 4 + 10 + 2 * 85);
}

#[test]
fn tools_and_response_format_are_counted() {
    let est = TokenEstimator::new();
    let m = model("fast", "gpt-4o");
    let plain = body(json!({"messages": [{"role": "user", "content": "hi"}]}));
    let schema = json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": {
        "type": "object", "properties": {"label": {"type": "string"}}}}});
    let mut with = plain.clone();
    with.insert("response_format".into(), schema.clone());
    let tools = json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]);
    with.insert("tools".into(), tools.clone());
    let extra = o200k(&schema.to_string()) + o200k(&tools.to_string());
    assert_eq!(
        est.prompt_tokens(&m, &with),
        est.prompt_tokens(&m, &plain) + extra
    );
    // The calibrated path sees them too.
    let sim = model("sim", "sim-small");
    assert!(est.prompt_tokens(&sim, &with) > est.prompt_tokens(&sim, &plain));
}

#[test]
fn special_token_text_is_plain_text() {
    let est = TokenEstimator::new();
    let text = "ignore this <|endoftext|> and <|im_start|>system<|fim_prefix|>";
    let b = body(json!({"messages": [{"role": "user", "content": text}]}));
    for name in ["gpt-4o", "gpt-4"] {
        let n = est.prompt_tokens(&model(name, name), &b);
        assert!(n > 10, "{name}: {n}");
    }
    assert_eq!(
        est.prompt_tokens(&model("a", "gpt-4o"), &b),
        o200k("user") + o200k(text) + 6
    );
}

#[test]
fn pathological_text_neither_panics_nor_crawls() {
    let est = TokenEstimator::new();
    let m = model("fast", "gpt-4o");
    // A million spaces makes tiktoken-rs's regex give up when encoded in one go.
    for text in [
        " ".repeat(1_000_000),
        "A".repeat(1_000_000),
        "日本語".repeat(200_000),
    ] {
        let b = body(json!({"messages": [{"role": "user", "content": text}]}));
        let started = std::time::Instant::now();
        let n = est.prompt_tokens(&m, &b);
        assert!(n > 1000, "{n}");
        assert!(started.elapsed().as_secs() < 30);
    }
}

#[test]
fn long_text_is_counted_exactly_despite_chunking() {
    let est = TokenEstimator::new();
    let m = model("fast", "gpt-4o");
    let text =
        "The quick brown fox, numbered 12345, jumps over the lazy dog's back.\n\n".repeat(2_000);
    let b = body(json!({"messages": [{"role": "user", "content": text}]}));
    let want = o200k("user") + o200k(&text) + 6;
    assert_eq!(est.prompt_tokens(&m, &b), want);
    // Remembered: a second model of the family gets the same count.
    assert_eq!(est.prompt_tokens(&model("big", "gpt-4.1"), &b), want);
}

#[test]
fn calibration_converges_to_the_observed_ratio() {
    let est = TokenEstimator::new();
    let m = model("claude", "claude-sonnet-4-5");
    let b = body(json!({"messages": [{"role": "user", "content": "x".repeat(4_000)}]}));
    let rough = rough_prompt_tokens(&b);
    assert_eq!(est.prompt_tokens(&m, &b), rough);
    // The provider counts 1.5x the rough estimate; feed back what prompt_tokens said.
    let actual = rough * 3 / 2;
    for _ in 0..200 {
        let estimated = est.prompt_tokens(&m, &b);
        est.observe(&m, estimated, actual);
    }
    let ratio = est.ratio("claude");
    assert!((ratio - 1.5).abs() < 0.01, "{ratio}");
    let estimated = est.prompt_tokens(&m, &b);
    assert!(
        estimated.abs_diff(actual) <= actual / 100,
        "{estimated} vs {actual}"
    );
    // Keyed by catalog key: another model is untouched.
    assert_eq!(est.ratio("other"), 1.0);
    assert_eq!(
        est.prompt_tokens(&model("other", "claude-sonnet-4-5"), &b),
        rough
    );
}

#[test]
fn calibration_is_clamped_and_ignores_zeros() {
    let est = TokenEstimator::new();
    let m = model("sim", "sim-small");
    est.observe(&m, 0, 100);
    est.observe(&m, 100, 0);
    assert_eq!(est.ratio("sim"), 1.0);
    // One wild sample moves the ratio a step, not to the bound.
    est.observe(&m, 1, 1_000_000);
    let one = est.ratio("sim");
    assert!(one > 1.0 && one <= 1.31, "{one}");
    for _ in 0..500 {
        est.observe(&m, 1, 1_000_000);
    }
    let high = est.ratio("sim");
    assert!(high <= 4.0 && high > 3.999, "{high}");
    for _ in 0..500 {
        est.observe(&m, 1_000_000, 1);
    }
    let low = est.ratio("sim");
    assert!((0.25..0.2501).contains(&low), "{low}");
}

#[test]
fn exact_counts_are_not_calibrated() {
    let est = TokenEstimator::new();
    let m = model("fast", "gpt-4o");
    let b = body(json!({"messages": [{"role": "user", "content": "hello world"}]}));
    let before = est.prompt_tokens(&m, &b);
    for _ in 0..100 {
        est.observe(&m, before, before * 3);
    }
    assert_eq!(est.prompt_tokens(&m, &b), before);
}

#[test]
fn odd_bodies_do_not_panic() {
    let est = TokenEstimator::new();
    for name in ["gpt-4o", "sim-small"] {
        let m = model(name, name);
        for b in [
            json!({}),
            json!({"messages": "nope"}),
            json!({"messages": [1, null, {"content": null}, {"content": {"a": 1}}, {"content": [7, {"type": "text"}]}]}),
            json!({"messages": [{"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}]}),
            json!({"messages": [], "tools": null}),
        ] {
            let _ = est.prompt_tokens(&m, &body(b));
        }
    }
}

#[test]
fn calibrated_path_is_fast() {
    let est = TokenEstimator::new();
    let m = model("sim", "sim-small");
    let b = body(json!({"messages": [
        {"role": "system", "content": "Classify the text."},
        {"role": "user", "content": "some moderately long document text ".repeat(20)},
    ]}));
    let started = std::time::Instant::now();
    for i in 0..20_000u64 {
        let n = est.prompt_tokens(&m, &b);
        est.observe(&m, n, n + i % 7);
    }
    // Far below the budget of a >5k jobs/s benchmark, even unoptimised.
    assert!(
        started.elapsed().as_secs_f64() < 2.0,
        "{:?}",
        started.elapsed()
    );
}
