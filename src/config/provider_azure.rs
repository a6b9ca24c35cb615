//! What `kind = "azure_openai"` adds to a provider table: `api_version`, checked, and which
//! credential is sent: the key `api_key_env` names, else an Entra ID token from
//! `AZURE_OPENAI_AD_TOKEN`, else Entra ID tokens fetched and refreshed for the identity the
//! `AZURE_*` / `IDENTITY_*` variables describe (`entra`).

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Duration;

use batchyard_workers::provider::azure_openai::entra::{EntraCredential, EntraSource};
use batchyard_workers::provider::azure_openai::{self, AD_TOKEN_ENV, DEFAULT_API_VERSION};
use batchyard_workers::provider::{AzureAuth, AzureOpenAiConfig, Secret};

use super::raw::RawProvider;

/// The client config, or the setting refused and why (without quoting any secret).
pub(super) fn config(
    p: &RawProvider,
    base_url: String,
    api_key: Option<Secret>,
    headers: Vec<(String, String)>,
    env: &BTreeMap<String, String>,
) -> Result<AzureOpenAiConfig, (&'static str, String)> {
    let api_version = match &p.api_version {
        Some(v) => azure_openai::check_api_version(v)
            .map_err(|r| ("api_version", r))?
            .to_owned(),
        None => DEFAULT_API_VERSION.to_owned(),
    };
    // A key that is set wins: it is what the config names. The token is the fallback for
    // keyless (Entra ID only) resources, read once at start.
    let auth = match api_key {
        Some(key) => AzureAuth::ApiKey(key),
        None => env
            .get(AD_TOKEN_ENV)
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .map(|t| AzureAuth::AdToken(Secret::new(t.to_owned())))
            .map_or_else(|| entra(p, env), Ok)?,
    };
    Ok(AzureOpenAiConfig {
        base_url,
        api_version,
        auth,
        headers,
        ..AzureOpenAiConfig::default()
    })
}

/// Entra ID tokens for the identity the environment describes, or no credential at all.
fn entra(
    p: &RawProvider,
    env: &BTreeMap<String, String>,
) -> Result<AzureAuth, (&'static str, String)> {
    let Some(source) = EntraSource::from_env(env).map_err(|r| ("kind", r))? else {
        return Ok(AzureAuth::None);
    };
    let timeout = Duration::from_secs(p.timeout_secs.unwrap_or(60).min(120));
    let credential = EntraCredential::new(source, timeout).map_err(|e| ("kind", e.message))?;
    Ok(AzureAuth::Entra(Arc::new(credential)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::PathBuf;

    use super::super::{ConfigError, Settings};
    use super::*;

    const BASE: &str = r#"
[providers.az]
kind = "azure_openai"
base_url = "https://myres.openai.azure.com"
api_key_env = "AZ_KEY"
API_VERSION

[models.mini]
provider = "az"
name = "gpt-4o-mini-prod"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
context_window = 128000
tier = 1
"#;

    fn load(version_line: &str, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = BASE.replace("API_VERSION", version_line);
        Settings::from_toml(&text, Some(PathBuf::from("test.toml")), &env)
    }

    #[test]
    fn an_azure_provider_loads_with_the_default_version_and_hides_the_key() {
        let key = "azkey-verysecret-77";
        let s = load("", &[("AZ_KEY", key)]).unwrap();
        let az = s.catalog.provider("az").unwrap();
        assert_eq!(az.kind_name(), "azure_openai");
        let shown = format!("{az:?}");
        assert!(
            shown.contains("myres.openai.azure.com/openai/deployments/"),
            "{shown}"
        );
        assert!(!shown.contains(key), "{shown}");
        let s = load(
            "api_version = \"2025-04-01-preview\"",
            &[(AD_TOKEN_ENV, "eyJ-token-hidden")],
        )
        .unwrap();
        assert!(!format!("{:?}", s.catalog.provider("az").unwrap()).contains("eyJ-token"));
    }

    #[test]
    fn without_a_key_an_entra_identity_in_the_environment_is_used() {
        let secret = "entra-secret-in-env-31";
        let text = BASE
            .replace("api_key_env = \"AZ_KEY\"\n", "")
            .replace("API_VERSION", "");
        let env: BTreeMap<String, String> = [
            ("AZURE_TENANT_ID", "tenant-1"),
            ("AZURE_CLIENT_ID", "app-1"),
            ("AZURE_CLIENT_SECRET", secret),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = Settings::from_toml(&text, None, &env).unwrap();
        let shown = format!("{:?}", s.catalog.provider("az").unwrap());
        assert!(shown.contains("EntraCredential"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
        let half: BTreeMap<String, String> = env
            .into_iter()
            .filter(|(k, _)| k != "AZURE_CLIENT_SECRET")
            .collect();
        let e = Settings::from_toml(&text, None, &half).err().unwrap();
        assert!(e.reason.contains("AZURE_FEDERATED_TOKEN_FILE"), "{e}");
    }

    #[test]
    fn a_bad_version_or_a_version_on_another_kind_names_the_key() {
        let e = load("api_version = \"2024-10-21&x\"", &[]).err().unwrap();
        assert_eq!(e.key, "providers.az.api_version", "{e}");
        assert!(e.reason.contains("2024-10-21"), "{e}");
        let text = BASE
            .replace("azure_openai", "openai")
            .replace("API_VERSION", "api_version = \"2024-10-21\"");
        let e = Settings::from_toml(&text, None, &BTreeMap::new())
            .err()
            .unwrap();
        assert_eq!(e.key, "providers.az.api_version", "{e}");
        assert!(e.reason.contains("azure_openai"), "{e}");
        let text = BASE
            .replace("azure_openai", "azure")
            .replace("API_VERSION", "");
        let e = Settings::from_toml(&text, None, &BTreeMap::new())
            .err()
            .unwrap();
        assert_eq!(e.key, "providers.az.kind", "{e}");
        assert!(e.reason.contains("\"azure_openai\""), "{e}");
        let text = BASE
            .replace("base_url = \"https://myres.openai.azure.com\"", "")
            .replace("API_VERSION", "");
        let e = Settings::from_toml(&text, None, &BTreeMap::new())
            .err()
            .unwrap();
        assert_eq!(e.key, "providers.az.base_url", "{e}");
        let text = BASE
            .replace(".com\"", ".com/openai/deployments/x/chat/completions\"")
            .replace("API_VERSION", "");
        let e = Settings::from_toml(&text, None, &BTreeMap::new())
            .err()
            .unwrap();
        assert_eq!(e.key, "providers.az.base_url", "{e}");
        assert!(e.reason.contains("resource endpoint"), "{e}");
    }
}
