//! The config file as written: every table denies unknown keys.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub queue: RawQueue,
    #[serde(default)]
    pub storage: RawStorage,
    #[serde(default)]
    pub worker: RawWorker,
    #[serde(default)]
    pub input: RawInput,
    #[serde(default)]
    pub retry: RawRetry,
    #[serde(default)]
    pub health: RawHealth,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub routing: RawRouting,
    #[serde(default)]
    pub cache: RawCache,
    #[serde(default)]
    pub offload: RawOffload,
    #[serde(default)]
    pub notify: super::notify::RawNotify,
    #[serde(default)]
    pub retention: super::retention::RawRetention,
    #[serde(default)]
    pub providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    pub models: BTreeMap<String, RawModel>,
    #[serde(default)]
    pub tasks: BTreeMap<String, RawTask>,
    #[serde(default)]
    pub pipelines: BTreeMap<String, RawPipeline>,
    #[serde(default)]
    pub tenants: BTreeMap<String, super::tenants::RawTenant>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawQueue {
    pub redis_url: Option<String>,
    /// The queue's name; workers and submitters of one deployment share it.
    pub name: Option<String>,
    pub visibility_timeout_secs: Option<u64>,
    pub max_reclaims: Option<u64>,
    pub dead_letter_retention_hours: Option<u64>,
    /// Deliveries of a job after transient failures before it becomes a dead letter.
    pub max_attempts: Option<u32>,
    /// How long a submit may go silent before its unfinished batch ends `submit_interrupted`.
    pub submit_lease_secs: Option<u64>,
    /// Jobs kept ready in the stream ahead of the workers (the rest wait in fair-share order).
    pub ready_window: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStorage {
    pub url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    pub concurrency: Option<usize>,
    pub drain_timeout_secs: Option<u64>,
    /// Outcomes in one result segment at most.
    pub segment_max_items: Option<usize>,
    /// How long an outcome waits for others before its segment is written.
    pub segment_max_wait_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInput {
    pub max_line_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetry {
    pub base_ms: Option<u64>,
    pub cap_ms: Option<u64>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// The window `rpm` and `tpm` are counted over: 60 s, as providers count. Only tests and
    /// benchmarks shorten it; every worker of a deployment must use the same value.
    pub window_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRouting {
    /// Learn pass probabilities from validator outcomes; `false` is a static cheapest-first
    /// cascade.
    pub learn: Option<bool>,
    /// 0 ranks by the posterior mean; 1 by a full Thompson sample.
    pub exploration: Option<f64>,
    pub prior_strength: Option<f64>,
    pub max_evidence: Option<f64>,
    /// Learn per prompt-length bucket as well as per task.
    pub feature_buckets: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOffload {
    /// `auto` (default) or `off`.
    pub mode: Option<String>,
    pub min_items: Option<usize>,
    pub poll_interval_secs: Option<u64>,
    pub switch_margin_secs: Option<u64>,
    pub max_items: Option<usize>,
    pub realtime_items_per_sec: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCache {
    pub enabled: Option<bool>,
    pub ttl_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    /// Consecutive transient failures that cool a model down.
    pub failure_threshold: Option<u32>,
    pub cooldown_secs: Option<u64>,
    /// In-place retries may be at most this share of a model's calls per minute.
    pub retry_budget_ratio: Option<f64>,
    /// Retries always allowed per minute, whatever the ratio says.
    pub retry_budget_min: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProvider {
    pub kind: String,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// Never accepted: read only so that a key written here is refused with a clear message.
    /// `IgnoredAny` drops the value as it parses, so the secret is never held.
    pub api_key: Option<serde::de::IgnoredAny>,
    pub headers: Option<BTreeMap<String, String>>,
    pub timeout_secs: Option<u64>,
    /// The largest answer read from this provider, in MiB (default 16).
    pub max_response_mib: Option<u64>,
    /// azure_openai only: the `api-version` query parameter (default
    /// `batchyard_workers::provider::azure_openai::DEFAULT_API_VERSION`).
    pub api_version: Option<String>,
    /// bedrock only: the AWS region (else `AWS_REGION`).
    pub region: Option<String>,
    /// bedrock only: a profile of the shared AWS config and credentials files.
    pub profile: Option<String>,
    /// bedrock only: the variables holding this provider's own AWS keys, which win over the
    /// standard chain.
    pub access_key_id_env: Option<String>,
    pub secret_access_key_env: Option<String>,
    pub session_token_env: Option<String>,
    /// bedrock only: the iam role its batch jobs run as, and the `s3://` url they read and
    /// write (both, for the offload lane).
    pub batch_role_arn: Option<String>,
    pub batch_s3_url: Option<String>,
    /// simulated only: added latency per call.
    pub latency_ms: Option<u64>,
    /// simulated only: output tokens per call.
    pub output_tokens: Option<u32>,
    /// Account-wide requests per minute, shared by all of this provider's models.
    pub rpm: Option<u32>,
    /// Account-wide tokens per minute, shared by all of this provider's models.
    pub tpm: Option<u64>,
    /// Whether the provider's batch API may be used (the offload lane). Default: yes for
    /// OpenAI's own API and Anthropic, no for other OpenAI-compatible servers.
    pub batch_api: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub provider: String,
    /// A shipped catalog entry (`provider/model`) that fills every field this table leaves
    /// out; what the table writes wins.
    pub catalog: Option<String>,
    pub name: Option<String>,
    pub input_usd_per_mtok: Option<f64>,
    pub output_usd_per_mtok: Option<f64>,
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Input written to the provider's prompt cache; the input price when unset.
    pub cache_write_usd_per_mtok: Option<f64>,
    pub context_window: Option<u64>,
    pub max_output_tokens: Option<u32>,
    pub tier: Option<u32>,
    pub capabilities: Option<Vec<String>>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Prices through the provider's batch API; default: the shipped catalog's, else half
    /// the real-time prices.
    pub batch_input_usd_per_mtok: Option<f64>,
    pub batch_output_usd_per_mtok: Option<f64>,
    /// `false` keeps this model out of provider batches (data that must not rest there).
    pub batch_api: Option<bool>,
    /// The provider's quota on this model's prompt tokens in provider batches not yet ended
    /// (OpenAI's "enqueued tokens" for your tier); unset: learned from refusals.
    pub batch_enqueued_token_limit: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    pub system: Option<String>,
    pub prompt: String,
    #[serde(default)]
    pub min_tier: u32,
    #[serde(default)]
    pub requires: Vec<String>,
    pub max_output_tokens: Option<u32>,
    /// An OpenAI `response_format` object sent with every call of this task, e.g.
    /// `{ type = "json_schema", json_schema = { name = "x", schema = { ... } } }`.
    pub response_format: Option<toml::Value>,
    /// Checks each answer must pass (json_schema, regex, min/max_chars, finish_reason,
    /// refusal_patterns, command).
    pub validate: Option<batchyard_workers::catalog::validate::ValidateConfig>,
    /// `"auto"` (default): a cache point after a static prefix of 1024+ estimated tokens;
    /// `"off"`: none.
    #[serde(default)]
    pub prompt_cache: batchyard_workers::catalog::prompt_cache::PromptCacheMode,
}

/// `[pipelines.<name>]`: a recurring batch over a folder or object-store prefix.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPipeline {
    /// 5-field cron (minute precision), or 6-field with seconds first.
    pub schedule: String,
    pub timezone: Option<String>,
    pub input: String,
    pub task: String,
    pub budget_usd: Option<f64>,
    pub only_new: Option<bool>,
    pub catch_up: Option<String>,
    pub enabled: Option<bool>,
    /// Follow symbolic links of a folder input that stay inside it (else they are skipped).
    pub follow_symlinks: Option<bool>,
    /// The tenant its batches belong to (default: `default`).
    pub tenant: Option<String>,
    /// Its batches' priority: `high`, `normal`, `low` or a number (default: `normal`).
    pub priority: Option<toml::Value>,
}
