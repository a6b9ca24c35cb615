//! The provider boundary: one call to a chat completions model.
//!
//! One [`Provider`] enum, built from config, dispatches to each kind. Every kind returns an
//! OpenAI-shaped chat completion body, so everything downstream reads one format.
//!
//! - [`openai`]: any OpenAI-compatible `/chat/completions` endpoint.
//! - [`anthropic`]: the Messages API, mapped to and from the OpenAI shape.
//! - [`bedrock`]: AWS Bedrock's Converse API, SigV4-signed (credentials from the AWS chain or
//!   named variables) or with a Bedrock API key, mapped to and from the OpenAI shape.
//! - [`gemini`]: Google's Gemini API (`generateContent`), mapped to and from the OpenAI shape.
//! - [`azure_openai`]: Azure OpenAI deployments (the `openai` kind's body and reader, a URL
//!   per deployment, `api-key` or Entra ID auth).
//! - [`batch`]: the providers' batch APIs (the offload lane), for the kinds that have one.
//! - [`simulated`]: built in, deterministic, labelled in every output; no account needed.
//! - [`cache_point`]: cache points in an OpenAI-shaped body (parts with `cache_control`),
//!   and the flattening for the kinds that cache by themselves.
//! - `shape`: the OpenAI chat completion the other kinds answer with, and the parts of an
//!   OpenAI tool call they send on.
//! - `http`: what the HTTP kinds share: one `Endpoint` (client, headers, key, POST), capped
//!   body reads, the generic error classification and retry hints, header timestamps,
//!   scrubbing secrets from messages.
//!
//! May use: nothing else in this crate. Used by every wing above it.

pub mod anthropic;
pub mod azure_openai;
pub mod batch;
pub mod bedrock;
pub mod cache_point;
pub mod gemini;
mod http;
pub mod openai;
mod shape;
pub mod simulated;

pub use http::{DEFAULT_MAX_RESPONSE_BYTES, buffered_response_bytes};

use std::fmt;
use std::time::Duration;

use batchyard_jobs::codes;
use serde_json::{Map, Value};

pub use anthropic::{AnthropicConfig, AnthropicProvider};
pub use azure_openai::{AzureAuth, AzureOpenAiConfig, AzureOpenAiProvider};
pub use bedrock::{BedrockAuth, BedrockConfig, BedrockProvider};
pub use gemini::{GeminiConfig, GeminiProvider};
pub use openai::{OpenAiConfig, OpenAiProvider};
pub use simulated::{SimulatedConfig, SimulatedProvider};

/// A secret read from the environment. Never printed, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One request to one model.
#[derive(Debug, Clone, Copy)]
pub struct ChatCall<'a> {
    /// The model name sent to the provider (the catalog's `name`, not its key).
    pub model_name: &'a str,
    /// An OpenAI chat completions body; its `model` field is replaced by `model_name`.
    pub body: &'a Map<String, Value>,
    /// Applied when the body sets no `max_tokens` / `max_completion_tokens`.
    pub default_max_tokens: Option<u32>,
}

/// A successful call.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// An OpenAI chat completion object.
    pub body: Value,
    pub request_id: String,
    /// Every input token, cache reads and writes included.
    pub input_tokens: u64,
    /// The part of `input_tokens` read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// The part of `input_tokens` written to the provider's prompt cache.
    pub cache_write_input_tokens: u64,
    pub output_tokens: u64,
    pub finish_reason: Option<String>,
    /// True for the built-in simulated provider, so no one mistakes it for a model.
    pub simulated: bool,
    /// What the provider said about its own limits (`x-ratelimit-remaining-*`), if anything.
    pub rate_limits: Option<RateLimitReport>,
}

/// A provider's own view of what is left of its limits, from response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimitReport {
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// When the tighter of the two limits resets.
    pub reset: Option<Duration>,
}

/// Why a call failed, as the retry policy and the router need to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderErrorKind {
    RateLimited,
    Transient,
    ContextOverflow,
    InvalidRequest,
    Auth,
    QuotaExhausted,
    ContentFilter,
    MalformedResponse,
    /// The answer's body passed the per-answer size cap (`max_response_mib`).
    ResponseTooLarge,
}

impl ProviderErrorKind {
    /// The kind a [`Self::code`] names; an unknown code is `transient` (worth another try).
    pub fn from_code(code: &str) -> Self {
        [
            Self::RateLimited,
            Self::ContextOverflow,
            Self::InvalidRequest,
            Self::Auth,
            Self::QuotaExhausted,
            Self::ContentFilter,
            Self::MalformedResponse,
            Self::ResponseTooLarge,
        ]
        .into_iter()
        .find(|k| k.code() == code)
        .unwrap_or(Self::Transient)
    }

    /// The code written to `errors.jsonl`.
    pub fn code(self) -> &'static str {
        match self {
            Self::RateLimited => codes::RATE_LIMITED,
            Self::Transient => codes::TRANSIENT,
            Self::ContextOverflow => codes::CONTEXT_OVERFLOW,
            Self::InvalidRequest => codes::INVALID_REQUEST,
            Self::Auth => codes::AUTH,
            Self::QuotaExhausted => codes::QUOTA_EXHAUSTED,
            Self::ContentFilter => codes::CONTENT_FILTER,
            Self::MalformedResponse => codes::MALFORMED_RESPONSE,
            Self::ResponseTooLarge => codes::RESPONSE_TOO_LARGE,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{} from provider{}: {message}", kind.code(), status.map(|s| format!(" (http {s})")).unwrap_or_default())]
pub struct ProviderError {
    pub kind: ProviderErrorKind,
    /// The provider's message, with any secret removed.
    pub message: String,
    pub status: Option<u16>,
    /// The provider's own hint for when to try again.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
        }
    }

    pub fn kind(&self) -> ProviderErrorKind {
        self.kind
    }
}

impl batchyard_jobs::retry::Retryable for ProviderError {
    /// Worth retrying in place with backoff.
    fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Transient
                | ProviderErrorKind::MalformedResponse
        )
    }
}

/// A configured provider.
#[derive(Debug)]
pub enum Provider {
    Simulated(SimulatedProvider),
    OpenAi(OpenAiProvider),
    Anthropic(AnthropicProvider),
    Gemini(GeminiProvider),
    AzureOpenAi(AzureOpenAiProvider),
    Bedrock(BedrockProvider),
}

impl Provider {
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        match self {
            Self::Simulated(p) => p.complete(call).await,
            Self::OpenAi(p) => p.complete(call).await,
            Self::Anthropic(p) => p.complete(call).await,
            Self::Gemini(p) => p.complete(call).await,
            Self::AzureOpenAi(p) => p.complete(call).await,
            Self::Bedrock(p) => p.complete(call).await,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Simulated(_) => "simulated",
            Self::OpenAi(_) => "openai",
            Self::Anthropic(_) => "anthropic",
            Self::Gemini(_) => "gemini",
            Self::AzureOpenAi(_) => "azure_openai",
            Self::Bedrock(_) => "bedrock",
        }
    }
}
