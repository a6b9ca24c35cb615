//! Our providers pointed at a fake provider process (`batchyard_testkit::FakeProvider`), and
//! request builders for provider tests.

use std::time::Duration;

use batchyard_testkit::FakeProvider;
use batchyard_workers::call::retry::{RetryPolicy, call_with_retry};
use batchyard_workers::provider::{
    AnthropicConfig, AnthropicProvider, AzureOpenAiConfig, AzureOpenAiProvider, ChatCall,
    Completion, GeminiConfig, GeminiProvider, OpenAiConfig, OpenAiProvider, ProviderError,
};
use serde_json::{Map, Value, json};

/// A trait `$name` on the testkit's fake with our `$provider` pointed at it (`$base` gives
/// the base URL that provider wants from the fake): `provider()`, `provider_with(config)` and
/// `faulty(fault)`, which sends `x-fake-fault: FAULT` with every call.
macro_rules! fake_client {
    ($(#[$doc:meta])* $name:ident, $config:ident, $provider:ident, $base:expr) => {
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
                let base: fn(&FakeProvider) -> String = $base;
                $provider::new($config {
                    base_url: base(self),
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
    |fake| fake.base_url.clone()
);
fake_client!(
    /// The Anthropic provider against the fake's `/v1/messages` (its base URL has no `/v1`).
    AnthropicFake,
    AnthropicConfig,
    AnthropicProvider,
    |fake| fake.url.clone()
);
fake_client!(
    /// The Azure OpenAI provider against the fake's `/openai/deployments/...` (its base URL
    /// is the fake's root, as a resource endpoint is).
    AzureFake,
    AzureOpenAiConfig,
    AzureOpenAiProvider,
    |fake| fake.url.clone()
);
fake_client!(
    /// The Gemini provider against the fake's `/v1beta/models/{model}:generateContent`.
    GeminiFake,
    GeminiConfig,
    GeminiProvider,
    |fake| format!("{}/v1beta", fake.url)
);

/// One `complete` over every provider type, so the request helpers below serve all kinds.
pub trait Completes {
    fn complete_call(
        &self,
        call: ChatCall<'_>,
    ) -> impl Future<Output = Result<Completion, ProviderError>>;
}

macro_rules! completes {
    ($($provider:ty),*) => {$(
        impl Completes for $provider {
            async fn complete_call(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
                self.complete(call).await
            }
        }
    )*};
}

completes!(
    OpenAiProvider,
    AnthropicProvider,
    AzureOpenAiProvider,
    GeminiProvider
);

/// An OpenAI chat completions body with these `messages`.
pub fn messages(messages: Value) -> Map<String, Value> {
    json!({"model": "ignored", "messages": messages})
        .as_object()
        .cloned()
        .unwrap()
}

/// A body with one user message.
pub fn user(text: &str) -> Map<String, Value> {
    messages(json!([{"role": "user", "content": text}]))
}

/// Asks `model` through `provider`, with at most 200 output tokens unless the body says.
pub async fn ask<P: Completes>(
    provider: &P,
    model: &str,
    body: &Map<String, Value>,
) -> Result<Completion, ProviderError> {
    provider
        .complete_call(ChatCall {
            model_name: model,
            body,
            default_max_tokens: Some(200),
        })
        .await
}

/// The error asking `model` about `text` must end in.
pub async fn fails<P: Completes>(provider: &P, model: &str, text: &str) -> ProviderError {
    match ask(provider, model, &user(text)).await {
        Ok(done) => panic!("expected an error, got {:?}", done.body),
        Err(e) => e,
    }
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
