//! Who a Bedrock call is made as: a Bedrock API key (bearer), fixed keys from the variables
//! the config names, the configured `profile` of the shared AWS files (alone, so the
//! environment's keys cannot take over), or the standard AWS credential chain (`aws-config`:
//! environment, `AWS_PROFILE` and the shared files, web identity, container, instance
//! metadata). Chain credentials are loaded on first use and refreshed before they expire.

use std::fmt;
use std::time::{Duration, SystemTime};

use aws_config::default_provider::credentials::DefaultCredentialsChain;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::provider_config::ProviderConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use tokio::sync::{Mutex, OnceCell};

use super::chain_http::ReqwestHttp;
use crate::provider::{ProviderError, ProviderErrorKind, Secret};

/// Credentials this close to expiry are refreshed before a call, so no request is signed
/// with a key that expires in flight (the SDKs use the same margin).
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How a Bedrock provider authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum BedrockAuth {
    /// A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`), sent as `Authorization: Bearer`.
    Bearer(Secret),
    /// SigV4 with keys read from the variables the config names.
    Keys {
        access_key_id: Secret,
        secret_access_key: Secret,
        session_token: Option<Secret>,
    },
    /// SigV4 with the standard AWS chain, from `profile` when given.
    Chain { profile: Option<String> },
}

impl fmt::Debug for BedrockAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bearer(_) => f.write_str("Bearer(***)"),
            Self::Keys { session_token, .. } => f
                .debug_struct("Keys")
                .field("session_token", &session_token.is_some())
                .finish_non_exhaustive(),
            Self::Chain { profile } => f.debug_struct("Chain").field("profile", profile).finish(),
        }
    }
}

/// Where signing credentials come from, and the current ones.
pub struct Credentialer {
    source: Source,
    /// The last credentials, reused until [`REFRESH_MARGIN`] before they expire.
    current: Mutex<Option<Credentials>>,
}

enum Source {
    Fixed(Credentials),
    Chain {
        profile: Option<String>,
        region: String,
        provider: OnceCell<SharedCredentialsProvider>,
    },
}

impl fmt::Debug for Credentialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Fixed(_) => f.write_str("Credentialer(fixed keys)"),
            Source::Chain { profile, .. } => write!(f, "Credentialer(chain, profile {profile:?})"),
        }
    }
}

fn auth_error(message: String) -> ProviderError {
    ProviderError::new(ProviderErrorKind::Auth, message)
}

impl Credentialer {
    /// `None` for bearer auth, which signs nothing.
    pub fn new(auth: &BedrockAuth, region: &str) -> Option<Self> {
        let source = match auth {
            BedrockAuth::Bearer(_) => return None,
            BedrockAuth::Keys {
                access_key_id,
                secret_access_key,
                session_token,
            } => Source::Fixed(Credentials::new(
                access_key_id.expose().trim(),
                secret_access_key.expose().trim(),
                session_token.as_ref().map(|t| t.expose().trim().to_owned()),
                None,
                "batchyard-config",
            )),
            BedrockAuth::Chain { profile } => Source::Chain {
                profile: profile.clone(),
                region: region.to_owned(),
                provider: OnceCell::new(),
            },
        };
        Some(Self {
            source,
            current: Mutex::new(None),
        })
    }

    /// Credentials good for at least [`REFRESH_MARGIN`] more, refreshed when needed.
    pub async fn credentials(&self) -> Result<Credentials, ProviderError> {
        let (profile, region, cell) = match &self.source {
            Source::Fixed(credentials) => return Ok(credentials.clone()),
            Source::Chain {
                profile,
                region,
                provider,
            } => (profile, region, provider),
        };
        let mut current = self.current.lock().await;
        let fresh_until = SystemTime::now() + REFRESH_MARGIN;
        if let Some(credentials) = current.as_ref()
            && credentials.expiry().is_none_or(|at| at > fresh_until)
        {
            return Ok(credentials.clone());
        }
        let provider = cell
            .get_or_try_init(|| build_chain(profile.as_deref(), region))
            .await?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|e| chain_error(&e, profile.as_deref()))?;
        *current = Some(credentials.clone());
        Ok(credentials)
    }

    /// The secret parts of the credentials in use, to scrub from messages.
    pub async fn secrets(&self) -> Vec<Secret> {
        let credentials = match &self.source {
            Source::Fixed(credentials) => Some(credentials.clone()),
            Source::Chain { .. } => self.current.lock().await.clone(),
        };
        credentials
            .map(|c| {
                let mut out = vec![Secret::new(c.secret_access_key().to_owned())];
                if let Some(token) = c.session_token() {
                    out.push(Secret::new(token.to_owned()));
                }
                out
            })
            .unwrap_or_default()
    }
}

async fn build_chain(
    profile: Option<&str>,
    region: &str,
) -> Result<SharedCredentialsProvider, ProviderError> {
    let http = ReqwestHttp::new().map_err(|e| {
        auth_error(format!(
            "could not build the http client of the aws credential chain: {e}"
        ))
    })?;
    let config = ProviderConfig::without_region()
        .with_region(Some(aws_config::Region::new(region.to_owned())))
        .with_http_client(http);
    // A named profile is used alone: in the default chain the environment's keys come first,
    // and those usually belong to object storage.
    if let Some(profile) = profile {
        let provider = ProfileFileCredentialsProvider::builder()
            .configure(&config)
            .profile_name(profile)
            .build();
        return Ok(SharedCredentialsProvider::new(provider));
    }
    let chain = DefaultCredentialsChain::builder()
        .configure(config)
        .region(aws_config::Region::new(region.to_owned()))
        .build()
        .await;
    Ok(SharedCredentialsProvider::new(chain))
}

/// A chain failure: no credentials anywhere is `auth` (the model pauses until fixed); a source
/// that timed out or failed is `transient`.
fn chain_error(err: &CredentialsError, profile: Option<&str>) -> ProviderError {
    use std::error::Error as _;
    let mut text = err.to_string();
    if let Some(source) = err.source() {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    match err {
        CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
            ProviderError::new(
                ProviderErrorKind::Transient,
                format!("the aws credential chain failed for now: {text}"),
            )
        }
        _ => {
            let profile = profile.map_or_else(String::new, |p| format!(" (profile {p:?})"));
            auth_error(format!(
                "no aws credentials for bedrock{profile}: {text}; set access_key_id_env and \
                 secret_access_key_env, a profile, AWS_BEARER_TOKEN_BEDROCK, or run where the \
                 standard aws chain finds credentials"
            ))
        }
    }
}
