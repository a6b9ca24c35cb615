//! Google's Gemini API (`POST {base}/models/{model}:generateContent`).
//!
//! - [`GeminiProvider`] holds one pooled client (the shared `Endpoint`) for `{base}/models`,
//!   sends the key in `x-goog-api-key`, and builds each call's URL from the model name, which
//!   the Gemini API puts in the path.
//! - [`request`] maps the OpenAI-shaped body to a `generateContent` request: system messages
//!   to `systemInstruction`, turns to `contents` (`assistant` becomes `model`), limits and
//!   sampling to `generationConfig`, JSON tasks to `responseMimeType` + `responseJsonSchema`.
//! - [`response`] maps the reply back to an OpenAI chat completion: text, `finishReason` as
//!   `finish_reason`, `usageMetadata` as `usage` (thinking tokens count as output).
//! - [`tools`] maps function calling both ways (declarations, `toolConfig`, `functionCall`
//!   and `functionResponse` parts).
//! - [`batch`]: batch mode with inline requests (the offload lane), on the same endpoint and key.
//! - [`errors`] types Google's `{"error":{"code","message","status","details"}}` on top of the
//!   shared classification, with `RetryInfo.retryDelay` as the hint of a 429.
//! - The key is never in the URL (Google also accepts `?key=`; we don't use it), is redacted
//!   from every error message, and never appears in `Debug` output.

pub mod batch;
mod errors;
mod request;
mod response;
mod tools;

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;

pub use errors::{classify, retry_delay};

use super::http::{self, Endpoint, EndpointConfig, HeaderNames, KeyHeader};
use super::{ChatCall, Completion, ProviderError, ProviderErrorKind, Secret};

/// The public endpoint, used when the config names no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com/v1beta";

/// How to reach the Gemini API (or a compatible proxy).
#[derive(Clone)]
pub struct GeminiConfig {
    /// Up to and including the version, e.g. `https://generativelanguage.googleapis.com/v1beta`;
    /// `/models/{model}:generateContent` is appended.
    pub base_url: String,
    /// Sent as `x-goog-api-key` when set.
    pub api_key: Option<Secret>,
    /// Extra headers sent with every request. Their values are treated as secrets.
    pub headers: Vec<(String, String)>,
    /// The whole request, from connect to the last byte of the reply.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest answer read; a larger one fails as `response_too_large`.
    pub max_response_bytes: usize,
}

impl Default for GeminiConfig {
    fn default() -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            api_key: None,
            headers: Vec::new(),
            // Thinking models take minutes on long answers without streaming.
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: super::http::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl fmt::Debug for GeminiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeminiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("headers", &HeaderNames(&self.headers))
            .finish_non_exhaustive()
    }
}

/// A client for the Gemini API. Cheap to share.
#[derive(Debug)]
pub struct GeminiProvider {
    /// Points at `{base}/models`; each call appends `{model}:generateContent`.
    endpoint: Endpoint,
}

impl GeminiProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL or header.
    pub fn new(config: GeminiConfig) -> Result<Self, ProviderError> {
        let base = config.base_url.trim().trim_end_matches('/');
        let base = base.strip_suffix("/models").unwrap_or(base);
        let url = http::base_url(base, "/models", DEFAULT_BASE_URL)?;
        let endpoint = Endpoint::new(EndpointConfig {
            url,
            fixed_headers: HeaderMap::new(),
            headers: &config.headers,
            api_key: config.api_key.as_ref(),
            key_header: KeyHeader::Named("x-goog-api-key"),
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
        })?;
        Ok(Self { endpoint })
    }

    /// The endpoint (`{base}/models`), without credentials.
    pub fn url(&self) -> &str {
        self.endpoint.display_url()
    }

    /// One POST to `{base}/models/{model}:generateContent`. Does not retry: that is the retry
    /// module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let result = async {
            let url = self.call_url(call.model_name)?;
            let body = request::generate_body(call)?;
            let (status, headers, bytes) = self.endpoint.post_to(url, &body, classify).await?;
            response::parse_success(status, &headers, &bytes, call.model_name)
        }
        .await;
        result.map_err(|mut err| {
            self.endpoint.scrub(&mut err);
            err
        })
    }

    /// `{base}/models/{model}:generateContent`; a name given as `models/x` is taken as `x`. The
    /// name is one path segment, so a `/` or `?` in it is escaped, not followed.
    fn call_url(&self, model: &str) -> Result<reqwest::Url, ProviderError> {
        self.model_url(model, "generateContent")
    }

    /// `{base}/models/{model}:{method}`.
    fn model_url(&self, model: &str, method: &str) -> Result<reqwest::Url, ProviderError> {
        let model = model.trim();
        let model = model.strip_prefix("models/").unwrap_or(model);
        if model.is_empty() {
            return Err(ProviderError::new(
                ProviderErrorKind::InvalidRequest,
                "the model has an empty name: set `name` in the model's config",
            ));
        }
        let mut url = self.endpoint.url().clone();
        url.path_segments_mut()
            .map_err(|()| {
                ProviderError::new(
                    ProviderErrorKind::InvalidRequest,
                    "the gemini base_url cannot take a path: use e.g. \
                     https://generativelanguage.googleapis.com/v1beta",
                )
            })?
            .pop_if_empty()
            .push(&format!("{model}:{method}"));
        Ok(url)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn provider(base: &str) -> GeminiProvider {
        GeminiProvider::new(GeminiConfig {
            base_url: base.to_owned(),
            ..GeminiConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn urls_name_the_model_in_the_path() {
        for base in [
            DEFAULT_BASE_URL,
            "https://generativelanguage.googleapis.com/v1beta/",
            "https://generativelanguage.googleapis.com/v1beta/models",
        ] {
            let p = provider(base);
            assert_eq!(
                p.call_url("gemini-2.5-flash").unwrap().as_str(),
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:generateContent"
            );
            assert_eq!(
                p.call_url("models/gemini-2.5-pro").unwrap().as_str(),
                "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:generateContent"
            );
        }
        let p = provider("http://127.0.0.1:9/proxy");
        assert_eq!(
            p.call_url("a/b?c").unwrap().as_str(),
            "http://127.0.0.1:9/proxy/models/a%2Fb%3Fc:generateContent"
        );
        assert!(p.call_url(" ").is_err());
        assert!(
            GeminiProvider::new(GeminiConfig {
                base_url: "ftp://x".into(),
                ..GeminiConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn debug_output_and_errors_hide_the_key() {
        let config = GeminiConfig {
            api_key: Some(Secret::new("AIzaSyVerySecret123".to_owned())),
            headers: vec![("X-Proxy-Token".to_owned(), "tok-hidden-456".to_owned())],
            ..GeminiConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("AIzaSyVerySecret123"), "{shown}");
        assert!(!shown.contains("tok-hidden-456"), "{shown}");
        let provider = GeminiProvider::new(config).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("AIzaSyVerySecret123"), "{shown}");
        let mut err = ProviderError::new(
            ProviderErrorKind::Auth,
            "bad key AIzaSyVerySecret123 and tok-hidden-456",
        );
        provider.endpoint.scrub(&mut err);
        assert_eq!(err.message, "bad key *** and ***");
    }
}
