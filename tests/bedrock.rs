//! `kind = "bedrock"` end to end, next to S3 storage with another identity: `batchyard run`
//! stores results on SeaweedFS through the generic `AWS_*` variables (endpoint and keys),
//! while its Bedrock provider reaches the fake provider's Converse route through
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME` and signs with its own keys, named by
//! `access_key_id_env` / `secret_access_key_env`. The fake recomputes each signature, so a
//! call signed with storage's keys would be a 403.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_testkit::{FakeProvider, S3Env, TestRedis, s3_env_or_skip};
use serde_json::Value;
use support::*;

const KEY_ID: &str = "AKIDBEDROCKE2E";
const SECRET: &str = "bedrock/E2E+secret-9f8e7d6c";

fn config(dir: &Path, storage_url: &str) {
    write_file(
        dir,
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "{storage_url}"

[providers.aws]
kind = "bedrock"
region = "us-east-1"
access_key_id_env = "BR_E2E_KEY_ID"
secret_access_key_env = "BR_E2E_SECRET"

[models.haiku]
provider = "aws"
catalog = "bedrock/claude-3-5-haiku"

[tasks.check]
prompt = "{{{{ text }}}}"
max_output_tokens = 100
"#
        )
        .as_bytes(),
    );
}

fn command(
    dir: &Path,
    s3: &S3Env,
    redis: &TestRedis,
    fake: &FakeProvider,
) -> std::process::Command {
    let mut cmd = batchyard(dir);
    s3.apply(&mut cmd)
        .env("BATCHYARD_REDIS_URL", &redis.url)
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", &fake.url)
        .env("BR_E2E_KEY_ID", KEY_ID)
        .env("BR_E2E_SECRET", SECRET)
        .env_remove("AWS_BEARER_TOKEN_BEDROCK");
    cmd
}

#[test]
fn bedrock_answers_while_results_go_to_s3_under_another_identity() {
    let test = "bedrock_e2e_with_s3";
    let Some(s3) = s3_env_or_skip(test) else {
        return;
    };
    let Some(redis) = TestRedis::start(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--bedrock-secret", SECRET, "--bedrock-key-id", KEY_ID]);
    config(dir.path(), &s3.storage_url(test));
    let body: String = (0..8)
        .map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"document number {i:04}\"}}\n"))
        .collect();
    let input = write_file(dir.path(), "docs.jsonl", body.as_bytes());

    let started = Instant::now();
    let out = run(command(dir.path(), &s3, &redis, &fake)
        .args(["run", input.to_str().unwrap(), "--task", "check", "--json"])
        .args(["--concurrency", "2"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert_eq!(batch["request_counts"]["completed"], 8, "{batch}");
    assert_eq!(
        fake.count(200),
        8,
        "every call was signed with bedrock's keys"
    );
    assert_eq!(fake.count(403), 0);

    // The results are read back from S3.
    let id = batch["id"].as_str().unwrap();
    let results = run(command(dir.path(), &s3, &redis, &fake).args(["results", id]));
    assert!(results.status.success(), "{}", text(&results.stderr));
    let lines: Vec<Value> = text(&results.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    let reply = lines[0]["response"]["body"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(
        reply.starts_with("fake reply from us.anthropic.claude-3-5-haiku-20241022-v1:0"),
        "{reply}"
    );
    assert!(lines.iter().all(|l| l["batchyard"]["model"] == "haiku"));

    // No secret of either identity in what the run printed or what it stored.
    let errors = run(command(dir.path(), &s3, &redis, &fake).args(["results", id, "--errors"]));
    let shown = format!(
        "{stderr}{}{}{}",
        text(&out.stdout),
        text(&results.stdout),
        text(&errors.stdout)
    );
    for secret in [SECRET, s3.secret.as_str()] {
        assert!(!shown.contains(secret), "a secret was printed or stored");
    }
}
