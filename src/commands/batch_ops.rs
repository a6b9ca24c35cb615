//! `batchyard cancel` and `batchyard retry`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::app::App;
use crate::batch_view::batch_json;
use crate::cli::{CancelArgs, RetryArgs};
use crate::retry_cancel::{self, RetryFilter};

pub async fn cancel(
    config: Option<&Path>,
    args: &CancelArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "cancel").await?;
    let record = retry_cancel::cancel(&app, &args.batch_id).await?;
    if args.json {
        println!(
            "{}",
            crate::batch_view::json_line(&batch_json(&record, &app.store))
        );
    } else {
        if record.state == batchyard_jobs::batch::BatchState::Cancelled {
            println!(
                "batch {} is cancelled: nothing was in flight, so its unrun items ended at once (errors.jsonl, code cancelled)",
                record.id
            );
        } else {
            println!(
                "batch {} is {}: queued items will end as cancelled; in-flight items finish",
                record.id,
                record.state.as_str()
            );
        }
    }
    Ok(())
}

pub async fn retry(
    config: Option<&Path>,
    args: &RetryArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "retry").await?;
    let filter = RetryFilter {
        code: args.code.clone(),
        model: args.model.clone(),
        budget_usd: args.budget_usd,
    };
    let replayed = retry_cancel::retry(&app, &args.batch_id, &filter).await?;
    if replayed.not_replayable > 0 {
        eprintln!(
            "{} invalid_input item(s) can't be replayed: fix those lines and submit them again",
            replayed.not_replayable
        );
    }
    if args.json {
        let mut view = batch_json(&replayed.record, &app.store);
        view["retried"] = replayed.retried.into();
        view["replay_id"] = replayed.replay_id.clone().into();
        println!("{}", crate::batch_view::json_line(&view));
    } else if replayed.retried == 0 {
        println!(
            "batch {}: no failed items match; nothing to retry",
            replayed.record.id
        );
    } else {
        println!(
            "batch {}: {} item(s) re-enqueued by {}; workers will rewrite its files when they finish",
            replayed.record.id,
            replayed.retried,
            replayed.replay_id.as_deref().unwrap_or("this replay")
        );
    }
    Ok(())
}
