//! One configured HTTP endpoint, as every provider kind builds and calls it: the checked URL,
//! the default headers with the key and the operator's extra headers (all sensitive), the
//! pooled client, and the POST whose error replies each kind classifies its own way.

use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use serde_json::{Map, Value};

use super::{display_url, looks_secret, read_body, scrub, transport_error};
use crate::provider::{ProviderError, ProviderErrorKind, Secret};

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// `{base}{path}` as a URL, refusing anything but http(s). `example` is a base URL to suggest.
pub(crate) fn base_url(
    base: &str,
    path: &str,
    example: &str,
) -> Result<reqwest::Url, ProviderError> {
    let url = reqwest::Url::parse(&format!("{base}{path}")).map_err(|e| {
        config_error(format!(
            "the provider base_url is not a valid url ({e}): use e.g. {example}"
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

/// How a provider kind sends its key.
#[derive(Debug, Clone, Copy)]
pub(crate) enum KeyHeader {
    /// `Authorization: Bearer <key>`.
    Bearer,
    /// The key as it is, in the named header (e.g. `x-api-key`).
    Named(&'static str),
}

/// What one endpoint is built from.
pub(crate) struct EndpointConfig<'a> {
    pub(crate) url: reqwest::Url,
    /// Headers of the kind itself (e.g. `anthropic-version`), already checked.
    pub(crate) fixed_headers: HeaderMap,
    /// The operator's extra headers; their values are treated as secrets.
    pub(crate) headers: &'a [(String, String)],
    pub(crate) api_key: Option<&'a Secret>,
    pub(crate) key_header: KeyHeader,
    pub(crate) timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) max_response_bytes: usize,
}

/// A pooled client for one URL. Cheap to share.
pub(crate) struct Endpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `url` without user info or query, for messages.
    display_url: String,
    timeout: Duration,
    max_response_bytes: usize,
    /// Strings to scrub from every error message: the key and secret-looking header values.
    secrets: Vec<Secret>,
}

/// A header value that is never printed.
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

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.display_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Checks the headers and key and builds the pooled client.
    pub(crate) fn new(config: EndpointConfig<'_>) -> Result<Self, ProviderError> {
        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("batchyard"));
        headers.extend(config.fixed_headers);
        for (name, value) in config.headers {
            let header_name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                config_error(format!(
                    "the provider header name {name:?} is not a valid http header name"
                ))
            })?;
            let header_value = sensitive_value(value, &format!("provider header {name:?}"))?;
            if looks_secret(name) && value.trim().len() >= 4 {
                secrets.push(Secret::new(value.trim().to_owned()));
            }
            headers.insert(header_name, header_value);
        }
        if let Some(key) = config.api_key {
            let key_text = key.expose().trim();
            let auth = |message: &str| ProviderError::new(ProviderErrorKind::Auth, message);
            if key_text.is_empty() {
                return Err(auth(
                    "the provider api key is empty: set the key's environment variable or remove \
                     it from the config",
                ));
            }
            let (name, text) = match config.key_header {
                KeyHeader::Bearer => (reqwest::header::AUTHORIZATION, format!("Bearer {key_text}")),
                KeyHeader::Named(name) => (HeaderName::from_static(name), key_text.to_owned()),
            };
            let value = sensitive_value(&text, "the api key").map_err(|_| {
                auth(
                    "the provider api key has characters not allowed in http headers: check for \
                     stray newlines or quotes",
                )
            })?;
            headers.insert(name, value);
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
            display_url: display_url(&config.url),
            client,
            url: config.url,
            timeout: config.timeout,
            max_response_bytes: config.max_response_bytes.max(1),
            secrets,
        })
    }

    /// The endpoint, without credentials.
    pub(crate) fn display_url(&self) -> &str {
        &self.display_url
    }

    /// One POST of `body`; a reply outside 2xx goes through `classify`. Returns the status,
    /// headers and body of a 2xx. Does not retry: that is the retry module's job.
    pub(crate) async fn post(
        &self,
        body: &Map<String, Value>,
        classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ProviderError> {
        self.send(self.url.clone(), &self.display_url, body, classify)
            .await
    }

    /// [`Self::post`] to another URL with this endpoint's client, headers and limits: for kinds
    /// whose URL names the model (Gemini's `{base}/models/{model}:generateContent`, an Azure
    /// deployment), so one pooled client serves every model of the provider.
    pub(crate) async fn post_to(
        &self,
        url: reqwest::Url,
        body: &Map<String, Value>,
        classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ProviderError> {
        let shown = display_url(&url);
        self.send(url, &shown, body, classify).await
    }

    /// A POST of a body already serialised, with per-request headers: for Bedrock, whose
    /// signature covers the exact bytes and a date header.
    pub(crate) async fn post_bytes_to(
        &self,
        url: reqwest::Url,
        body: Vec<u8>,
        headers: HeaderMap,
        classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ProviderError> {
        let shown = display_url(&url);
        let request = self.client.post(url).headers(headers).body(body);
        self.send_request(request, &shown, classify).await
    }

    /// The configured URL (with any query), for kinds that extend it per call.
    pub(crate) fn url(&self) -> &reqwest::Url {
        &self.url
    }

    async fn send(
        &self,
        url: reqwest::Url,
        shown: &str,
        body: &Map<String, Value>,
        classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ProviderError> {
        self.send_request(self.client.post(url).json(body), shown, classify)
            .await
    }

    async fn send_request(
        &self,
        request: reqwest::RequestBuilder,
        shown: &str,
        classify: fn(u16, &HeaderMap, &[u8]) -> ProviderError,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ProviderError> {
        let mut response = request
            .send()
            .await
            .map_err(|e| transport_error(shown, self.timeout, &e))?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let bytes = read_body(response, self.max_response_bytes, shown, self.timeout).await?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &headers, &bytes));
        }
        Ok((status, headers, bytes))
    }

    /// Removes every secret this endpoint knows from an error's message.
    pub(crate) fn scrub(&self, err: &mut ProviderError) {
        scrub(&self.secrets, err);
    }
}
