//! `batchyard check [--offline] [--strict] [--json]`: is this deployment ready to run a batch?
//!
//! It loads the config as every command does (so a bad one fails here first, with the same
//! message), then looks at what loading alone does not: prices taken from the shipped catalog
//! that are older than [`STALE_AFTER_DAYS`], Redis answering, and the object store taking,
//! returning and deleting a probe object. Nothing here spends money or touches a batch.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_jobs::storage::ResultStore;
use batchyard_workers::catalog::shipped::ShippedCatalog;
use bytes::Bytes;
use serde::Serialize;
use serde_json::json;

use super::model_catalog::STALE_AFTER_DAYS;
use crate::cli::CheckArgs;
use crate::config::Settings;

/// How long one service gets to answer before it counts as down.
const SERVICE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Error,
}

/// One thing checked, and what was found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    pub what: String,
    pub detail: String,
}

impl Finding {
    fn new(level: Level, what: &str, detail: impl Into<String>) -> Self {
        Self {
            level,
            what: what.to_owned(),
            detail: detail.into(),
        }
    }
}

pub async fn check(
    config: Option<&Path>,
    args: &CheckArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = Settings::load(config, env)?;
    let mut findings = config_findings(&settings);
    let today = chrono::Utc::now().date_naive();
    if let Ok(shipped) = ShippedCatalog::get() {
        findings.extend(catalog_findings(&settings.model_catalog, shipped, today));
    }
    if !args.offline {
        findings.push(redis_finding(settings.redis_url.as_deref()).await);
        findings.push(storage_finding(&settings).await);
    }
    let errors = count(&findings, Level::Error);
    let warnings = count(&findings, Level::Warn);
    if args.json {
        let doc = json!({ "findings": findings, "errors": errors, "warnings": warnings });
        println!("{}", crate::batch_view::json_line(&doc));
    } else {
        for f in &findings {
            let tag = match f.level {
                Level::Ok => "ok   ",
                Level::Warn => "warn ",
                Level::Error => "ERROR",
            };
            println!("{tag} {:<10} {}", f.what, f.detail);
        }
        println!("{errors} error(s), {warnings} warning(s)");
    }
    if errors > 0 || (args.strict && warnings > 0) {
        anyhow::bail!(
            "check found {errors} error(s) and {warnings} warning(s); fix what is listed above{}",
            if args.strict && errors == 0 {
                " (--strict fails on warnings)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

fn count(findings: &[Finding], level: Level) -> usize {
    findings.iter().filter(|f| f.level == level).count()
}

/// What loading the config found: its size, and the warnings it printed.
fn config_findings(settings: &Settings) -> Vec<Finding> {
    let source = settings.source.as_ref().map_or_else(
        || "built-in defaults (no batchyard.toml)".to_owned(),
        |p| p.display().to_string(),
    );
    let catalog = &settings.catalog;
    let mut providers: BTreeMap<String, &'static str> = BTreeMap::new();
    for model in catalog.models() {
        if let Some(p) = catalog.provider(&model.provider) {
            providers.insert(model.provider.clone(), p.kind_name());
        }
    }
    let providers: Vec<String> = providers
        .iter()
        .map(|(key, kind)| format!("{key} ({kind})"))
        .collect();
    let mut out = vec![Finding::new(
        Level::Ok,
        "config",
        format!(
            "{source}: {} model(s), {} task(s), {} pipeline(s); providers in use: {}",
            catalog.models().count(),
            catalog.task_keys().len(),
            settings.pipelines.len(),
            providers.join(", ")
        ),
    )];
    out.extend(
        settings
            .warnings
            .iter()
            .map(|w| Finding::new(Level::Warn, "config", w.clone())),
    );
    out
}

/// Models priced from the shipped catalog, and whether those prices are too old to trust.
pub fn catalog_findings(
    from_catalog: &BTreeMap<String, String>,
    shipped: &ShippedCatalog,
    today: chrono::NaiveDate,
) -> Vec<Finding> {
    if from_catalog.is_empty() {
        return Vec::new();
    }
    let models: Vec<String> = from_catalog
        .iter()
        .map(|(model, entry)| format!("{model} ({entry})"))
        .collect();
    let checked = chrono::NaiveDate::parse_from_str(&shipped.checked, "%Y-%m-%d").ok();
    let Some(checked) = checked else {
        return vec![Finding::new(
            Level::Warn,
            "catalog",
            format!(
                "the shipped catalog's date {:?} does not read; check the prices of {} against \
                 the providers' price pages",
                shipped.checked,
                models.join(", ")
            ),
        )];
    };
    let age = (today - checked).num_days();
    if age > STALE_AFTER_DAYS {
        return vec![Finding::new(
            Level::Warn,
            "catalog",
            format!(
                "prices of {} come from the shipped catalog, checked {} ({age} days ago, more \
                 than {STALE_AFTER_DAYS}): check them against the providers' price pages and \
                 write current prices in [models.X] (they win), or upgrade batchyard",
                models.join(", "),
                shipped.checked
            ),
        )];
    }
    vec![Finding::new(
        Level::Ok,
        "catalog",
        format!(
            "{} priced from the shipped catalog, checked {} ({age} days ago)",
            models.join(", "),
            shipped.checked
        ),
    )]
}

async fn redis_finding(url: Option<&str>) -> Finding {
    let Some(url) = url else {
        return Finding::new(
            Level::Ok,
            "redis",
            "not configured: only `batchyard run` works (set BATCHYARD_REDIS_URL or [queue] \
             redis_url for submit, worker and serve)",
        );
    };
    let shown = batchyard_jobs::error::redact(url);
    let started = Instant::now();
    let ping = async {
        let mut conn = batchyard_jobs::redis_conn::connect(url)
            .await
            .map_err(|e| e.to_string())?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map_err(|e| e.to_string())
    };
    match tokio::time::timeout(SERVICE_TIMEOUT, ping).await {
        Ok(Ok(_)) => Finding::new(
            Level::Ok,
            "redis",
            format!(
                "{shown} answered PING in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        Ok(Err(e)) => Finding::new(
            Level::Error,
            "redis",
            format!(
                "{shown}: {}; check that Redis runs there and the URL's password",
                batchyard_jobs::error::redact(&e)
            ),
        ),
        Err(_) => Finding::new(
            Level::Error,
            "redis",
            format!(
                "{shown} did not answer in {} s; check the host, port and firewall",
                SERVICE_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// Writes, reads back and deletes one small object where batches will write theirs.
async fn storage_finding(settings: &Settings) -> Finding {
    let shown = batchyard_jobs::error::redact(&settings.storage_url);
    let started = Instant::now();
    let probe = async {
        let store =
            ResultStore::open(&settings.storage_url, &settings.env).map_err(|e| e.to_string())?;
        let id = format!(
            "{}-{}",
            std::process::id(),
            batchyard_jobs::batch::now_millis()
        );
        let path = store.path_of(&batchyard_jobs::keys::check_probe(&id));
        let body = Bytes::from_static(b"batchyard check\n");
        store
            .put(&path, body.clone())
            .await
            .map_err(|e| e.to_string())?;
        let back = store.get(&path).await.map_err(|e| e.to_string())?;
        store.delete(&path).await.map_err(|e| e.to_string())?;
        if back != body {
            return Err("the probe object came back different".to_owned());
        }
        Ok(())
    };
    match tokio::time::timeout(SERVICE_TIMEOUT, probe).await {
        Ok(Ok(())) => Finding::new(
            Level::Ok,
            "storage",
            format!(
                "{shown}: a probe object was written, read back and deleted in {} ms",
                started.elapsed().as_millis()
            ),
        ),
        Ok(Err(e)) => Finding::new(
            Level::Error,
            "storage",
            format!(
                "{shown}: {}; check the URL, the bucket and the credentials",
                batchyard_jobs::error::redact(&e)
            ),
        ),
        Err(_) => Finding::new(
            Level::Error,
            "storage",
            format!(
                "{shown} did not answer in {} s; check the endpoint",
                SERVICE_TIMEOUT.as_secs()
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_catalog() -> BTreeMap<String, String> {
        BTreeMap::from([("small".to_owned(), "openai/gpt-4.1-mini".to_owned())])
    }

    #[test]
    fn catalog_prices_older_than_90_days_are_a_warning() {
        let shipped = ShippedCatalog::get().unwrap();
        let checked = chrono::NaiveDate::parse_from_str(&shipped.checked, "%Y-%m-%d").unwrap();
        let fresh = catalog_findings(&from_catalog(), shipped, checked + chrono::Days::new(90));
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].level, Level::Ok, "{fresh:?}");
        let stale = catalog_findings(&from_catalog(), shipped, checked + chrono::Days::new(91));
        assert_eq!(stale[0].level, Level::Warn, "{stale:?}");
        assert!(stale[0].detail.contains("91 days ago"), "{stale:?}");
        assert!(stale[0].detail.contains("small (openai/gpt-4.1-mini)"));
    }

    #[test]
    fn no_catalog_prices_no_finding() {
        let shipped = ShippedCatalog::get().unwrap();
        let today = chrono::Utc::now().date_naive();
        assert!(catalog_findings(&BTreeMap::new(), shipped, today).is_empty());
    }
}
