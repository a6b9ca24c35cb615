//! What `kind = "bedrock"` adds to a provider table: `region`, the endpoint, and whose
//! credentials sign the calls.
//!
//! - Endpoint: `base_url`, else `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, else the region's public
//!   runtime. The generic `AWS_ENDPOINT_URL` is ignored on purpose: it points object storage
//!   at MinIO or SeaweedFS.
//! - Credentials, the first that applies: the variables `access_key_id_env` /
//!   `secret_access_key_env` (/ `session_token_env`) name; `profile` (the shared AWS files);
//!   a Bedrock API key in `AWS_BEARER_TOKEN_BEDROCK`; the standard AWS chain. What the config
//!   names wins over what the environment happens to hold, so storage's `AWS_*` keys never
//!   sign a Bedrock call of a provider that names its own.

use std::collections::BTreeMap;

use batchyard_workers::provider::bedrock::{self, BEARER_TOKEN_ENV, ENDPOINT_ENV};
use batchyard_workers::provider::{BedrockAuth, BedrockConfig, Secret};

use super::raw::RawProvider;

/// The settings only `bedrock` has, for refusing them on other kinds.
pub(super) fn own_fields(p: &RawProvider) -> Option<&'static str> {
    [
        (p.region.is_some(), "region"),
        (p.profile.is_some(), "profile"),
        (p.access_key_id_env.is_some(), "access_key_id_env"),
        (p.secret_access_key_env.is_some(), "secret_access_key_env"),
        (p.session_token_env.is_some(), "session_token_env"),
        (p.batch_role_arn.is_some(), "batch_role_arn"),
        (p.batch_s3_url.is_some(), "batch_s3_url"),
    ]
    .into_iter()
    .find_map(|(given, field)| given.then_some(field))
}

/// The region: `region`, else `AWS_REGION` / `AWS_DEFAULT_REGION`. `(field, reason)` on error.
fn region(p: &RawProvider, env: &BTreeMap<String, String>) -> Result<String, (String, String)> {
    let from_env = ["AWS_REGION", "AWS_DEFAULT_REGION"]
        .iter()
        .find_map(|k| env.get(*k).filter(|v| !v.trim().is_empty()));
    let Some(region) = p.region.as_ref().or(from_env) else {
        return Err((
            "region".into(),
            "is required for kind \"bedrock\" (or set AWS_REGION); e.g. region = \"us-east-1\""
                .into(),
        ));
    };
    bedrock::check_region(region)
        .map(str::to_owned)
        .map_err(|r| ("region".into(), r))
}

/// The endpoint when the table names no `base_url`: `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, else
/// the region's public runtime.
pub(super) fn default_base_url(
    p: &RawProvider,
    env: &BTreeMap<String, String>,
) -> Result<String, (String, String)> {
    if let Some(url) = env.get(ENDPOINT_ENV).filter(|v| !v.trim().is_empty()) {
        super::parts::check_url(url.trim(), &["http", "https"]).map_err(|r| {
            (
                "base_url".to_owned(),
                format!("comes from {ENDPOINT_ENV}, which is {r}"),
            )
        })?;
        return Ok(url.trim().to_owned());
    }
    Ok(bedrock::default_base_url(&region(p, env)?))
}

fn env_name(field: &str, name: &str) -> Result<(), (String, String)> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        // Never repeat the value: a key pasted here is the usual way to get this.
        Err((
            field.to_owned(),
            "must be the name of an environment variable (letters, digits and _), not the \
             credential itself"
                .into(),
        ))
    }
}

/// The value of the variable `field` names; a named variable that is unset is an error, so a
/// provider never falls back to some other identity in silence.
fn named_secret(
    field: &str,
    name: &str,
    env: &BTreeMap<String, String>,
) -> Result<Secret, (String, String)> {
    env_name(field, name)?;
    env.get(name)
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(|v| Secret::new(v.to_owned()))
        .ok_or_else(|| {
            (
                field.to_owned(),
                format!("names {name}, which is not set; set it or remove {field}"),
            )
        })
}

fn auth(p: &RawProvider, env: &BTreeMap<String, String>) -> Result<BedrockAuth, (String, String)> {
    match (&p.access_key_id_env, &p.secret_access_key_env) {
        (Some(id), Some(secret)) => {
            if p.profile.is_some() {
                return Err((
                    "profile".into(),
                    "cannot be given with access_key_id_env; keep one of them".into(),
                ));
            }
            let session_token = p
                .session_token_env
                .as_ref()
                .map(|name| named_secret("session_token_env", name, env))
                .transpose()?;
            Ok(BedrockAuth::Keys {
                access_key_id: named_secret("access_key_id_env", id, env)?,
                secret_access_key: named_secret("secret_access_key_env", secret, env)?,
                session_token,
            })
        }
        (Some(_), None) => Err((
            "secret_access_key_env".into(),
            "is required with access_key_id_env".into(),
        )),
        (None, Some(_)) => Err((
            "access_key_id_env".into(),
            "is required with secret_access_key_env".into(),
        )),
        (None, None) if p.session_token_env.is_some() => Err((
            "session_token_env".into(),
            "needs access_key_id_env and secret_access_key_env".into(),
        )),
        (None, None) => {
            if let Some(profile) = &p.profile {
                let profile = profile.trim();
                if profile.is_empty() {
                    return Err(("profile".into(), "is empty".into()));
                }
                return Ok(BedrockAuth::Chain {
                    profile: Some(profile.to_owned()),
                });
            }
            Ok(env
                .get(BEARER_TOKEN_ENV)
                .map(|t| t.trim())
                .filter(|t| !t.is_empty())
                .map_or(BedrockAuth::Chain { profile: None }, |t| {
                    BedrockAuth::Bearer(Secret::new(t.to_owned()))
                }))
        }
    }
}

/// The client config. `(field, reason)` names the setting at fault, without quoting a secret.
pub(super) fn config(
    p: &RawProvider,
    base_url: String,
    headers: Vec<(String, String)>,
    env: &BTreeMap<String, String>,
) -> Result<BedrockConfig, (String, String)> {
    if p.api_key_env.is_some() {
        return Err((
            "api_key_env".into(),
            format!(
                "is not used by kind \"bedrock\": name the AWS keys with access_key_id_env and \
                 secret_access_key_env, or put a Bedrock API key in {BEARER_TOKEN_ENV}"
            ),
        ));
    }
    let region = region(p, env)?;
    let auth = auth(p, env)?;
    let client = BedrockConfig {
        base_url,
        auth,
        headers,
        ..BedrockConfig::new(&region)
    };
    Ok(BedrockConfig {
        batch: super::provider_bedrock_batch::config(p, &client, env)?,
        ..client
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::PathBuf;

    use super::super::{ConfigError, Settings};
    use super::*;

    const BASE: &str = r#"
[providers.aws]
kind = "bedrock"
EXTRA

[models.haiku]
provider = "aws"
name = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
input_usd_per_mtok = 0.8
output_usd_per_mtok = 4.0
context_window = 200000
tier = 1
"#;

    fn load(extra: &str, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let env: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let text = BASE.replace("EXTRA", extra);
        Settings::from_toml(&text, Some(PathBuf::from("test.toml")), &env)
    }

    fn shown(s: &Settings) -> String {
        format!("{:?}", s.catalog.provider("aws").unwrap())
    }

    #[test]
    fn the_endpoint_comes_from_base_url_the_bedrock_variable_or_the_region() {
        let s = load("region = \"eu-west-3\"", &[]).unwrap();
        assert_eq!(s.catalog.provider("aws").unwrap().kind_name(), "bedrock");
        assert!(shown(&s).contains("bedrock-runtime.eu-west-3.amazonaws.com"));
        // Storage's generic endpoint does not move Bedrock; the Bedrock one does.
        let s = load(
            "region = \"eu-west-3\"",
            &[("AWS_ENDPOINT_URL", "http://127.0.0.1:8333")],
        )
        .unwrap();
        assert!(
            shown(&s).contains("bedrock-runtime.eu-west-3"),
            "{}",
            shown(&s)
        );
        let s = load(
            "region = \"eu-west-3\"",
            &[(ENDPOINT_ENV, "http://127.0.0.1:9911")],
        )
        .unwrap();
        assert!(shown(&s).contains("127.0.0.1:9911"), "{}", shown(&s));
        let s = load(
            "region = \"eu-west-3\"\nbase_url = \"http://127.0.0.1:9000\"",
            &[(ENDPOINT_ENV, "http://127.0.0.1:9911")],
        )
        .unwrap();
        assert!(shown(&s).contains("127.0.0.1:9000"), "{}", shown(&s));
        let s = load("", &[("AWS_REGION", "ap-south-1")]).unwrap();
        assert!(shown(&s).contains("ap-south-1"));
    }

    #[test]
    fn named_keys_win_and_secrets_stay_hidden() {
        let env = [
            ("BR_ID", "AKIABEDROCK1"),
            ("BR_SECRET", "bedrock/secret+value"),
            ("BR_TOKEN", "bedrock-session-token"),
            (BEARER_TOKEN_ENV, "ABSK-bearer-value"),
            ("AWS_ACCESS_KEY_ID", "storage-id"),
        ];
        let s = load(
            "region = \"us-east-1\"\naccess_key_id_env = \"BR_ID\"\n\
             secret_access_key_env = \"BR_SECRET\"\nsession_token_env = \"BR_TOKEN\"",
            &env,
        )
        .unwrap();
        let text = shown(&s);
        assert!(text.contains("Keys"), "{text}");
        for secret in ["AKIABEDROCK1", "bedrock/secret", "bedrock-session", "ABSK"] {
            assert!(!text.contains(secret), "{text}");
        }
        let s = load("region = \"us-east-1\"", &env).unwrap();
        assert!(shown(&s).contains("Bearer(***)"), "{}", shown(&s));
        let s = load("region = \"us-east-1\"\nprofile = \"bedrock\"", &env).unwrap();
        assert!(
            shown(&s).contains("Chain { profile: Some("),
            "{}",
            shown(&s)
        );
        let s = load("region = \"us-east-1\"", &[]).unwrap();
        assert!(shown(&s).contains("Chain"), "{}", shown(&s));
    }

    #[test]
    fn bad_bedrock_settings_name_the_key() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: [Case<'_>; 8] = [
            ("", &[], "region"),
            ("region = \"us east\"", &[], "region"),
            (
                "region = \"us-east-1\"\naccess_key_id_env = \"A\"",
                &[("A", "x")],
                "secret_access_key_env",
            ),
            (
                "region = \"us-east-1\"\naccess_key_id_env = \"A\"\nsecret_access_key_env = \"B\"",
                &[("A", "x")],
                "secret_access_key_env",
            ),
            (
                "region = \"us-east-1\"\naccess_key_id_env = \"AKIA/not a name\"\nsecret_access_key_env = \"B\"",
                &[("B", "x")],
                "access_key_id_env",
            ),
            (
                "region = \"us-east-1\"\nsession_token_env = \"T\"",
                &[],
                "session_token_env",
            ),
            (
                "region = \"us-east-1\"\napi_key_env = \"K\"",
                &[],
                "api_key_env",
            ),
            (
                "region = \"us-east-1\"",
                &[(ENDPOINT_ENV, "ftp://x")],
                "base_url",
            ),
        ];
        for (extra, env, field) in cases {
            let e = load(extra, env).err().unwrap();
            assert_eq!(e.key, format!("providers.aws.{field}"), "{extra}: {e}");
            assert!(!e.reason.contains("AKIA/"), "{e}");
        }
        let text = BASE
            .replace(
                "kind = \"bedrock\"",
                "kind = \"openai\"\nbase_url = \"http://x\"",
            )
            .replace("EXTRA", "region = \"us-east-1\"");
        let e = Settings::from_toml(&text, None, &BTreeMap::new())
            .err()
            .unwrap();
        assert_eq!(e.key, "providers.aws.region", "{e}");
        assert!(e.reason.contains("bedrock"), "{e}");
    }
}
