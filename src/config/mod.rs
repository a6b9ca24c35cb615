//! Configuration: found via `--config`, then `BATCHYARD_CONFIG`, then `./batchyard.toml`, else
//! built-in defaults. Parsed once into validated types; the environment is a parameter so tests
//! can supply their own.
//!
//! - [`raw`]: the file as written; every table denies unknown keys.
//! - [`defaults`]: the built-in provider, models and tasks.
//! - [`sections`]: `[queue]`, `[retry]`, `[storage]`, `[input]`, `[health]`, `[limits]`,
//!   `[routing]`, `[cache]`, `[pipelines.*]` and `[worker]`, one function per section.
//! - [`catalog_sections`]: `[providers.*]`, `[models.*]` and `[tasks.*]`, into the catalog.
//! - [`parts`]: pieces the sections share: URLs, provider clients and headers, a task's
//!   `response_format`, duration bounds, and pointing at the spot of a TOML error.
//! - [`provider_azure`]: what `kind = "azure_openai"` adds: `api_version`, and the key or
//!   Entra ID token it sends.
//! - [`provider_bedrock`]: what `kind = "bedrock"` adds: `region`, the endpoint (not the
//!   generic `AWS_ENDPOINT_URL`), and whose AWS credentials sign the calls.
//! - [`provider_bedrock_batch`]: `batch_role_arn` and `batch_s3_url`, a bedrock provider's
//!   batch jobs (the bucket, the control plane).
//! - [`retention`]: `[retention]`, how long ended batches, uploads, dead letters and cache
//!   entries are kept (the older `[queue]` and `[cache]` keys as aliases).
//! - [`pipeline_spec`]: one `[pipelines.<name>]`, validated: schedule, timezone, catch-up.
//! - [`tenants`]: `[tenants.<name>]`: weights, the highest priority allowed, the API tokens'
//!   variable; where a batch runs ([`tenants::Tenants::place`]).

mod catalog_sections;
mod defaults;
pub mod notify;
mod parts;
pub mod pipeline_spec;
mod provider_azure;
mod provider_bedrock;
mod provider_bedrock_batch;
mod raw;
pub mod retention;
mod sections;
pub mod tenants;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::input::KnownNames;
use batchyard_jobs::queue::QueueOptions;
use batchyard_workers::call::health::HealthPolicy;
use batchyard_workers::call::limiter::Tuning;
use batchyard_workers::call::retry::RetryPolicy;
use batchyard_workers::catalog::Catalog;
use batchyard_workers::job::runner::RunnerOptions;
use batchyard_workers::route::adequacy::AdequacyPolicy;

use parts::{describe_toml_error, scrub_toml_message};
use raw::RawConfig;
pub use sections::CacheSettings;

use crate::error::ConfigError;

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
    /// `[offload]`: the lane through the providers' batch APIs.
    pub offload: batchyard_workers::offload::OffloadOptions,
    /// `[notify]`: webhooks for ended batches.
    pub notify: batchyard_workers::notify::NotifyOptions,
    /// `[retention]`: what is kept how long (dead letters and cache entries are also in
    /// `queue` and `cache`, where they act).
    pub retention: retention::Retention,
    /// `[pipelines.<name>]`, by name.
    pub pipelines: BTreeMap<String, pipeline_spec::Pipeline>,
    /// `[tenants.<name>]`, `default` included.
    pub tenants: tenants::Tenants,
    /// The models whose table names a shipped catalog entry, with that entry's name.
    pub model_catalog: BTreeMap<String, String>,
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

    /// Checks each section in turn, in the order their errors are reported.
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
        let base_dir = source
            .as_ref()
            .and_then(|p| p.parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let built =
            Self::build(&mut raw, &base_dir, env, &file).map_err(|(key, reason)| ConfigError {
                file: file.clone(),
                key,
                reason,
            })?;
        Ok(Self { source, ..built })
    }

    /// The sections, checked: each fails with the key at fault and why.
    fn build(
        raw: &mut RawConfig,
        base_dir: &Path,
        env: &BTreeMap<String, String>,
        file: &str,
    ) -> Result<Self, (String, String)> {
        catalog_sections::refuse_api_keys(raw)?;
        catalog_sections::fill_defaults(raw)?;
        let redis_url = sections::redis_url(raw, env)?;
        let storage_url = sections::storage_url(raw, env)?;
        let mut warnings = sections::redis_password_warnings(raw, file);
        parts::check_durations(raw)?;
        let max_line_bytes = sections::max_line_bytes(raw)?;
        let providers = catalog_sections::providers(raw, env, file, &mut warnings)?;
        let (models, model_catalog) = catalog_sections::models(raw)?;
        let tasks = catalog_sections::tasks(raw, base_dir)?;
        let catalog = catalog_sections::catalog(raw, models, tasks, providers)?;
        let mut queue = sections::queue(raw)?;
        let runner = sections::runner(raw, &queue);
        let retry = sections::retry(raw);
        let health = sections::health(raw)?;
        let limits = sections::limits(raw)?;
        let routing = sections::routing_policy(&raw.routing)?;
        let mut cache = sections::cache_settings(&raw.cache)?;
        let retention = retention::retention(raw, &mut warnings)?;
        queue.dead_letter_retention = retention.dead_letters;
        cache.ttl = retention.cache;
        let offload = sections::offload(raw, env)?;
        let notify = notify::notify(&raw.notify, env)?;
        let tenants = tenants::tenants(&raw.tenants)?;
        retention::warn_if_notify_outlives(&retention, &notify, &mut warnings);
        let pipelines = sections::pipelines(raw, &catalog.task_keys(), &tenants)?;
        let (concurrency, drain_timeout) = sections::worker(raw)?;
        let runner = RunnerOptions {
            segments: sections::segments(raw, env)?,
            ..runner
        };
        Ok(Self {
            source: None,
            redis_url,
            storage_url,
            queue,
            runner,
            retry,
            max_line_bytes,
            concurrency,
            drain_timeout,
            catalog: Arc::new(catalog),
            health,
            limits,
            routing,
            cache,
            offload,
            notify,
            retention,
            pipelines,
            tenants,
            model_catalog,
            warnings,
            env: env.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_providers;
