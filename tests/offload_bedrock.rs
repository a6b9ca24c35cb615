//! The offload lane through Bedrock batch inference: `batchyard run --deadline` writes each
//! wave's records to a real S3 server (SeaweedFS), the fake's Bedrock control plane
//! (SigV4-checked) runs them as jobs on its sped-up clock and writes the outputs back, and
//! batchyard reads them, bills them at the batch price and deletes what it left in the bucket.
//! Then a worker killed right after `CreateModelInvocationJob`: one job, never two.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_jobs::storage::ResultStore;
use batchyard_testkit::{FakeProvider, S3Env, s3_env_or_skip};
use futures::TryStreamExt as _;
use support::cluster::{Cluster, Options, wait_exit};
use support::offload::{QUICK, docs, steps};
use support::*;

const ROLE: &str = "arn:aws:iam::123456789012:role/BedrockBatch";

/// The fake, checking signatures made with the S3 server's keys (the AWS chain finds them in
/// `AWS_ACCESS_KEY_ID`, where the bucket's are), reading and writing that S3 server.
fn fake_args(s3: &S3Env, turnaround_ms: &str) -> Vec<String> {
    [
        "--bedrock-secret",
        &s3.secret,
        "--bedrock-key-id",
        &s3.key_id,
        "--bedrock-batch-s3-endpoint",
        &s3.endpoint,
        "--bedrock-batch-s3-key-id",
        &s3.key_id,
        "--bedrock-batch-s3-secret",
        &s3.secret,
        "--batch-turnaround-ms",
        turnaround_ms,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
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
    write_file(
        dir,
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{store}"

[routing]
learn = false

[offload]
{QUICK}

[providers.aws]
kind = "bedrock"
region = "us-east-1"
base_url = "{base}"
batch_role_arn = "{ROLE}"
batch_s3_url = "{bucket}"

[models.small]
provider = "aws"
name = "us.anthropic.claude-small-v1:0"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
context_window = 16000
tier = 1

[models.large]
provider = "aws"
name = "us.anthropic.claude-large-v1:0"
input_usd_per_mtok = 4.0
output_usd_per_mtok = 8.0
context_window = 16000
tier = 1

[tasks.read]
prompt = "{{{{ text }}}}"
max_output_tokens = 100
[tasks.read.validate]
regex = "^fake reply from (\\S+: easy|\\S+large\\S+: hard)"
"#,
            store = dir.join("store").display(),
            base = fake.url,
        )
        .as_bytes(),
    );
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
    let started = Instant::now();
    let mut cmd = batchyard(dir.path());
    s3.apply(&mut cmd);
    let out = run(cmd
        .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
        .args(["--task", "read", "--json", "--deadline", "1h"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    let output = read_jsonl(
        &dir.path()
            .join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join("output.jsonl"),
    );
    assert_eq!(output.len(), 10);
    let ids: BTreeSet<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 10, "each item exactly once");
    for line in &output {
        let id = line["custom_id"].as_str().unwrap();
        let trail = steps(line);
        if id.starts_with("easy") {
            assert_eq!(trail, [("small".into(), "passed".into(), true)], "{line}");
        } else {
            assert_eq!(
                trail,
                [
                    ("small".into(), "failed_validation".into(), true),
                    ("large".into(), "passed".into(), true),
                ],
                "{line}"
            );
        }
        let mut want = 0.0;
        for s in line["batchyard"]["cascade"].as_array().unwrap() {
            assert!(
                s["provider_batch"]
                    .as_str()
                    .unwrap()
                    .contains(":model-invocation-job/"),
                "{s}"
            );
            let (i, o) = if s["model"] == "small" {
                (0.5, 1.0)
            } else {
                (2.0, 4.0)
            };
            want += (s["input_tokens"].as_f64().unwrap() * i
                + s["output_tokens"].as_f64().unwrap() * o)
                / 1e6;
        }
        let cost = line["batchyard"]["cost_usd"].as_f64().unwrap();
        assert!(
            want > 0.0 && (cost - want).abs() < 1e-9,
            "{id}: {cost} vs {want}"
        );
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
    let body: String = (0..6)
        .map(|i| request_line(&format!("c-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &["--deadline", "1h"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut doomed = cluster
        .cmd()
        .arg("worker")
        .env("BATCHYARD_TEST_CRASH_AT", "after_create")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut doomed, Duration::from_secs(60));
    assert!(!status.success(), "the worker should have aborted");
    assert_eq!(cluster.fake.stats()["batches"]["bedrock_jobs_created"], 1);
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "30"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(120));
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(done["status"], "completed", "{done}");
    let lines = cluster.results(&id, false);
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!((lines.len(), ids.len()), (6, 6), "each item exactly once");
    for line in &lines {
        let steps = line["batchyard"]["cascade"].as_array().unwrap();
        assert!(
            steps.iter().any(|s| s["provider_batch"].is_string()),
            "answered through the Bedrock job: {line}"
        );
    }
    let stats = cluster.fake.stats();
    assert_eq!(
        stats["batches"]["bedrock_jobs_created"], 1,
        "one paid job: {stats}"
    );
    assert!(bucket_objects(&s3, &bucket).is_empty());
}
