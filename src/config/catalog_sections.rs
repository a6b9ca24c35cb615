//! `[providers.*]`, `[models.*]` and `[tasks.*]`, checked and turned into the [`Catalog`]. Each
//! check fails with `(key, reason)`; `Settings::from_raw` names the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use batchyard_workers::catalog::validate::Validators;
use batchyard_workers::catalog::{Catalog, CatalogError, ModelSpec, TaskSpec};
use batchyard_workers::provider::Provider;

use super::defaults;
use super::parts::{build_provider, response_format};
use super::raw::RawConfig;

type Bad = (String, String);

/// `providers.*.api_key`: refused before anything else, so the first thing said about a pasted
/// key is what to do.
pub(super) fn refuse_api_keys(raw: &RawConfig) -> Result<(), Bad> {
    match raw
        .providers
        .iter()
        .find_map(|(k, p)| p.api_key.is_some().then_some(k))
    {
        Some(key) => Err((
            format!("providers.{key}.api_key"),
            "keys are not read from the config file; put it in an environment variable and name it with api_key_env".into(),
        )),
        None => Ok(()),
    }
}

/// No `[models.*]`: the built-in simulated ones, unless providers were configured for models
/// that were then forgotten. No `[tasks.*]`: the built-in tasks.
pub(super) fn fill_defaults(raw: &mut RawConfig) -> Result<(), Bad> {
    if raw.models.is_empty() {
        if !raw.providers.is_empty() {
            return Err((
                "models".into(),
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
    Ok(())
}

/// `[providers.*]`: the live clients, by key. A provider no model uses is a warning.
pub(super) fn providers(
    raw: &RawConfig,
    env: &BTreeMap<String, String>,
    file: &str,
    warnings: &mut Vec<String>,
) -> Result<BTreeMap<String, Arc<Provider>>, Bad> {
    let used: BTreeSet<&str> = raw.models.values().map(|m| m.provider.as_str()).collect();
    let mut providers = BTreeMap::new();
    for (key, p) in &raw.providers {
        if !used.contains(key.as_str()) {
            warnings.push(format!(
                "config {file}: providers.{key}: no model uses this provider; it is ignored"
            ));
        }
        let provider = build_provider(key, p, env)?;
        providers.insert(key.clone(), Arc::new(provider));
    }
    Ok(providers)
}

/// `[models.*]`: each names a configured provider, non-negative prices and a context window.
pub(super) fn models(raw: &RawConfig) -> Result<Vec<ModelSpec>, Bad> {
    let mut models = Vec::new();
    for (key, m) in &raw.models {
        let at = |field: &str| format!("models.{key}.{field}");
        if !raw.providers.contains_key(&m.provider) {
            let known: Vec<&str> = raw.providers.keys().map(String::as_str).collect();
            return Err((
                at("provider"),
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
            ("cache_write_usd_per_mtok", m.cache_write_usd_per_mtok),
        ] {
            if let Some(price) = price
                && (!price.is_finite() || price < 0.0)
            {
                return Err((at(field), format!("price must be 0 or more, not {price}")));
            }
        }
        if m.context_window == 0 {
            return Err((at("context_window"), "must be more than 0".into()));
        }
        models.push(ModelSpec {
            key: key.clone(),
            provider: m.provider.clone(),
            name: m.name.clone().unwrap_or_else(|| key.clone()),
            input_usd_per_mtok: m.input_usd_per_mtok,
            output_usd_per_mtok: m.output_usd_per_mtok,
            cached_input_usd_per_mtok: m.cached_input_usd_per_mtok,
            cache_write_usd_per_mtok: m.cache_write_usd_per_mtok,
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            tier: m.tier,
            capabilities: m.capabilities.iter().cloned().collect(),
            rpm: m.rpm,
            tpm: m.tpm,
        });
    }
    Ok(models)
}

/// `[tasks.*]`: validators compiled (paths relative to the config file's folder) and the
/// `response_format` turned into the JSON it is sent as.
pub(super) fn tasks(raw: &RawConfig, base_dir: &Path) -> Result<Vec<TaskSpec>, Bad> {
    let mut tasks: Vec<TaskSpec> = Vec::with_capacity(raw.tasks.len());
    for (key, t) in &raw.tasks {
        let validators = match &t.validate {
            Some(v) => {
                Some(Arc::new(Validators::compile(v, base_dir).map_err(|e| {
                    (format!("tasks.{key}.{}", e.key), e.reason.clone())
                })?))
            }
            None => None,
        };
        let format = match &t.response_format {
            Some(v) => Some(response_format(key, v)?),
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
    Ok(tasks)
}

/// The catalog of them all, with each provider's account-wide limits. A task template that
/// does not compile is reported at its `prompt`.
pub(super) fn catalog(
    raw: &RawConfig,
    models: Vec<ModelSpec>,
    tasks: Vec<TaskSpec>,
    providers: BTreeMap<String, Arc<Provider>>,
) -> Result<Catalog, Bad> {
    let catalog = Catalog::new(models, tasks, providers).map_err(|e| {
        let key = match &e {
            CatalogError::Template { task, .. } => format!("tasks.{task}.prompt"),
            _ => "tasks".into(),
        };
        (key, e.to_string())
    })?;
    Ok(catalog.with_provider_limits(
        raw.providers
            .iter()
            .map(|(k, p)| (k.clone(), (p.rpm, p.tpm)))
            .collect(),
    ))
}
