//! `batchyard status [BATCH_ID]`: queue depth, or one batch.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::app::App;
use crate::batch_view::batch_json;
use crate::cli::StatusArgs;
use crate::exit::UsageError;

pub async fn status(
    config: Option<&Path>,
    args: &StatusArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "status").await?;
    match &args.batch_id {
        Some(id) => {
            let Some(record) = app.ledger.get(id).await? else {
                return Err(UsageError(format!(
                    "batch {id} was not found; `batchyard status` lists recent batches"
                ))
                .into());
            };
            let view = batch_json(&record, &app.store);
            if args.json {
                println!("{view}");
            } else {
                let c = record.counts;
                println!("batch      {}", record.id);
                println!("status     {}", record.state.as_str());
                println!(
                    "items      {} total, {} completed, {} failed",
                    c.total, c.completed, c.failed
                );
                println!("cost       ${:.6}", record.cost_usd());
                if let Some(b) = record.budget_usd {
                    println!("budget     ${b:.4}");
                }
                if let Some(out) = view.get("output_file").and_then(|v| v.as_str()) {
                    println!("output     {out}");
                }
            }
        }
        None => {
            let depth = app.queue.depth().await?;
            let name = app.queue.name().to_string();
            if args.json {
                let batches = app.ledger.list(20).await?;
                let batches: Vec<_> = batches.iter().map(|r| batch_json(r, &app.store)).collect();
                println!(
                    "{}",
                    json!({"queues": [{
                        "name": name,
                        "pending": depth.pending,
                        "in_flight": depth.in_flight,
                        "delayed": depth.delayed,
                        "dead": depth.dead,
                    }], "batches": batches})
                );
            } else {
                println!(
                    "{:<16} {:>10} {:>10} {:>10} {:>10}",
                    "QUEUE", "PENDING", "IN_FLIGHT", "DELAYED", "DEAD"
                );
                println!(
                    "{:<16} {:>10} {:>10} {:>10} {:>10}",
                    name, depth.pending, depth.in_flight, depth.delayed, depth.dead
                );
                let batches = app.ledger.list(10).await?;
                if !batches.is_empty() {
                    println!();
                    println!(
                        "{:<34} {:<12} {:>9} {:>9} {:>9} {:>12}",
                        "BATCH", "STATUS", "TOTAL", "DONE", "FAILED", "COST_USD"
                    );
                    for r in batches {
                        println!(
                            "{:<34} {:<12} {:>9} {:>9} {:>9} {:>12.6}",
                            r.id,
                            r.state.as_str(),
                            r.counts.total,
                            r.counts.completed,
                            r.counts.failed,
                            r.cost_usd()
                        );
                    }
                }
            }
        }
    }
    Ok(())
}
