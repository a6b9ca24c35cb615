//! What lets a `kind = "bedrock"` provider batch (the offload lane): `batch_role_arn`, the
//! service role Bedrock assumes, and `batch_s3_url`, the bucket its jobs read and write. Both
//! or neither; with neither the provider runs real-time only.
//!
//! - The bucket is opened with the standard `AWS_*` variables, as `[storage]` is (the
//!   generic `AWS_ENDPOINT_URL` moves it too).
//! - The control plane (`CreateModelInvocationJob` and the rest): `AWS_ENDPOINT_URL_BEDROCK`,
//!   else `bedrock.{region}` when the runtime is the region's public one, else the provider's
//!   own `base_url` (a proxy or a fake that serves both).

use std::collections::BTreeMap;

use batchyard_jobs::storage::ResultStore;
use batchyard_workers::provider::BedrockConfig;
use batchyard_workers::provider::bedrock::{self, BedrockBatchConfig};

use super::raw::{RawModel, RawProvider};

/// Moves the Bedrock control plane (as in the AWS SDKs).
pub const CONTROL_ENDPOINT_ENV: &str = "AWS_ENDPOINT_URL_BEDROCK";

/// Whether the provider's tables ask for batch jobs.
pub(super) fn wanted(p: &RawProvider) -> bool {
    p.batch_role_arn.is_some() || p.batch_s3_url.is_some()
}

fn role_arn(arn: &str) -> Result<String, String> {
    let arn = arn.trim();
    let ok = arn.starts_with("arn:aws")
        && arn.split(':').nth(2) == Some("iam")
        && arn.contains(":role/")
        && !arn.chars().any(char::is_whitespace);
    if ok {
        Ok(arn.to_owned())
    } else {
        Err(format!(
            "{arn:?} is not an iam role arn; use e.g. \
             \"arn:aws:iam::123456789012:role/BedrockBatch\""
        ))
    }
}

/// The batch settings, or `(field, reason)`.
pub(super) fn config(
    p: &RawProvider,
    client: &BedrockConfig,
    env: &BTreeMap<String, String>,
) -> Result<Option<BedrockBatchConfig>, (String, String)> {
    let (arn, url) = match (&p.batch_role_arn, &p.batch_s3_url) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err((
                "batch_s3_url".into(),
                "is required with batch_role_arn: the s3://bucket/prefix its batch jobs read \
                 and write"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "batch_role_arn".into(),
                "is required with batch_s3_url: the iam role bedrock assumes to read and \
                 write that bucket"
                    .into(),
            ));
        }
        (Some(arn), Some(url)) => (arn, url.trim().trim_end_matches('/')),
    };
    let role_arn = role_arn(arn).map_err(|r| ("batch_role_arn".to_owned(), r))?;
    if !url.starts_with("s3://") {
        return Err((
            "batch_s3_url".into(),
            "must be an s3:// url (bedrock batch jobs read and write s3), e.g. \
             \"s3://my-bucket/batchyard\""
                .into(),
        ));
    }
    let store =
        ResultStore::open(url, env).map_err(|e| ("batch_s3_url".to_owned(), e.to_string()))?;
    let control_url = match env.get(CONTROL_ENDPOINT_ENV).map(|v| v.trim()) {
        Some(v) if !v.is_empty() => {
            super::parts::check_url(v, &["http", "https"]).map_err(|r| {
                (
                    "batch_role_arn".to_owned(),
                    format!("the control plane comes from {CONTROL_ENDPOINT_ENV}, which is {r}"),
                )
            })?;
            v.to_owned()
        }
        _ if client.base_url.trim_end_matches('/') == bedrock::default_base_url(&client.region) => {
            format!("https://bedrock.{}.amazonaws.com", client.region)
        }
        _ => client.base_url.clone(),
    };
    Ok(Some(BedrockBatchConfig {
        role_arn,
        s3_url: url.to_owned(),
        control_url,
        store,
    }))
}

/// A model of a batching bedrock provider that has no batch body (not Claude, not Nova):
/// `Err` when its table asks for batches anyway, else whether it batches.
pub(super) fn model_batches(key: &str, m: &RawModel, name: &str) -> Result<bool, (String, String)> {
    if bedrock::batch::family(name).is_some() {
        return Ok(true);
    }
    if m.batch_api == Some(true) {
        return Err((
            format!("models.{key}.batch_api"),
            format!(
                "model {name:?} cannot batch on bedrock: batchyard writes batch records for \
                 Anthropic Claude and Amazon Nova models only; remove batch_api"
            ),
        ));
    }
    Ok(false)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::path::PathBuf;

    use super::super::{ConfigError, Settings};

    const BASE: &str = r#"
[providers.aws]
kind = "bedrock"
region = "us-west-2"
EXTRA

[models.haiku]
provider = "aws"
name = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
input_usd_per_mtok = 0.8
output_usd_per_mtok = 4.0
context_window = 200000
tier = 1

[models.nova]
provider = "aws"
name = "amazon.nova-lite-v1:0"
input_usd_per_mtok = 0.06
output_usd_per_mtok = 0.24
context_window = 300000
tier = 1

[models.llama]
provider = "aws"
name = "meta.llama3-8b-instruct-v1:0"
input_usd_per_mtok = 0.3
output_usd_per_mtok = 0.6
context_window = 8000
tier = 1
LLAMA
"#;

    const BOTH: &str = "batch_role_arn = \"arn:aws:iam::123456789012:role/BedrockBatch\"\n\
                        batch_s3_url = \"s3://my-bucket/batchyard/\"";

    fn load(extra: &str, llama: &str) -> Result<Settings, ConfigError> {
        let env = [
            ("AWS_ACCESS_KEY_ID", "id"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let text = BASE.replace("EXTRA", extra).replace("LLAMA", llama);
        Settings::from_toml(&text, Some(PathBuf::from("test.toml")), &env)
    }

    fn batches(s: &Settings, model: &str) -> bool {
        s.catalog.model(model).unwrap().batch.is_some()
    }

    #[test]
    fn both_settings_make_claude_and_nova_batch_at_half_price() {
        let s = load(BOTH, "").unwrap();
        assert!(batches(&s, "haiku") && batches(&s, "nova"));
        assert!(!batches(&s, "llama"), "no batch body for llama");
        let prices = s.catalog.model("haiku").unwrap().batch.unwrap();
        assert!((prices.input_usd_per_mtok - 0.4).abs() < 1e-9);
        let shown = format!("{:?}", s.catalog.provider("aws").unwrap());
        assert!(
            shown.contains("https://bedrock.us-west-2.amazonaws.com"),
            "{shown}"
        );
        assert!(shown.contains("s3://my-bucket/batchyard"), "{shown}");
        // A proxy or fake at base_url serves the control plane too.
        let s = load(&format!("{BOTH}\nbase_url = \"http://127.0.0.1:9\""), "").unwrap();
        let shown = format!("{:?}", s.catalog.provider("aws").unwrap());
        assert!(
            shown.contains("control_url: \"http://127.0.0.1:9\""),
            "{shown}"
        );
        // Without them, or opted out, nothing batches.
        let s = load("", "").unwrap();
        assert!(!batches(&s, "haiku"));
        let s = load(&format!("{BOTH}\nbatch_api = false"), "").unwrap();
        assert!(!batches(&s, "haiku"));
    }

    #[test]
    fn bad_batch_settings_name_the_key() {
        let cases = [
            (
                "batch_role_arn = \"arn:aws:iam::1:role/x\"",
                "",
                "providers.aws.batch_s3_url",
            ),
            (
                "batch_s3_url = \"s3://b/p\"",
                "",
                "providers.aws.batch_role_arn",
            ),
            (
                "batch_role_arn = \"my-role\"\nbatch_s3_url = \"s3://b/p\"",
                "",
                "providers.aws.batch_role_arn",
            ),
            (
                "batch_role_arn = \"arn:aws:iam::1:role/x\"\nbatch_s3_url = \"file://./x\"",
                "",
                "providers.aws.batch_s3_url",
            ),
            (BOTH, "batch_api = true", "models.llama.batch_api"),
            ("", "", ""),
        ];
        for (extra, llama, key) in cases {
            match load(extra, llama) {
                Ok(_) => assert!(key.is_empty(), "{extra} loaded"),
                Err(e) => assert_eq!(e.key, key, "{extra}: {e}"),
            }
        }
        let e = load("", "").map(|_| ()).and_then(|()| {
            let text = BASE.replace("EXTRA", "").replace("LLAMA", "").replace(
                "kind = \"bedrock\"\nregion = \"us-west-2\"",
                "kind = \"openai\"\nbase_url = \"http://x\"\nbatch_s3_url = \"s3://b\"",
            );
            Settings::from_toml(&text, None, &Default::default()).map(|_| ())
        });
        assert_eq!(e.unwrap_err().key, "providers.aws.batch_s3_url");
        let e = load("", "").map(|_| ()).and_then(|()| {
            let text = BASE.replace("EXTRA", "").replace("LLAMA", "").replace(
                "tier = 1\n\n[models.nova]",
                "tier = 1\nbatch_api = true\n\n[models.nova]",
            );
            Settings::from_toml(&text, None, &Default::default()).map(|_| ())
        });
        let e = e.unwrap_err();
        assert_eq!(e.key, "models.haiku.batch_api");
        assert!(e.reason.contains("batch_role_arn"), "{e}");
    }
}
