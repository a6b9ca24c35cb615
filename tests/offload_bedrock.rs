//! The offload lane through Bedrock batch inference: `batchyard run --deadline` writes each
//! wave's records to a real S3 server (SeaweedFS), the fake's Bedrock control plane
//! (SigV4-checked) runs them as jobs on its sped-up clock and writes the outputs back, and
//! batchyard reads them, bills them at the batch price and deletes what it left in the bucket.
//! Then a worker killed right after `CreateModelInvocationJob`: one job, never two.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use batchyard_jobs::storage::ResultStore;
use batchyard_testkit::{FakeProvider, S3Env, s3_env_or_skip};
use futures::TryStreamExt as _;
use support::cluster::{Cluster, Options};
use support::offload::{
    QUICK, assert_once_through_one_provider_batch, assert_waves_at_batch_price, docs, lane_config,
};
use support::*;

const ROLE: &str = "arn:aws:iam::123456789012:role/BedrockBatch";

/// The fake's Bedrock routes on the test S3 server, its batch clock at `turnaround_ms`.
fn fake_args(s3: &S3Env, turnaround_ms: &str) -> Vec<String> {
    let mut args = s3.fake_bedrock_args();
    args.extend(["--batch-turnaround-ms".to_owned(), turnaround_ms.to_owned()]);
    args
}

fn bucket_objects(s3: &S3Env, url: &str) -> Vec<String> {
    let env = s3.child_env().into_iter().collect();
    let store = ResultStore::open(url, &env).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let listed: Vec<(String, _)> = store.list_relative("").try_collect().await.unwrap();
        listed.into_iter().map(|(rel, _)| rel).collect()
    })
}

fn config(dir: &Path, fake: &FakeProvider, bucket: &str) {
    let provider = format!(
        "kind = \"bedrock\"\nregion = \"us-east-1\"\nbase_url = \"{}\"\n\
         batch_role_arn = \"{ROLE}\"\nbatch_s3_url = \"{bucket}\"",
        fake.url
    );
    let names = ["us.anthropic.claude-small-1", "us.anthropic.claude-large-1"];
    lane_config(dir, &provider, names, QUICK, "");
}

#[test]
fn a_deadline_batch_runs_its_waves_as_bedrock_jobs_at_the_batch_price() {
    let Some(s3) = s3_env_or_skip("offload_bedrock waves") else {
        return;
    };
    let args = fake_args(&s3, "300");
    let fake = FakeProvider::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let dir = tempfile::tempdir().unwrap();
    let bucket = s3.storage_url("offload-bedrock-waves");
    config(dir.path(), &fake, &bucket);
    let input = docs(dir.path(), 6, 4);
    let mut cmd = batchyard(dir.path());
    s3.apply(&mut cmd);
    let (batch, output, stderr) = run_to_output(
        dir.path(),
        cmd.args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
            .args(["--task", "read", "--json", "--deadline", "1h"]),
    );
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert_eq!(exactly_once(&output, &[]), 10);
    let total = assert_waves_at_batch_price(&output);
    assert!(
        (batch["cost_usd"].as_f64().unwrap() - total).abs() < 1e-8,
        "{batch}"
    );
    for line in &output {
        for step in line["batchyard"]["cascade"].as_array().unwrap() {
            let job = step["provider_batch"].as_str().unwrap();
            assert!(job.contains(":model-invocation-job/"), "{step}");
        }
    }
    let stats = fake.stats();
    // Wave 1: every item on small; wave 2: the hard ones on large. No real-time call.
    assert_eq!(stats["batches"]["bedrock_jobs_created"], 2, "{stats}");
    assert_eq!(fake.count(403), 0, "every signature checked out: {stats}");
    assert_eq!(fake.count(429), 0);
    let left = bucket_objects(&s3, &bucket);
    assert!(
        left.is_empty(),
        "batchyard deletes its inputs and outputs: {left:?}"
    );
}

#[test]
fn a_crash_after_create_model_invocation_job_makes_no_second_job() {
    let Some(s3) = s3_env_or_skip("offload_bedrock crash") else {
        return;
    };
    let bucket = s3.storage_url("offload-bedrock-crash");
    let args = fake_args(&s3, "500");
    let Some(cluster) = Cluster::start_opts(
        "offload_bedrock_crash",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Options {
            extra_toml: format!(
                "[providers.aws]\nkind = \"bedrock\"\nregion = \"us-east-1\"\n\
                 base_url = \"@FAKE@\"\nbatch_role_arn = \"{ROLE}\"\nbatch_s3_url = \"{bucket}\"\n\n\
                 [models.claude]\nprovider = \"aws\"\nname = \"anthropic.claude-3-haiku-v1:0\"\n\
                 input_usd_per_mtok = 0.05\noutput_usd_per_mtok = 0.2\ncontext_window = 16000\n\
                 tier = 1\n\n[offload]\nmin_items = 3\npoll_interval_secs = 1\n\
                 switch_margin_secs = 0\nrealtime_items_per_sec = 1000\n"
            ),
            ..Options::default()
        },
    ) else {
        return;
    };
    // The fake's address is known once it runs.
    let toml = std::fs::read_to_string(&cluster.config).unwrap();
    std::fs::write(&cluster.config, toml.replace("@FAKE@", &cluster.fake.url)).unwrap();
    let id = cluster.submit_with_deadline("c", 6);
    cluster.crash_worker_at("after_create");
    assert_eq!(cluster.fake.stats()["batches"]["bedrock_jobs_created"], 1);
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "30"]);
    assert_once_through_one_provider_batch(&cluster, &id, 6);
    let _ = worker.kill();
    let _ = worker.wait();
    let stats = cluster.fake.stats();
    assert_eq!(stats["batches"]["bedrock_jobs_created"], 1, "{stats}");
    assert!(bucket_objects(&s3, &bucket).is_empty());
}
