//! `batchyard watch BATCH_ID`: follow one batch until it ends.
//!
//! Polls the ledger every `--interval-ms` (each read bounded by [`POLL_TIMEOUT`]) and draws a
//! progress bar on stderr: done/total, the rate measured over the last [`RATE_WINDOW`] of
//! polls, the ETA that rate gives, and the spend (of the budget, when the batch has one).
//! When stderr is not a terminal it prints one plain progress line every [`PLAIN_EVERY`] (and
//! whenever the state changes) instead. A batch with a deadline also shows its offload lane
//! (items real-time, offloaded, waiting for the next wave; the time left), read every
//! [`LANE_EVERY`]: on the bar, or as a second plain line `batch ID deadline …`.
//!
//! Exit codes: 0 when the batch completed; 1 when it failed, expired or was cancelled (the
//! reason goes to stderr), or when the ledger could not be read for [`GIVE_UP_AFTER`]; 2 for
//! an unknown batch or a bad flag; 130 on Ctrl-C (or SIGTERM), which stops watching and
//! leaves the batch running. `--json` prints the batch object as last seen as the last
//! stdout line, whatever the outcome.

use std::collections::{BTreeMap, VecDeque};
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_jobs::batch::{BatchRecord, BatchState};
use indicatif::{ProgressBar, ProgressStyle};

use crate::app::App;
use crate::batch_view::batch_json;
use crate::cli::WatchArgs;
use crate::error::UsageError;

/// How often `watch` looks at what queued items may be waiting for.
const WAITS_EVERY: Duration = Duration::from_secs(10);
/// How often `watch` reads the offload lane of a batch with a deadline.
const LANE_EVERY: Duration = Duration::from_secs(2);
/// One ledger read may take this long before it counts as failed.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// Without one successful read for this long, watching gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(60);
/// The rate (and so the ETA) is measured over the polls of this last stretch of time.
const RATE_WINDOW: Duration = Duration::from_secs(30);
/// Without a terminal, one plain progress line this often.
const PLAIN_EVERY: Duration = Duration::from_secs(5);
/// The exit code of a watch stopped by Ctrl-C (128 + SIGINT), as shells report it.
const INTERRUPTED: i32 = 130;

pub async fn watch(
    config: Option<&Path>,
    args: &WatchArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if args.interval_ms == 0 {
        return Err(UsageError("--interval-ms must be at least 1".into()).into());
    }
    let interval = Duration::from_millis(args.interval_ms);
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "watch").await?;
    let id = args.batch_id.as_str();
    let Some(mut record) = read(&app, id).await? else {
        return Err(UsageError(format!(
            "batch {id} was not found; `batchyard status` lists recent batches"
        ))
        .into());
    };

    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut display = Display::new(&record);
    let mut rate = Rate::default();
    let mut last_ok = Instant::now();
    let mut interrupted = false;
    let mut waits: Vec<String> = Vec::new();
    let mut waits_read: Option<Instant> = None;
    let mut lane_read: Option<Instant> = None;
    while !record.state.is_terminal() {
        rate.sample(record.settled());
        if record.deadline_at.is_some() && lane_read.is_none_or(|t| t.elapsed() >= LANE_EVERY) {
            lane_read = Some(Instant::now());
            display.lane = crate::batch_view::lane(&app, &record)
                .await
                .map(|l| format!("deadline {}: {}", l.left_text(), l.lanes_text()));
        }
        display.show(&record, &rate);
        // Say what queued items wait for (a paused or cooling model) when it changes.
        if waits_read.is_none_or(|t| t.elapsed() >= WAITS_EVERY) {
            waits_read = Some(Instant::now());
            let now = crate::batch_view::waiting_for(&app).await;
            if now != waits {
                for w in &now {
                    display.note(&format!("waiting: {w}"));
                }
                waits = now;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = &mut shutdown => { interrupted = true; break; }
        }
        let polled = tokio::select! {
            polled = read(&app, id) => polled,
            () = &mut shutdown => { interrupted = true; break; }
        };
        match polled {
            Ok(Some(r)) => {
                record = r;
                last_ok = Instant::now();
            }
            Ok(None) => {
                display.clear();
                anyhow::bail!(
                    "batch {id} disappeared from the ledger while being watched; check `batchyard status`"
                );
            }
            Err(e) if last_ok.elapsed() >= GIVE_UP_AFTER => {
                display.clear();
                return Err(e.context(format!(
                    "gave up after {}s without reading batch {id}; check redis, then run `batchyard watch {id}` again",
                    GIVE_UP_AFTER.as_secs()
                )));
            }
            Err(e) => display.note(&format!("{e:#}; retrying")),
        }
    }
    display.clear();

    if interrupted {
        eprintln!(
            "stopped watching batch {id} at {}/{} items ({}); it keeps running: `batchyard watch {id}` follows it again",
            record.settled(),
            record.counts.total,
            record.state.as_str()
        );
        if args.json {
            println!(
                "{}",
                crate::batch_view::json_line(&batch_json(&record, &app.store))
            );
        }
        std::process::exit(INTERRUPTED);
    }

    eprintln!("{}", summary(&record));
    let reason = failure_reason(&app, &record).await;
    if args.json {
        println!(
            "{}",
            crate::batch_view::json_line(&batch_json(&record, &app.store))
        );
    }
    match reason {
        None => Ok(()),
        Some(reason) => Err(anyhow::anyhow!("{reason}")),
    }
}

/// One ledger read, bounded by [`POLL_TIMEOUT`].
async fn read(app: &App, id: &str) -> anyhow::Result<Option<BatchRecord>> {
    match tokio::time::timeout(POLL_TIMEOUT, app.ledger.get(id)).await {
        Ok(Ok(record)) => Ok(record),
        Ok(Err(e)) => Err(anyhow::Error::new(e).context(format!("cannot read batch {id}"))),
        Err(_) => Err(anyhow::anyhow!(
            "reading batch {id} took longer than {}s",
            POLL_TIMEOUT.as_secs()
        )),
    }
}

/// Items settled per second over the last [`RATE_WINDOW`] of polls.
#[derive(Default)]
struct Rate {
    samples: VecDeque<(Instant, u64)>,
}

impl Rate {
    fn sample(&mut self, settled: u64) {
        let now = Instant::now();
        self.samples.push_back((now, settled));
        // Keep one sample older than the window, so the window is always covered.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= RATE_WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// `None` until two polls at least a quarter second apart.
    fn per_sec(&self) -> Option<f64> {
        let (t0, n0) = self.samples.front()?;
        let (t1, n1) = self.samples.back()?;
        let secs = t1.duration_since(*t0).as_secs_f64();
        (secs >= 0.25).then(|| n1.saturating_sub(*n0) as f64 / secs)
    }

    fn eta(&self, remaining: u64) -> Option<Duration> {
        if remaining == 0 {
            return Some(Duration::ZERO);
        }
        let rate = self.per_sec()?;
        (rate > 0.0).then(|| Duration::from_secs_f64(remaining as f64 / rate))
    }
}

/// A bar on a terminal; otherwise a plain line now and then.
struct Display {
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    last_state: Option<BatchState>,
    /// The offload lane of a batch with a deadline: its counts and the time left.
    lane: Option<String>,
}

impl Display {
    fn new(record: &BatchRecord) -> Self {
        let bar = (std::io::stderr().is_terminal() && !record.state.is_terminal()).then(|| {
            let bar = ProgressBar::new(record.counts.total);
            if let Ok(style) = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(100));
            bar
        });
        Self {
            bar,
            last_line: None,
            last_state: None,
            lane: None,
        }
    }

    fn show(&mut self, record: &BatchRecord, rate: &Rate) {
        let remaining = record.counts.total.saturating_sub(record.settled());
        let speed = rate
            .per_sec()
            .map_or_else(|| "- items/s".to_string(), |r| format!("{r:.1} items/s"));
        let eta = rate.eta(remaining).map_or_else(|| "-".to_string(), clock);
        let mut spend = format!("${:.4}", record.cost_usd());
        if let Some(budget) = record.budget_usd {
            spend.push_str(&format!(" of ${budget:.4}"));
        }
        if record.budget_exhausted_at.is_some() {
            spend.push_str(" (budget exhausted)");
        }
        if let Some(bar) = &self.bar {
            bar.set_length(record.counts.total);
            bar.set_position(record.settled());
            let state = match record.state {
                BatchState::InProgress => String::new(),
                other => format!(" [{}]", other.as_str()),
            };
            let failed = match record.counts.failed {
                0 => String::new(),
                n => format!("{n} failed, "),
            };
            let lane = self
                .lane
                .as_ref()
                .map(|l| format!(" | {l}"))
                .unwrap_or_default();
            bar.set_message(format!("{failed}{speed}, eta {eta}, {spend}{state}{lane}"));
            return;
        }
        let due = self
            .last_line
            .is_none_or(|at| at.elapsed() >= PLAIN_EVERY - Duration::from_millis(50));
        if due || self.last_state != Some(record.state) {
            eprintln!(
                "batch {} {}: {}/{} items ({} failed), {speed}, eta {eta}, spent {spend}",
                record.id,
                record.state.as_str(),
                record.settled(),
                record.counts.total,
                record.counts.failed
            );
            if let Some(lane) = &self.lane {
                eprintln!("batch {} {lane}", record.id);
            }
            self.last_line = Some(Instant::now());
            self.last_state = Some(record.state);
        }
    }

    /// A passing problem (a slow or failed read): above the bar, or as a line.
    fn note(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("warning: {message}")),
            None => eprintln!("warning: {message}"),
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn summary(record: &BatchRecord) -> String {
    let c = record.counts;
    format!(
        "batch {} {}: {} item(s), {} succeeded, {} failed, cost ${:.6}",
        record.id,
        record.state.as_str(),
        c.total,
        c.completed,
        c.failed,
        record.cost_usd()
    )
}

/// Why a finished batch did not complete, or `None` when it did.
async fn failure_reason(app: &App, record: &BatchRecord) -> Option<String> {
    let id = &record.id;
    let c = record.counts;
    let mut reason = match record.state {
        BatchState::Completed => return None,
        // A whole-batch failure (a submit cut off, results lost) says why itself.
        BatchState::Failed if record.failure.is_some() => {
            let f = record
                .failure
                .as_ref()
                .map(|f| (f.code.as_str(), f.message.as_str()));
            let (code, message) = f.unwrap_or_default();
            format!("batch {id} failed ({code}): {message}")
        }
        BatchState::Failed => format!(
            "batch {id} failed: none of its {} item(s) succeeded{}",
            c.total,
            error_codes(app, id).await
        ),
        BatchState::Expired => format!(
            "batch {id} expired before all its items ran ({}/{} settled)",
            record.settled(),
            c.total
        ),
        BatchState::Cancelled => format!(
            "batch {id} was cancelled: {} item(s) succeeded, {} failed or were cancelled",
            c.completed, c.failed
        ),
        other => format!("batch {id} ended as {}", other.as_str()),
    };
    if record.budget_exhausted_at.is_some() {
        reason.push_str("; its budget ran out (`batchyard retry --budget-usd` can go on)");
    }
    reason.push_str(&format!(
        "; see {}",
        app.store.display_location(&app.store.errors_path(id))
    ));
    Some(reason)
}

/// ` (transient: 3, rate_limited: 1)` from the manifest, or nothing when it can't be read.
async fn error_codes(app: &App, id: &str) -> String {
    let Ok(bytes) = app.store.get(&app.store.manifest_path(id)).await else {
        return String::new();
    };
    let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return String::new();
    };
    let Some(codes) = manifest.get("errors_by_code").and_then(|v| v.as_object()) else {
        return String::new();
    };
    let parts: Vec<String> = codes
        .iter()
        .map(|(code, n)| format!("{code}: {n}"))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_formats_short_and_long_durations() {
        assert_eq!(clock(Duration::from_secs(42)), "42s");
        assert_eq!(clock(Duration::from_secs(185)), "3m05s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn rate_needs_two_samples_and_gives_an_eta() {
        let mut rate = Rate::default();
        assert!(rate.per_sec().is_none());
        let t0 = Instant::now();
        rate.samples.push_back((t0, 0));
        rate.samples.push_back((t0 + Duration::from_secs(2), 10));
        let r = rate.per_sec().unwrap_or_default();
        assert!((r - 5.0).abs() < 1e-9, "{r}");
        assert_eq!(rate.eta(20), Some(Duration::from_secs(4)));
        assert_eq!(rate.eta(0), Some(Duration::ZERO));
    }
}
