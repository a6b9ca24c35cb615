//! AWS Bedrock's Converse API (`POST {base}/model/{modelId}/converse`).
//!
//! - [`BedrockProvider`] holds one pooled client (the shared `Endpoint`) for the runtime
//!   endpoint of its region, signs each call with SigV4 (or sends a Bedrock API key as a
//!   bearer token), and builds each call's URL from the model id.
//! - [`request`] maps the OpenAI-shaped body to a Converse request: `system[]`, `messages[]`
//!   with content blocks, cache points after cache-marked parts, `inferenceConfig`.
//! - [`response`] maps the reply back to an OpenAI chat completion: text, `stopReason` as
//!   `finish_reason`, `usage` with the cache reads and writes.
//! - [`tools`] maps tool use both ways (`toolConfig`, `toolUse`, `toolResult`).
//! - [`errors`] types AWS errors (`x-amzn-ErrorType` or the body's `__type`).
//! - [`sign`] builds the URL and the SigV4 headers (`aws-sigv4`), encoding the path as the
//!   AWS SDKs do.
//! - [`batch`]: batch inference jobs on the control plane, over the user's S3 bucket (the
//!   offload lane); `records`: their records both ways and the jobs' states.
//! - [`auth`] says who the call is made as, and keeps the chain's credentials fresh.
//! - `chain_http`: the reqwest-backed HTTP client the AWS credential chain uses.
//! - Keys, tokens and signatures are never in a URL, a message or `Debug` output.

mod auth;
pub mod batch;
mod chain_http;
mod errors;
mod records;
mod request;
mod response;
mod sign;
mod tools;

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

pub use auth::BedrockAuth;
pub use batch::BedrockBatchConfig;
pub use errors::classify;
pub use sign::{converse_url, encode_label, signed_headers, signed_method_headers};

use super::http::{self, Endpoint, EndpointConfig, HeaderNames, KeyHeader};
use super::{ChatCall, Completion, ProviderError, ProviderErrorKind};

/// A Bedrock API key in this variable is sent as a bearer token instead of signing.
pub const BEARER_TOKEN_ENV: &str = "AWS_BEARER_TOKEN_BEDROCK";

/// Moves the Bedrock runtime endpoint (as in the AWS SDKs). The generic `AWS_ENDPOINT_URL`
/// does not: it usually points object storage at MinIO or SeaweedFS.
pub const ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_BEDROCK_RUNTIME";

/// The public runtime endpoint of a region.
pub fn default_base_url(region: &str) -> String {
    format!("https://bedrock-runtime.{region}.amazonaws.com")
}

/// A region name as AWS spells them (`us-east-1`), or why not. It goes into the host name
/// and the signature, so nothing else is let through.
pub fn check_region(region: &str) -> Result<&str, String> {
    let region = region.trim();
    let ok = !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && region.contains('-');
    if ok {
        Ok(region)
    } else {
        Err(format!(
            "{region:?} is not an aws region name; use e.g. \"us-east-1\""
        ))
    }
}

/// How to reach Bedrock.
#[derive(Clone)]
pub struct BedrockConfig {
    /// The runtime endpoint, e.g. `https://bedrock-runtime.us-east-1.amazonaws.com`;
    /// `/model/{modelId}/converse` is appended.
    pub base_url: String,
    pub region: String,
    pub auth: BedrockAuth,
    /// Extra headers sent with every request (not signed). Their values are treated as secrets.
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_response_bytes: usize,
    /// Where batch jobs read and write; `None`: this provider does not batch.
    pub batch: Option<BedrockBatchConfig>,
}

impl BedrockConfig {
    /// The public endpoint of `region`, signed with the standard chain.
    pub fn new(region: &str) -> Self {
        Self {
            base_url: default_base_url(region),
            region: region.to_owned(),
            auth: BedrockAuth::Chain { profile: None },
            headers: Vec::new(),
            // Long answers without streaming take minutes.
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: super::http::DEFAULT_MAX_RESPONSE_BYTES,
            batch: None,
        }
    }
}

impl fmt::Debug for BedrockConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockConfig")
            .field("base_url", &self.base_url)
            .field("region", &self.region)
            .field("auth", &self.auth)
            .field("headers", &HeaderNames(&self.headers))
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

/// A client for the Bedrock runtime. Cheap to share.
pub struct BedrockProvider {
    endpoint: Endpoint,
    region: String,
    /// `None` for a bearer token, which is in the endpoint's headers.
    signer: Option<auth::Credentialer>,
    /// The auth's `Debug` (no secret in it), so `Debug` says who calls are made as.
    auth: String,
    /// Boxed: most providers have none, and the enum of providers stays small.
    batch: Option<Box<BedrockBatchConfig>>,
}

impl fmt::Debug for BedrockProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockProvider")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("auth", &self.auth)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl BedrockProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL, region or header.
    pub fn new(config: BedrockConfig) -> Result<Self, ProviderError> {
        let region = check_region(&config.region)
            .map_err(|m| ProviderError::new(ProviderErrorKind::InvalidRequest, m))?
            .to_owned();
        let base = config.base_url.trim().trim_end_matches('/');
        let url = http::base_url(base, "", &default_base_url(&region))?;
        let bearer = match &config.auth {
            BedrockAuth::Bearer(token) => Some(token),
            _ => None,
        };
        let endpoint = Endpoint::new(EndpointConfig {
            url,
            fixed_headers: HeaderMap::new(),
            headers: &config.headers,
            api_key: bearer,
            key_header: KeyHeader::Bearer,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
        })?;
        let signer = auth::Credentialer::new(&config.auth, &region);
        Ok(Self {
            endpoint,
            region,
            signer,
            auth: format!("{:?}", config.auth),
            batch: config.batch.map(Box::new),
        })
    }

    /// Whether batch jobs are configured (`batch_role_arn` and `batch_s3_url`).
    pub fn batches(&self) -> bool {
        self.batch.is_some()
    }

    /// The runtime endpoint, without credentials.
    pub fn url(&self) -> &str {
        self.endpoint.display_url()
    }

    /// One signed POST to `{base}/model/{modelId}/converse`. Does not retry: that is the retry
    /// module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let result = async {
            let url = converse_url(self.endpoint.url(), call.model_name)?;
            let body = request::converse_body(call)?;
            let bytes = serde_json::to_vec(&body).map_err(|e| {
                ProviderError::new(
                    ProviderErrorKind::InvalidRequest,
                    format!("could not serialise the converse request: {e}"),
                )
            })?;
            let headers = self.headers_for("POST", &url, &bytes).await?;
            let (status, headers, answer) = self
                .endpoint
                .post_bytes_to(url, bytes, headers, classify)
                .await?;
            response::parse_success(status, &headers, &answer, call.model_name)
        }
        .await;
        match result {
            Ok(done) => Ok(done),
            Err(mut err) => {
                self.scrub(&mut err).await;
                Err(err)
            }
        }
    }

    /// The headers of one request: SigV4 over `bytes`, or with a bearer key (already in the
    /// endpoint's headers) the content type alone.
    async fn headers_for(
        &self,
        method: &str,
        url: &reqwest::Url,
        bytes: &[u8],
    ) -> Result<HeaderMap, ProviderError> {
        match &self.signer {
            Some(signer) => {
                let credentials = signer.credentials().await?;
                signed_method_headers(
                    method,
                    &credentials,
                    &self.region,
                    url,
                    bytes,
                    SystemTime::now(),
                )
            }
            None => {
                let mut headers = HeaderMap::new();
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                Ok(headers)
            }
        }
    }

    /// Removes every secret this provider knows from `err`'s message.
    async fn scrub(&self, err: &mut ProviderError) {
        self.endpoint.scrub(err);
        if let Some(signer) = &self.signer {
            http::scrub(&signer.secrets().await, err);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use crate::provider::Secret;

    #[test]
    fn regions_are_checked_and_name_the_endpoint() {
        assert_eq!(check_region(" eu-west-3 ").unwrap(), "eu-west-3");
        for bad in ["", "us east 1", "evil.com/x", "US-EAST-1", "useast1"] {
            assert!(check_region(bad).is_err(), "{bad}");
        }
        let p = BedrockProvider::new(BedrockConfig::new("us-west-2")).unwrap();
        assert_eq!(p.url(), "https://bedrock-runtime.us-west-2.amazonaws.com/");
        let mut config = BedrockConfig::new("us-west-2");
        config.base_url = "ftp://x".into();
        assert!(BedrockProvider::new(config).is_err());
    }

    #[test]
    fn debug_output_hides_every_credential() {
        let mut config = BedrockConfig::new("us-east-1");
        config.auth = BedrockAuth::Keys {
            access_key_id: Secret::new("AKIAHIDDEN123".into()),
            secret_access_key: Secret::new("secret/very+hidden".into()),
            session_token: Some(Secret::new("token-hidden-456".into())),
        };
        let shown = format!("{config:?}");
        for secret in ["AKIAHIDDEN123", "secret/very+hidden", "token-hidden-456"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let p = BedrockProvider::new(config).unwrap();
        assert!(!format!("{p:?}").contains("hidden"));
        let mut config = BedrockConfig::new("us-east-1");
        config.auth = BedrockAuth::Bearer(Secret::new("ABSKbearer-hidden".into()));
        assert!(!format!("{config:?}").contains("ABSK"));
        let p = BedrockProvider::new(config).unwrap();
        assert!(!format!("{p:?}").contains("ABSK"));
    }
}
