//! Azure OpenAI deployments: `POST {base}/openai/deployments/{deployment}/chat/completions
//! ?api-version=...`.
//!
//! - [`AzureOpenAiProvider`] holds one pooled client (the shared `Endpoint`) for the whole
//!   resource and builds each call's URL from the model's `name`, which is the deployment, so
//!   every deployment of a resource shares one connection pool.
//! - Request and reply are OpenAI chat completions: the `openai` kind's body and reader are
//!   reused as they are. The body keeps `model` (the deployment name), as OpenAI's own Azure
//!   client sends it; Azure routes by the URL and ignores the field.
//! - Auth ([`AzureAuth`]): the resource key in the `api-key` header, or a Microsoft Entra ID
//!   token as `Authorization: Bearer`: a static one, or one [`entra`] fetches and refreshes.
//!   Each is a secret: sent only in a sensitive header, scrubbed from every error message,
//!   never in `Debug` output.
//! - Errors: the shared classification (429 with `retry-after-ms` and `x-ratelimit-*`, the
//!   content filter's `innererror.code = ResponsibleAIPolicyViolation`), plus [`classify`]'s
//!   hints for what Azure users get wrong: the key of another resource, a model `name` that
//!   is not a deployment, an `api_version` the resource does not serve.
//!
//! - [`entra`]: Entra ID tokens from a service principal, workload identity or managed
//!   identity, refreshed before they expire.

pub mod entra;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::HeaderMap;

use super::http::{self, Endpoint, EndpointConfig, HeaderNames, KeyHeader};
use super::{ChatCall, Completion, ProviderError, ProviderErrorKind, Secret, openai};

/// The api-version sent when the config names none: the newest generally available (not
/// preview) version of Azure OpenAI's dated inference API.
pub const DEFAULT_API_VERSION: &str = "2024-10-21";

/// The environment variable an Entra ID token is read from when no api key is set (the name
/// OpenAI's and Microsoft's own clients use).
pub const AD_TOKEN_ENV: &str = "AZURE_OPENAI_AD_TOKEN";

/// What a 2xx body that is not JSON suggests base_url should point at.
const AZURE_API: &str = "an azure openai resource endpoint (https://RESOURCE.openai.azure.com)";

/// How calls prove who they are.
#[derive(Clone, Debug, Default)]
pub enum AzureAuth {
    /// Nothing is sent; Azure answers 401, which reads as `auth`.
    #[default]
    None,
    /// The resource's key, sent as `api-key`.
    ApiKey(Secret),
    /// A Microsoft Entra ID access token, sent as `Authorization: Bearer`.
    AdToken(Secret),
    /// Entra ID tokens fetched (and refreshed) from a credential, sent as `Authorization:
    /// Bearer`.
    Entra(Arc<entra::EntraCredential>),
}

/// How to reach one Azure OpenAI resource.
#[derive(Clone)]
pub struct AzureOpenAiConfig {
    /// The resource endpoint, e.g. `https://myres.openai.azure.com` (a trailing `/openai` is
    /// accepted); `/openai/deployments/{name}/chat/completions` is appended per call.
    pub base_url: String,
    /// Sent as the `api-version` query parameter of every call.
    pub api_version: String,
    pub auth: AzureAuth,
    /// Extra headers sent with every request. Their values are treated as secrets.
    pub headers: Vec<(String, String)>,
    /// The whole request, from connect to the last byte of the reply.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest answer read; a larger one fails as `response_too_large`.
    pub max_response_bytes: usize,
}

impl Default for AzureOpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            api_version: DEFAULT_API_VERSION.to_owned(),
            auth: AzureAuth::None,
            headers: Vec::new(),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: http::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl fmt::Debug for AzureOpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureOpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_version", &self.api_version)
            .field("auth", &self.auth)
            .field("headers", &HeaderNames(&self.headers))
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// Letters, digits, `-` and `.`: every dated (`2024-10-21`) and preview
/// (`2025-04-01-preview`) version, and nothing that would need escaping in a query.
pub fn check_api_version(version: &str) -> Result<&str, String> {
    let v = version.trim();
    if v.is_empty()
        || v.len() > 40
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Err(format!(
            "{v:?} is not an azure openai api version: use e.g. {DEFAULT_API_VERSION} (or a \
             preview such as 2025-04-01-preview)"
        ));
    }
    Ok(v)
}

/// `{base}/openai/deployments/`, refusing a base that already holds a deployment path or a
/// query (a whole request URL pasted as base_url).
fn deployments_url(base_url: &str) -> Result<reqwest::Url, ProviderError> {
    let base = base_url.trim().trim_end_matches('/');
    let base = base.strip_suffix("/openai").unwrap_or(base);
    if base.contains('?') || base.contains("/deployments") {
        return Err(config_error(
            "the provider base_url must be the resource endpoint alone, e.g. \
             https://myres.openai.azure.com: the deployment is each model's name and the \
             version is the provider's api_version",
        ));
    }
    http::base_url(
        base,
        "/openai/deployments/",
        "https://myres.openai.azure.com",
    )
}

/// A client for one Azure OpenAI resource. Cheap to share.
#[derive(Debug)]
pub struct AzureOpenAiProvider {
    endpoint: Endpoint,
    /// `{base}/openai/deployments/`; each call appends its deployment.
    deployments: reqwest::Url,
    api_version: String,
    /// Set when tokens are fetched per call rather than fixed at start.
    entra: Option<Arc<entra::EntraCredential>>,
}

impl AzureOpenAiProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL, version or header.
    pub fn new(config: AzureOpenAiConfig) -> Result<Self, ProviderError> {
        let deployments = deployments_url(&config.base_url)?;
        let api_version = check_api_version(&config.api_version)
            .map_err(|reason| config_error(format!("the provider api_version {reason}")))?
            .to_owned();
        let (api_key, key_header) = match &config.auth {
            AzureAuth::None => (None, KeyHeader::Bearer),
            AzureAuth::ApiKey(key) => (Some(key), KeyHeader::Named("api-key")),
            AzureAuth::AdToken(token) => (Some(token), KeyHeader::Bearer),
            AzureAuth::Entra(_) => (None, KeyHeader::Bearer),
        };
        let entra = match &config.auth {
            AzureAuth::Entra(credential) => Some(Arc::clone(credential)),
            _ => None,
        };
        let endpoint = Endpoint::new(EndpointConfig {
            url: deployments.clone(),
            fixed_headers: HeaderMap::new(),
            headers: &config.headers,
            api_key,
            key_header,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
        })?;
        Ok(Self {
            endpoint,
            deployments,
            api_version,
            entra,
        })
    }

    /// The resource's deployments URL, without credentials.
    pub fn url(&self) -> &str {
        self.endpoint.display_url()
    }

    /// `{base}/openai/deployments/{deployment}/chat/completions?api-version=...`, the
    /// deployment percent-encoded as one path segment.
    pub fn deployment_url(&self, deployment: &str) -> Result<reqwest::Url, ProviderError> {
        let deployment = deployment.trim();
        if deployment.is_empty() {
            return Err(config_error(
                "the model's name is empty: for azure_openai it is the deployment name",
            ));
        }
        let mut url = self.deployments.clone();
        url.path_segments_mut()
            .map_err(|()| config_error("the provider base_url cannot take a path"))?
            .pop_if_empty()
            .extend([deployment, "chat", "completions"]);
        url.query_pairs_mut()
            .append_pair("api-version", &self.api_version);
        Ok(url)
    }

    /// One POST to the model's deployment. Does not retry: that is the retry module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let mut token = None;
        let result = match self.deployment_url(call.model_name) {
            Ok(url) => {
                let body = openai::request_body(call);
                let sent = match &self.entra {
                    None => self.endpoint.post_to(url, &body, classify).await,
                    Some(credential) => match credential.token().await {
                        Ok(t) => {
                            let sent = self.post_with_token(url, &body, &t).await;
                            token = Some(t);
                            sent
                        }
                        Err(e) => Err(e),
                    },
                };
                match sent {
                    Ok((status, headers, bytes)) => {
                        openai::parse_success(status, &headers, &bytes, &body, AZURE_API)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        if let (Err(e), Some(credential)) = (&result, &self.entra)
            && e.kind == ProviderErrorKind::Auth
            && e.status == Some(401)
        {
            // Revoked or expired early: the next call gets a fresh token.
            credential.forget().await;
        }
        result.map_err(|mut err| {
            self.endpoint.scrub(&mut err);
            if let Some(t) = token.as_ref().filter(|t| t.expose().len() >= 4) {
                err.message = err.message.replace(t.expose(), "***");
            }
            if let Some(credential) = &self.entra {
                credential.scrub(&mut err);
            }
            err
        })
    }

    /// One POST with this call's Entra ID token in a sensitive `Authorization` header.
    async fn post_with_token(
        &self,
        url: reqwest::Url,
        body: &serde_json::Map<String, serde_json::Value>,
        token: &Secret,
    ) -> Result<(u16, HeaderMap, Vec<u8>), ProviderError> {
        let mut headers = HeaderMap::new();
        let mut value =
            reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose().trim()))
                .map_err(|_| {
                    ProviderError::new(
                        ProviderErrorKind::Auth,
                        "the entra id token has characters not allowed in http headers",
                    )
                })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
        headers.insert(
            reqwest::header::CONTENT_TYPE,
            reqwest::header::HeaderValue::from_static("application/json"),
        );
        let bytes = serde_json::to_vec(body)
            .map_err(|e| config_error(format!("cannot serialise the request: {e}")))?;
        self.endpoint
            .post_bytes_to(url, bytes, headers, classify)
            .await
    }
}

/// The shared classification, with the hint an Azure user needs for the usual mistakes.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let mut err = http::classify(status, headers, body);
    let said = String::from_utf8_lossy(body).to_ascii_lowercase();
    let hint = match err.kind {
        ProviderErrorKind::Auth => Some(
            "; azure_openai sends the resource's key (api_key_env, as the api-key header), else \
             an entra id token (AZURE_OPENAI_AD_TOKEN, or fetched for AZURE_CLIENT_ID with \
             AZURE_CLIENT_SECRET or AZURE_FEDERATED_TOKEN_FILE, or a managed identity), and \
             the key must be of the resource base_url names",
        ),
        ProviderErrorKind::InvalidRequest if said.contains("deploymentnotfound") => Some(
            "; for azure_openai the model's name is the deployment name, as the azure portal \
             lists it under deployments",
        ),
        ProviderErrorKind::InvalidRequest
            if said.contains("api version") || said.contains("api-version") =>
        {
            Some(
                "; set the provider's api_version to one this resource serves, e.g. \
                 2024-10-21",
            )
        }
        _ => None,
    };
    if let Some(hint) = hint {
        err.message.push_str(hint);
    }
    err
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn provider(base: &str) -> AzureOpenAiProvider {
        AzureOpenAiProvider::new(AzureOpenAiConfig {
            base_url: base.to_owned(),
            auth: AzureAuth::ApiKey(Secret::new("azkey-secret-0123".to_owned())),
            ..AzureOpenAiConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn cache_points_reach_the_deployment_flattened() {
        // Azure caches long prefixes by itself, as OpenAI: the body it gets has plain text.
        let body: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
            serde_json::json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "Head: ", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "doc"}]}]}),
        )
        .unwrap();
        let out = openai::request_body(ChatCall {
            model_name: "mini-deploy",
            body: &body,
            default_max_tokens: None,
        });
        assert_eq!(out["messages"][0]["content"], "Head: doc");
    }

    #[test]
    fn the_url_names_the_deployment_and_the_version() {
        for base in [
            "https://myres.openai.azure.com",
            "https://myres.openai.azure.com/",
            "https://myres.openai.azure.com/openai/",
        ] {
            let url = provider(base).deployment_url("gpt-4o-mini").unwrap();
            assert_eq!(
                url.as_str(),
                "https://myres.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions\
                 ?api-version=2024-10-21"
            );
        }
        // A name with a slash or space stays one path segment.
        let url = provider("http://127.0.0.1:9/")
            .deployment_url("a b/c")
            .unwrap();
        assert_eq!(url.path(), "/openai/deployments/a%20b%2Fc/chat/completions");
        assert!(provider("http://127.0.0.1:9").deployment_url(" ").is_err());
    }

    #[test]
    fn bad_base_urls_and_versions_are_refused() {
        for base in [
            "https://myres.openai.azure.com/openai/deployments/x/chat/completions",
            "https://myres.openai.azure.com?api-version=2024-10-21",
            "ftp://myres",
            "",
        ] {
            let err = AzureOpenAiProvider::new(AzureOpenAiConfig {
                base_url: base.to_owned(),
                ..AzureOpenAiConfig::default()
            })
            .unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{base}");
            assert!(err.message.contains("base_url"), "{err}");
        }
        for version in ["", "2024-10-21&x=1", "2024 10 21"] {
            let err = AzureOpenAiProvider::new(AzureOpenAiConfig {
                base_url: "https://myres.openai.azure.com".to_owned(),
                api_version: version.to_owned(),
                ..AzureOpenAiConfig::default()
            })
            .unwrap_err();
            assert!(err.message.contains("api_version"), "{err}");
        }
        assert!(check_api_version("2025-04-01-preview").is_ok());
    }

    #[test]
    fn debug_hides_the_key_and_the_token() {
        for (auth, secret) in [
            (
                AzureAuth::ApiKey(Secret::new("azkey-secret-0123".to_owned())),
                "azkey-secret-0123",
            ),
            (
                AzureAuth::AdToken(Secret::new("eyJ-token-secret-456".to_owned())),
                "eyJ-token-secret-456",
            ),
        ] {
            let config = AzureOpenAiConfig {
                base_url: "https://myres.openai.azure.com".to_owned(),
                auth,
                ..AzureOpenAiConfig::default()
            };
            let shown = format!("{config:?}");
            let provider = AzureOpenAiProvider::new(config).unwrap();
            let shown = format!("{shown} {provider:?}");
            assert!(!shown.contains(secret), "{shown}");
            let mut err = ProviderError::new(ProviderErrorKind::Auth, format!("got {secret}"));
            provider.endpoint.scrub(&mut err);
            assert_eq!(err.message, "got ***");
        }
    }

    #[test]
    fn azure_errors_get_azure_hints() {
        let headers = HeaderMap::new();
        let err = classify(
            401,
            &headers,
            br#"{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint."}}"#,
        );
        assert_eq!(err.kind, ProviderErrorKind::Auth);
        assert!(err.message.contains("AZURE_OPENAI_AD_TOKEN"), "{err}");
        let err = classify(
            404,
            &headers,
            br#"{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist."}}"#,
        );
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
        assert!(err.message.contains("deployment name"), "{err}");
        let err = classify(
            400,
            &headers,
            br#"{"error":{"code":"BadRequest","message":"API version not supported"}}"#,
        );
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
        assert!(err.message.contains("api_version"), "{err}");
        let filtered = classify(
            400,
            &headers,
            br#"{"error":{"code":"content_filter","message":"filtered","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#,
        );
        assert_eq!(filtered.kind, ProviderErrorKind::ContentFilter);
    }
}
