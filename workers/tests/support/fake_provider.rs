//! Our providers pointed at a fake provider process (`batchyard_testkit::FakeProvider`), and
//! request builders for provider tests.

use std::time::Duration;

use batchyard_testkit::FakeProvider;
use batchyard_workers::call::retry::{RetryPolicy, call_with_retry};
use batchyard_workers::provider::{
    AnthropicConfig, AnthropicProvider, AzureOpenAiConfig, AzureOpenAiProvider, ChatCall,
    Completion, OpenAiConfig, OpenAiProvider, ProviderError,
};
use serde_json::{Map, Value, json};

/// A trait `$name` on the testkit's fake with our `$provider` pointed at it (`$base` is the
/// fake's URL field that provider wants): `provider()`, `provider_with(config)` and
/// `faulty(fault)`, which sends `x-fake-fault: FAULT` with every call.
macro_rules! fake_client {
    ($(#[$doc:meta])* $name:ident, $config:ident, $provider:ident, $base:ident) => {
        $(#[$doc])*
        pub trait $name {
            fn provider_with(&self, config: $config) -> $provider;

            fn provider(&self) -> $provider {
                self.provider_with($config::default())
            }

            fn faulty(&self, fault: &str) -> $provider {
                self.provider_with($config {
                    headers: vec![("x-fake-fault".into(), fault.into())],
                    ..$config::default()
                })
            }
        }

        impl $name for FakeProvider {
            fn provider_with(&self, config: $config) -> $provider {
                $provider::new($config {
                    base_url: self.$base.clone(),
                    ..config
                })
                .expect("build the provider")
            }
        }
    };
}

fake_client!(
    /// The OpenAI provider against the fake's `/v1/chat/completions`.
    OpenAiFake,
    OpenAiConfig,
    OpenAiProvider,
    base_url
);
fake_client!(
    /// The Anthropic provider against the fake's `/v1/messages` (its base URL has no `/v1`).
    AnthropicFake,
    AnthropicConfig,
    AnthropicProvider,
    url
);
fake_client!(
    /// The Azure OpenAI provider against the fake's `/openai/deployments/...` (its base URL
    /// is the fake's root, as a resource endpoint is).
    AzureFake,
    AzureOpenAiConfig,
    AzureOpenAiProvider,
    url
);

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
