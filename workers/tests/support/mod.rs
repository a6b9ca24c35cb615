//! Helpers shared by the workers crate's tests: each test file does `mod support;` and uses what
//! it needs, so items one file leaves unused are not dead code. The services (redis-server, the
//! fake provider process) come from `batchyard-testkit`; here, one module per topic:
//!
//! - `adequacy`: stores to run adequacy scenarios against, a counting store, a simulated router;
//! - `batch`: a provider batch driven to its end through `BatchApi`, its results read whole;
//! - `fake_provider`: our OpenAI and Anthropic providers pointed at a fake, request builders;
//! - `pool`: an instrumented in-memory queue, a recording handler, a pool run bounded in time;
//! - here: a model spec and a request body to build on.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod adequacy;
pub mod batch;
pub mod fake_provider;
pub mod pool;

use std::collections::BTreeSet;

use batchyard_workers::catalog::ModelSpec;
use serde_json::{Map, Value};

/// A tier-1 model at $1 / $2 per million tokens with a 128k context and no limits; tests
/// change what they need.
pub fn model_spec(key: &str, provider: &str, name: &str) -> ModelSpec {
    ModelSpec {
        key: key.into(),
        provider: provider.into(),
        name: name.into(),
        input_usd_per_mtok: 1.0,
        output_usd_per_mtok: 2.0,
        cached_input_usd_per_mtok: None,
        cache_write_usd_per_mtok: None,
        context_window: 128_000,
        max_output_tokens: None,
        tier: 1,
        capabilities: BTreeSet::new(),
        rpm: None,
        tpm: None,
        batch: None,
    }
}

/// A JSON object as a request body (anything else gives an empty one).
pub fn body(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}
