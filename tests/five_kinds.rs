//! One task's cascade across every provider kind, end to end: an in-process `batchyard run`
//! whose candidates are a simulated model, Gemini, Bedrock, Azure OpenAI and Anthropic (the
//! fake provider's dialects over loopback), cheapest first. A validator passes "easy" items on
//! the first real model and "hard" ones only on Anthropic, so hard items walk all five kinds.
//! And when the cheapest real model is a throttled Bedrock one, items move to Gemini.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::*;

const KEY: &str = "five-kinds-key-9d2c";
const AWS_SECRET: &str = "five-kinds-aws-secret-0c4e";
/// The fake checks every Converse call's SigV4 signature against this identity.
const SIGNED: [&str; 4] = [
    "--bedrock-secret",
    AWS_SECRET,
    "--bedrock-key-id",
    "AKIDFIVEKINDS",
];

/// The providers of every kind; `bedrock` and the others may be different fakes.
fn providers(all: &FakeProvider, bedrock: &FakeProvider) -> String {
    format!(
        r#"
[providers.sim]
kind = "simulated"

[providers.google]
kind = "gemini"
base_url = "{all}/v1beta"
api_key_env = "FIVE_KEY"

[providers.aws]
kind = "bedrock"
region = "us-east-1"
base_url = "{bedrock}"
access_key_id_env = "FIVE_AWS_ID"
secret_access_key_env = "FIVE_AWS_SECRET"

[providers.azure]
kind = "azure_openai"
base_url = "{all}"
api_version = "2024-10-21"
api_key_env = "FIVE_KEY"

[providers.claude]
kind = "anthropic"
base_url = "{all}"
api_key_env = "FIVE_KEY"
"#,
        all = all.url,
        bedrock = bedrock.url,
    )
}

/// One model per kind, priced so the cascade runs sim → gemini → bedrock → azure → anthropic
/// (with `nova_first`, Bedrock is the cheapest and the simulated model is left out).
fn models(nova_first: bool) -> String {
    [
        ("sim", "sim", "sim-1", 0.01),
        ("flash", "google", "gemini-flash", 0.05),
        (
            "nova",
            "aws",
            "us.amazon.nova-lite-v1:0",
            if nova_first { 0.001 } else { 0.06 },
        ),
        ("az", "azure", "mini-deploy", 0.15),
        ("claude", "claude", "claude-sonnet", 3.0),
    ]
    .iter()
    .map(|(key, provider, name, price)| {
        let capability = if nova_first && *key == "sim" {
            "other"
        } else {
            "five"
        };
        format!(
            "[models.{key}]\nprovider = \"{provider}\"\nname = \"{name}\"\n\
             input_usd_per_mtok = {price}\noutput_usd_per_mtok = {out}\n\
             context_window = 128000\ntier = 1\ncapabilities = [\"{capability}\"]\n\n",
            out = price * 4.0
        )
    })
    .collect()
}

fn config(
    dir: &Path,
    all: &FakeProvider,
    bedrock: &FakeProvider,
    task: &str,
    nova_first: bool,
) -> PathBuf {
    write_file(
        dir,
        "batchyard.toml",
        format!(
            "[storage]\nurl = \"file://{store}\"\n\n[routing]\nlearn = false\n\n\
             [retry]\nbase_ms = 5\ncap_ms = 20\nmax_attempts = 2\n{providers}\n{models}\n{task}",
            store = dir.join("store").display(),
            providers = providers(all, bedrock),
            models = models(nova_first),
        )
        .as_bytes(),
    )
}

fn docs(dir: &Path, ids: &[String]) -> PathBuf {
    let body: String = ids
        .iter()
        .map(|id| format!("{{\"id\":\"{id}\",\"text\":\"{id}: a document to read\"}}\n"))
        .collect();
    write_file(dir, "docs.jsonl", body.as_bytes())
}

fn run_batch(dir: &Path, input: &Path, task: &str) -> (Value, Vec<Value>, String) {
    let (batch, output, stderr) = run_to_output(
        dir,
        batchyard(dir)
            .args(["run", input.to_str().unwrap(), "--task", task, "--json"])
            .args(["--concurrency", "4"])
            .env("FIVE_KEY", KEY)
            .env("FIVE_AWS_ID", "AKIDFIVEKINDS")
            .env("FIVE_AWS_SECRET", AWS_SECRET),
    );
    for secret in [KEY, AWS_SECRET] {
        assert!(!stderr.contains(secret), "a secret in stderr");
    }
    (batch, output, stderr)
}

fn line<'a>(output: &'a [Value], id: &str) -> &'a Value {
    output
        .iter()
        .find(|l| l["custom_id"] == id)
        .unwrap_or_else(|| panic!("no line for {id}"))
}

fn trail(line: &Value) -> Vec<String> {
    line["batchyard"]["cascade"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["model"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_hard_item_walks_all_five_kinds_and_an_easy_one_stops_at_the_first_real_model() {
    let dir = tempfile::tempdir().unwrap();
    let all = FakeProvider::start(&SIGNED);
    let task = "[tasks.read]\nprompt = \"{{ text }}\"\nmax_output_tokens = 100\n\
                requires = [\"five\"]\n[tasks.read.validate]\n\
                regex = \"^fake reply from (\\\\S+: easy|claude-sonnet: hard)\"\n";
    config(dir.path(), &all, &all, task, false);
    let ids: Vec<String> = (0..4)
        .map(|i| format!("easy-{i}"))
        .chain((0..4).map(|i| format!("hard-{i}")))
        .collect();
    let (batch, output, _) = run_batch(dir.path(), &docs(dir.path(), &ids), "read");
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 8, "{batch}");
    for id in &ids {
        let l = line(&output, id);
        let steps = trail(l);
        if id.starts_with("easy") {
            // The simulated model's answer fails the check; Gemini's passes.
            assert_eq!(l["batchyard"]["model"], "flash", "{l}");
            assert_eq!(steps, ["sim", "flash"], "{l}");
        } else {
            assert_eq!(l["batchyard"]["model"], "claude", "{l}");
            assert_eq!(steps, ["sim", "flash", "nova", "az", "claude"], "{l}");
            assert_eq!(l["batchyard"]["escalations"], 4, "{l}");
        }
        assert!(l["batchyard"]["cost_usd"].as_f64().unwrap() > 0.0, "{l}");
    }
    let kinds: BTreeSet<String> = output.iter().flat_map(trail).collect();
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    // Every signed Converse call passed the fake's SigV4 check.
    assert_eq!(all.count(403), 0);
}

#[test]
fn items_leave_a_throttled_bedrock_model_for_gemini() {
    let dir = tempfile::tempdir().unwrap();
    let all = FakeProvider::start(&SIGNED);
    // Every Converse call is a 429 ThrottlingException.
    let bedrock = FakeProvider::start(&[&SIGNED[..], &["--fail-rate-429", "1.0"]].concat());
    // Bedrock is the cheapest model this task may use; Gemini comes next.
    let task = "[tasks.plain]\nprompt = \"{{ text }}\"\nmax_output_tokens = 100\n\
                requires = [\"five\"]\n";
    config(dir.path(), &all, &bedrock, task, true);
    let ids: Vec<String> = (0..12).map(|i| format!("item-{i}")).collect();
    let (batch, output, _) = run_batch(dir.path(), &docs(dir.path(), &ids), "plain");
    assert_eq!(batch["status"], "completed", "{batch}");
    for id in &ids {
        let l = line(&output, id);
        assert_eq!(l["batchyard"]["model"], "flash", "{l}");
    }
    let throttled = bedrock.count(429);
    // At most the in-place attempts ([retry] max_attempts = 2) of each item.
    assert!((1..=24).contains(&throttled), "429s served: {throttled}");
}
