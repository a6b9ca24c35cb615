//! The plain tables, one function per section: `[queue]` (with the runner options it sets),
//! `[retry]`, `[storage]`, `[input]`, `[health]`, `[limits]`, `[routing]`, `[cache]`,
//! `[pipelines.*]` and `[worker]`.
//! Each check fails with `(key, reason)`; `Settings::from_raw` names the file.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use batchyard_jobs::input::DEFAULT_MAX_LINE_BYTES;
use batchyard_jobs::queue::QueueOptions;
use batchyard_workers::call::health::HealthPolicy;
use batchyard_workers::call::limiter::Tuning;
use batchyard_workers::call::retry::RetryPolicy;
use batchyard_workers::job::runner::RunnerOptions;
use batchyard_workers::job::segments::SegmentOptions;
use batchyard_workers::offload::OffloadOptions;
use batchyard_workers::route::adequacy::AdequacyPolicy;

use super::defaults::DEFAULT_STORAGE_URL;
use super::parts::{bounded_secs, check_url, has_credentials, has_password};
use super::pipeline_spec::{self, Pipeline};
use super::raw::{RawCache, RawConfig, RawRouting};

/// `[cache]`: the result cache across batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheSettings {
    pub enabled: bool,
    pub ttl: Duration,
}

type Bad = (String, String);

/// The largest `input.max_line_bytes`: one line is held whole while it is checked.
const MAX_LINE_BYTES_CAP: usize = 1 << 30;

/// `queue.redis_url`, which `BATCHYARD_REDIS_URL` overrides; none means no Redis.
pub(super) fn redis_url(
    raw: &RawConfig,
    env: &BTreeMap<String, String>,
) -> Result<Option<String>, Bad> {
    let redis_url = env
        .get("BATCHYARD_REDIS_URL")
        .filter(|v| !v.is_empty())
        .cloned()
        .or(raw.queue.redis_url.clone());
    if let Some(url) = &redis_url {
        match batchyard_jobs::redis_conn::cluster_seeds(url) {
            Some(seeds) => seeds.map(drop),
            None => check_url(url, &["redis", "rediss", "redis+unix", "unix"]),
        }
        .map_err(|r| ("queue.redis_url".to_string(), r))?;
    }
    Ok(redis_url)
}

/// A password in `queue.redis_url` of the file. Supported (the password is redacted wherever
/// the url is shown), but a file is copied, committed and shared far more than the environment.
pub(super) fn redis_password_warnings(raw: &RawConfig, file: &str) -> Vec<String> {
    let mut warnings = Vec::new();
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
    warnings
}

/// `storage.url`, which `BATCHYARD_STORAGE_URL` overrides.
pub(super) fn storage_url(raw: &RawConfig, env: &BTreeMap<String, String>) -> Result<String, Bad> {
    let bad = |reason: &str| ("storage.url".to_string(), reason.to_string());
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
        .map_err(|r| ("storage.url".to_string(), r))?;
        // The url is kept in every batch record (in Redis) and shown by status: a key in
        // it would be stored and shown in clear.
        if has_credentials(&storage_url) {
            return Err(bad(
                "holds a user name or password (from the file or BATCHYARD_STORAGE_URL); remove them and give the keys in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or the GOOGLE_* / AZURE_* variables)",
            ));
        }
    } else if storage_url.len() <= "file://".len() {
        return Err(bad(
            "a file:// url needs a folder, e.g. file://./batchyard-data",
        ));
    }
    Ok(storage_url)
}

/// `input.max_line_bytes`.
pub(super) fn max_line_bytes(raw: &RawConfig) -> Result<usize, Bad> {
    let max_line_bytes = raw.input.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE_BYTES);
    if !(1..=MAX_LINE_BYTES_CAP).contains(&max_line_bytes) {
        return Err((
            "input.max_line_bytes".into(),
            format!(
                "must be between 1 and {MAX_LINE_BYTES_CAP} (1 GiB), not {max_line_bytes}; a line is held in memory while it is checked"
            ),
        ));
    }
    Ok(max_line_bytes)
}

/// `[queue]`: the queue's options.
pub(super) fn queue(raw: &RawConfig) -> Result<QueueOptions, Bad> {
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
        ready_window: q.ready_window.unwrap_or(defaults.ready_window),
    };
    if !(1..=100_000).contains(&queue.ready_window) {
        return Err((
            "queue.ready_window".into(),
            "must be from 1 to 100000 (jobs kept ready ahead of the workers)".into(),
        ));
    }
    if queue.submit_lease < Duration::from_secs(2) {
        return Err((
            "queue.submit_lease_secs".into(),
            "must be at least 2 (the submitter renews it every third of it)".into(),
        ));
    }
    if queue.visibility_timeout.is_zero() {
        return Err((
            "queue.visibility_timeout_secs".into(),
            "must be more than 0".into(),
        ));
    }
    Ok(queue)
}

/// The runner's share of `[queue]`: attempts, and the reclaim rules it must agree on.
pub(super) fn runner(raw: &RawConfig, queue: &QueueOptions) -> RunnerOptions {
    let defaults = RunnerOptions::default();
    RunnerOptions {
        max_attempts: raw
            .queue
            .max_attempts
            .unwrap_or(defaults.max_attempts)
            .max(1),
        max_reclaims: queue.max_reclaims,
        visibility_timeout: queue.visibility_timeout,
        ..defaults
    }
}

/// `[retry]`: backoff of provider calls.
pub(super) fn retry(raw: &RawConfig) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let r = &raw.retry;
    RetryPolicy {
        base: r.base_ms.map_or(defaults.base, Duration::from_millis),
        cap: r.cap_ms.map_or(defaults.cap, Duration::from_millis),
        max_attempts: r.max_attempts.unwrap_or(defaults.max_attempts).max(1),
    }
}

/// `[health]`: when a model cools down, and its retry budget.
pub(super) fn health(raw: &RawConfig) -> Result<HealthPolicy, Bad> {
    let defaults = HealthPolicy::default();
    let h = &raw.health;
    let health = HealthPolicy {
        failure_threshold: h
            .failure_threshold
            .unwrap_or(defaults.failure_threshold)
            .max(1),
        cooldown: h
            .cooldown_secs
            .map_or(defaults.cooldown, Duration::from_secs),
        retry_budget_ratio: h.retry_budget_ratio.unwrap_or(defaults.retry_budget_ratio),
        retry_budget_min: h.retry_budget_min.unwrap_or(defaults.retry_budget_min),
        ..defaults
    };
    if !(0.0..=1.0).contains(&health.retry_budget_ratio) {
        return Err((
            "health.retry_budget_ratio".into(),
            format!("must be between 0 and 1, not {}", health.retry_budget_ratio),
        ));
    }
    Ok(health)
}

/// `[limits]`: the window the shared rate limits count over.
pub(super) fn limits(raw: &RawConfig) -> Result<Tuning, Bad> {
    let mut limits = Tuning::default();
    if let Some(secs) = raw.limits.window_secs {
        if secs == 0 {
            return Err(("limits.window_secs".into(), "must be more than 0".into()));
        }
        limits.window = Duration::from_secs(secs);
    }
    Ok(limits)
}

/// `[routing]`, checked.
pub(super) fn routing_policy(r: &RawRouting) -> Result<AdequacyPolicy, (String, String)> {
    let d = AdequacyPolicy::default();
    let policy = AdequacyPolicy {
        learn: r.learn.unwrap_or(d.learn),
        exploration: r.exploration.unwrap_or(d.exploration),
        prior_strength: r.prior_strength.unwrap_or(d.prior_strength),
        max_evidence: r.max_evidence.unwrap_or(d.max_evidence),
        feature_buckets: r.feature_buckets.unwrap_or(d.feature_buckets),
    };
    if !(0.0..=1.0).contains(&policy.exploration) {
        return Err((
            "routing.exploration".into(),
            format!("must be between 0 and 1, not {}", policy.exploration),
        ));
    }
    if !policy.prior_strength.is_finite() || policy.prior_strength <= 0.0 {
        return Err((
            "routing.prior_strength".into(),
            format!("must be more than 0, not {}", policy.prior_strength),
        ));
    }
    if !policy.max_evidence.is_finite() || policy.max_evidence < 10.0 {
        return Err((
            "routing.max_evidence".into(),
            format!("must be at least 10, not {}", policy.max_evidence),
        ));
    }
    Ok(policy)
}

/// `[cache]`, checked. Entries live 30 days unless told otherwise.
pub(super) fn cache_settings(c: &RawCache) -> Result<CacheSettings, (String, String)> {
    let ttl_secs = c.ttl_secs.unwrap_or(30 * 24 * 3600);
    if ttl_secs == 0 {
        return Err((
            "cache.ttl_secs".into(),
            "must be more than 0; set enabled = false to turn the cache off".into(),
        ));
    }
    Ok(CacheSettings {
        enabled: c.enabled.unwrap_or(true),
        ttl: Duration::from_secs(ttl_secs),
    })
}

/// `[pipelines.*]`, by name; each names one of `task_keys`.
pub(super) fn pipelines(
    raw: &RawConfig,
    task_keys: &BTreeSet<String>,
    tenants: &super::tenants::Tenants,
) -> Result<BTreeMap<String, Pipeline>, Bad> {
    let mut pipelines = BTreeMap::new();
    for (name, p) in &raw.pipelines {
        let built = pipeline_spec::build(name, p, task_keys)?;
        tenants
            .place(built.tenant.as_deref(), built.priority, built.budget_usd)
            .map_err(|why| (format!("pipelines.{name}.tenant"), why))?;
        pipelines.insert(name.clone(), built);
    }
    Ok(pipelines)
}

/// `[worker]`: concurrency (default 64) and the drain timeout (default 30 s).
pub(super) fn worker(raw: &RawConfig) -> Result<(usize, Duration), Bad> {
    let concurrency = raw.worker.concurrency.unwrap_or(64);
    if concurrency == 0 {
        return Err(("worker.concurrency".into(), "must be at least 1".into()));
    }
    let drain_timeout = Duration::from_secs(raw.worker.drain_timeout_secs.unwrap_or(30));
    Ok((concurrency, drain_timeout))
}

/// `[worker]`'s result segments: up to `segment_max_items` outcomes (default 1000) or
/// `segment_max_wait_ms` (default 200) each, whichever comes first.
pub(super) fn segments(
    raw: &RawConfig,
    env: &BTreeMap<String, String>,
) -> Result<SegmentOptions, Bad> {
    let d = SegmentOptions::default();
    let w = &raw.worker;
    let max_items = w.segment_max_items.unwrap_or(d.max_items);
    if !(1..=100_000).contains(&max_items) {
        return Err((
            "worker.segment_max_items".into(),
            format!("must be between 1 and 100000, not {max_items}"),
        ));
    }
    let max_wait_ms = w.segment_max_wait_ms.unwrap_or(200);
    if max_wait_ms > 60_000 {
        return Err((
            "worker.segment_max_wait_ms".into(),
            format!("must be at most 60000 (a minute), not {max_wait_ms}"),
        ));
    }
    Ok(SegmentOptions {
        max_items,
        max_wait: Duration::from_millis(max_wait_ms),
        crash_after_write: env
            .get("BATCHYARD_TEST_CRASH_AT")
            .is_some_and(|v| v == "after_segment"),
        ..d
    })
}

/// `[offload]`: whether batches with a deadline use the providers' batch APIs, and how.
pub(super) fn offload(
    raw: &RawConfig,
    env: &BTreeMap<String, String>,
) -> Result<OffloadOptions, Bad> {
    let o = &raw.offload;
    let d = OffloadOptions::default();
    let enabled = match o.mode.as_deref() {
        None | Some("auto") => true,
        Some("off") => false,
        Some(other) => {
            return Err((
                "offload.mode".into(),
                format!("must be \"auto\" or \"off\", not {other:?}"),
            ));
        }
    };
    let positive = |key: &str, v: Option<u64>, default: u64| match v {
        Some(0) => Err((format!("offload.{key}"), "must be more than 0".to_string())),
        Some(n) => Ok(n),
        None => Ok(default),
    };
    let poll = positive(
        "poll_interval_secs",
        o.poll_interval_secs,
        d.poll_interval.as_secs(),
    )?;
    let margin = o.switch_margin_secs.unwrap_or(d.switch_margin.as_secs());
    let min_items = positive(
        "min_items",
        o.min_items.map(|n| n as u64),
        d.min_items as u64,
    )?;
    let max_items = positive(
        "max_items",
        o.max_items.map(|n| n as u64),
        d.max_items as u64,
    )?;
    if max_items > 50_000 {
        return Err((
            "offload.max_items".into(),
            "must be at most 50000 (the most OpenAI takes in one batch)".into(),
        ));
    }
    let rate = o.realtime_items_per_sec.unwrap_or(d.realtime_items_per_sec);
    if !rate.is_finite() || rate <= 0.0 {
        return Err((
            "offload.realtime_items_per_sec".into(),
            format!("must be more than 0, not {rate}"),
        ));
    }
    Ok(OffloadOptions {
        enabled,
        min_items: usize::try_from(min_items).unwrap_or(usize::MAX),
        poll_interval: Duration::from_secs(bounded_secs("offload.poll_interval_secs", poll)?),
        switch_margin: Duration::from_secs(bounded_secs("offload.switch_margin_secs", margin)?),
        max_items: usize::try_from(max_items).unwrap_or(usize::MAX),
        realtime_items_per_sec: rate,
        crash_at: env
            .get("BATCHYARD_TEST_CRASH_AT")
            .and_then(|v| batchyard_workers::offload::CrashPoint::parse(v)),
    })
}
