//! # batchyard: the faces of the orchestrator (CLI, HTTP API, scheduler) over `batchyard-workers`
//! and `batchyard-jobs`. `main.rs` parses the command line and calls [`run`].
//!
//! - [`cli`]: the subcommands and their flags; [`deadline`]: what `--deadline` accepts.
//! - [`commands`]: one module per subcommand, called by [`run`].
//! - [`config`]: finding, parsing and validating the config file.
//! - [`error`]: the user-facing errors and the exit codes (0 ok, 2 bad usage or input, 1 else).
//! - [`app`]: the queue, ledger and store a command works with.
//! - [`submission`]: streaming validation and chunked enqueue of a batch.
//! - [`retry_cancel`]: retry (replay the failures of a finished batch) and cancel.
//! - [`cost_estimate`]: what a batch would cost and take, from the router's plans.
//! - [`offload_estimate`]: `estimate --deadline`, real-time only against the offload lane.
//! - [`batch_view`]: the batch object printed by `--json`.
//! - [`share_view`]: the share of the workers each batch and tenant gets (status, API).
//! - [`api`]: the HTTP API of `serve` (OpenAI Batch API, native `/api/*`, dashboard).
//! - [`scheduler`]: cron pipelines: claims, only-new listing, run history.
//! - [`gc`]: retention: removing ended batches, uploads and cache entries once old enough.
//! - [`usage`]: batches, items and spend per tenant over a period (chargeback).
//! - [`metrics_http`]: the Prometheus recorder and its `GET /metrics` endpoint.
//! - [`telemetry`]: logs, plain or JSON, and a quiet exit on a closed stdout.

mod api;
mod app;
mod batch_view;
pub mod cli;
mod commands;
mod config;
mod cost_estimate;
pub mod deadline;
mod error;
mod gc;
mod metrics_http;
mod offload_estimate;
mod retry_cancel;
mod scheduler;
mod share_view;
mod submission;
mod telemetry;
mod usage;

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub use telemetry::exit_quietly_on_closed_stdout;

/// Runs one parsed command line to its exit code: 0 ok, 2 bad usage or input, 1 anything else.
pub fn run(cli: &Cli) -> ExitCode {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let default_filter = match cli.command {
        Command::Worker(_) | Command::Serve(_) | Command::Scheduler(_) => "info",
        _ => "warn",
    };
    telemetry::init(&env, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            telemetry::stderr_line(&format!("error: cannot start the async runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli, &env)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing to report, and no one to report it to.
        Err(e) if telemetry::is_broken_pipe(&e) => ExitCode::from(telemetry::SIGPIPE_EXIT as u8),
        Err(e) => {
            telemetry::stderr_line(&format!("error: {e:#}"));
            ExitCode::from(error::code_for(&e) as u8)
        }
    }
}

async fn dispatch(cli: &Cli, env: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let config = cli.config.as_deref();
    match &cli.command {
        Command::Run(args) => commands::run::run(config, args, env).await,
        Command::Submit(args) => commands::submit::submit(config, args, env).await,
        Command::Worker(args) => commands::worker::worker(config, args, env).await,
        Command::Status(args) => commands::status::status(config, args, env).await,
        Command::Results(args) => commands::results::results(config, args, env).await,
        Command::Cancel(args) => commands::batch_ops::cancel(config, args, env).await,
        Command::Retry(args) => commands::batch_ops::retry(config, args, env).await,
        Command::Models(args) => commands::models::models(config, args, env).await,
        Command::Check(args) => commands::check::check(config, args, env).await,
        Command::Estimate(args) => commands::estimate_route::estimate(config, args, env).await,
        Command::Route(args) => commands::estimate_route::route(config, args, env).await,
        Command::Serve(args) => commands::serve::serve(config, args, env).await,
        Command::Watch(args) => commands::watch::watch(config, args, env).await,
        Command::Scheduler(args) => commands::scheduler::scheduler(config, args, env).await,
        Command::Pipelines(args) => commands::pipelines::pipelines(config, args, env).await,
        Command::Gc(args) => commands::gc::gc(config, args, env).await,
        Command::Usage(args) => commands::usage::usage(config, args, env).await,
    }
}
