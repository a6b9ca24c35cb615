//! Chooses the models a job may run on, cheapest adequate first.
//!
//! This router ranks by expected cost among the models that meet the hard constraints
//! (tier, capabilities, context window). The learned-adequacy router replaces the ranking
//! behind the same [`Router::candidates`] call.

use std::sync::Arc;

use batchyard_jobs::job::{Job, Route};
use serde_json::{Map, Value};

use crate::catalog::{Catalog, ModelSpec, TaskSpec};

/// Why no model could take a job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no configured model meets the task's constraints ({0}); add a model or relax min_tier/requires"
    )]
    NoAdequateModel(String),
    #[error("model {0:?} is not configured")]
    UnknownModel(String),
    #[error("task {0:?} is not configured")]
    UnknownTask(String),
}

impl RouteError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoAdequateModel(_) => "no_adequate_model",
            Self::UnknownModel(_) | Self::UnknownTask(_) => "invalid_request",
        }
    }

    pub fn is_retryable(&self) -> bool {
        false
    }
}

/// A rough token count: about four characters a token, plus a few per message.
pub fn estimate_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return 0;
    };
    messages
        .iter()
        .map(|m| {
            let chars = match m.get("content") {
                Some(Value::String(s)) => s.chars().count(),
                Some(other) => other.to_string().len(),
                None => 0,
            };
            4 + chars.div_ceil(4) as u64
        })
        .sum()
}

/// The output tokens a call may produce, as the request asks or the task allows.
pub fn requested_output_tokens(body: &Map<String, Value>, task: Option<&TaskSpec>) -> Option<u64> {
    body.get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(Value::as_u64)
        .or_else(|| task.and_then(|t| t.max_output_tokens.map(u64::from)))
}

#[derive(Debug, Default)]
pub struct Router;

impl Router {
    pub fn new() -> Self {
        Self
    }

    /// The models to try for `job`, best first. A pinned job gets exactly its model.
    pub fn candidates(
        &self,
        catalog: &Catalog,
        job: &Job,
    ) -> Result<Vec<Arc<ModelSpec>>, RouteError> {
        let task = match &job.route {
            Route::Pinned { model } => {
                return catalog
                    .model(model)
                    .map(|m| vec![Arc::clone(m)])
                    .ok_or_else(|| RouteError::UnknownModel(model.clone()));
            }
            Route::Task { task } => Some(
                catalog
                    .task(task)
                    .ok_or_else(|| RouteError::UnknownTask(task.clone()))?,
            ),
            Route::Auto => None,
        };
        let prompt = estimate_prompt_tokens(&job.body);
        let output = requested_output_tokens(&job.body, task).unwrap_or(512);
        let min_tier = task.map_or(0, |t| t.min_tier);
        let mut ranked: Vec<(f64, Arc<ModelSpec>)> = catalog
            .models()
            .filter(|m| m.tier >= min_tier)
            .filter(|m| task.is_none_or(|t| t.requires.is_subset(&m.capabilities)))
            .filter(|m| m.context_window >= prompt + output)
            .map(|m| (m.cost_usd(prompt, output), Arc::clone(m)))
            .collect();
        ranked.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.tier.cmp(&b.1.tier)));
        if ranked.is_empty() {
            let why = format!(
                "min_tier {min_tier}, ~{prompt} prompt + {output} output tokens{}",
                task.map(|t| format!(", requires {:?}", t.requires))
                    .unwrap_or_default()
            );
            return Err(RouteError::NoAdequateModel(why));
        }
        Ok(ranked.into_iter().map(|(_, m)| m).collect())
    }
}
