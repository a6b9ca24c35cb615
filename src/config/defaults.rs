//! The built-in defaults: what `batchyard run` uses with no config file at all.

use super::raw::{RawModel, RawProvider, RawTask};

pub const DEFAULT_STORAGE_URL: &str = "file://./batchyard-data";
pub const SIMULATED_PROVIDER: &str = "sim";

/// The simulated provider, clearly labelled in every output it produces.
pub fn provider() -> (String, RawProvider) {
    (
        SIMULATED_PROVIDER.into(),
        RawProvider {
            kind: "simulated".into(),
            base_url: None,
            api_key_env: None,
            api_key: None,
            headers: None,
            timeout_secs: None,
            max_response_mib: None,
            api_version: None,
            region: None,
            profile: None,
            access_key_id_env: None,
            secret_access_key_env: None,
            session_token_env: None,
            latency_ms: None,
            output_tokens: None,
            rpm: None,
            tpm: None,
            batch_api: None,
        },
    )
}

fn model(name: &str, input: f64, output: f64, context: u64, tier: u32, caps: &[&str]) -> RawModel {
    RawModel {
        provider: SIMULATED_PROVIDER.into(),
        catalog: None,
        name: Some(name.into()),
        input_usd_per_mtok: Some(input),
        output_usd_per_mtok: Some(output),
        cached_input_usd_per_mtok: None,
        cache_write_usd_per_mtok: None,
        context_window: Some(context),
        max_output_tokens: Some(16_384),
        tier: Some(tier),
        capabilities: Some(caps.iter().map(|c| c.to_string()).collect()),
        rpm: None,
        tpm: None,
        batch_input_usd_per_mtok: None,
        batch_output_usd_per_mtok: None,
        batch_api: None,
        batch_enqueued_token_limit: None,
    }
}

/// A small/medium/large trio at prices typical of today's hosted models.
pub fn models() -> Vec<(String, RawModel)> {
    vec![
        (
            "small".into(),
            model("sim-small", 0.15, 0.60, 128_000, 1, &["json"]),
        ),
        (
            "medium".into(),
            model("sim-medium", 0.40, 1.60, 128_000, 2, &["json", "code"]),
        ),
        (
            "large".into(),
            model(
                "sim-large",
                2.50,
                10.00,
                200_000,
                3,
                &["json", "code", "reasoning"],
            ),
        ),
    ]
}

pub fn tasks() -> Vec<(String, RawTask)> {
    vec![
        (
            "summarize".into(),
            RawTask {
                system: Some("You are a precise summarizer.".into()),
                prompt: "Summarize in 3 bullet points:\n\n{{ text }}".into(),
                min_tier: 1,
                requires: vec![],
                max_output_tokens: Some(300),
                response_format: None,
                validate: None,
                prompt_cache: Default::default(),
            },
        ),
        (
            "classify".into(),
            RawTask {
                system: Some("You classify documents. Answer with one word.".into()),
                prompt: "Classify this document as one of: billing, technical, account, other.\n\n{{ text }}".into(),
                min_tier: 1,
                requires: vec![],
                max_output_tokens: Some(50),
                response_format: None,
                validate: None,
                prompt_cache: Default::default(),
            },
        ),
        (
            "extract".into(),
            RawTask {
                system: Some("You extract fields as JSON.".into()),
                prompt: "Extract the parties, dates and amounts from this document as JSON.\n\n{{ text }}".into(),
                min_tier: 2,
                requires: vec!["json".into()],
                max_output_tokens: Some(500),
                response_format: None,
                validate: None,
                prompt_cache: Default::default(),
            },
        ),
    ]
}
