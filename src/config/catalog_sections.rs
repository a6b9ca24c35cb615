//! `[providers.*]`, `[models.*]` and `[tasks.*]`, checked and turned into the [`Catalog`]. Each
//! check fails with `(key, reason)`; `Settings::from_raw` names the file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use batchyard_workers::catalog::shipped::{ShippedCatalog, ShippedModel};
use batchyard_workers::catalog::validate::Validators;
use batchyard_workers::catalog::{BatchPrices, Catalog, CatalogError, ModelSpec, TaskSpec};
use batchyard_workers::provider::Provider;

use super::defaults;
use super::parts::{build_provider, response_format};
use super::raw::{RawConfig, RawModel, RawProvider};

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

/// `[models.*]`: each names a configured provider, non-negative prices and a context window,
/// written in the table or taken from the shipped catalog entry it names. Returns the models
/// and, for those that name one, their catalog entry.
pub(super) fn models(raw: &RawConfig) -> Result<(Vec<ModelSpec>, BTreeMap<String, String>), Bad> {
    let mut models = Vec::new();
    let mut from_catalog = BTreeMap::new();
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
        let entry = match &m.catalog {
            Some(name) => {
                let entry = ShippedCatalog::get()
                    .and_then(|c| c.entry(name))
                    .map_err(|e| (at("catalog"), e.to_string()))?;
                from_catalog.insert(key.clone(), name.clone());
                Some(entry)
            }
            None => None,
        };
        let mut spec = model_spec(key, m, entry)?;
        spec.batch = batch_prices(key, m, &raw.providers[&m.provider], entry, &spec)?;
        models.push(spec);
    }
    Ok((models, from_catalog))
}

/// Whether a provider's batch API is there to use: OpenAI's own API and Anthropic by
/// default, another OpenAI-compatible server only with `batch_api = true`.
fn provider_batches(p: &RawProvider) -> bool {
    match p.kind.as_str() {
        "openai" => p.batch_api.unwrap_or_else(|| {
            p.base_url
                .as_deref()
                .and_then(|u| url::Url::parse(u).ok())
                .is_some_and(|u| u.host_str() == Some("api.openai.com"))
        }),
        "anthropic" => p.batch_api.unwrap_or(true),
        _ => false,
    }
}

/// A model's batch prices (the offload lane), or `None` when it is never offloaded: the
/// table's, else its catalog entry's, else half its real-time prices.
fn batch_prices(
    key: &str,
    m: &RawModel,
    p: &RawProvider,
    entry: Option<&ShippedModel>,
    spec: &ModelSpec,
) -> Result<Option<BatchPrices>, Bad> {
    let at = |field: &str| format!("models.{key}.{field}");
    let input = m
        .batch_input_usd_per_mtok
        .or(entry.and_then(|e| e.batch_input_usd_per_mtok))
        .unwrap_or(spec.input_usd_per_mtok / 2.0);
    let output = m
        .batch_output_usd_per_mtok
        .or(entry.and_then(|e| e.batch_output_usd_per_mtok))
        .unwrap_or(spec.output_usd_per_mtok / 2.0);
    for (field, price) in [
        ("batch_input_usd_per_mtok", input),
        ("batch_output_usd_per_mtok", output),
    ] {
        if !price.is_finite() || price < 0.0 {
            return Err((at(field), format!("price must be 0 or more, not {price}")));
        }
    }
    if m.batch_api == Some(true) && !provider_batches(p) {
        return Err((
            at("batch_api"),
            format!(
                "provider {:?} has no batch API batchyard can use; set batch_api = true on the \
                 provider if it serves OpenAI's /v1/batches",
                m.provider
            ),
        ));
    }
    if m.batch_api == Some(false) || !provider_batches(p) {
        return Ok(None);
    }
    if m.batch_enqueued_token_limit == Some(0) {
        return Err((
            at("batch_enqueued_token_limit"),
            "must be at least 1 (leave it out when the provider sets no limit)".into(),
        ));
    }
    Ok(Some(BatchPrices {
        input_usd_per_mtok: input,
        output_usd_per_mtok: output,
        enqueued_token_limit: m.batch_enqueued_token_limit,
    }))
}

/// A field the model's table must set when it names no catalog entry.
fn required<T>(key: &str, field: &str, value: Option<T>) -> Result<T, Bad> {
    value.ok_or_else(|| {
        (
            format!("models.{key}.{field}"),
            "missing: set it, or name a shipped model with `catalog = \"provider/model\"` \
             (`batchyard models catalog` lists them)"
                .to_string(),
        )
    })
}

/// One model: the table's fields, else its catalog entry's.
fn model_spec(key: &str, m: &RawModel, entry: Option<&ShippedModel>) -> Result<ModelSpec, Bad> {
    let at = |field: &str| format!("models.{key}.{field}");
    let input = required(
        key,
        "input_usd_per_mtok",
        m.input_usd_per_mtok.or(entry.map(|e| e.input_usd_per_mtok)),
    )?;
    let output = required(
        key,
        "output_usd_per_mtok",
        m.output_usd_per_mtok
            .or(entry.map(|e| e.output_usd_per_mtok)),
    )?;
    let cached = m
        .cached_input_usd_per_mtok
        .or(entry.and_then(|e| e.cached_input_usd_per_mtok));
    let cache_write = m
        .cache_write_usd_per_mtok
        .or(entry.and_then(|e| e.cache_write_usd_per_mtok));
    for (field, price) in [
        ("input_usd_per_mtok", Some(input)),
        ("output_usd_per_mtok", Some(output)),
        ("cached_input_usd_per_mtok", cached),
        ("cache_write_usd_per_mtok", cache_write),
    ] {
        if let Some(price) = price
            && (!price.is_finite() || price < 0.0)
        {
            return Err((at(field), format!("price must be 0 or more, not {price}")));
        }
    }
    let context_window = required(
        key,
        "context_window",
        m.context_window.or(entry.map(|e| e.context_window)),
    )?;
    if context_window == 0 {
        return Err((at("context_window"), "must be more than 0".into()));
    }
    let tier = required(key, "tier", m.tier.or(entry.map(|e| e.tier)))?;
    let capabilities = match (&m.capabilities, entry) {
        (Some(caps), _) => caps.iter().cloned().collect(),
        (None, Some(e)) => e.capabilities.iter().cloned().collect(),
        (None, None) => Default::default(),
    };
    Ok(ModelSpec {
        key: key.to_owned(),
        provider: m.provider.clone(),
        name: m
            .name
            .clone()
            .or(entry.map(|e| e.name.clone()))
            .unwrap_or_else(|| key.to_owned()),
        input_usd_per_mtok: input,
        output_usd_per_mtok: output,
        cached_input_usd_per_mtok: cached,
        cache_write_usd_per_mtok: cache_write,
        context_window,
        max_output_tokens: m
            .max_output_tokens
            .or(entry.and_then(|e| e.max_output_tokens)),
        tier,
        capabilities,
        rpm: m.rpm,
        tpm: m.tpm,
        batch: None,
    })
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
            prompt_cache: t.prompt_cache,
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    use crate::config::Settings;

    fn load(models: &str) -> Result<Settings, String> {
        let text = format!(
            "[providers.claude]\nkind = \"anthropic\"\n\n[providers.oai]\nkind = \"openai\"\n\
             base_url = \"http://127.0.0.1:9/v1\"\n\n{models}"
        );
        Settings::from_toml(&text, Some(PathBuf::from("c.toml")), &BTreeMap::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_model_can_take_everything_from_the_shipped_catalog() {
        let s = load(
            "[models.haiku]\nprovider = \"claude\"\ncatalog = \"anthropic/claude-haiku-4-5\"\n",
        )
        .unwrap();
        let m = s.catalog.model("haiku").unwrap();
        assert_eq!(m.name, "claude-haiku-4-5");
        assert_eq!((m.input_usd_per_mtok, m.output_usd_per_mtok), (1.0, 5.0));
        assert_eq!(m.cached_input_usd_per_mtok, Some(0.1));
        assert_eq!(m.cache_write_usd_per_mtok, Some(1.25));
        assert_eq!((m.context_window, m.tier), (200_000, 1));
        assert!(m.capabilities.contains("json"), "{:?}", m.capabilities);
        assert_eq!(
            s.model_catalog.get("haiku").map(String::as_str),
            Some("anthropic/claude-haiku-4-5")
        );
    }

    #[test]
    fn what_the_config_writes_wins_over_the_catalog() {
        let s = load(
            "[models.mini]\nprovider = \"oai\"\ncatalog = \"openai/gpt-4.1-mini\"\n\
             input_usd_per_mtok = 0.35\ntier = 1\nname = \"my-deployment\"\ncapabilities = []\n",
        )
        .unwrap();
        let m = s.catalog.model("mini").unwrap();
        assert_eq!(m.input_usd_per_mtok, 0.35);
        assert_eq!(m.output_usd_per_mtok, 1.6);
        assert_eq!((m.tier, m.name.as_str()), (1, "my-deployment"));
        assert!(m.capabilities.is_empty());
    }

    #[test]
    fn an_unknown_catalog_name_fails_with_the_closest_ones() {
        let e =
            load("[models.h]\nprovider = \"claude\"\ncatalog = \"anthropic/claude-haiku-4.5\"\n")
                .unwrap_err();
        assert!(e.contains("c.toml"), "{e}");
        assert!(e.contains("models.h.catalog"), "{e}");
        assert!(e.contains("closest: anthropic/claude-haiku-4-5"), "{e}");
    }

    #[test]
    fn without_a_catalog_entry_prices_and_window_are_required() {
        let e = load("[models.x]\nprovider = \"oai\"\noutput_usd_per_mtok = 1.0\ncontext_window = 8000\ntier = 1\n")
            .unwrap_err();
        assert!(e.contains("models.x.input_usd_per_mtok"), "{e}");
        assert!(e.contains("catalog = "), "{e}");
        let e = load("[models.x]\nprovider = \"oai\"\ninput_usd_per_mtok = 1.0\noutput_usd_per_mtok = 1.0\ntier = 1\n")
            .unwrap_err();
        assert!(e.contains("models.x.context_window"), "{e}");
    }
}
