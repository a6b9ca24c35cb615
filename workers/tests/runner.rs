//! The job body with real parts: the in-process queue and ledger, a file store, the simulated
//! provider. Covers the paths that end a job without a model answer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs, usd_to_nanos};
use batchyard_jobs::job::{Job, Route, job_id_for};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::ledger::memory::MemoryLedger;
use batchyard_jobs::outcome::OutputLine;
use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{Queue, QueueOptions};
use batchyard_jobs::storage::ResultStore;
use batchyard_workers::call::retry::RetryPolicy;
use batchyard_workers::catalog::{Catalog, ModelSpec, TaskSpec};
use batchyard_workers::finalize::Finalizer;
use batchyard_workers::job::pool::DeliveryHandler;
use batchyard_workers::job::runner::{JobRunner, RunnerOptions};
use batchyard_workers::provider::{Provider, SimulatedConfig, SimulatedProvider};
use serde_json::json;

struct Rig {
    runner: JobRunner,
    queue: Arc<MemoryQueue>,
    ledger: Arc<MemoryLedger>,
    store: ResultStore,
    _dir: tempfile::TempDir,
}

fn model(key: &str, tier: u32, price: f64, context: u64) -> ModelSpec {
    ModelSpec {
        input_usd_per_mtok: price,
        output_usd_per_mtok: price * 4.0,
        context_window: context,
        tier,
        ..support::model_spec(key, "sim", &format!("sim-{key}"))
    }
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let store = ResultStore::open(
        &format!("file://{}", dir.path().display()),
        &BTreeMap::new(),
    )
    .unwrap();
    let mut providers = BTreeMap::new();
    providers.insert(
        "sim".to_string(),
        Arc::new(Provider::Simulated(SimulatedProvider::new(
            SimulatedConfig::default(),
        ))),
    );
    let catalog = Catalog::new(
        vec![model("small", 1, 0.1, 200), model("large", 3, 2.5, 100_000)],
        vec![TaskSpec {
            key: "t".into(),
            system: None,
            prompt: "{{ text }}".into(),
            min_tier: 1,
            requires: BTreeSet::new(),
            max_output_tokens: Some(20),
            response_format: None,
            validators: None,
            prompt_cache: Default::default(),
        }],
        providers,
    )
    .unwrap();
    let queue = Arc::new(MemoryQueue::new(QueueOptions::default()));
    let ledger = Arc::new(MemoryLedger::new());
    let finalizer = Finalizer::new(ledger.clone(), store.clone(), "test-worker".into());
    let runner = JobRunner::new(
        Arc::new(catalog),
        queue.clone(),
        ledger.clone(),
        store.clone(),
        RetryPolicy::default(),
        RunnerOptions::default(),
        finalizer,
    );
    Rig {
        runner,
        queue,
        ledger,
        store,
        _dir: dir,
    }
}

fn job(batch: &str, seq: u64, content: &str) -> Job {
    let custom_id = format!("c-{seq}");
    let body = json!({"messages": [{"role": "user", "content": content}]});
    Job {
        batch_id: batch.into(),
        job_id: job_id_for(batch, &custom_id),
        seq,
        custom_id,
        body: body.as_object().unwrap().clone(),
        route: Route::Task { task: "t".into() },
        attempt: 0,
        last_error: None,
        prior_cost_usd: 0.0,
        prefetched: None,
        offloaded_to: Vec::new(),
        realtime: false,
        carried: None,
    }
}

async fn start_batch(rig: &Rig, id: &str, jobs: &[Job], budget: Option<f64>) {
    rig.ledger
        .create(&BatchRecord {
            state: BatchState::InProgress,
            budget_usd: budget,
            task: Some("t".into()),
            in_progress_at: Some(now_secs()),
            ..BatchRecord::new(
                id.into(),
                jobs.len() as u64,
                rig.store.url().into(),
                now_secs(),
            )
        })
        .await
        .unwrap();
    rig.queue.enqueue_chunk(id, 0, jobs).await.unwrap();
}

/// The job's one outcome in the batch's result segments.
async fn outcome(rig: &Rig, job: &Job) -> OutputLine {
    use batchyard_jobs::segments::read;
    use futures::TryStreamExt;
    let index = read::index(&rig.store, &job.batch_id, 1_000).await.unwrap();
    let all: Vec<read::Outcome> = read::winners(&rig.store, &job.batch_id, index.into(), 4)
        .try_collect()
        .await
        .unwrap();
    all.into_iter()
        .find(|o| o.job_id == job.job_id)
        .map(|o| o.line)
        .expect("the job has an outcome")
}

async fn run_all(rig: &Rig) {
    for _ in 0..100 {
        let claimed = rig
            .queue
            .claim("w", 16, std::time::Duration::from_millis(10))
            .await
            .unwrap();
        if claimed.is_empty() {
            return;
        }
        for d in claimed {
            rig.runner.handle(d).await;
        }
    }
}

#[tokio::test]
async fn a_job_reclaimed_too_often_is_written_as_worker_lost_and_dead_lettered() {
    let rig = rig();
    let jobs = vec![job("b1", 0, "poison")];
    start_batch(&rig, "b1", &jobs, None).await;
    let mut delivery = rig
        .queue
        .claim("w", 1, std::time::Duration::from_millis(10))
        .await
        .unwrap()
        .remove(0);
    delivery.deliveries = 5; // reclaimed 4 times; the limit is 3
    rig.runner.handle(delivery).await;
    let line = outcome(&rig, &jobs[0]).await;
    assert_eq!(line.error.unwrap().code, "worker_lost");
    let depth = rig.queue.depth().await.unwrap();
    assert_eq!((depth.in_flight, depth.dead), (0, 1));
    let record = rig.ledger.get("b1").await.unwrap().unwrap();
    assert_eq!(record.state, BatchState::Failed, "nothing succeeded");
    assert_eq!(record.counts.failed, 1);
}

#[tokio::test]
async fn a_spent_budget_stops_calls() {
    let rig = rig();
    let jobs: Vec<_> = (0..3)
        .map(|i| job("b2", i, "some text to summarise"))
        .collect();
    start_batch(&rig, "b2", &jobs, Some(0.0)).await;
    run_all(&rig).await;
    for j in &jobs {
        let line = outcome(&rig, j).await;
        assert_eq!(line.error.unwrap().code, "budget_exhausted");
        assert_eq!(line.batchyard.cost_usd, 0.0);
    }
}

#[tokio::test]
async fn a_cancelled_batch_runs_nothing_more() {
    let rig = rig();
    let jobs: Vec<_> = (0..2).map(|i| job("b3", i, "text")).collect();
    start_batch(&rig, "b3", &jobs, None).await;
    rig.ledger
        .set_state("b3", BatchState::Cancelling)
        .await
        .unwrap();
    run_all(&rig).await;
    for j in &jobs {
        assert_eq!(outcome(&rig, j).await.error.unwrap().code, "cancelled");
    }
}

#[tokio::test]
async fn context_too_large_for_the_cheap_model_routes_to_the_big_one_and_manifest_adds_up() {
    let rig = rig();
    let long = "word ".repeat(400); // ~500 tokens: more than small's 200-token window
    let jobs = vec![job("b4", 0, "short"), job("b4", 1, &long)];
    start_batch(&rig, "b4", &jobs, None).await;
    run_all(&rig).await;
    let short = outcome(&rig, &jobs[0]).await;
    let big = outcome(&rig, &jobs[1]).await;
    assert_eq!(short.batchyard.model.as_deref(), Some("small"));
    assert_eq!(big.batchyard.model.as_deref(), Some("large"));
    let record = rig.ledger.get("b4").await.unwrap().unwrap();
    assert_eq!(record.state, BatchState::Completed);
    let expected = usd_to_nanos(short.batchyard.cost_usd) + usd_to_nanos(big.batchyard.cost_usd);
    assert_eq!(record.spent_nanos, expected);
    let manifest: serde_json::Value =
        serde_json::from_slice(&rig.store.get(&rig.store.manifest_path("b4")).await.unwrap())
            .unwrap();
    assert_eq!(manifest["request_counts"]["completed"], 2);
    assert_eq!(manifest["spend_by_model"]["large"]["requests"], 1);
    assert_eq!(manifest["reconciled"], true);
    let output = rig.store.get(&rig.store.output_path("b4")).await.unwrap();
    assert_eq!(output.iter().filter(|b| **b == b'\n').count(), 2);
    assert_eq!(rig.queue.depth().await.unwrap().in_flight, 0);
}
