//! The command line: one binary, one subcommand per face.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// What `--help` says about the environment: the variables that override the config file,
/// and the two that shape logs.
const ENVIRONMENT: &str = "\
Environment:
  BATCHYARD_CONFIG       config file, when --config is not given
  BATCHYARD_REDIS_URL    queue and ledger (overrides [queue] redis_url); without it only `run` works
  BATCHYARD_STORAGE_URL  where results go (overrides [storage] url) [default: file://./batchyard-data]
  BATCHYARD_API_TOKENS   bearer tokens for `serve`, comma-separated (required by `serve`)
  BATCHYARD_API_MAX_FILE_BYTES, BATCHYARD_API_WINDOW_SECS
                         `serve`: upload size limit and completion window [default: 200 MiB, 24 h]
  RUST_LOG               log filter, e.g. info, debug, batchyard_workers=debug
                         [default: info for worker, serve and scheduler; warn for the rest]
  LOG_FORMAT=json        logs as JSON lines (one object per line) instead of text
  NO_COLOR               no colour in logs (colour is only used when stderr is a terminal)
Logs go to stderr; results and --json objects go to stdout.";

#[derive(Debug, Parser)]
#[command(
    name = "batchyard",
    version,
    about = "Batch job orchestrator for offline LLM workloads: the cheapest adequate model per item",
    long_about = None,
    after_help = ENVIRONMENT
)]
pub struct Cli {
    /// Config file [default: ./batchyard.toml when it exists, else built-in defaults]
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "BATCHYARD_CONFIG",
        hide_env_values = true
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit and process a batch in this process (in-process queue when no Redis is configured)
    #[command(after_help = ENVIRONMENT)]
    Run(RunArgs),
    /// Validate a batch and enqueue it to Redis, then return
    #[command(after_help = ENVIRONMENT)]
    Submit(SubmitArgs),
    /// Process jobs from the Redis queue
    #[command(after_help = ENVIRONMENT)]
    Worker(WorkerArgs),
    /// Show queue depth, or one batch
    #[command(after_help = ENVIRONMENT)]
    Status(StatusArgs),
    /// Stream a finished batch's output.jsonl (or errors.jsonl) to stdout
    #[command(after_help = ENVIRONMENT)]
    Results(ResultsArgs),
    /// Cancel a running batch: queued items end as `cancelled`, in-flight ones finish
    #[command(after_help = ENVIRONMENT)]
    Cancel(CancelArgs),
    /// Re-run a finished batch's failed items (optionally one error code, optionally on another model)
    #[command(after_help = ENVIRONMENT)]
    Retry(RetryArgs),
    /// List models with their prices, limits and health; pause or resume one
    #[command(after_help = ENVIRONMENT)]
    Models(ModelsArgs),
    /// Estimate tokens, cost per model, routed cost and time of an input; enqueues nothing
    #[command(after_help = ENVIRONMENT)]
    Estimate(InputArgs),
    /// Explain how one item would be routed: candidates, constraints, cost, p, the choice
    #[command(after_help = ENVIRONMENT)]
    Route(RouteArgs),
    /// Serve the OpenAI-compatible Batch API, the native API, /metrics and the dashboard
    #[command(after_help = ENVIRONMENT)]
    Serve(ServeArgs),
    /// Follow one batch with a live progress bar until it ends (exit 1 unless it completed)
    #[command(after_help = ENVIRONMENT)]
    Watch(WatchArgs),
    /// Check the config, the age of catalog prices, Redis and the object store (exit 1 on an error)
    #[command(after_help = ENVIRONMENT)]
    Check(CheckArgs),
    /// Fire every enabled [pipelines.<name>] on its schedule, exactly once per tick across replicas
    #[command(after_help = ENVIRONMENT)]
    Scheduler(SchedulerArgs),
    /// List scheduled pipelines, trigger one now, or show its runs
    #[command(after_help = ENVIRONMENT)]
    Pipelines(PipelinesArgs),
    /// Remove what [retention] says is old enough: ended batches, uploads, cache entries
    #[command(after_help = ENVIRONMENT)]
    Gc(GcArgs),
    /// Batches, items and spend per tenant over a period, for chargeback
    #[command(after_help = ENVIRONMENT)]
    Usage(UsageArgs),
}

#[derive(Debug, Args)]
pub struct UsageArgs {
    /// Start of the period: a span back from now (30d, 12h), a date (2026-11-01, UTC) or an RFC 3339 time [default: 30d]
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// End of the period, excluded; the same forms as --since [default: now]
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only this tenant's batches
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Only print what would be removed
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (pipeline runs and last successes) [default: no metrics server]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct PipelinesArgs {
    #[command(subcommand)]
    pub action: PipelinesAction,
}

#[derive(Debug, Subcommand)]
pub enum PipelinesAction {
    /// Each pipeline's schedule, next fire time, last run and enabled state
    List {
        #[arg(long)]
        json: bool,
    },
    /// Run a pipeline now (only its new documents, once), whatever its schedule
    Run {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// A pipeline's recent runs, newest first
    History {
        name: String,
        #[arg(long)]
        json: bool,
        /// Runs shown (at most the 100 kept)
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    pub batch_id: String,
    /// Print the final batch object as JSON
    #[arg(long)]
    pub json: bool,
    /// How often to refresh, in milliseconds
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub interval_ms: u64,
}

#[derive(Debug, Args)]
pub struct RouteArgs {
    /// The task that renders the item
    #[arg(long)]
    pub task: Option<String>,
    /// The document text (rendered through --task)
    #[arg(long, conflicts_with = "input")]
    pub text: Option<String>,
    /// A JSONL file or folder, as for submit
    #[arg(long)]
    pub input: Option<String>,
    /// Which item of --input (1 = the first)
    #[arg(long, value_name = "N")]
    pub line: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Only the config and the catalog: don't contact Redis or the object store
    #[arg(long)]
    pub offline: bool,
    /// Fail (exit 1) on warnings too, e.g. catalog prices older than 90 days
    #[arg(long)]
    pub strict: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Option<ModelsAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
    /// List the shipped model catalog (prices, context, capabilities, a suggested tier) that a
    /// config's `[models.X] catalog = "provider/model"` can name instead of typing prices
    Catalog {
        /// Only this provider kind: openai, anthropic, gemini or bedrock
        #[arg(long)]
        provider: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Clear a model's pause (after auth or quota trouble) or cooldown, for every worker
    Resume { model: String },
    /// Stop every worker from calling a model until it is resumed
    Pause {
        model: String,
        #[arg(long, default_value = "paused by an operator")]
        reason: String,
    },
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    pub batch_id: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    pub batch_id: String,
    /// Only items that failed with this error code (e.g. transient, rate_limited, worker_lost) [default: every replayable failure]
    #[arg(long)]
    pub code: Option<String>,
    /// Pin the retried items to this configured model [default: routed as before]
    #[arg(long)]
    pub model: Option<String>,
    /// Let the retry spend this much more (USD): the batch's budget becomes spent + this [default: the batch's budget as it is]
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// A JSONL file, a folder of .txt/.md documents, or an object-store URL (s3://bucket/prefix/)
    pub input: String,
    /// The task that renders documents (and routes requests whose model is "auto") [default: none; JSONL requests name their model]
    #[arg(long)]
    pub task: Option<String>,
    /// Stop spending once the batch has spent this much (USD) [default: no budget]
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    /// Enqueue the valid lines; record each invalid one in errors.jsonl
    #[arg(long)]
    pub skip_invalid: bool,
    /// Neither read nor write the result cache for this batch
    #[arg(long)]
    pub no_cache: bool,
    /// Finish by then (24h, 90m, 1h30m, 2d, or an RFC 3339 time): the batch may use the
    /// providers' batch APIs at about half price while the deadline allows [default: none,
    /// real-time only]
    #[arg(long, value_name = "WHEN", value_parser = crate::deadline::parse)]
    pub deadline: Option<crate::deadline::Deadline>,
    /// When the batch ends, POST a signed event (Standard Webhooks) to this URL [default:
    /// `[notify] url`, else none]
    #[arg(long, value_name = "URL", value_parser = parse_notify_url)]
    pub notify: Option<String>,
    /// Strict priority: high, normal, low, or a number from -100 to 100 (high = 10, low =
    /// -10); above the tenant's `max_priority` it is lowered to that [default: normal]
    #[arg(long, value_name = "PRIORITY", value_parser = parse_priority)]
    pub priority: Option<batchyard_jobs::priority::Priority>,
    /// The tenant the batch belongs to (one of `[tenants.*]`): its weight sets the batch's
    /// share of the workers [default: default]
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
    /// Of a folder, read symbolic links whose targets stay inside it (default: skip links)
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Print one JSON object (the batch) as the last line of stdout
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Storage URL for results (overrides [storage] url in the config) [default: [storage] url, else file://./batchyard-data]
    #[arg(
        long,
        value_name = "URL",
        env = "BATCHYARD_STORAGE_URL",
        hide_env_values = true
    )]
    pub storage: Option<String>,
    /// Jobs run at once [default: [worker] concurrency in the config, else 64]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Estimate instead: print tokens, cost and time, enqueue nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Continue the interrupted submit of this batch (the same input and flags)
    #[arg(long, value_name = "BATCH")]
    pub resume: Option<String>,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs run at once (LLM calls are I/O bound) [default: [worker] concurrency in the config, else 64]
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// Exit once the queue has been empty this many seconds [default: run until SIGTERM/SIGINT]
    #[arg(long, value_name = "SECONDS")]
    pub exit_when_idle: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: no metrics server]
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A batch id; without one, queue depth
    pub batch_id: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Refresh the view until interrupted
    #[arg(long)]
    pub watch: bool,
    /// Exit 1 when the total pending jobs are above N (for monitoring checks) [default: never]
    #[arg(long, value_name = "N")]
    pub fail_above: Option<u64>,
    /// List only this tenant's batches (read from its own index); the depth stays the queue's
    #[arg(long, value_name = "NAME")]
    pub tenant: Option<String>,
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    pub batch_id: String,
    /// Stream errors.jsonl instead of output.jsonl
    #[arg(long)]
    pub errors: bool,
}

fn parse_priority(text: &str) -> Result<batchyard_jobs::priority::Priority, String> {
    text.parse()
}

fn parse_notify_url(text: &str) -> Result<String, String> {
    crate::config::notify::check_url(text).map(|()| text.to_string())
}
