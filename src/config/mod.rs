//! Configuration: found via `--config`, then `BATCHYARD_CONFIG`, then `./batchyard.toml`, else
//! built-in defaults. Parsed once into validated types; the environment is a parameter so tests
//! can supply their own.

mod defaults;
mod parts;
pub mod pipeline_spec;
mod raw;

use parts::{
    build_provider, cache_settings, check_url, describe_toml_error, has_credentials, has_password,
    response_format, routing_policy, scrub_toml_message,
};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::input::{DEFAULT_MAX_LINE_BYTES, KnownNames};
use batchyard_jobs::queue::QueueOptions;
use batchyard_workers::adequacy::AdequacyPolicy;
use batchyard_workers::catalog::{Catalog, ModelSpec, TaskSpec};
use batchyard_workers::health::HealthPolicy;
use batchyard_workers::limiter::Tuning;
use batchyard_workers::retry::RetryPolicy;
use batchyard_workers::runner::RunnerOptions;
use batchyard_workers::validate::Validators;

pub use defaults::DEFAULT_STORAGE_URL;

use crate::error::ConfigError;
use raw::RawConfig;

/// `[cache]`: the result cache across batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
}

/// The validated configuration.
pub struct Settings {
    /// The file it came from; `None` for built-in defaults.
    pub source: Option<PathBuf>,
    pub redis_url: Option<String>,
    pub storage_url: String,
    pub queue: QueueOptions,
    pub runner: RunnerOptions,
    pub retry: RetryPolicy,
    pub max_line_bytes: usize,
    pub concurrency: usize,
    pub drain_timeout: Duration,
    pub catalog: Arc<Catalog>,
    pub health: HealthPolicy,
    /// How the shared rate limits count (their window).
    pub limits: Tuning,
    /// How the router learns which models pass each task.
    pub routing: AdequacyPolicy,
    pub cache: CacheSettings,
    /// `[pipelines.<name>]`, by name.
    pub pipelines: BTreeMap<String, pipeline_spec::Pipeline>,
    /// Warnings found while loading (e.g. a provider no model uses).
    pub warnings: Vec<String>,
    pub env: BTreeMap<String, String>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("source", &self.source)
            .field("storage_url", &self.storage_url)
            .field("queue", &self.queue.name)
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl Settings {
    pub fn known_names(&self) -> KnownNames {
        KnownNames {
            models: self.catalog.model_keys(),
            tasks: self.catalog.task_keys(),
        }
    }

    /// Finds and loads the config: `explicit`, then `BATCHYARD_CONFIG`, then `./batchyard.toml`.
    pub fn load(
        explicit: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let path = explicit
            .map(Path::to_path_buf)
            .or_else(|| env.get("BATCHYARD_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let local = PathBuf::from("batchyard.toml");
                local.exists().then_some(local)
            });
        match path {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
                    file: path.display().to_string(),
                    key: "-".into(),
                    reason: format!("cannot read the file: {e}"),
                })?;
                Self::from_toml(&text, Some(path), env)
            }
            None => Self::from_raw(RawConfig::default(), None, env),
        }
    }

    /// Parses and validates TOML text. `path` only names the file in errors.
    pub fn from_toml(
        text: &str,
        path: Option<PathBuf>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = path
            .as_ref()
            .map_or("(built-in)".to_string(), |p| p.display().to_string());
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (key, location) = describe_toml_error(text, &e);
            ConfigError {
                file: format!("{file}{location}"),
                key,
                reason: scrub_toml_message(e.message()),
            }
        })?;
        Self::from_raw(raw, path, env)
    }

    fn from_raw(
        mut raw: RawConfig,
        source: Option<PathBuf>,
        env: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = source
            .as_ref()
            .map_or("(built-in defaults)".to_string(), |p| {
                p.display().to_string()
            });
        let err = |key: &str, reason: String| ConfigError {
            file: file.clone(),
            key: key.to_string(),
            reason,
        };
        // Before anything else, so the first thing said about a pasted key is what to do.
        if let Some(key) = raw
            .providers
            .iter()
            .find_map(|(k, p)| p.api_key.is_some().then_some(k))
        {
            return Err(err(
                &format!("providers.{key}.api_key"),
                "keys are not read from the config file; put it in an environment variable and name it with api_key_env".into(),
            ));
        }
        if raw.models.is_empty() {
            if !raw.providers.is_empty() {
                return Err(err(
                    "models",
                    "providers are configured but no [models.<name>] table uses them; add a model"
                        .into(),
                ));
            }
            let (name, provider) = defaults::provider();
            raw.providers.insert(name, provider);
            raw.models.extend(defaults::models());
        }
        if raw.tasks.is_empty() {
            raw.tasks.extend(defaults::tasks());
        }
        let redis_url = env
            .get("BATCHYARD_REDIS_URL")
            .filter(|v| !v.is_empty())
            .cloned()
            .or(raw.queue.redis_url.clone());
        if let Some(url) = &redis_url {
            check_url(url, &["redis", "rediss", "redis+unix", "unix"])
                .map_err(|r| err("queue.redis_url", r))?;
        }
        let storage_url = env
            .get("BATCHYARD_STORAGE_URL")
            .filter(|v| !v.is_empty())
            .cloned()
            .or(raw.storage.url.clone())
            .unwrap_or_else(|| DEFAULT_STORAGE_URL.to_string());
        if !storage_url.starts_with("file://") {
            check_url(
                &storage_url,
                &["s3", "s3a", "gs", "az", "abfs", "abfss", "azure"],
            )
            .map_err(|r| err("storage.url", r))?;
            // The url is kept in every batch record (in Redis) and shown by status: a key in
            // it would be stored and shown in clear.
            if has_credentials(&storage_url) {
                return Err(err(
                    "storage.url",
                    "holds a user name or password (from the file or BATCHYARD_STORAGE_URL); remove them and give the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the GOOGLE_* / AZURE_* variables)".into(),
                ));
            }
        } else if storage_url.len() <= "file://".len() {
            return Err(err(
                "storage.url",
                "a file:// url needs a folder, e.g. file://./batchyard-data".into(),
            ));
        }

        let mut warnings = Vec::new();
        // Supported (the password is redacted wherever the url is shown), but a file is
        // copied, committed and shared far more than the environment.
        for (key, url, var) in [(
            "queue.redis_url",
            &raw.queue.redis_url,
            "BATCHYARD_REDIS_URL",
        )] {
            if url.as_deref().is_some_and(has_password) {
                warnings.push(format!(
                    "config {file}: {key}: holds a password in the config file; set the url in {var} instead, which overrides the file"
                ));
            }
        }
        parts::check_durations(&raw).map_err(|(k, r)| err(&k, r))?;
        let max_line_bytes = raw.input.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
        if !(1..=MAX_LINE_BYTES_CAP).contains(&max_line_bytes) {
            return Err(err(
                "input.max_line_bytes",
                format!(
                    "must be between 1 and {MAX_LINE_BYTES_CAP} (1 GiB), not {max_line_bytes}; a line is held in memory while it is checked"
                ),
            ));
        }
        let used: BTreeSet<&str> = raw.models.values().map(|m| m.provider.as_str()).collect();
        let mut providers = BTreeMap::new();
        for (key, p) in &raw.providers {
            if !used.contains(key.as_str()) {
                warnings.push(format!(
                    "config {file}: providers.{key}: no model uses this provider; it is ignored"
                ));
            }
            let provider = build_provider(key, p, env).map_err(|(k, r)| err(&k, r))?;
            providers.insert(key.clone(), Arc::new(provider));
        }

        let mut models = Vec::new();
        for (key, m) in &raw.models {
            let at = |field: &str| format!("models.{key}.{field}");
            if !raw.providers.contains_key(&m.provider) {
                let known: Vec<&str> = raw.providers.keys().map(String::as_str).collect();
                return Err(err(
                    &at("provider"),
                    format!(
                        "unknown provider {:?}; configured providers: {}",
                        m.provider,
                        known.join(", ")
                    ),
                ));
            }
            for (field, price) in [
                ("input_usd_per_mtok", Some(m.input_usd_per_mtok)),
                ("output_usd_per_mtok", Some(m.output_usd_per_mtok)),
                ("cached_input_usd_per_mtok", m.cached_input_usd_per_mtok),
            ] {
                if let Some(price) = price
                    && (!price.is_finite() || price < 0.0)
                {
                    return Err(err(
                        &at(field),
                        format!("price must be 0 or more, not {price}"),
                    ));
                }
            }
            if m.context_window == 0 {
                return Err(err(&at("context_window"), "must be more than 0".into()));
            }
            models.push(ModelSpec {
                key: key.clone(),
                provider: m.provider.clone(),
                name: m.name.clone().unwrap_or_else(|| key.clone()),
                input_usd_per_mtok: m.input_usd_per_mtok,
                output_usd_per_mtok: m.output_usd_per_mtok,
                cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
                tier: m.tier,
                capabilities: m.capabilities.iter().cloned().collect(),
                rpm: m.rpm,
                tpm: m.tpm,
            });
        }
        let base_dir = source
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut tasks: Vec<TaskSpec> = Vec::with_capacity(raw.tasks.len());
        for (key, t) in &raw.tasks {
            let validators = match &t.validate {
                Some(v) => Some(Arc::new(Validators::compile(v, &base_dir).map_err(
                    |e| err(&format!("tasks.{key}.{}", e.key), e.reason.clone()),
                )?)),
                None => None,
            };
            let format = match &t.response_format {
                Some(v) => Some(response_format(key, v).map_err(|(k, r)| err(&k, r))?),
                None => None,
            };
            tasks.push(TaskSpec {
                key: key.clone(),
                system: t.system.clone(),
                prompt: t.prompt.clone(),
                min_tier: t.min_tier,
                requires: t.requires.iter().cloned().collect(),
                max_output_tokens: t.max_output_tokens,
                response_format: format,
                validators,
            });
        }
        let catalog = Catalog::new(models, tasks, providers)
            .map_err(|e| {
                let key = match &e {
                    batchyard_workers::catalog::CatalogError::Template { task, .. } => {
                        format!("tasks.{task}.prompt")
                    }
                    _ => "tasks".into(),
                };
                err(&key, e.to_string())
            })?
            .with_provider_limits(
                raw.providers
                    .iter()
                    .map(|(k, p)| (k.clone(), (p.rpm, p.tpm)))
                    .collect(),
            );

        let defaults = QueueOptions::default();
        let q = &raw.queue;
        let queue = QueueOptions {
            name: q.name.clone().unwrap_or(defaults.name),
            visibility_timeout: q
                .visibility_timeout_secs
                .map_or(defaults.visibility_timeout, Duration::from_secs),
            max_reclaims: q.max_reclaims.unwrap_or(defaults.max_reclaims),
            dead_letter_retention: q
                .dead_letter_retention_hours
                .map_or(defaults.dead_letter_retention, |h| {
                    Duration::from_secs(h * 3600)
                }),
            promote_chunk: defaults.promote_chunk,
            submit_lease: q
                .submit_lease_secs
                .map_or(defaults.submit_lease, Duration::from_secs),
        };
        if queue.submit_lease < Duration::from_secs(2) {
            return Err(err(
                "queue.submit_lease_secs",
                "must be at least 2 (the submitter renews it every third of it)".into(),
            ));
        }
        if queue.visibility_timeout.is_zero() {
            return Err(err(
                "queue.visibility_timeout_secs",
                "must be more than 0".into(),
            ));
        }
        let runner_defaults = RunnerOptions::default();
        let runner = RunnerOptions {
            max_attempts: q
                .max_attempts
                .unwrap_or(runner_defaults.max_attempts)
                .max(1),
            max_reclaims: queue.max_reclaims,
            visibility_timeout: queue.visibility_timeout,
            ..runner_defaults
        };
        let retry_defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            base: raw
                .retry
                .base_ms
                .map_or(retry_defaults.base, Duration::from_millis),
            cap: raw
                .retry
                .cap_ms
                .map_or(retry_defaults.cap, Duration::from_millis),
            max_attempts: raw
                .retry
                .max_attempts
                .unwrap_or(retry_defaults.max_attempts)
                .max(1),
        };
        let health_defaults = HealthPolicy::default();
        let h = &raw.health;
        let health = HealthPolicy {
            failure_threshold: h
                .failure_threshold
                .unwrap_or(health_defaults.failure_threshold)
                .max(1),
            cooldown: h
                .cooldown_secs
                .map_or(health_defaults.cooldown, Duration::from_secs),
            retry_budget_ratio: h
                .retry_budget_ratio
                .unwrap_or(health_defaults.retry_budget_ratio),
            retry_budget_min: h
                .retry_budget_min
                .unwrap_or(health_defaults.retry_budget_min),
            ..health_defaults
        };
        if !(0.0..=1.0).contains(&health.retry_budget_ratio) {
            return Err(err(
                "health.retry_budget_ratio",
                format!("must be between 0 and 1, not {}", health.retry_budget_ratio),
            ));
        }
        let mut limits = Tuning::default();
        if let Some(secs) = raw.limits.window_secs {
            if secs == 0 {
                return Err(err("limits.window_secs", "must be more than 0".into()));
            }
            limits.window = Duration::from_secs(secs);
        }
        let routing = routing_policy(&raw.routing).map_err(|(k, r)| err(&k, r))?;
        let cache = cache_settings(&raw.cache).map_err(|(k, r)| err(&k, r))?;
        let task_keys = catalog.task_keys();
        let mut pipelines = BTreeMap::new();
        for (name, p) in &raw.pipelines {
            let built = pipeline_spec::build(name, p, &task_keys).map_err(|(k, r)| err(&k, r))?;
            pipelines.insert(name.clone(), built);
        }
        let concurrency = raw.worker.concurrency.unwrap_or(64);
        if concurrency == 0 {
            return Err(err("worker.concurrency", "must be at least 1".into()));
        }
        Ok(Self {
            source,
            redis_url,
            storage_url,
            queue,
            runner,
            retry,
            max_line_bytes,
            concurrency,
            drain_timeout: Duration::from_secs(raw.worker.drain_timeout_secs.unwrap_or(30)),
            catalog: Arc::new(catalog),
            health,
            limits,
            routing,
            cache,
            pipelines,
            warnings,
            env: env.clone(),
        })
    }
}

/// The largest `input.max_line_bytes`: one line is held whole while it is checked.
const MAX_LINE_BYTES_CAP: usize = 1 << 30;

#[cfg(test)]
mod tests;
