//! `[notify]`: webhooks for ended batches (the URL for batches without `--notify`, the
//! signing secret's variable, the retry pacing).

use std::collections::BTreeMap;
use std::time::Duration;

use batchyard_workers::notify::{NotifyOptions, Signer};
use serde::Deserialize;

type Bad = (String, String);

/// The variable the signing secret is read from unless `secret_env` names another.
pub const DEFAULT_SECRET_ENV: &str = "BATCHYARD_WEBHOOK_SECRET";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNotify {
    /// Where every ended batch without a `--notify` URL of its own is announced.
    pub url: Option<String>,
    /// The environment variable holding the Standard Webhooks secret (`whsec_…`).
    pub secret_env: Option<String>,
    pub retry_base_secs: Option<u64>,
    pub give_up_hours: Option<u64>,
    pub poll_interval_secs: Option<u64>,
}

pub(super) fn notify(
    raw: &RawNotify,
    env: &BTreeMap<String, String>,
) -> Result<NotifyOptions, Bad> {
    let d = NotifyOptions::default();
    if let Some(url) = &raw.url {
        check_url(url).map_err(|why| ("notify.url".to_string(), why))?;
    }
    let secret_env = raw.secret_env.as_deref().unwrap_or(DEFAULT_SECRET_ENV);
    let signer = match env.get(secret_env).filter(|s| !s.trim().is_empty()) {
        Some(secret) => Some(Signer::from_secret(secret).map_err(|why| {
            (
                "notify.secret_env".to_string(),
                format!("the secret in ${secret_env} {why}"),
            )
        })?),
        None if raw.secret_env.is_some() => {
            return Err((
                "notify.secret_env".into(),
                format!(
                    "${secret_env} is not set: set it to the webhook secret (whsec_…), or remove the key to send unsigned"
                ),
            ));
        }
        None => None,
    };
    let positive = |key: &str, v: Option<u64>| match v {
        Some(0) => Err((format!("notify.{key}"), "must be more than 0".to_string())),
        other => Ok(other),
    };
    Ok(NotifyOptions {
        url: raw.url.clone(),
        signer,
        retry_base: positive("retry_base_secs", raw.retry_base_secs)?
            .map_or(d.retry_base, Duration::from_secs),
        give_up_after: positive("give_up_hours", raw.give_up_hours)?
            .map_or(d.give_up_after, |h| Duration::from_secs(h * 3600)),
        poll_interval: positive("poll_interval_secs", raw.poll_interval_secs)?
            .map_or(d.poll_interval, Duration::from_secs),
        timeout: d.timeout,
    })
}

/// A webhook URL: absolute `http(s)`. Shared by `[notify] url` and `submit --notify`.
pub fn check_url(url: &str) -> Result<(), String> {
    match url::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => Ok(()),
        Ok(_) => Err("must be an http:// or https:// URL with a host".into()),
        Err(e) => Err(format!("is not a URL ({e})")),
    }
}
