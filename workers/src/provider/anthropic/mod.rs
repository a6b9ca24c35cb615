//! Anthropic's Messages API (`POST /v1/messages`).
//!
//! - [`AnthropicProvider`] holds one pooled `reqwest::Client`, sends `x-api-key` and
//!   `anthropic-version`, and maps the OpenAI-shaped request body to a Messages request
//!   ([`request`]): system messages go to the top-level `system`, `max_tokens` is always set.
//! - The reply is mapped back to an OpenAI chat completion body ([`response`]), so everything
//!   downstream reads one format: text blocks become `choices[0].message.content`, `tool_use`
//!   blocks become `tool_calls`, `stop_reason` becomes `finish_reason`, `usage` becomes
//!   `prompt_tokens` / `completion_tokens`.
//! - Errors are typed by [`errors::classify`], which reuses the OpenAI classification and adds
//!   Anthropic's error types (`overloaded_error`, `prompt is too long`, ...) and its
//!   `anthropic-ratelimit-*-reset` hints.
//! - The API key is sent only in the `x-api-key` header (marked sensitive), is redacted from every
//!   error message, and never appears in `Debug` output.
//! - [`batch`]: the Message Batches API (the offload lane), on the same endpoint and key.

pub mod batch;
mod errors;
mod request;
mod response;

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};

pub use crate::provider::http::parse_rfc3339;
pub use errors::classify;
// Bedrock's batch records for Claude are Messages bodies and replies.
pub(crate) use request::messages_body;
pub(crate) use response::parse_success as parse_messages_reply;

use super::http::{self, Endpoint, EndpointConfig, HeaderNames, KeyHeader};
use super::{ChatCall, Completion, ProviderError, ProviderErrorKind, Secret};

/// The API version sent when the config names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

/// How to reach the Messages API (or a compatible proxy).
#[derive(Clone)]
pub struct AnthropicConfig {
    /// The API root, e.g. `https://api.anthropic.com` (a trailing `/v1` is also accepted);
    /// `/v1/messages` is appended.
    pub base_url: String,
    /// Sent as `x-api-key` when set.
    pub api_key: Option<Secret>,
    /// Sent as `anthropic-version`.
    pub version: String,
    /// Extra headers sent with every request (e.g. `anthropic-beta`). Their values are treated
    /// as secrets: never printed.
    pub headers: Vec<(String, String)>,
    /// The whole request, from connect to the last byte of the reply.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest answer read; a larger one fails as `response_too_large`.
    pub max_response_bytes: usize,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.anthropic.com".to_owned(),
            api_key: None,
            version: DEFAULT_VERSION.to_owned(),
            headers: Vec::new(),
            // Long replies without streaming take minutes; Anthropic's own SDKs wait 10.
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: super::http::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl fmt::Debug for AnthropicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("version", &self.version)
            .field("headers", &HeaderNames(&self.headers))
            .finish_non_exhaustive()
    }
}

/// A client for the Messages API. Cheap to share.
#[derive(Debug)]
pub struct AnthropicProvider {
    endpoint: Endpoint,
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// `{base}/v1/messages`, accepting a base that already ends in `/v1`.
fn messages_url(base_url: &str) -> Result<reqwest::Url, ProviderError> {
    let base = base_url.trim().trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    http::base_url(base, "/v1/messages", "https://api.anthropic.com")
}

impl AnthropicProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL, version or header.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let url = messages_url(&config.base_url)?;
        let version = config.version.trim();
        let version = if version.is_empty() {
            DEFAULT_VERSION
        } else {
            version
        };
        let version = HeaderValue::from_str(version).map_err(|_| {
            config_error(format!(
                "the anthropic version {version:?} is not a valid header value: use e.g. \
                 {DEFAULT_VERSION}"
            ))
        })?;
        let mut fixed_headers = HeaderMap::new();
        fixed_headers.insert("anthropic-version", version);
        let endpoint = Endpoint::new(EndpointConfig {
            url,
            fixed_headers,
            headers: &config.headers,
            api_key: config.api_key.as_ref(),
            key_header: KeyHeader::Named("x-api-key"),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
        })?;
        Ok(Self { endpoint })
    }

    /// The endpoint, without credentials.
    pub fn url(&self) -> &str {
        self.endpoint.display_url()
    }

    /// One POST to `/v1/messages`. Does not retry: that is the retry module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let result = match request::messages_body(call) {
            Ok(body) => match self.endpoint.post(&body, classify).await {
                Ok((status, headers, bytes)) => {
                    response::parse_success(status, &headers, &bytes, &body)
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        result.map_err(|mut err| {
            self.endpoint.scrub(&mut err);
            err
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn urls_accept_a_base_with_or_without_v1() {
        for base in [
            "https://api.anthropic.com",
            "https://api.anthropic.com/",
            "https://api.anthropic.com/v1",
            "https://api.anthropic.com/v1/",
        ] {
            assert_eq!(
                messages_url(base).unwrap().as_str(),
                "https://api.anthropic.com/v1/messages"
            );
        }
        assert!(messages_url("ftp://x").is_err());
        assert!(messages_url("not a url").is_err());
    }

    #[test]
    fn debug_output_hides_the_key_and_header_values() {
        let config = AnthropicConfig {
            api_key: Some(Secret::new("sk-ant-verysecret123".to_owned())),
            headers: vec![("X-Proxy-Token".to_owned(), "tok-hidden-456".to_owned())],
            ..AnthropicConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk-ant-verysecret123"), "{shown}");
        assert!(!shown.contains("tok-hidden-456"), "{shown}");
        let provider = AnthropicProvider::new(config).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk-ant-verysecret123"), "{shown}");
        assert!(!shown.contains("tok-hidden-456"), "{shown}");

        let mut err = ProviderError::new(
            ProviderErrorKind::Auth,
            "bad key sk-ant-verysecret123 and tok-hidden-456",
        );
        provider.endpoint.scrub(&mut err);
        assert_eq!(err.message, "bad key *** and ***");
    }

    #[test]
    fn bad_keys_and_versions_are_refused_without_echoing_them() {
        let err = AnthropicProvider::new(AnthropicConfig {
            api_key: Some(Secret::new("sk-ant-bad\nkey".to_owned())),
            ..AnthropicConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Auth);
        assert!(!err.to_string().contains("sk-ant-bad"));
        let err = AnthropicProvider::new(AnthropicConfig {
            version: "2023\n06".to_owned(),
            ..AnthropicConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
    }
}
