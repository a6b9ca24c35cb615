//! Microsoft Entra ID access tokens for Azure OpenAI, fetched and refreshed in the process.
//!
//! A static token (`AZURE_OPENAI_AD_TOKEN`) lives about an hour, which a big batch outlives.
//! [`EntraCredential`] gets its own from the same sources, by the same variable names, as
//! Microsoft's `DefaultAzureCredential`:
//! - a service principal: `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and `AZURE_CLIENT_SECRET`;
//! - workload identity (AKS): `AZURE_TENANT_ID`, `AZURE_CLIENT_ID` and
//!   `AZURE_FEDERATED_TOKEN_FILE`, a file the platform rewrites, read again for every fetch;
//! - managed identity as App Service and Container Apps serve it: `IDENTITY_ENDPOINT` and
//!   `IDENTITY_HEADER`.
//!
//! `AZURE_AUTHORITY_HOST` moves the token service (sovereign clouds, tests). A token is kept
//! until 5 minutes before it expires (half its life, for short ones), fetched by one caller
//! at a time, and dropped when Azure answers 401 so the next call fetches a fresh one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::provider::http::snippet;
use crate::provider::{ProviderError, ProviderErrorKind, Secret};

/// What Azure OpenAI tokens are issued for.
pub const SCOPE: &str = "https://cognitiveservices.azure.com/.default";
const RESOURCE: &str = "https://cognitiveservices.azure.com";
const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The most a token is refreshed ahead of its expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);

/// Where a token comes from.
#[derive(Clone)]
pub enum EntraSource {
    ClientSecret {
        token_url: reqwest::Url,
        client_id: String,
        secret: Secret,
    },
    FederatedToken {
        token_url: reqwest::Url,
        client_id: String,
        file: PathBuf,
    },
    ManagedIdentity {
        endpoint: reqwest::Url,
        header: Secret,
    },
}

impl std::fmt::Debug for EntraSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientSecret { client_id, .. } => {
                write!(f, "ClientSecret {{ client_id: {client_id:?} }}")
            }
            Self::FederatedToken {
                client_id, file, ..
            } => write!(
                f,
                "FederatedToken {{ client_id: {client_id:?}, file: {file:?} }}"
            ),
            Self::ManagedIdentity { endpoint, .. } => {
                write!(f, "ManagedIdentity {{ endpoint: {:?} }}", endpoint.as_str())
            }
        }
    }
}

fn auth_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Auth, message)
}

impl EntraSource {
    /// The source the environment describes, if any (`Err` for one described wrongly).
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Option<Self>, String> {
        let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
        if let (Some(endpoint), Some(header)) = (get("IDENTITY_ENDPOINT"), get("IDENTITY_HEADER")) {
            let endpoint = reqwest::Url::parse(endpoint)
                .map_err(|e| format!("IDENTITY_ENDPOINT is not a url ({e})"))?;
            return Ok(Some(Self::ManagedIdentity {
                endpoint,
                header: Secret::new(header.to_owned()),
            }));
        }
        let (Some(tenant), Some(client_id)) = (get("AZURE_TENANT_ID"), get("AZURE_CLIENT_ID"))
        else {
            return Ok(None);
        };
        if !tenant
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return Err(format!(
                "AZURE_TENANT_ID {tenant:?} is not a tenant id or domain"
            ));
        }
        let authority = get("AZURE_AUTHORITY_HOST").unwrap_or(DEFAULT_AUTHORITY);
        let token_url = reqwest::Url::parse(&format!(
            "{}/{tenant}/oauth2/v2.0/token",
            authority.trim_end_matches('/')
        ))
        .map_err(|e| format!("AZURE_AUTHORITY_HOST is not a url ({e})"))?;
        let client_id = client_id.to_owned();
        if let Some(secret) = get("AZURE_CLIENT_SECRET") {
            return Ok(Some(Self::ClientSecret {
                token_url,
                client_id,
                secret: Secret::new(secret.to_owned()),
            }));
        }
        if let Some(file) = get("AZURE_FEDERATED_TOKEN_FILE") {
            return Ok(Some(Self::FederatedToken {
                token_url,
                client_id,
                file: PathBuf::from(file),
            }));
        }
        Err(
            "AZURE_TENANT_ID and AZURE_CLIENT_ID are set but neither AZURE_CLIENT_SECRET nor \
             AZURE_FEDERATED_TOKEN_FILE is: set one of them"
                .to_owned(),
        )
    }
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    /// Seconds from now (the token service).
    expires_in: Option<u64>,
    /// Unix seconds, as a string or a number (managed identity).
    expires_on: Option<serde_json::Value>,
}

/// A token and when to fetch the next one.
struct Held {
    token: Secret,
    refresh_at: Instant,
}

/// Fetches, keeps and refreshes Entra ID tokens from one source. Cheap to share.
pub struct EntraCredential {
    source: EntraSource,
    client: reqwest::Client,
    held: tokio::sync::Mutex<Option<Held>>,
}

impl std::fmt::Debug for EntraCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraCredential")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl EntraCredential {
    pub fn new(source: EntraSource, timeout: Duration) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| auth_error(format!("could not build the entra id client: {e}")))?;
        Ok(Self {
            source,
            client,
            held: tokio::sync::Mutex::new(None),
        })
    }

    /// A token that is good for a while yet.
    pub async fn token(&self) -> Result<Secret, ProviderError> {
        let mut held = self.held.lock().await;
        if let Some(h) = held.as_ref()
            && Instant::now() < h.refresh_at
        {
            return Ok(h.token.clone());
        }
        let (token, lifetime) = self.fetch().await.map_err(|mut e| {
            self.scrub(&mut e);
            e
        })?;
        let ahead = REFRESH_AHEAD.min(lifetime / 2);
        *held = Some(Held {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(ahead),
        });
        Ok(token)
    }

    /// Forgets the held token (Azure refused it), so the next call fetches another.
    pub async fn forget(&self) {
        *self.held.lock().await = None;
    }

    /// Removes the source's own secret from a message.
    pub fn scrub(&self, err: &mut ProviderError) {
        let secret = match &self.source {
            EntraSource::ClientSecret { secret, .. } => Some(secret.expose()),
            EntraSource::ManagedIdentity { header, .. } => Some(header.expose()),
            EntraSource::FederatedToken { .. } => None,
        };
        if let Some(s) = secret.filter(|s| s.len() >= 4) {
            err.message = err.message.replace(s, "***");
        }
    }

    async fn fetch(&self) -> Result<(Secret, Duration), ProviderError> {
        let request = match &self.source {
            EntraSource::ClientSecret {
                token_url,
                client_id,
                secret,
            } => self.client.post(token_url.clone()).body(form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client_id),
                ("scope", SCOPE),
                ("client_secret", secret.expose()),
            ])),
            EntraSource::FederatedToken {
                token_url,
                client_id,
                file,
            } => {
                // The platform rewrites the file before its token expires: read it every time.
                let assertion = tokio::fs::read_to_string(file).await.map_err(|e| {
                    auth_error(format!(
                        "cannot read AZURE_FEDERATED_TOKEN_FILE {}: {e}",
                        file.display()
                    ))
                })?;
                self.client.post(token_url.clone()).body(form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id),
                    ("scope", SCOPE),
                    ("client_assertion_type", CLIENT_ASSERTION_TYPE),
                    ("client_assertion", assertion.trim()),
                ]))
            }
            EntraSource::ManagedIdentity { endpoint, header } => {
                let mut url = endpoint.clone();
                url.query_pairs_mut()
                    .append_pair("resource", RESOURCE)
                    .append_pair("api-version", "2019-08-01");
                self.client
                    .get(url)
                    .header("X-IDENTITY-HEADER", header.expose())
            }
        };
        let request = request.header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        let response = request.send().await.map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Transient,
                format!("cannot reach the entra id token service: {e}"),
            )
        })?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Transient,
                format!("the entra id token service's answer was cut off: {e}"),
            )
        })?;
        if !(200..300).contains(&status) {
            let kind = if status == 429 || status >= 500 {
                ProviderErrorKind::Transient
            } else {
                ProviderErrorKind::Auth
            };
            let mut err = ProviderError::new(
                kind,
                format!(
                    "the entra id token service refused (http {status}): {}; check \
                     AZURE_TENANT_ID, AZURE_CLIENT_ID and the secret or federated token, and \
                     that the identity has the Cognitive Services OpenAI User role",
                    snippet(&String::from_utf8_lossy(&bytes), 300)
                ),
            );
            err.status = Some(status);
            return Err(err);
        }
        let reply: TokenReply = serde_json::from_slice(&bytes).map_err(|e| {
            ProviderError::new(
                ProviderErrorKind::Transient,
                format!("the entra id token service answered something else than a token: {e}"),
            )
        })?;
        let life = lifetime(&reply);
        Ok((Secret::new(reply.access_token), life))
    }
}

/// How long a token lives, from `expires_in` or `expires_on`; an hour when neither reads.
fn lifetime(reply: &TokenReply) -> Duration {
    if let Some(secs) = reply.expires_in {
        return Duration::from_secs(secs);
    }
    let on = match &reply.expires_on {
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        _ => None,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    on.map_or(Duration::from_secs(3600), |on| {
        Duration::from_secs(on.saturating_sub(now))
    })
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        out.append_pair(k, v);
    }
    out.finish()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_environment_picks_the_source() {
        assert!(EntraSource::from_env(&env(&[])).unwrap().is_none());
        let secret = EntraSource::from_env(&env(&[
            ("AZURE_TENANT_ID", "contoso.onmicrosoft.com"),
            ("AZURE_CLIENT_ID", "app-1"),
            ("AZURE_CLIENT_SECRET", "s3cr3t-value"),
        ]))
        .unwrap()
        .unwrap();
        let shown = format!("{secret:?}");
        assert!(
            shown.contains("app-1") && !shown.contains("s3cr3t"),
            "{shown}"
        );
        match secret {
            EntraSource::ClientSecret { token_url, .. } => assert_eq!(
                token_url.as_str(),
                "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
            ),
            other => panic!("{other:?}"),
        }
        let federated = EntraSource::from_env(&env(&[
            ("AZURE_TENANT_ID", "t"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_FEDERATED_TOKEN_FILE", "/var/run/token"),
            ("AZURE_AUTHORITY_HOST", "http://127.0.0.1:9/"),
        ]))
        .unwrap()
        .unwrap();
        assert!(
            matches!(federated, EntraSource::FederatedToken { ref token_url, .. }
            if token_url.as_str() == "http://127.0.0.1:9/t/oauth2/v2.0/token")
        );
        let managed = EntraSource::from_env(&env(&[
            ("IDENTITY_ENDPOINT", "http://127.0.0.1:9/msi/token"),
            ("IDENTITY_HEADER", "hdr"),
        ]))
        .unwrap()
        .unwrap();
        assert!(matches!(managed, EntraSource::ManagedIdentity { .. }));
        let half =
            EntraSource::from_env(&env(&[("AZURE_TENANT_ID", "t"), ("AZURE_CLIENT_ID", "c")]));
        assert!(half.unwrap_err().contains("AZURE_CLIENT_SECRET"));
        let bad = EntraSource::from_env(&env(&[
            ("AZURE_TENANT_ID", "t/../x"),
            ("AZURE_CLIENT_ID", "c"),
            ("AZURE_CLIENT_SECRET", "s"),
        ]));
        assert!(bad.unwrap_err().contains("AZURE_TENANT_ID"));
    }

    #[test]
    fn lifetimes_read_from_either_field() {
        let reply = |json: &str| serde_json::from_str::<TokenReply>(json).unwrap();
        assert_eq!(
            lifetime(&reply(r#"{"access_token":"a","expires_in":3599}"#)),
            Duration::from_secs(3599)
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let on = reply(&format!(
            r#"{{"access_token":"a","expires_on":"{}"}}"#,
            now + 100
        ));
        let got = lifetime(&on).as_secs();
        assert!((98..=100).contains(&got), "{got}");
    }
}
