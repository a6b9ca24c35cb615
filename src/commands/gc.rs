//! `batchyard gc`: retention's passes, run now until nothing old enough is left (or only
//! reported, `--dry-run`). Exit 0 when everything due was removed, 1 when something failed
//! or another process holds the collector's lease, 2 for bad usage.

use std::collections::BTreeMap;
use std::path::Path;

use crate::app::App;
use crate::cli::GcArgs;
use crate::gc::{Collector, Report};

/// A full collection stops after this many passes even if more keeps coming.
const MAX_PASSES: usize = 10_000;

pub async fn gc(
    config: Option<&Path>,
    args: &GcArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "gc").await?;
    let collector = Collector::new(&app);
    if !args.dry_run && !collector.lease().await? {
        anyhow::bail!(
            "a worker is collecting right now (it holds the retention lease); try again in a few minutes, or use --dry-run"
        );
    }
    let now = batchyard_jobs::batch::now_secs();
    let mut total = Report {
        dry_run: args.dry_run,
        ..Report::default()
    };
    for _ in 0..MAX_PASSES {
        let pass = collector.pass(now, args.dry_run).await;
        let settled = pass.settled() || args.dry_run && pass.complete;
        total.merge(pass);
        if settled {
            break;
        }
        if !args.dry_run && !collector.lease().await? {
            total
                .errors
                .push("another process took the retention lease; stopped early".into());
            break;
        }
    }
    if !args.dry_run {
        collector.release().await;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&total)?);
    } else {
        print_report(&total, &app);
    }
    if !total.errors.is_empty() {
        anyhow::bail!(
            "{} thing(s) could not be removed; run gc again, or see the messages above",
            total.errors.len()
        );
    }
    Ok(())
}

fn print_report(r: &Report, app: &App) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    let ret = &app.settings.retention;
    let keep = |d: Option<std::time::Duration>| {
        d.map_or("never".to_string(), |d| format!("{} h", d.as_secs() / 3600))
    };
    println!(
        "retention: batches {}, files {}, cache {} h, dead letters {} h",
        keep(ret.batches),
        keep(ret.files),
        ret.cache.as_secs() / 3600,
        ret.dead_letters.as_secs() / 3600
    );
    println!(
        "{verb} {} ended batch(es): {} object(s), {}",
        r.batches.removed,
        r.objects.removed,
        bytes(r.objects.bytes)
    );
    println!(
        "{verb} {} uploaded file(s), {}{}",
        r.files.removed,
        bytes(r.files.bytes),
        if r.files.kept > 0 {
            format!("; kept {} read by a batch not yet ended", r.files.kept)
        } else {
            String::new()
        }
    );
    println!(
        "{verb} {} cache entr(ies), {}",
        r.cache_entries.removed,
        bytes(r.cache_entries.bytes)
    );
    if r.pipelines_compacted > 0 {
        println!(
            "compacted {} pipeline origin record set(s) into their snapshots",
            r.pipelines_compacted
        );
    }
    for e in r.errors.iter().take(20) {
        eprintln!("gc: {e}");
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / f64::from(1u32 << 30)),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1u32 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}
