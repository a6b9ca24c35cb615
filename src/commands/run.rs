//! `batchyard run`: submit and process one batch in this process.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::batch::BatchRecord;
use batchyard_workers::job::pool::{PoolOptions, run_pool};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::batch_view::batch_json;
use crate::cli::RunArgs;
use crate::error::UsageError;

pub async fn run(
    config: Option<&Path>,
    args: &RunArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let mut settings = super::load_settings(config, env)?;
    if let Some(c) = args.concurrency {
        if c == 0 {
            return Err(UsageError("--concurrency must be at least 1".into()).into());
        }
        settings.concurrency = c;
    }
    // An empty BATCHYARD_STORAGE_URL means unset, as in the config loader.
    let storage = args.storage.as_deref().filter(|s| !s.is_empty());
    let app = App::connect(settings, storage, true, "run").await?;
    let submitted = crate::submission::submit(&app, &super::submit_request(&args.input)).await?;
    let batch_id = submitted.record.id.clone();
    if let Some(note) = &submitted.capped {
        eprintln!("{note}");
    }
    if submitted.invalid > 0 {
        eprintln!(
            "{} invalid item(s) recorded in errors.jsonl",
            submitted.invalid
        );
    }

    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let options = PoolOptions {
        concurrency: app.settings.concurrency,
        exit_when_idle: None,
        drain_timeout: app.settings.drain_timeout,
        consumer: app.consumer.clone(),
        claim_block: Duration::from_millis(100),
        heartbeat: Some(app.settings.queue.visibility_timeout / 3),
    };
    let pool = tracker.spawn(run_pool(
        Arc::clone(&app.queue),
        Arc::new(app.runner()),
        options,
        cancel.clone(),
    ));
    let coordinator = app.coordinator();
    let stop_lane = cancel.clone();
    tracker.spawn(async move { coordinator.run(stop_lane).await });
    tracker.close();

    let bar = progress_bar(submitted.record.counts.total, args.input.json);
    let mut interrupted = false;
    let record = loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
            () = super::shutdown_signal() => { interrupted = true; }
        }
        let record = app.ledger.get(&batch_id).await?;
        if let (Some(bar), Some(r)) = (&bar, &record) {
            bar.set_position(r.settled());
            bar.set_message(format!("${:.6}", r.cost_usd()));
        }
        match record {
            Some(r) if r.state.is_terminal() || interrupted => break r,
            Some(_) if pool.is_finished() => {
                anyhow::bail!("the worker pool stopped before batch {batch_id} finished")
            }
            _ => {}
        }
    };
    cancel.cancel();
    tracker.wait().await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if interrupted && !record.state.is_terminal() {
        anyhow::bail!(
            "interrupted: batch {batch_id} stopped at {}/{} items",
            record.settled(),
            record.counts.total
        );
    }
    print_summary(&app, &record).await;
    // This process ends with the batch: its webhook gets a few quick tries, not a day's.
    if !app.notifier().flush(&record, 3).await {
        eprintln!(
            "warning: the batch's webhook could not be delivered (3 tries); `batchyard submit` with workers retries for a day"
        );
    }
    if args.input.json {
        println!(
            "{}",
            crate::batch_view::json_line(&batch_json(&record, &app.store))
        );
    }
    Ok(())
}

fn progress_bar(total: u64, json: bool) -> Option<ProgressBar> {
    if json || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} items, {rate}, eta {eta} {msg}",
    ) {
        // indicatif's {per_sec} prints four decimals ("12.3457/s"); a rate needs no more than one.
        bar.set_style(style.with_key(
            "rate",
            |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}", format_rate(state.per_sec()));
            },
        ));
    }
    Some(bar)
}

async fn print_summary(app: &App, record: &BatchRecord) {
    let c = record.counts;
    eprintln!(
        "batch {} {}: {} item(s), {} succeeded, {} failed, cost ${:.6}",
        record.id,
        record.state.as_str(),
        c.total,
        c.completed,
        c.failed,
        record.cost_usd()
    );
    if let Ok(bytes) = app.store.get(&app.store.manifest_path(&record.id)).await
        && let Ok(manifest) = serde_json::from_slice::<serde_json::Value>(&bytes)
    {
        if let Some(models) = manifest.get("spend_by_model").and_then(|m| m.as_object()) {
            for (model, spend) in models {
                eprintln!(
                    "  {model:<12} {:>8} request(s)  ${:.6}",
                    spend.get("requests").and_then(|v| v.as_u64()).unwrap_or(0),
                    spend
                        .get("cost_usd")
                        .and_then(|v| v.as_f64())
                        .unwrap_or(0.0)
                );
            }
        }
        if manifest.get("simulated").and_then(|v| v.as_bool()) == Some(true) {
            eprintln!("  (outputs come from the built-in simulated provider, not a real model)");
        }
    }
    eprintln!(
        "output: {}",
        location(app, &app.store.output_path(&record.id))
    );
    if c.failed > 0 {
        eprintln!(
            "errors: {}",
            location(app, &app.store.errors_path(&record.id))
        );
    }
}

/// A path to open for a `file://` store, else the object's URL.
fn location(app: &App, path: &object_store::path::Path) -> String {
    app.store.local_path(path).map_or_else(
        || app.store.display_location(path),
        |p| p.display().to_string(),
    )
}

/// Items per second, rounded to what a person reads: `1234/s`, `12.3/s`, `0.25/s`.
pub fn format_rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0/s".into()
    } else if per_sec >= 100.0 {
        format!("{per_sec:.0}/s")
    } else if per_sec >= 1.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{per_sec:.2}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::format_rate;

    #[test]
    fn rates_are_rounded() {
        assert_eq!(format_rate(1234.5678), "1235/s");
        assert_eq!(format_rate(12.345678), "12.3/s");
        assert_eq!(format_rate(0.254), "0.25/s");
        assert_eq!(format_rate(f64::NAN), "0/s");
    }
}
