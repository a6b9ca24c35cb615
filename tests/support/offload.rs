//! The offload lane's test kit: a config with a cheap and a strong model on the fake's batch
//! API, a document mix, one `batchyard run`, and a line's cascade trail.

use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use serde_json::Value;

use super::{batchyard, last_json, read_jsonl, run, text, write_file};

/// The `[offload]` settings of most tests: quick ticks, the deadline never near.
pub const QUICK: &str = "min_items = 3\npoll_interval_secs = 1\nswitch_margin_secs = 0\n\
                     realtime_items_per_sec = 1000";

/// A cheap model and a strong one on the fake, both through its batch API; a task whose
/// check passes "easy" items on any model and "hard" ones only on `large`. `small_extra`:
/// more lines for `[models.small]`.
pub fn offload_config(dir: &Path, fake: &FakeProvider, offload: &str, small_extra: &str) {
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
{offload}

[providers.fake]
kind = "openai"
base_url = "{base}"
batch_api = true

[models.small]
provider = "fake"
name = "small-1"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
context_window = 16000
tier = 1
{small_extra}

[models.large]
provider = "fake"
name = "large-1"
input_usd_per_mtok = 4.0
output_usd_per_mtok = 8.0
context_window = 16000
tier = 1

[tasks.read]
prompt = "{{{{ text }}}}"
max_output_tokens = 100
[tasks.read.validate]
regex = "^fake reply from (\\S+: easy|large-1: hard)"
"#,
            store = dir.join("store").display(),
            base = fake.base_url,
        )
        .as_bytes(),
    );
}

pub fn docs(dir: &Path, easy: usize, hard: usize) -> std::path::PathBuf {
    let body: String = (0..easy)
        .map(|i| format!("easy-{i}"))
        .chain((0..hard).map(|i| format!("hard-{i}")))
        .map(|id| format!("{{\"id\":\"{id}\",\"text\":\"{id} document\"}}\n"))
        .collect();
    write_file(dir, "docs.jsonl", body.as_bytes())
}

pub fn run_batch(dir: &Path, input: &Path, extra: &[&str]) -> (Value, Vec<Value>, String) {
    let started = Instant::now();
    let out = run(batchyard(dir)
        .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
        .args(["--task", "read", "--json"])
        .args(extra));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    let batch = last_json(&out);
    let output = read_jsonl(
        &dir.join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join("output.jsonl"),
    );
    (batch, output, stderr)
}

pub fn steps(line: &Value) -> Vec<(String, String, bool)> {
    line["batchyard"]["cascade"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["model"].as_str().unwrap().to_owned(),
                s["outcome"].as_str().unwrap().to_owned(),
                s["provider_batch"].is_string(),
            )
        })
        .collect()
}
