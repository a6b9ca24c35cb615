//! The offload lane's test kit: a config with a cheap and a strong model on the fake's batch
//! API, a document mix, one `batchyard run`, and a line's cascade trail.

use std::path::Path;
use std::time::Duration;

use batchyard_testkit::FakeProvider;
use serde_json::Value;

use super::{batchyard, run_to_output, write_file};

/// The `[offload]` settings of most tests: quick ticks, the deadline never near.
pub const QUICK: &str = "min_items = 3\npoll_interval_secs = 1\nswitch_margin_secs = 0\n\
                     realtime_items_per_sec = 1000";

/// A cheap model and a strong one on the fake, both through its batch API; a task whose
/// check passes "easy" items on any model and "hard" ones only on `large`. `small_extra`:
/// more lines for `[models.small]`.
pub fn offload_config(dir: &Path, fake: &FakeProvider, offload: &str, small_extra: &str) {
    let provider = format!(
        "kind = \"openai\"\nbase_url = \"{}\"\nbatch_api = true",
        fake.base_url
    );
    lane_config(dir, &provider, ["small-1", "large-1"], offload, small_extra);
}

/// As [`offload_config`], with `provider`'s table (as TOML lines) and the two models' names
/// there.
pub fn lane_config(dir: &Path, provider: &str, names: [&str; 2], offload: &str, small_extra: &str) {
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
{provider}

[models.small]
provider = "fake"
name = "{small}"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 2.0
context_window = 16000
tier = 1
{small_extra}

[models.large]
provider = "fake"
name = "{large}"
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
            small = names[0],
            large = names[1],
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
    run_to_output(
        dir,
        batchyard(dir)
            .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
            .args(["--task", "read", "--json"])
            .args(extra),
    )
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

/// Every one of `items` items of batch `id` ended exactly once, answered through a provider
/// batch, and the fake accepted exactly one provider batch (never a second, paid, one).
pub fn assert_once_through_one_provider_batch(
    cluster: &super::cluster::Cluster,
    id: &str,
    items: usize,
) {
    let done = cluster.wait_terminal(id, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done}");
    let lines = cluster.results(id, false);
    assert_eq!(lines.len(), items, "{lines:?}");
    let ids: std::collections::BTreeSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), items, "each item exactly once");
    for line in &lines {
        let steps = line["batchyard"]["cascade"].as_array().unwrap();
        assert!(
            steps.iter().any(|s| s["provider_batch"].is_string()),
            "answered through the batch API: {line}"
        );
    }
    let stats = cluster.fake.stats();
    assert_eq!(
        stats["batches"]["created"], 1,
        "one paid provider batch: {stats}"
    );
}
