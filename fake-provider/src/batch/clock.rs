//! The batch clock: where a batch stands at a given moment, computed from the time since it
//! was created (no background task per batch), and the flags that speed it up.
//!
//! With `step = max(turnaround / 10, 1 ms)` and `c` the creation time:
//! - `validating` over `[c, c + step)` (a batch that fails validation or its quota turns
//!   `failed` at `c + step`);
//! - `in_progress` over `[c + step, c + 9 step)`: item `i` of `n` (in input order) is done at
//!   `c + step + ceil((i + 1) × 8 step / n)`;
//! - `finalizing` over `[c + 9 step, c + 10 step)`, then `completed`;
//! - the window `W` (`--batch-window-secs`): a batch not completed by `c + W` (because
//!   `10 step > W`, or `--batch-expire` caps the items that ever finish) is `expired` at
//!   `c + W` with the items done by then;
//! - a cancel at `t` makes it `cancelling` over `[t, t + step)`, then `cancelled`, with the items
//!   done by `t`.

use std::error::Error;
use std::time::Duration;

/// The `--batch-*` flags.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchOptions {
    /// What the providers' "24h" completion window means here.
    pub window: Duration,
    /// How long a batch takes when nothing goes wrong.
    pub turnaround: Duration,
    /// The fraction of items that error (by a hash of the custom_id, so runs repeat).
    pub item_fail_rate: f64,
    /// `--batch-expire [F]`: batches never complete; only the first `F` of their items
    /// (in input order) are done when they expire at the window.
    pub expire_done: Option<f64>,
    /// OpenAI's per-model enqueued-token quota (Anthropic: the create is refused with 429).
    pub enqueued_token_limit: Option<u64>,
    /// The most bytes the batch store holds: inputs, answers and result files.
    pub max_bytes: u64,
    /// Bedrock's batch jobs: the S3 server they read and write.
    pub bedrock: super::bedrock::S3Options,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(24 * 3600),
            turnaround: Duration::from_secs(2),
            item_fail_rate: 0.0,
            expire_done: None,
            enqueued_token_limit: None,
            max_bytes: 512 * 1024 * 1024,
            bedrock: super::bedrock::S3Options::default(),
        }
    }
}

pub const USAGE: &str =
    "  batch APIs (OpenAI /v1/files + /v1/batches, Anthropic /v1/messages/batches):
            [--batch-window-secs F]  what the \"24h\" completion window means here (86400)
            [--batch-turnaround-ms N]  how long a batch takes when nothing goes wrong (2000)
            [--batch-item-fail-rate F]  this fraction of items errors, chosen by custom_id (0)
            [--batch-expire[=F]]  batches never complete: they expire at the window with the
                                  first F of their lines done (0.5)
            [--batch-enqueued-token-limit N]  per model, over batches not yet ended: OpenAI
                                  fails the batch (token_limit_exceeded), Anthropic answers 429
            [--batch-max-bytes N]  what the batch store holds at most (536870912); past it,
                                  uploads and creates get 413
            [--bedrock-batch-s3-endpoint URL --bedrock-batch-s3-key-id ID
             --bedrock-batch-s3-secret S]  the S3 server Bedrock batch jobs read and write
            [--bedrock-batch-min-records N]  a smaller Bedrock job fails validation (1)";

impl BatchOptions {
    /// Takes a `--batch-*` flag with its value; `None` for a flag that is not one of them.
    pub fn take(&mut self, name: &str, value: &str) -> Option<Result<(), Box<dyn Error>>> {
        let result = match name {
            "--batch-window-secs" => {
                secs(name, value).map(|d| self.window = d.max(Duration::from_millis(1)))
            }
            "--batch-turnaround-ms" => value
                .parse::<u64>()
                .map(|ms| self.turnaround = Duration::from_millis(ms))
                .map_err(|_| format!("{name} takes whole milliseconds, not {value:?}").into()),
            "--batch-item-fail-rate" => fraction(name, value).map(|f| self.item_fail_rate = f),
            "--batch-expire" => fraction(name, value).map(|f| self.expire_done = Some(f)),
            "--batch-enqueued-token-limit" => value
                .parse::<u64>()
                .map(|n| self.enqueued_token_limit = Some(n))
                .map_err(|_| format!("{name} takes a number of tokens, not {value:?}").into()),
            "--batch-max-bytes" => value
                .parse::<u64>()
                .map(|n| self.max_bytes = n)
                .map_err(|_| format!("{name} takes a number of bytes, not {value:?}").into()),
            _ => return self.bedrock.take(name, value),
        };
        Some(result)
    }

    fn step_ms(&self) -> u64 {
        (u64::try_from(self.turnaround.as_millis()).unwrap_or(u64::MAX) / 10).max(1)
    }

    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the item with this custom_id errors (`--batch-item-fail-rate`).
    pub fn item_fails(&self, custom_id: &str) -> bool {
        self.item_fail_rate > 0.0
            && crate::skill::hash01("batch-item-fail", custom_id) < self.item_fail_rate
    }
}

fn secs(name: &str, value: &str) -> Result<Duration, Box<dyn Error>> {
    match value.parse::<f64>().ok().map(Duration::try_from_secs_f64) {
        Some(Ok(d)) if !d.is_zero() => Ok(d),
        _ => Err(format!("{name} takes a positive number of seconds, not {value:?}").into()),
    }
}

fn fraction(name: &str, value: &str) -> Result<f64, Box<dyn Error>> {
    match value.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{name} takes a fraction between 0 and 1, not {value:?}").into()),
    }
}

/// Where a batch stands; each terminal phase carries its time (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Validating,
    Failed(u64),
    InProgress,
    Finalizing,
    Completed(u64),
    Expired(u64),
    Cancelling,
    Cancelled(u64),
}

impl Phase {
    /// OpenAI's status name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Failed(_) => "failed",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed(_) => "completed",
            Self::Expired(_) => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled(_) => "cancelled",
        }
    }

    /// The time it ended, if it has.
    pub fn ended_at(self) -> Option<u64> {
        match self {
            Self::Failed(t) | Self::Completed(t) | Self::Expired(t) | Self::Cancelled(t) => Some(t),
            _ => None,
        }
    }
}

/// One batch's schedule, fixed at creation (and at cancel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub created_ms: u64,
    pub items: usize,
    step_ms: u64,
    window_ms: u64,
    /// How many items (the first ones, in input order) ever finish.
    finishing: usize,
    /// Failed validation (or its quota): `failed` once validating ends.
    pub failed: bool,
    pub cancel_at: Option<u64>,
}

impl Timeline {
    pub fn new(options: &BatchOptions, created_ms: u64, items: usize, failed: bool) -> Self {
        let finishing = match options.expire_done {
            // Truncation is the point: "the first half" of 5 lines is 2.
            Some(f) => ((items as f64) * f).floor() as usize,
            None => items,
        };
        Self {
            created_ms,
            items,
            step_ms: options.step_ms(),
            window_ms: options.window_ms(),
            finishing: finishing.min(items),
            failed,
            cancel_at: None,
        }
    }

    pub fn validated_at(&self) -> u64 {
        self.created_ms + self.step_ms
    }

    pub fn processed_at(&self) -> u64 {
        self.created_ms + 9 * self.step_ms
    }

    fn completes_at(&self) -> u64 {
        self.created_ms + 10 * self.step_ms
    }

    pub fn expires_at(&self) -> u64 {
        self.created_ms.saturating_add(self.window_ms)
    }

    /// Never completes: it stays in progress until it expires at the window.
    pub fn expires(&self) -> bool {
        self.finishing < self.items || self.completes_at() > self.expires_at()
    }

    /// How many items (the first ones, in input order) are done at `t`.
    pub fn done_by(&self, t: u64) -> usize {
        if self.failed || t < self.validated_at() || self.items == 0 {
            return 0;
        }
        let elapsed = u128::from(t - self.validated_at());
        let span = u128::from(8 * self.step_ms);
        let done = usize::try_from(elapsed * self.items as u128 / span).unwrap_or(usize::MAX);
        done.min(self.finishing)
    }

    /// The phase at `now`, and how many items are done.
    pub fn at(&self, now: u64) -> (Phase, usize) {
        if self.failed {
            let phase = if now < self.validated_at() {
                Phase::Validating
            } else {
                Phase::Failed(self.validated_at())
            };
            return (phase, 0);
        }
        if let Some(cancel) = self.cancel_at.filter(|t| now >= *t) {
            let done = self.done_by(cancel);
            let ends = cancel + self.step_ms;
            return if now < ends {
                (Phase::Cancelling, done)
            } else {
                (Phase::Cancelled(ends), done)
            };
        }
        if self.expires() && now >= self.expires_at() {
            return (
                Phase::Expired(self.expires_at()),
                self.done_by(self.expires_at()),
            );
        }
        let phase = if now < self.validated_at() {
            Phase::Validating
        } else if now < self.processed_at() || self.expires() {
            Phase::InProgress
        } else if now < self.completes_at() {
            Phase::Finalizing
        } else {
            Phase::Completed(self.completes_at())
        };
        (phase, self.done_by(now))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn options(turnaround_ms: u64, window_ms: u64) -> BatchOptions {
        BatchOptions {
            turnaround: Duration::from_millis(turnaround_ms),
            window: Duration::from_millis(window_ms),
            ..BatchOptions::default()
        }
    }

    #[test]
    fn a_batch_moves_through_every_phase_and_finishes_its_items_in_order() {
        // step = 100 ms; 8 items over [100, 900).
        let t = Timeline::new(&options(1000, 60_000), 0, 8, false);
        assert_eq!(t.at(0), (Phase::Validating, 0));
        assert_eq!(t.at(100), (Phase::InProgress, 0));
        assert_eq!(t.at(199), (Phase::InProgress, 0));
        assert_eq!(t.at(200), (Phase::InProgress, 1));
        assert_eq!(t.at(500), (Phase::InProgress, 4));
        assert_eq!(t.at(900), (Phase::Finalizing, 8));
        assert_eq!(t.at(1000), (Phase::Completed(1000), 8));
        assert_eq!(t.at(10_000_000), (Phase::Completed(1000), 8));
    }

    #[test]
    fn a_batch_slower_than_its_window_expires_with_what_is_done() {
        // step = 1000 ms: items over [1000, 9000), window 5000 ms: half done.
        let t = Timeline::new(&options(10_000, 5_000), 0, 10, false);
        assert_eq!(t.at(4_999).0, Phase::InProgress);
        assert_eq!(t.at(5_000), (Phase::Expired(5_000), 5));
        assert_eq!(t.at(50_000), (Phase::Expired(5_000), 5));
    }

    #[test]
    fn batch_expire_caps_the_items_that_finish() {
        let mut o = options(1000, 3_000);
        o.expire_done = Some(0.5);
        let t = Timeline::new(&o, 0, 5, false);
        // All it will ever do is done long before the window, yet it never completes.
        assert_eq!(t.at(2_000), (Phase::InProgress, 2));
        assert_eq!(t.at(3_000), (Phase::Expired(3_000), 2));
    }

    #[test]
    fn a_cancel_keeps_what_was_done_when_it_was_asked() {
        let mut t = Timeline::new(&options(1000, 60_000), 0, 8, false);
        t.cancel_at = Some(500);
        assert_eq!(t.at(499), (Phase::InProgress, 3));
        assert_eq!(t.at(500), (Phase::Cancelling, 4));
        assert_eq!(t.at(600), (Phase::Cancelled(600), 4));
    }

    #[test]
    fn a_failed_batch_fails_when_validation_ends() {
        let t = Timeline::new(&options(1000, 60_000), 0, 8, true);
        assert_eq!(t.at(50), (Phase::Validating, 0));
        assert_eq!(t.at(100), (Phase::Failed(100), 0));
    }

    #[test]
    fn flags_parse_and_refuse_nonsense() {
        let mut o = BatchOptions::default();
        assert!(o.take("--batch-window-secs", "0.5").unwrap().is_ok());
        assert_eq!(o.window, Duration::from_millis(500));
        assert!(o.take("--batch-window-secs", "0").unwrap().is_err());
        assert!(o.take("--batch-item-fail-rate", "1.5").unwrap().is_err());
        assert!(o.take("--batch-expire", "0.25").unwrap().is_ok());
        assert_eq!(o.expire_done, Some(0.25));
        assert!(o.take("--rpm", "5").is_none());
    }

    #[test]
    fn the_failing_items_are_a_stable_fraction() {
        let o = BatchOptions {
            item_fail_rate: 0.2,
            ..BatchOptions::default()
        };
        let failing = (0..2000)
            .filter(|i| o.item_fails(&format!("item-{i}")))
            .count();
        assert!((300..500).contains(&failing), "{failing} of 2000 at 0.2");
        assert_eq!(o.item_fails("item-7"), o.clone().item_fails("item-7"));
    }
}
