//! `batchyard estimate` (and `submit --dry-run`): what a batch would cost and take, before any
//! money is spent. Streams the input once through the real router; nothing is enqueued.
//!
//! For each item the router's cascade gives, per model, the chance the item reaches it
//! (`Π (1 - p)` of the models before it); expected calls, tokens and cost follow from that.

use std::collections::BTreeMap;

use batchyard_workers::catalog::Catalog;
use batchyard_workers::catalog::prompt_cache::cached_prefix;
use batchyard_workers::catalog::tokens::rough_prompt_tokens;
use batchyard_workers::route::router::Plan;
use serde::Serialize;

/// One model's share of the estimate.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ModelEstimate {
    /// Items this model meets the constraints for.
    pub adequate_items: u64,
    /// The cost if every one of those items ran on this model alone.
    pub cost_if_all_usd: f64,
    /// Items whose cascade starts here.
    pub first_choice: u64,
    /// Calls, tokens and cost the routed cascade is expected to send here.
    pub expected_calls: f64,
    pub expected_tokens: f64,
    pub expected_cost_usd: f64,
    /// Prompt tokens of those calls expected from the provider's prompt cache.
    pub expected_cached_tokens: f64,
    /// What those calls would cost with no prompt cache.
    pub uncached_cost_usd: f64,
    pub tier: u32,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

/// The whole estimate, printed as a table or as one JSON object.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Estimate {
    pub items: u64,
    /// Lines that would be refused at submit.
    pub invalid: u64,
    /// Items no configured model can take.
    pub unroutable: u64,
    /// Prompt tokens, about four characters a token (per-model counts are in the routing).
    pub prompt_tokens: u64,
    /// The output allowance of every item, summed (the most the items may produce).
    pub max_output_tokens: u64,
    pub models: BTreeMap<String, ModelEstimate>,
    /// Expected cost of the routed cascade, with today's learned pass rates.
    pub routed_expected_usd: f64,
    /// The worst case of one call per item on its first choice: what a budget reserves before
    /// an item's first call.
    pub first_call_worst_case_usd: f64,
    /// The most the batch can cost: every item walks its whole cascade, each call at its
    /// output limit. It bounds `routed_expected_usd`, which weighs the same calls by the chance
    /// an item reaches them, at half the output limit.
    pub worst_case_usd: f64,
    /// The time the declared rate limits imply at least, in seconds (`None`: no limits).
    pub min_duration_secs: Option<f64>,
    /// The limit that sets that time.
    pub bound_by: Option<String>,
    /// The share of the routed calls' prompt tokens expected from prompt caches: each model's
    /// first call with a prefix writes it, the later ones read it (the batch is assumed to
    /// run within the cache's TTL, which cache-warm dispatch helps keep).
    pub cached_share: f64,
    /// What the prompt cache is expected to save on the routed cost, writes included.
    pub cache_saving_usd: f64,
    /// The (model, prefix) pairs whose cache write is counted.
    #[serde(skip)]
    written: std::collections::BTreeSet<(String, u64)>,
    #[serde(skip)]
    expected_prompt_tokens: f64,
}

impl Estimate {
    /// Adds one item's plan.
    pub fn add(&mut self, plan: &Plan, body: &serde_json::Map<String, serde_json::Value>) {
        self.items += 1;
        self.prompt_tokens += rough_prompt_tokens(body);
        let Some(first) = plan.candidates.first() else {
            self.unroutable += 1;
            return;
        };
        self.max_output_tokens = self
            .max_output_tokens
            .saturating_add(first.max_output_tokens);
        self.first_call_worst_case_usd += first.worst_case_usd;
        self.worst_case_usd += plan
            .candidates
            .iter()
            .map(|c| c.worst_case_usd)
            .sum::<f64>();
        self.routed_expected_usd += plan.expected_usd();
        let prefix = cached_prefix(body);
        let mut reach = 1.0;
        for (i, cand) in plan.candidates.iter().enumerate() {
            let m = self.models.entry(cand.model.key.clone()).or_default();
            m.tier = cand.model.tier;
            m.rpm = cand.model.rpm;
            m.tpm = cand.model.tpm;
            m.adequate_items += 1;
            m.cost_if_all_usd += cand.call_cost_usd;
            if i == 0 {
                m.first_choice += 1;
            }
            m.expected_calls += reach;
            m.expected_cost_usd += reach * cand.call_cost_usd;
            m.expected_cached_tokens += reach * cand.cached_prompt_tokens as f64;
            m.uncached_cost_usd += reach * cand.uncached_call_cost_usd;
            self.expected_prompt_tokens += reach * cand.prompt_tokens as f64;
            // The first call reaching a model with this prefix writes the cache instead.
            if let Some(p) = prefix.filter(|_| cand.cached_prompt_tokens > 0 && reach > 0.0)
                && self.written.insert((cand.model.key.clone(), p.hash))
            {
                let write = cand.cold_call_cost_usd - cand.call_cost_usd;
                m.expected_cached_tokens -= reach * cand.cached_prompt_tokens as f64;
                m.expected_cost_usd += write;
                self.routed_expected_usd += write;
            }
            m.expected_tokens +=
                reach * (cand.prompt_tokens as f64 + cand.max_output_tokens.div_ceil(2) as f64);
            reach *= 1.0 - cand.pass.mean.clamp(0.0, 1.0);
        }
    }

    /// Works out the time the rate limits imply, per model and per provider account.
    pub fn finish(&mut self, catalog: &Catalog) {
        let cached: f64 = self.models.values().map(|m| m.expected_cached_tokens).sum();
        self.cached_share = if self.expected_prompt_tokens > 0.0 {
            cached / self.expected_prompt_tokens
        } else {
            0.0
        };
        self.cache_saving_usd = self
            .models
            .values()
            .map(|m| m.uncached_cost_usd - m.expected_cost_usd)
            .sum();
        let mut slowest: Option<(f64, String)> = None;
        let mut consider = |secs: f64, what: String| {
            if slowest.as_ref().is_none_or(|(s, _)| secs > *s) {
                slowest = Some((secs, what));
            }
        };
        let mut by_provider: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (key, m) in &self.models {
            if let Some(rpm) = m.rpm.filter(|r| *r > 0) {
                consider(
                    m.expected_calls / f64::from(rpm) * 60.0,
                    format!("{key} rpm {rpm}"),
                );
            }
            if let Some(tpm) = m.tpm.filter(|t| *t > 0) {
                consider(
                    m.expected_tokens / tpm as f64 * 60.0,
                    format!("{key} tpm {tpm}"),
                );
            }
            if let Some(model) = catalog.model(key) {
                let p = by_provider.entry(model.provider.clone()).or_default();
                p.0 += m.expected_calls;
                p.1 += m.expected_tokens;
            }
        }
        for (provider, (calls, tokens)) in by_provider {
            if let Some((rpm, tpm)) = catalog.provider_limits(&provider) {
                if let Some(rpm) = rpm.filter(|r| *r > 0) {
                    consider(
                        calls / f64::from(rpm) * 60.0,
                        format!("provider {provider} rpm {rpm}"),
                    );
                }
                if let Some(tpm) = tpm.filter(|t| *t > 0) {
                    consider(
                        tokens / tpm as f64 * 60.0,
                        format!("provider {provider} tpm {tpm}"),
                    );
                }
            }
        }
        if let Some((secs, what)) = slowest {
            self.min_duration_secs = Some(secs);
            self.bound_by = Some(what);
        }
    }

    /// The table `batchyard estimate` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "items        {} ({} invalid, {} no model can take)",
            self.items, self.invalid, self.unroutable
        ));
        line(format!(
            "tokens       ~{} prompt, at most {} output",
            self.prompt_tokens, self.max_output_tokens
        ));
        line(String::new());
        line(format!(
            "{:<16} {:>4} {:>10} {:>14} {:>9} {:>12} {:>14}",
            "model", "tier", "adequate", "all on it $", "first", "exp. calls", "routed $"
        ));
        for (key, m) in &self.models {
            line(format!(
                "{:<16} {:>4} {:>10} {:>14.4} {:>9} {:>12.1} {:>14.4}",
                key,
                m.tier,
                m.adequate_items,
                m.cost_if_all_usd,
                m.first_choice,
                m.expected_calls,
                m.expected_cost_usd
            ));
        }
        line(String::new());
        line(format!(
            "routed       ${:.4} expected with today's pass rates (escalations included)",
            self.routed_expected_usd
        ));
        if self.cached_share > 0.0 {
            line(format!(
                "prompt cache {:.0}% of the routed prompt tokens expected cached, saving ${:.4} \
                 (one cache write per model and prefix included)",
                self.cached_share * 100.0,
                self.cache_saving_usd
            ));
        }
        line(format!(
            "worst case   ${:.4} if every item runs its whole cascade at its output limits",
            self.worst_case_usd
        ));
        line(format!(
            "first calls  ${:.4} at their output limits (what a budget reserves up front)",
            self.first_call_worst_case_usd
        ));
        match (&self.min_duration_secs, &self.bound_by) {
            (Some(secs), Some(by)) => line(format!(
                "time         at least {} (bound by {by})",
                human_duration(*secs)
            )),
            _ => line("time         not bounded by any declared rpm/tpm".into()),
        }
        out
    }
}

fn human_duration(secs: f64) -> String {
    if secs < 120.0 {
        format!("{secs:.0} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else {
        format!("{:.1} h", secs / 3600.0)
    }
}
