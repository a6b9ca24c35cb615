//! `batchyard estimate` / `submit --dry-run`, and `batchyard route`: look before you spend.

use std::collections::BTreeMap;
use std::path::Path;

use batchyard_jobs::job::{Job, Route};
use batchyard_workers::route::router::Plan;
use serde_json::{Map, Value, json};

use crate::app::App;
use crate::cli::{InputArgs, RouteArgs};
use crate::cost_estimate::Estimate;
use crate::error::UsageError;
use crate::offload_estimate::OffloadEstimator;
use crate::submission::Scanner;

/// Connects for looking only: the learned pass rates from Redis when configured, else the
/// priors; ranking by the posterior mean so the answer doesn't wobble with exploration.
async fn connect_to_look(
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
    command: &str,
) -> anyhow::Result<App> {
    let mut settings = super::load_settings(config, env)?;
    settings.routing.exploration = 0.0;
    App::connect(settings, None, true, command).await
}

pub async fn estimate(
    config: Option<&Path>,
    args: &InputArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let app = connect_to_look(config, env, "estimate").await?;
    let router = app.router();
    let mut scanner = Scanner::open(&app, &super::submit_request(args)).await?;
    let mut estimate = Estimate::default();
    let mut offload = args.deadline.map(|_| OffloadEstimator::default());
    let mut first_bad = None;
    while let Some(item) = scanner.next().await {
        match item? {
            Ok(job) => match router.plan(&app.settings.catalog, &job).await {
                Ok(plan) => {
                    estimate.add(&plan, &job.body);
                    if let Some(o) = offload.as_mut() {
                        o.add(&plan, &app.settings.catalog);
                    }
                }
                Err(_) => {
                    estimate.items += 1;
                    estimate.unroutable += 1;
                }
            },
            Err(e) => {
                estimate.items += 1;
                estimate.invalid += 1;
                first_bad.get_or_insert(e);
            }
        }
    }
    estimate.finish(&app.settings.catalog);
    let now = batchyard_jobs::batch::now_secs();
    let offload = match offload.zip(args.deadline) {
        Some((o, d)) => {
            let items = estimate.items - estimate.invalid - estimate.unroutable;
            let realtime = crate::submission::realtime_secs(&app, items).await;
            Some(o.finish(realtime, d.unix(now), now, &app.settings.offload))
        }
        None => None,
    };
    if args.json {
        let mut view = serde_json::to_value(&estimate)?;
        if let Some(o) = &offload {
            view["offload"] = serde_json::to_value(o)?;
        }
        println!("{}", crate::batch_view::json_line(&view));
    } else {
        print!("{}", estimate.render());
        if let Some(o) = &offload {
            print!("{}", o.render(app.settings.offload.min_items));
        }
        if let Some(e) = first_bad {
            println!("first invalid line: {e}");
        }
        println!("nothing was enqueued");
    }
    Ok(())
}

pub async fn route(
    config: Option<&Path>,
    args: &RouteArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let app = connect_to_look(config, env, "route").await?;
    let job = match (&args.text, &args.input) {
        (Some(text), None) => {
            let Some(task) = &args.task else {
                return Err(UsageError("--text needs --task NAME".into()).into());
            };
            let mut fields = Map::new();
            fields.insert("text".into(), Value::String(text.clone()));
            let body = app
                .settings
                .catalog
                .render_document(task, &fields)
                .map_err(|e| UsageError(e.to_string()))?;
            Job::first_run(
                "route",
                "route".into(),
                0,
                "text".into(),
                body,
                Route::Task { task: task.clone() },
            )
        }
        (None, Some(input)) => nth_job(&app, input, args).await?,
        _ => {
            return Err(UsageError(
                "give the item as --text \"...\" (with --task) or as --input FILE --line N".into(),
            )
            .into());
        }
    };
    let router = app.router();
    let plan = router
        .plan(&app.settings.catalog, &job)
        .await
        .map_err(|e| UsageError(e.to_string()))?;
    let mut states = BTreeMap::new();
    for cand in &plan.candidates {
        let state = match app.health.state(&cand.model.key).await {
            Ok(s) => s.name().to_string(),
            Err(e) => format!("unknown ({e})"),
        };
        states.insert(cand.model.key.clone(), state);
    }
    let view = explain(&plan, &states);
    if args.json {
        println!("{}", crate::batch_view::json_line(&view));
    } else {
        print!("{}", render(&plan, &states));
    }
    Ok(())
}

/// The item at `--line N` of `--input FILE`.
async fn nth_job(app: &App, input: &str, args: &RouteArgs) -> anyhow::Result<Job> {
    let line = args.line.unwrap_or(1).max(1);
    let req = crate::submission::SubmitRequest {
        input: input.to_string(),
        task: args.task.clone(),
        budget_usd: None,
        skip_invalid: true,
        no_cache: false,
        completion_window: None,
        resume: None,
        follow_symlinks: false,
        deadline_at: None,
        notify_url: None,
        tenant: None,
        priority: None,
    };
    let mut scanner = Scanner::open(app, &req).await?;
    let mut index = 0u64;
    while let Some(item) = scanner.next().await {
        index += 1;
        if index == line {
            return item?.map_err(|e| UsageError(e.to_string()).into());
        }
    }
    Err(UsageError(format!(
        "{input} has {index} item(s); --line {line} is past the end"
    ))
    .into())
}

fn explain(plan: &Plan, states: &BTreeMap<String, String>) -> Value {
    let candidates: Vec<Value> = plan
        .candidates
        .iter()
        .map(|c| {
            json!({
                "model": c.model.key,
                "tier": c.model.tier,
                "state": states.get(&c.model.key),
                "prompt_tokens": c.prompt_tokens,
                "cached_prompt_tokens": c.cached_prompt_tokens,
                "max_output_tokens": c.max_output_tokens,
                "call_cost_usd": c.call_cost_usd,
                "worst_case_usd": c.worst_case_usd,
                "p": c.pass.mean,
                "evidence": {"passes": c.pass.passes, "fails": c.pass.fails},
                "expected_usd": c.expected_usd,
            })
        })
        .collect();
    json!({
        "task": plan.task,
        "bucket": plan.bucket,
        "pinned": plan.pinned,
        "choice": plan.candidates.first().map(|c| c.model.key.clone()),
        "expected_usd": plan.expected_usd(),
        "candidates": candidates,
        "rejected": plan.rejected,
    })
}

fn render(plan: &Plan, states: &BTreeMap<String, String>) -> String {
    let mut out = format!(
        "task {}, length bucket {}{}\n\n{:<3} {:<16} {:>4} {:>9} {:>8} {:>12} {:>12} {:>6} {:>10} {:>12}  {}\n",
        plan.task.as_deref().unwrap_or("(none)"),
        plan.bucket,
        if plan.pinned { ", pinned" } else { "" },
        "#",
        "model",
        "tier",
        "prompt",
        "output",
        "call $",
        "worst $",
        "p",
        "evidence",
        "E[cascade] $",
        "state"
    );
    for (i, c) in plan.candidates.iter().enumerate() {
        out.push_str(&format!(
            "{:<3} {:<16} {:>4} {:>9} {:>8} {:>12.6} {:>12.6} {:>6.3} {:>10} {:>12.6}  {}\n",
            i + 1,
            c.model.key,
            c.model.tier,
            c.prompt_tokens,
            c.max_output_tokens,
            c.call_cost_usd,
            c.worst_case_usd,
            c.pass.mean,
            format!("{:.0}/{:.0}", c.pass.passes, c.pass.passes + c.pass.fails),
            c.expected_usd,
            states.get(&c.model.key).map_or("-", String::as_str)
        ));
    }
    for r in &plan.rejected {
        out.push_str(&format!("    {:<16} dropped: {}\n", r.model, r.reason));
    }
    match plan.candidates.first() {
        Some(c) => out.push_str(&format!(
            "\nchoice: {} first; expected ${:.6} for the whole cascade\n",
            c.model.key,
            plan.expected_usd()
        )),
        None => out.push_str("\nno model can take this item\n"),
    }
    out
}
