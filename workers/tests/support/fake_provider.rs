//! Our providers pointed at a fake provider process (`batchyard_testkit::FakeProvider`), and
//! request builders for provider tests.

use std::time::Duration;

use batchyard_testkit::FakeProvider;
use batchyard_workers::provider::{
    AnthropicConfig, AnthropicProvider, ChatCall, Completion, OpenAiConfig, OpenAiProvider,
    ProviderError,
};
use batchyard_workers::retry::{RetryPolicy, call_with_retry};
use serde_json::{Map, Value, json};

/// Our providers pointed at a running fake (the process itself is the testkit's).
pub trait OpenAiFake {
    fn provider_with(&self, config: OpenAiConfig) -> OpenAiProvider;

    fn provider(&self) -> OpenAiProvider {
        self.provider_with(OpenAiConfig::default())
    }

    /// A provider that sends `x-fake-fault: FAULT` with every call.
    fn faulty(&self, fault: &str) -> OpenAiProvider {
        self.provider_with(OpenAiConfig {
            headers: fault_header(fault),
            ..OpenAiConfig::default()
        })
    }
}

impl OpenAiFake for FakeProvider {
    fn provider_with(&self, config: OpenAiConfig) -> OpenAiProvider {
        OpenAiProvider::new(OpenAiConfig {
            base_url: self.base_url.clone(),
            ..config
        })
        .expect("build the provider")
    }
}

/// The Anthropic provider against the fake's `/v1/messages`.
pub trait AnthropicFake {
    fn provider_with(&self, config: AnthropicConfig) -> AnthropicProvider;

    fn provider(&self) -> AnthropicProvider {
        self.provider_with(AnthropicConfig::default())
    }

    /// A provider that sends `x-fake-fault: FAULT` with every call.
    fn faulty(&self, fault: &str) -> AnthropicProvider {
        self.provider_with(AnthropicConfig {
            headers: fault_header(fault),
            ..AnthropicConfig::default()
        })
    }
}

impl AnthropicFake for FakeProvider {
    fn provider_with(&self, config: AnthropicConfig) -> AnthropicProvider {
        AnthropicProvider::new(AnthropicConfig {
            base_url: self.url.clone(),
            ..config
        })
        .expect("build the provider")
    }
}

/// The header that makes the fake serve `fault` (see the fake provider's `//!` map).
fn fault_header(fault: &str) -> Vec<(String, String)> {
    vec![("x-fake-fault".into(), fault.into())]
}

pub fn body_for(text: &str) -> Map<String, Value> {
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

pub fn call<'a>(model: &'a str, body: &'a Map<String, Value>) -> ChatCall<'a> {
    ChatCall {
        model_name: model,
        body,
        default_max_tokens: None,
    }
}

pub fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
        max_attempts,
    }
}

pub fn content(completion: &Completion) -> &str {
    completion.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
}

pub async fn with_retry(
    provider: &OpenAiProvider,
    policy: &RetryPolicy,
    body: &Map<String, Value>,
) -> (Result<Completion, ProviderError>, u32) {
    call_with_retry(policy, || provider.complete(call("small-1", body))).await
}
