//! What one answer costs: the one price function every real answer is billed by (the
//! cascade's spend, the ledger through it, the metrics), with prompt-cache reads and writes
//! at their own prices.

use super::ModelSpec;
use crate::provider::Completion;

/// The tokens of one answer as a price list needs them. `cached_input` and
/// `cache_write_input` are parts of `input` (as OpenAI's `prompt_tokens` counts its
/// `cached_tokens`), not added to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    /// Every input token, cached or not.
    pub input: u64,
    /// Input read from the provider's prompt cache.
    pub cached_input: u64,
    /// Input written to the provider's prompt cache.
    pub cache_write_input: u64,
    pub output: u64,
}

impl TokenCounts {
    /// A call with no prompt cache involved (the router's estimates, for one).
    pub fn uncached(input: u64, output: u64) -> Self {
        Self {
            input,
            output,
            ..Self::default()
        }
    }

    /// What a provider reported for one answer.
    pub fn of(done: &Completion) -> Self {
        Self {
            input: done.input_tokens,
            cached_input: done.cached_input_tokens,
            cache_write_input: done.cache_write_input_tokens,
            output: done.output_tokens,
        }
    }
}

impl ModelSpec {
    /// Cost in USD of a call with these token counts: cache reads at
    /// `cached_input_usd_per_mtok`, cache writes at `cache_write_usd_per_mtok` (each the input
    /// price when unset), the rest of the input at the input price, output at the output
    /// price. A provider reporting more cached than total input is believed only up to the
    /// total, so no token is billed twice.
    pub fn cost_usd(&self, t: TokenCounts) -> f64 {
        let cached = t.cached_input.min(t.input);
        let written = t.cache_write_input.min(t.input - cached);
        let plain = t.input - cached - written;
        let input = self.input_usd_per_mtok;
        // Same expression order as before caching was priced, so an uncached call costs to
        // the last bit what it always did (adding 0.0 changes nothing).
        (plain as f64 * input
            + cached as f64 * self.cached_input_usd_per_mtok.unwrap_or(input)
            + written as f64 * self.cache_write_usd_per_mtok.unwrap_or(input)
            + t.output as f64 * self.output_usd_per_mtok)
            / 1e6
    }
}

impl ModelSpec {
    /// Cost in USD of an answer through the provider's batch API: every input price scaled
    /// by the batch input discount, output at the batch output price. The real-time price
    /// when the model has no batch prices.
    pub fn batch_cost_usd(&self, t: TokenCounts) -> f64 {
        self.batch_priced().cost_usd(t)
    }

    /// [`Self::worst_case_usd`] at the batch prices: what a budget reserves before an item
    /// goes into a provider batch.
    pub fn batch_worst_case_usd(&self, input: u64, output: u64) -> f64 {
        self.batch_priced().worst_case_usd(input, output)
    }

    /// This model with the batch prices as its prices (itself when it has none).
    fn batch_priced(&self) -> ModelSpec {
        let Some(batch) = self.batch else {
            return self.clone();
        };
        let ratio = if self.input_usd_per_mtok > 0.0 {
            batch.input_usd_per_mtok / self.input_usd_per_mtok
        } else {
            1.0
        };
        ModelSpec {
            input_usd_per_mtok: batch.input_usd_per_mtok,
            output_usd_per_mtok: batch.output_usd_per_mtok,
            cached_input_usd_per_mtok: self.cached_input_usd_per_mtok.map(|p| p * ratio),
            cache_write_usd_per_mtok: self.cache_write_usd_per_mtok.map(|p| p * ratio),
            batch: None,
            ..self.clone()
        }
    }
}

impl ModelSpec {
    /// The most a call of `input` prompt tokens and at most `output` output tokens can cost,
    /// however the provider splits the input between plain, cache-read and cache-write
    /// tokens (a cache write may be priced above plain input, as Anthropic's is).
    pub fn worst_case_usd(&self, input: u64, output: u64) -> f64 {
        let all = |cached_input, cache_write_input| TokenCounts {
            input,
            cached_input,
            cache_write_input,
            output,
        };
        self.cost_usd(all(0, 0))
            .max(self.cost_usd(all(input, 0)))
            .max(self.cost_usd(all(0, input)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn spec(cached: Option<f64>, write: Option<f64>) -> ModelSpec {
        ModelSpec {
            key: "m".into(),
            provider: "p".into(),
            name: "m".into(),
            input_usd_per_mtok: 3.0,
            output_usd_per_mtok: 15.0,
            cached_input_usd_per_mtok: cached,
            cache_write_usd_per_mtok: write,
            context_window: 1000,
            max_output_tokens: None,
            tier: 1,
            capabilities: Default::default(),
            rpm: None,
            tpm: None,
            batch: None,
        }
    }

    fn counts(input: u64, cached: u64, write: u64, output: u64) -> TokenCounts {
        TokenCounts {
            input,
            cached_input: cached,
            cache_write_input: write,
            output,
        }
    }

    #[test]
    fn uncached_calls_cost_input_plus_output() {
        let m = spec(Some(0.3), Some(3.75));
        let usd = m.cost_usd(TokenCounts::uncached(1_000_000, 100_000));
        assert_eq!(usd, (1_000_000.0 * 3.0 + 100_000.0 * 15.0) / 1e6);
        assert_eq!(usd, 4.5);
    }

    #[test]
    fn cache_reads_and_writes_have_their_own_prices() {
        let m = spec(Some(0.3), Some(3.75));
        // 1,000 plain at 3, 8,000 read at 0.3, 1,000 written at 3.75, 500 out at 15.
        let usd = m.cost_usd(counts(10_000, 8_000, 1_000, 500));
        let want = (1_000.0 * 3.0 + 8_000.0 * 0.3 + 1_000.0 * 3.75 + 500.0 * 15.0) / 1e6;
        assert!((usd - want).abs() < 1e-15, "{usd} vs {want}");
        assert!((usd - 0.01665).abs() < 1e-12, "{usd}");
    }

    #[test]
    fn unset_cache_prices_default_to_the_input_price() {
        let m = spec(None, None);
        let cached = m.cost_usd(counts(10_000, 8_000, 1_000, 500));
        let plain = m.cost_usd(TokenCounts::uncached(10_000, 500));
        assert!((cached - plain).abs() < 1e-15, "{cached} vs {plain}");
        // Only the read price set: writes still at the input price.
        let m = spec(Some(0.3), None);
        let usd = m.cost_usd(counts(10_000, 0, 4_000, 0));
        assert!((usd - 0.03).abs() < 1e-15, "{usd}");
    }

    #[test]
    fn the_worst_case_covers_a_cache_write_above_the_input_price() {
        let m = spec(Some(0.3), Some(3.75));
        assert_eq!(m.worst_case_usd(1_000_000, 0), 3.75);
        let m = spec(Some(0.3), None);
        assert_eq!(m.worst_case_usd(1_000_000, 1_000_000), 18.0);
    }

    #[test]
    fn cached_counts_beyond_the_input_are_capped() {
        let m = spec(Some(0.3), Some(3.75));
        // Reads first, then writes up to what is left; nothing billed at the plain price.
        let usd = m.cost_usd(counts(100, 80, 50, 0));
        let want = (80.0 * 0.3 + 20.0 * 3.75) / 1e6;
        assert!((usd - want).abs() < 1e-18, "{usd} vs {want}");
        let usd = m.cost_usd(counts(100, 500, 0, 0));
        assert!((usd - 100.0 * 0.3 / 1e6).abs() < 1e-18, "{usd}");
    }
}
