//! # batchyard: the binary
//!
//! - [`cli`]: the subcommands and their flags.
//! - [`commands`]: one module per subcommand (`run`, `submit`, `worker`, `status`, `results`).
//! - [`config`]: finding, parsing and validating the config file.
//! - [`app`]: the queue, ledger and store a command works with.
//! - [`scheduler`]: cron pipelines: claims, only-new listing, run history.
//! - [`submission`]: streaming validation and chunked enqueue of a batch.
//! - [`batch_view`]: the batch object printed by `--json`.
//! - [`telemetry`]: logs, plain or JSON.
//! - [`metrics_http`]: the Prometheus recorder and its `GET /metrics` endpoint.
//! - [`exit`]: exit codes (0 ok, 2 bad usage or input, 1 anything else).

mod api;
mod app;
mod batch_view;
mod cli;
mod commands;
mod config;
mod estimate;
mod exit;
mod metrics_http;
mod replay;
mod scheduler;
mod submission;
mod telemetry;

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    telemetry::exit_quietly_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
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
    let config = cli.config.as_deref();
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Run(args) => commands::run::run(config, args, &env).await,
            Command::Submit(args) => commands::submit::submit(config, args, &env).await,
            Command::Worker(args) => commands::worker::worker(config, args, &env).await,
            Command::Status(args) => commands::status::status(config, args, &env).await,
            Command::Results(args) => commands::results::results(config, args, &env).await,
            Command::Cancel(args) => commands::batch_ops::cancel(config, args, &env).await,
            Command::Retry(args) => commands::batch_ops::retry(config, args, &env).await,
            Command::Models(args) => commands::models::models(config, args, &env).await,
            Command::Estimate(args) => commands::estimate::estimate(config, args, &env).await,
            Command::Route(args) => commands::estimate::route(config, args, &env).await,
            Command::Serve(args) => commands::serve::serve(config, args, &env).await,
            Command::Watch(args) => commands::watch::watch(config, args, &env).await,
            Command::Scheduler(args) => commands::scheduler::scheduler(config, args, &env).await,
            Command::Pipelines(args) => commands::pipelines::pipelines(config, args, &env).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): nothing to report, and no one to report it to.
        Err(e) if telemetry::is_broken_pipe(&e) => ExitCode::from(telemetry::SIGPIPE_EXIT as u8),
        Err(e) => {
            telemetry::stderr_line(&format!("error: {e:#}"));
            ExitCode::from(exit::code_for(&e) as u8)
        }
    }
}
