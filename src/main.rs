//! # batchyard: the binary. Parses the command line and hands it to the library ([`batchyard::run`]).
//!
//! Subcommands (`batchyard <command> --help` for each):
//! - `run`: submit and process a batch in this process.
//! - `submit`: validate a batch and enqueue it to Redis.
//! - `worker`: process jobs from the Redis queue.
//! - `status`: queue depth, or one batch.
//! - `results`: stream a finished batch's output (or errors).
//! - `cancel`: cancel a running batch.
//! - `retry`: re-run a finished batch's failed items.
//! - `models`: models with prices, limits and health; pause or resume one.
//! - `estimate`: tokens, cost and time of an input; enqueues nothing.
//! - `route`: how one item would be routed.
//! - `serve`: the Batch API, the native API, `/metrics` and the dashboard.
//! - `watch`: follow one batch with a live progress bar.
//! - `scheduler`: run the cron pipelines.
//! - `pipelines`: list, run or show the history of the pipelines.

use std::process::ExitCode;

use batchyard::cli::Cli;
use clap::Parser;

fn main() -> ExitCode {
    batchyard::exit_quietly_on_closed_stdout();
    match Cli::try_parse() {
        Ok(cli) => batchyard::run(&cli),
        Err(e) => {
            let _ = e.print();
            // `--help` and `--version` come here too, on stdout, and are no error.
            if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}
