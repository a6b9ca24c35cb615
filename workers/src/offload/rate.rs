//! How long the rest of a batch would take real-time: what the switch near the deadline
//! (and the check at submit) is judged on.
//!
//! - Items waiting on a model that declares `rpm`/`tpm` (its own, or its provider's account
//!   limits): the time those limits allow, worked out as `estimate` does.
//! - Items on a model with no declared limits, and items not yet in a provider batch: the
//!   real-time throughput the workers measured on recent items
//!   ([`crate::metrics::throughput`]: the fleet's slots over the time one item holds a slot).
//! - With no measurement yet, the configured `realtime_items_per_sec` (conservative by
//!   default), and the log says so.
//!
//! A measured rate also bounds every item, limited model or not: the workers run them all.
//! The slowest of these bounds is the answer, never "unbounded".

use std::collections::BTreeMap;
use std::fmt;

use batchyard_jobs::batch::BatchRecord;

use super::Coordinator;
use super::state::{LaneState, Phase};
use crate::catalog::Catalog;
use crate::metrics::throughput::Measured;

/// Prompt tokens assumed per item, for a `tpm` limit, until items were measured.
const PROMPT_TOKENS_GUESS: f64 = 1_000.0;
/// Output tokens assumed per item when its task sets no allowance.
const OUTPUT_TOKENS_GUESS: f64 = 1_000.0;

/// What set the time real-time needs.
#[derive(Debug, Clone, PartialEq)]
pub enum Basis {
    /// A declared limit, e.g. `model small rpm 500`.
    Limit(String),
    /// The throughput measured on recent real-time items.
    Measured { items_per_sec: f64, items: u64 },
    /// Nothing measured yet: the configured rate.
    Configured { items_per_sec: f64 },
}

impl Basis {
    /// A short name, for noticing when it changes.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Limit(_) => "limit",
            Self::Measured { .. } => "measured",
            Self::Configured { .. } => "configured",
        }
    }
}

impl fmt::Display for Basis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Limit(what) => write!(f, "bound by {what}"),
            Self::Measured {
                items_per_sec,
                items,
            } => write!(
                f,
                "{items_per_sec:.2} items/s measured on {items} recent real-time items"
            ),
            Self::Configured { items_per_sec } => write!(
                f,
                "{items_per_sec} items/s from [offload] realtime_items_per_sec: no real-time \
                 items measured yet"
            ),
        }
    }
}

/// How long the rest would take real-time, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Needed {
    pub secs: f64,
    pub basis: Basis,
}

/// What is left of a batch, as the rate sees it.
#[derive(Debug, Clone, Default)]
pub struct Left {
    /// Items per model they wait on (in a provider batch, or parked for one).
    pub by_model: BTreeMap<String, u64>,
    /// Items whose model is not known yet.
    pub unattributed: u64,
    /// Prompt and output tokens per item, for `tpm` limits.
    pub tokens_per_item: f64,
}

/// The time `left` needs real-time: the slowest of the declared limits, the measured
/// throughput (`measured`), or, with none, `configured` items a second for the items no
/// limit covers.
pub fn realtime_needed(
    catalog: &Catalog,
    left: &Left,
    measured: Option<&Measured>,
    configured: f64,
) -> Needed {
    let mut slowest = Needed {
        secs: 0.0,
        basis: Basis::Configured {
            items_per_sec: configured,
        },
    };
    let mut consider = |secs: f64, basis: Basis| {
        if secs > slowest.secs {
            slowest = Needed { secs, basis };
        }
    };
    let tokens = left.tokens_per_item.max(1.0);
    let mut unlimited = left.unattributed;
    let mut by_provider: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, &n) in &left.by_model {
        let Some(spec) = catalog.model(key) else {
            unlimited += n;
            continue;
        };
        let account = catalog.provider_limits(&spec.provider).unwrap_or_default();
        let rpm = spec.rpm.filter(|r| *r > 0);
        let tpm = spec.tpm.filter(|t| *t > 0);
        if rpm.is_none() && tpm.is_none() && account.0.is_none() && account.1.is_none() {
            unlimited += n;
            continue;
        }
        *by_provider.entry(spec.provider.as_str()).or_default() += n;
        if let Some(rpm) = rpm {
            let what = format!("model {key} rpm {rpm}");
            consider(n as f64 * 60.0 / f64::from(rpm), Basis::Limit(what));
        }
        if let Some(tpm) = tpm {
            let what = format!("model {key} tpm {tpm}");
            consider(n as f64 * tokens * 60.0 / tpm as f64, Basis::Limit(what));
        }
    }
    for (provider, n) in by_provider {
        let (rpm, tpm) = catalog.provider_limits(provider).unwrap_or_default();
        if let Some(rpm) = rpm.filter(|r| *r > 0) {
            let what = format!("provider {provider} rpm {rpm}");
            consider(n as f64 * 60.0 / f64::from(rpm), Basis::Limit(what));
        }
        if let Some(tpm) = tpm.filter(|t| *t > 0) {
            let what = format!("provider {provider} tpm {tpm}");
            consider(n as f64 * tokens * 60.0 / tpm as f64, Basis::Limit(what));
        }
    }
    match measured {
        Some(m) => {
            let all = left.unattributed + left.by_model.values().sum::<u64>();
            let rate = m.items_per_sec();
            let basis = Basis::Measured {
                items_per_sec: rate,
                items: m.items,
            };
            consider(all as f64 / rate, basis);
        }
        None => consider(
            unlimited as f64 / configured.max(0.001),
            Basis::Configured {
                items_per_sec: configured,
            },
        ),
    }
    slowest
}

impl Coordinator {
    /// How long what is left of `record` would take real-time. Items in open provider
    /// batches count on their model; the rest are not attributed.
    pub(super) async fn realtime_needed(&self, record: &BatchRecord, lane: &LaneState) -> Needed {
        let left_items = record
            .counts
            .total
            .saturating_sub(record.counts.completed + record.counts.failed);
        let mut left = Left::default();
        for pb in lane
            .provider_batches
            .iter()
            .filter(|pb| pb.phase != Phase::Done)
        {
            *left.by_model.entry(pb.model.clone()).or_default() += pb.items;
        }
        let attributed: u64 = left.by_model.values().sum();
        left.unattributed = left_items.saturating_sub(attributed);
        let measured = self.meter.measure().await;
        left.tokens_per_item = match &measured {
            Some(m) => m.tokens_per_item,
            None => {
                let allowance = record
                    .task
                    .as_deref()
                    .and_then(|t| self.catalog.task(t))
                    .and_then(|t| t.max_output_tokens)
                    .map_or(OUTPUT_TOKENS_GUESS, f64::from);
                PROMPT_TOKENS_GUESS + allowance
            }
        };
        let needed = realtime_needed(
            &self.catalog,
            &left,
            measured.as_ref(),
            self.options.realtime_items_per_sec,
        );
        let kind = needed.basis.kind();
        let changed = self
            .rate_basis
            .lock()
            .map(|mut seen| seen.insert(record.id.clone(), kind) != Some(kind))
            .unwrap_or(false);
        if changed {
            tracing::info!(
                secs = needed.secs.round(),
                items = left_items,
                "offload: real-time would take about {:.0} s ({})",
                needed.secs,
                needed.basis
            );
        }
        needed
    }
}

#[cfg(test)]
#[path = "rate_tests.rs"]
mod tests;
