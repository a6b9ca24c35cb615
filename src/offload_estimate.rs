//! `batchyard estimate --deadline`: the cost real-time only against the cost with the offload
//! lane, and when the batch is expected to finish either way.
//!
//! The same router plans as [`crate::cost_estimate`], priced twice: every turn real-time,
//! then each turn on a model with a batch API at its batch price, as the lane runs it
//! (a model whose expected group is under `[offload] min_items` stays real-time, as the lane
//! sends such a group). Each turn through a batch API is one wave, and a wave takes at most
//! the providers' window; the deadline caps it all, since real-time takes over in time.

use std::collections::{BTreeMap, BTreeSet};

use batchyard_workers::catalog::{Catalog, TokenCounts};
use batchyard_workers::offload::OffloadOptions;
use batchyard_workers::offload::view::has_batch_api;
use batchyard_workers::route::router::Plan;
use serde::Serialize;

/// How long a provider batch may take: OpenAI's and Anthropic's batch window.
pub const PROVIDER_WINDOW_SECS: u64 = 24 * 3600;

/// One model's expected turns, priced both ways.
#[derive(Debug, Clone, Copy, Default)]
struct Turns {
    calls: f64,
    realtime_usd: f64,
    batch_usd: f64,
}

/// The items' plans, summed as they are added.
#[derive(Debug, Default)]
pub struct OffloadEstimator {
    models: BTreeMap<String, Turns>,
    capable: BTreeSet<String>,
    no_batch_api: BTreeSet<String>,
    waves: u32,
}

impl OffloadEstimator {
    /// Adds one item's plan: each candidate's turn weighed by the chance the item reaches it.
    pub fn add(&mut self, plan: &Plan, catalog: &Catalog) {
        let mut reach = 1.0;
        let mut waves = 0;
        for cand in &plan.candidates {
            let key = &cand.model.key;
            let turns = self.models.entry(key.clone()).or_default();
            let batch = if has_batch_api(catalog, &cand.model) {
                self.capable.insert(key.clone());
                waves += 1;
                cand.model.batch_cost_usd(TokenCounts {
                    input: cand.prompt_tokens,
                    cached_input: cand.cached_prompt_tokens,
                    cache_write_input: 0,
                    output: cand.max_output_tokens.div_ceil(2),
                })
            } else {
                self.no_batch_api.insert(key.clone());
                cand.call_cost_usd
            };
            turns.calls += reach;
            turns.realtime_usd += reach * cand.call_cost_usd;
            turns.batch_usd += reach * batch;
            reach *= 1.0 - cand.pass.mean.clamp(0.0, 1.0);
        }
        self.waves = self.waves.max(waves);
    }

    /// The comparison for a deadline at `deadline_at` seen at `now`, when real-time takes
    /// `realtime` (seconds, and what that was judged on, as submit judges a deadline).
    pub fn finish(
        &self,
        realtime: (u64, String),
        deadline_at: u64,
        now: u64,
        options: &OffloadOptions,
    ) -> OffloadEstimate {
        let mut out = OffloadEstimate {
            deadline_at,
            deadline_in_secs: deadline_at.saturating_sub(now),
            realtime_secs: realtime.0,
            realtime_basis: realtime.1,
            provider_window_secs: PROVIDER_WINDOW_SECS,
            no_batch_api: self.no_batch_api.iter().cloned().collect(),
            ..OffloadEstimate::default()
        };
        let mut waves = 0u32;
        for (key, t) in &self.models {
            out.realtime_usd += t.realtime_usd;
            let offloaded = self.capable.contains(key) && t.calls >= options.min_items as f64;
            if offloaded {
                out.offload_usd += t.batch_usd;
                out.offloaded_calls += t.calls;
                waves += 1;
            } else {
                out.offload_usd += t.realtime_usd;
                out.realtime_calls += t.calls;
                if self.capable.contains(key) && t.calls > 0.0 {
                    out.under_min_items.push(key.clone());
                }
            }
        }
        out.saving_usd = out.realtime_usd - out.offload_usd;
        // A wave per batch-capable turn of the longest cascade, never more than the models
        // that are offloaded at all.
        out.waves_at_most = self.waves.min(waves);
        out.meets_deadline = out.realtime_secs <= out.deadline_in_secs;
        out.offload_finish_by_secs = (u64::from(out.waves_at_most) * PROVIDER_WINDOW_SECS)
            .min(out.deadline_in_secs)
            .max(out.realtime_secs.min(out.deadline_in_secs));
        out
    }
}

/// `estimate --deadline`'s answer, the `offload` object of `--json`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct OffloadEstimate {
    /// Unix seconds.
    pub deadline_at: u64,
    pub deadline_in_secs: u64,
    /// Expected cost with every turn real-time (the routed estimate).
    pub realtime_usd: f64,
    /// Expected cost with the turns on batch-capable models at their batch prices.
    pub offload_usd: f64,
    pub saving_usd: f64,
    /// Expected calls through provider batch APIs, and real-time, with offload.
    pub offloaded_calls: f64,
    pub realtime_calls: f64,
    /// Waves at most: the batch-capable turns of the longest cascade.
    pub waves_at_most: u32,
    /// How long one provider batch may take.
    pub provider_window_secs: u64,
    /// With offload, finished by then at the latest (seconds from now): each wave within the
    /// providers' window, all of it by the deadline (real-time takes over in time).
    pub offload_finish_by_secs: u64,
    /// Real-time only, about this long, as submit judges a deadline: the measured real-time
    /// throughput, or with none yet `[offload] realtime_items_per_sec`.
    pub realtime_secs: u64,
    /// What that was judged on.
    pub realtime_basis: String,
    /// Whether real-time alone would meet the deadline; submit refuses a deadline it would not.
    pub meets_deadline: bool,
    /// Models of these plans that have no batch API (their turns run real-time).
    pub no_batch_api: Vec<String>,
    /// Batch-capable models expected to get fewer than `[offload] min_items` items: their
    /// groups run real-time.
    pub under_min_items: Vec<String>,
}

impl OffloadEstimate {
    /// The lines `batchyard estimate --deadline` adds to the table.
    pub fn render(&self, min_items: usize) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        let share = if self.realtime_usd > 0.0 {
            self.offload_usd / self.realtime_usd * 100.0
        } else {
            100.0
        };
        line(String::new());
        line(format!(
            "deadline     {} (in {})",
            crate::batch_view::rfc3339(self.deadline_at),
            human(self.deadline_in_secs)
        ));
        line(format!(
            "real-time    ${:.4} expected, about {} ({})",
            self.realtime_usd,
            human(self.realtime_secs),
            self.realtime_basis
        ));
        line(format!(
            "with offload ${:.4} expected ({share:.0}% of real-time, ${:.4} less): {:.1} calls \
             through batch APIs, {:.1} real-time",
            self.offload_usd, self.saving_usd, self.offloaded_calls, self.realtime_calls
        ));
        line(format!(
            "finish       with offload within {} at the latest: up to {} wave(s), each within the \
             providers' {} h window, and never past the deadline (real-time takes over in time)",
            human(self.offload_finish_by_secs),
            self.waves_at_most,
            self.provider_window_secs / 3600
        ));
        if !self.no_batch_api.is_empty() {
            line(format!(
                "no batch API {}: their turns run real-time",
                self.no_batch_api.join(", ")
            ));
        }
        if !self.under_min_items.is_empty() {
            line(format!(
                "too few      {}: fewer than [offload] min_items = {min_items} items expected, \
                 so real-time",
                self.under_min_items.join(", ")
            ));
        }
        if !self.meets_deadline {
            line(format!(
                "refused      real-time alone needs about {}, past the deadline: submit would \
                 refuse it; give a later deadline",
                human(self.realtime_secs)
            ));
        }
        out
    }
}

fn human(secs: u64) -> String {
    batchyard_workers::offload::view::clock(secs)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn estimator(calls: f64, capable: bool) -> OffloadEstimator {
        let mut e = OffloadEstimator::default();
        e.models.insert(
            "m".into(),
            Turns {
                calls,
                realtime_usd: 2.0,
                batch_usd: 1.0,
            },
        );
        if capable {
            e.capable.insert("m".into());
            e.waves = 2;
        } else {
            e.no_batch_api.insert("m".into());
        }
        e
    }

    #[test]
    fn offload_halves_the_cost_of_a_big_enough_group() {
        let opts = OffloadOptions::default();
        let est = estimator(500.0, true).finish((250, "configured".into()), 100_000, 0, &opts);
        assert_eq!((est.realtime_usd, est.offload_usd), (2.0, 1.0));
        assert_eq!(est.waves_at_most, 1, "one offloaded model: one wave");
        assert_eq!(est.realtime_secs, 250);
        assert!(est.meets_deadline);
        assert_eq!(est.offload_finish_by_secs, 86_400);
        let text = est.render(opts.min_items);
        assert!(text.contains("50% of real-time"), "{text}");
        // A group under min_items, or a model without a batch API, stays real-time.
        let small = estimator(50.0, true).finish((25, "configured".into()), 100_000, 0, &opts);
        assert_eq!(small.offload_usd, 2.0);
        assert_eq!(small.under_min_items, ["m"]);
        let none = estimator(500.0, false).finish((250, "configured".into()), 100_000, 0, &opts);
        assert_eq!((none.offload_usd, none.waves_at_most), (2.0, 0));
        assert!(none.render(100).contains("no batch API m"));
        // A deadline sooner than the window caps the finish; one real-time can't meet is said.
        let tight = estimator(500.0, true).finish((250, "configured".into()), 100, 0, &opts);
        assert_eq!(tight.offload_finish_by_secs, 100);
        assert!(!tight.meets_deadline);
        assert!(tight.render(100).contains("submit would refuse"));
    }
}
