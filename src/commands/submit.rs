//! `batchyard submit`: validate and enqueue to Redis, then return.

use std::collections::BTreeMap;
use std::path::Path;

use crate::app::App;
use crate::batch_view::batch_json;
use crate::cli::SubmitArgs;

pub async fn submit(
    config: Option<&Path>,
    args: &SubmitArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if args.dry_run {
        return super::estimate_route::estimate(config, &args.input, env).await;
    }
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "submit").await?;
    let mut req = super::submit_request(&args.input);
    let submitted = match &args.resume {
        Some(batch_id) => {
            crate::submission::check_batch_id(batch_id)?;
            req.resume = Some(batch_id.clone());
            crate::submission::submit_with_id(&app, &req, batch_id.clone()).await?
        }
        None => crate::submission::submit(&app, &req).await?,
    };
    if let Some(note) = &submitted.capped {
        eprintln!("{note}");
    }
    let record = &submitted.record;
    if args.input.json {
        println!(
            "{}",
            crate::batch_view::json_line(&batch_json(record, &app.store))
        );
    } else {
        println!(
            "submitted {} with {} item(s){}; watch it with `batchyard status {}`",
            record.id,
            record.counts.total,
            if submitted.invalid > 0 {
                format!(" ({} invalid, recorded in errors.jsonl)", submitted.invalid)
            } else {
                String::new()
            },
            record.id
        );
    }
    Ok(())
}
