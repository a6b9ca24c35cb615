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

mod errors;
mod request;
mod response;

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use serde_json::{Map, Value};

pub use errors::{classify, parse_rfc3339};

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
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("AnthropicConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("version", &self.version)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish()
    }
}

/// A client for the Messages API. Cheap to share.
pub struct AnthropicProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `url` without user info or query, for messages.
    display_url: String,
    timeout: Duration,
    max_response_bytes: usize,
    /// Strings to scrub from every error message: the key and secret-looking header values.
    secrets: Vec<Secret>,
}

impl fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("url", &self.display_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// `{base}/v1/messages`, accepting a base that already ends in `/v1`.
fn messages_url(base_url: &str) -> Result<reqwest::Url, ProviderError> {
    let base = base_url.trim().trim_end_matches('/');
    let base = base.strip_suffix("/v1").unwrap_or(base);
    let url = reqwest::Url::parse(&format!("{base}/v1/messages")).map_err(|e| {
        config_error(format!(
            "the provider base_url is not a valid url ({e}): use e.g. https://api.anthropic.com"
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(config_error(format!(
            "the provider base_url must start with http:// or https://, not {}://",
            url.scheme()
        )));
    }
    Ok(url)
}

fn sensitive_value(value: &str, what: &str) -> Result<HeaderValue, ProviderError> {
    let mut header_value = HeaderValue::from_str(value.trim()).map_err(|_| {
        config_error(format!(
            "the value of {what} has characters not allowed in http headers: check for newlines \
             or quotes"
        ))
    })?;
    header_value.set_sensitive(true);
    Ok(header_value)
}

impl AnthropicProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL, version or header.
    pub fn new(config: AnthropicConfig) -> Result<Self, ProviderError> {
        let url = messages_url(&config.base_url)?;
        let display_url = crate::provider::http::display_url(&url);

        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("batchyard"));
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
        headers.insert("anthropic-version", version);
        for (name, value) in &config.headers {
            let header_name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                config_error(format!(
                    "the provider header name {name:?} is not a valid http header name"
                ))
            })?;
            let header_value = sensitive_value(value, &format!("provider header {name:?}"))?;
            if crate::provider::http::looks_secret(name) && value.trim().len() >= 4 {
                secrets.push(Secret::new(value.trim().to_owned()));
            }
            headers.insert(header_name, header_value);
        }
        if let Some(key) = &config.api_key {
            let key_text = key.expose().trim();
            let auth = |message: &str| ProviderError::new(ProviderErrorKind::Auth, message);
            if key_text.is_empty() {
                return Err(auth(
                    "the provider api key is empty: set the key's environment variable or remove \
                     it from the config",
                ));
            }
            let value = sensitive_value(key_text, "the api key").map_err(|_| {
                auth(
                    "the provider api key has characters not allowed in http headers: check for \
                     stray newlines or quotes",
                )
            })?;
            headers.insert("x-api-key", value);
            secrets.push(Secret::new(key_text.to_owned()));
        }

        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| config_error(format!("could not build the http client: {e}")))?;

        Ok(Self {
            client,
            url,
            display_url,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes.max(1),
            secrets,
        })
    }

    /// The endpoint, without credentials.
    pub fn url(&self) -> &str {
        &self.display_url
    }

    /// One POST to `/v1/messages`. Does not retry: that is the retry module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let result = match request::messages_body(call) {
            Ok(body) => self.send(&body).await,
            Err(e) => Err(e),
        };
        result.map_err(|mut err| {
            self.scrub(&mut err);
            err
        })
    }

    async fn send(&self, body: &Map<String, Value>) -> Result<Completion, ProviderError> {
        let mut response = self
            .client
            .post(self.url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let bytes = super::http::read_body(
            response,
            self.max_response_bytes,
            &self.display_url,
            self.timeout,
        )
        .await?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &headers, &bytes));
        }
        response::parse_success(status, &headers, &bytes, body)
    }

    fn transport_error(&self, err: &reqwest::Error) -> ProviderError {
        crate::provider::http::transport_error(&self.display_url, self.timeout, err)
    }

    fn scrub(&self, err: &mut ProviderError) {
        crate::provider::http::scrub(&self.secrets, err);
    }
}

/// At most `max` characters of `text` on one line.
fn snippet(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
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
        provider.scrub(&mut err);
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
