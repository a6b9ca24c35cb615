//! The model catalog and the tasks: what can be called, at what price, for which work.
//!
//! - [`cost`]: what one answer costs at a model's prices, cached input included.
//! - [`prompt_cache`]: cache points after a task's long static prefix (`prompt_cache = "auto"`).
//! - [`shipped`]: the model catalog batchyard ships (prices, context, capabilities, a
//!   suggested tier), which a config's models may name instead of typing prices.
//! - [`tokens`]: prompt token estimates (tiktoken per model family, calibrated fallback).
//! - [`validate`]: checks on a task's outputs (JSON schema, regex, length, finish reason,
//!   refusals, a config-only command), compiled once from config.
//!
//! May use: `provider`. Used by every wing above it.

pub mod cost;
pub mod prompt_cache;
pub mod shipped;
pub mod tokens;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde_json::{Map, Value, json};

use crate::provider::Provider;

pub use cost::TokenCounts;

/// One callable model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// The catalog key (`[models.<key>]`), used in outputs and pins.
    pub key: String,
    /// The provider key (`[providers.<key>]`).
    pub provider: String,
    /// The model name sent to the provider.
    pub name: String,
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// Input tokens read from the provider's prompt cache; the input price when unset.
    pub cached_input_usd_per_mtok: Option<f64>,
    /// Input tokens written to the provider's prompt cache; the input price when unset.
    pub cache_write_usd_per_mtok: Option<f64>,
    pub context_window: u64,
    pub max_output_tokens: Option<u32>,
    pub tier: u32,
    pub capabilities: BTreeSet<String>,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
    /// Prices through the provider's batch API (the offload lane); `None`: this model is
    /// never offloaded (its provider has no batch API, or the config opts it out).
    pub batch: Option<BatchPrices>,
}

/// What a model costs through its provider's batch API, per million tokens, and how much of
/// it the provider lets wait at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchPrices {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
    /// The most prompt tokens in provider batches not yet ended (`None`: no known limit).
    pub enqueued_token_limit: Option<u64>,
}

/// One kind of work: a template, and what a model needs to do it.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub key: String,
    pub system: Option<String>,
    pub prompt: String,
    pub min_tier: u32,
    pub requires: BTreeSet<String>,
    pub max_output_tokens: Option<u32>,
    /// Sent as the call's `response_format` (e.g. a JSON schema).
    pub response_format: Option<Value>,
    /// Checks an answer must pass; a failure escalates to the next candidate model. `None`
    /// when the task declares no `[tasks.<name>.validate]`.
    pub validators: Option<Arc<crate::catalog::validate::Validators>>,
    /// `auto`: a cache point after a long enough static prefix (see [`prompt_cache`]).
    pub prompt_cache: prompt_cache::PromptCacheMode,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("task {task:?} has a bad template: {reason}")]
    Template { task: String, reason: String },
    #[error("cannot render task {task:?} for this document: {reason}")]
    Render { task: String, reason: String },
    #[error("unknown task {0:?}")]
    UnknownTask(String),
}

impl batchyard_jobs::retry::Retryable for CatalogError {}

/// Models, tasks and the providers that serve them, built once from config.
pub struct Catalog {
    models: BTreeMap<String, Arc<ModelSpec>>,
    tasks: BTreeMap<String, TaskSpec>,
    providers: BTreeMap<String, Arc<Provider>>,
    provider_limits: BTreeMap<String, (Option<u32>, Option<u64>)>,
    templates: minijinja::Environment<'static>,
    /// Per task with `prompt_cache = "auto"`: where its static prefix ends.
    cache_plans: BTreeMap<String, prompt_cache::CachePlan>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("tasks", &self.tasks.keys().collect::<Vec<_>>())
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Catalog {
    /// Builds the catalog; every task's template is compiled now, so a bad one fails at start.
    pub fn new(
        models: Vec<ModelSpec>,
        tasks: Vec<TaskSpec>,
        providers: BTreeMap<String, Arc<Provider>>,
    ) -> Result<Self, CatalogError> {
        let mut templates = minijinja::Environment::new();
        templates.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        templates.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        for task in &tasks {
            templates
                .add_template_owned(format!("{}.prompt", task.key), task.prompt.clone())
                .map_err(|e| CatalogError::Template {
                    task: task.key.clone(),
                    reason: e.to_string(),
                })?;
            if let Some(system) = &task.system {
                templates
                    .add_template_owned(format!("{}.system", task.key), system.clone())
                    .map_err(|e| CatalogError::Template {
                        task: task.key.clone(),
                        reason: e.to_string(),
                    })?;
            }
        }
        let cache_plans = tasks
            .iter()
            .filter(|t| t.prompt_cache == prompt_cache::PromptCacheMode::Auto)
            .map(|t| {
                let plan = prompt_cache::CachePlan::of(t.system.as_deref(), &t.prompt);
                (t.key.clone(), plan)
            })
            .collect();
        Ok(Self {
            cache_plans,
            models: models
                .into_iter()
                .map(|m| (m.key.clone(), Arc::new(m)))
                .collect(),
            tasks: tasks.into_iter().map(|t| (t.key.clone(), t)).collect(),
            providers,
            provider_limits: BTreeMap::new(),
            templates,
        })
    }

    /// Account-wide `rpm` / `tpm` per provider key, shared by all its models.
    pub fn with_provider_limits(
        mut self,
        limits: BTreeMap<String, (Option<u32>, Option<u64>)>,
    ) -> Self {
        self.provider_limits = limits;
        self
    }

    pub fn provider_limits(&self, provider: &str) -> Option<(Option<u32>, Option<u64>)> {
        self.provider_limits.get(provider).copied()
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<ModelSpec>> {
        self.models.values()
    }

    pub fn model(&self, key: &str) -> Option<&Arc<ModelSpec>> {
        self.models.get(key)
    }

    pub fn task(&self, key: &str) -> Option<&TaskSpec> {
        self.tasks.get(key)
    }

    pub fn provider(&self, key: &str) -> Option<&Arc<Provider>> {
        self.providers.get(key)
    }

    pub fn model_keys(&self) -> BTreeSet<String> {
        self.models.keys().cloned().collect()
    }

    pub fn task_keys(&self) -> BTreeSet<String> {
        self.tasks.keys().cloned().collect()
    }

    /// Turns a document's fields into a chat completions body through the task's templates.
    pub fn render_document(
        &self,
        task_key: &str,
        fields: &Map<String, Value>,
    ) -> Result<Map<String, Value>, CatalogError> {
        let task = self
            .tasks
            .get(task_key)
            .ok_or_else(|| CatalogError::UnknownTask(task_key.to_string()))?;
        let render = |name: String| -> Result<String, CatalogError> {
            let template =
                self.templates
                    .get_template(&name)
                    .map_err(|e| CatalogError::Render {
                        task: task_key.to_string(),
                        reason: e.to_string(),
                    })?;
            template.render(fields).map_err(|e| CatalogError::Render {
                task: task_key.to_string(),
                reason: e.to_string(),
            })
        };
        let system = match task.system {
            Some(_) => Some(render(format!("{task_key}.system"))?),
            None => None,
        };
        let prompt = render(format!("{task_key}.prompt"))?;
        let (system, prompt) = match self.cache_plans.get(task_key) {
            Some(plan) => plan.contents(system, prompt),
            None => (system.map(Value::String), Value::String(prompt)),
        };
        let mut messages = Vec::with_capacity(2);
        if let Some(system) = system {
            messages.push(json!({"role": "system", "content": system}));
        }
        messages.push(json!({"role": "user", "content": prompt}));
        let mut body = Map::new();
        body.insert("model".into(), Value::String(format!("task:{task_key}")));
        body.insert("messages".into(), Value::Array(messages));
        if let Some(max) = task.max_output_tokens {
            body.insert("max_tokens".into(), Value::from(max));
        }
        if let Some(format) = &task.response_format {
            body.insert("response_format".into(), format.clone());
        }
        Ok(body)
    }
}
