//! The command line: one binary, one subcommand per face.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "batchyard",
    version,
    about = "Batch job orchestrator for offline LLM workloads: the cheapest adequate model per item",
    long_about = None
)]
pub struct Cli {
    /// Config file (else BATCHYARD_CONFIG, else ./batchyard.toml, else built-in defaults)
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit and process a batch in this process (in-process queue when no Redis is configured)
    Run(RunArgs),
    /// Validate a batch and enqueue it to Redis, then return
    Submit(SubmitArgs),
    /// Process jobs from the Redis queue
    Worker(WorkerArgs),
    /// Show queue depth, or one batch
    Status(StatusArgs),
    /// Stream a finished batch's output.jsonl (or errors.jsonl) to stdout
    Results(ResultsArgs),
    /// Cancel a running batch: queued items end as `cancelled`, in-flight ones finish
    Cancel(CancelArgs),
    /// Re-run a finished batch's failed items (optionally one error code, optionally on another model)
    Retry(RetryArgs),
    /// List models with their prices, limits and health; pause or resume one
    Models(ModelsArgs),
    /// Estimate tokens, cost per model, routed cost and time of an input; enqueues nothing
    Estimate(InputArgs),
    /// Explain how one item would be routed: candidates, constraints, cost, p, the choice
    Route(RouteArgs),
    /// Serve the OpenAI-compatible Batch API, the native API, /metrics and the dashboard
    Serve(ServeArgs),
    /// Follow one batch with a live progress bar until it ends (exit 1 unless it completed)
    Watch(WatchArgs),
    /// Fire every enabled [pipelines.<name>] on its schedule, exactly once per tick across replicas
    Scheduler(SchedulerArgs),
    /// List scheduled pipelines, trigger one now, or show its runs
    Pipelines(PipelinesArgs),
}

#[derive(Debug, Args)]
pub struct SchedulerArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (pipeline runs and last successes)
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
pub struct ModelsArgs {
    #[command(subcommand)]
    pub action: Option<ModelsAction>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ModelsAction {
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
    /// Only items that failed with this error code (e.g. transient, rate_limited, worker_lost)
    #[arg(long)]
    pub code: Option<String>,
    /// Pin the retried items to this configured model
    #[arg(long)]
    pub model: Option<String>,
    /// Let the retry spend this much more (USD): the batch's budget becomes spent + this
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// A JSONL file, a folder of .txt/.md documents, or an object-store URL (s3://bucket/prefix/)
    pub input: String,
    /// The task that renders documents (and routes requests whose model is "auto")
    #[arg(long)]
    pub task: Option<String>,
    /// Stop spending once the batch has spent this much (USD)
    #[arg(long, value_name = "USD")]
    pub budget_usd: Option<f64>,
    /// Enqueue the valid lines; record each invalid one in errors.jsonl
    #[arg(long)]
    pub skip_invalid: bool,
    /// Neither read nor write the result cache for this batch
    #[arg(long)]
    pub no_cache: bool,
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
    /// Storage URL for results (overrides config and BATCHYARD_STORAGE_URL)
    #[arg(long, value_name = "URL")]
    pub storage: Option<String>,
    /// Jobs run at once
    #[arg(long)]
    pub concurrency: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Estimate instead: print tokens, cost and time, enqueue nothing
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Jobs run at once (LLM calls are I/O bound)
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Exit once the queue has been empty this many seconds
    #[arg(long, value_name = "SECONDS")]
    pub exit_when_idle: Option<f64>,
    /// Serve Prometheus metrics at http://ADDR/metrics
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
    /// Exit 1 when the total pending jobs are above N (for monitoring checks)
    #[arg(long, value_name = "N")]
    pub fail_above: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    pub batch_id: String,
    /// Stream errors.jsonl instead of output.jsonl
    #[arg(long)]
    pub errors: bool,
}
