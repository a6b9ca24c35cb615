//! `batchyard pipelines list|run|history`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};

use crate::app::App;
use crate::cli::{PipelinesAction, PipelinesArgs};
use crate::config::pipeline_spec::Pipeline;
use crate::error::UsageError;
use crate::scheduler::connect_state;
use crate::scheduler::state::PipelineState;
use crate::scheduler::view::{history_rows, pipeline_rows, run_row, trigger_now};

pub async fn pipelines(
    config: Option<&Path>,
    args: &PipelinesArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "pipelines").await?;
    let state = connect_state(&app).await?;
    match &args.action {
        PipelinesAction::List { json } => list(&app, &state, *json).await,
        PipelinesAction::Run { name, json } => {
            let pipeline = find(&app, name)?.clone();
            trigger(&app, &state, &pipeline, *json).await
        }
        PipelinesAction::History { name, json, limit } => {
            find(&app, name)?;
            let runs = history_rows(&app, &state, name, *limit).await?;
            if *json {
                println!(
                    "{}",
                    crate::batch_view::json_line(&json!({ "pipeline": name, "runs": runs }))
                );
            } else if runs.is_empty() {
                println!("pipeline {name} has not run yet");
            } else {
                for r in &runs {
                    println!("{}", describe(r));
                }
            }
            Ok(())
        }
    }
}

fn find<'a>(app: &'a App, name: &str) -> anyhow::Result<&'a Pipeline> {
    app.settings.pipelines.get(name).ok_or_else(|| {
        let known: Vec<&str> = app.settings.pipelines.keys().map(String::as_str).collect();
        UsageError(format!(
            "unknown pipeline {name:?}; configured pipelines: {}",
            if known.is_empty() {
                "none (add a [pipelines.<name>] table)".to_string()
            } else {
                known.join(", ")
            }
        ))
        .into()
    })
}

/// One line per run: tick, trigger, outcome, then the batch (items, state, spend) or the error.
fn describe(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    let mut line = format!("{}  {:<8}  {:<11}", s("tick"), s("trigger"), s("outcome"));
    if let Some(id) = r["batch_id"].as_str() {
        line.push_str(&format!(
            "  {id}  {} item(s)  {}  ${:.4}",
            r["items"],
            s("state"),
            r["cost_usd"].as_f64().unwrap_or(0.0)
        ));
    }
    if let Some(e) = r["error"].as_str() {
        line.push_str(&format!("  {e}"));
    }
    line
}

async fn trigger(
    app: &App,
    state: &PipelineState,
    pipeline: &Pipeline,
    as_json: bool,
) -> anyhow::Result<()> {
    let record = trigger_now(app, state, pipeline).await?;
    let row = run_row(app, &record).await?;
    if as_json {
        println!("{row}");
    } else {
        println!("{}", describe(&row));
    }
    match &record.error {
        Some(e) => Err(anyhow::anyhow!(
            "pipeline {} run failed: {e}",
            pipeline.name
        )),
        None => Ok(()),
    }
}

async fn list(app: &App, state: &PipelineState, as_json: bool) -> anyhow::Result<()> {
    let rows = pipeline_rows(app, state).await?;
    if as_json {
        println!(
            "{}",
            crate::batch_view::json_line(&json!({ "pipelines": rows }))
        );
        return Ok(());
    }
    if rows.is_empty() {
        println!("no pipelines configured; add a [pipelines.<name>] table");
    }
    for r in &rows {
        let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let last = &r["last_run"];
        let last_text = if last.is_null() {
            "never ran".to_string()
        } else {
            format!(
                "last {} {} {} ({} item(s), {}, ${:.4})",
                last["tick"].as_str().unwrap_or("-"),
                last["outcome"].as_str().unwrap_or("-"),
                last["batch_id"].as_str().unwrap_or("-"),
                last["items"],
                last["state"].as_str().unwrap_or("-"),
                last["cost_usd"].as_f64().unwrap_or(0.0)
            )
        };
        println!(
            "{}  [{}]  {} ({})  next {}  {}",
            s("name"),
            if r["enabled"] == true {
                "enabled"
            } else {
                "disabled"
            },
            s("schedule"),
            s("timezone"),
            s("next_fire"),
            last_text
        );
    }
    Ok(())
}
