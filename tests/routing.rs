//! The cheapest adequate model, end to end: learned adequacy, the result cache, fail-closed
//! budgets, `estimate` and `route`. Single-process (`run`) against the fake provider over
//! loopback HTTP; the distributed budget replay is in tests/budget.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::*;

/// Two models 2.5× apart in price; `extra` is appended (validators, routing, cache).
fn config(dir: &Path, fake: &FakeProvider, extra: &str) -> PathBuf {
    write_file(
        dir,
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{store}"

[providers.fake]
kind = "openai"
base_url = "{base}"

[models.small]
provider = "fake"
name = "small-1"
input_usd_per_mtok = 1.00
output_usd_per_mtok = 4.00
context_window = 16000
tier = 1

[models.large]
provider = "fake"
name = "large-1"
input_usd_per_mtok = 2.50
output_usd_per_mtok = 10.00
context_window = 128000
tier = 3

[tasks.check]
prompt = "{{{{ text }}}}"
max_output_tokens = 100
{extra}
"#,
            store = dir.join("store").display(),
            base = fake.base_url,
        )
        .as_bytes(),
    )
}

fn docs(dir: &Path, name: &str, n: usize) -> PathBuf {
    let body: String = (0..n)
        .map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"document number {i:04}\"}}\n"))
        .collect();
    write_file(dir, name, body.as_bytes())
}

fn run_batch(dir: &Path, input: &Path, extra: &[&str]) -> Value {
    let mut cmd = batchyard(dir);
    cmd.args(["run", input.to_str().unwrap(), "--task", "check", "--json"])
        .args(extra);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", text(&out.stderr));
    last_json(&out)
}

fn batch_file(dir: &Path, batch: &Value, file: &str) -> PathBuf {
    dir.join("store/batches")
        .join(batch["id"].as_str().unwrap())
        .join(file)
}

fn manifest(dir: &Path, batch: &Value) -> Value {
    serde_json::from_slice(&std::fs::read(batch_file(dir, batch, "manifest.json")).unwrap())
        .unwrap()
}

#[test]
fn the_router_learns_that_the_cheap_model_fails_and_stops_asking_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    // The fake names the model in its reply; only the large model's answers pass.
    config(
        dir.path(),
        &fake,
        "[tasks.check.validate]\nregex = \"large-1\"\n",
    );
    let input = docs(dir.path(), "docs.jsonl", 40);
    let batch = run_batch(dir.path(), &input, &["--concurrency", "1"]);
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["completed"], 40);
    let stats = fake.stats();
    let total = stats["requests"].as_u64().unwrap();
    let small = total - 40;
    // A static cheapest-first cascade would ask the small model all 40 times.
    assert!(
        small <= 15,
        "the small model was asked {small} times of 40 items: {stats}"
    );
    assert!(small >= 1, "the small model must get a first chance");
    let m = manifest(dir.path(), &batch);
    let by = &m["spend_by_model"];
    assert_eq!(by["small"]["passes"], 0, "{m}");
    assert_eq!(by["small"]["fails"].as_u64().unwrap(), small, "{m}");
    assert_eq!(by["large"]["passes"], 40, "{m}");
    assert_eq!(m["escalations"].as_u64().unwrap(), small, "{m}");
    // Every attempt's cost counts: per-model costs add up to the total.
    let per_model: f64 = ["small", "large"]
        .iter()
        .map(|k| by[k]["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(
        (per_model - m["cost_usd"].as_f64().unwrap()).abs() < 1e-9,
        "{m}"
    );
    let est = &m["estimate"];
    assert!(est["estimated_input_tokens"].as_u64().unwrap() > 0, "{m}");
    assert!(est["ratio"].as_f64().unwrap() > 0.2, "{m}");
}

#[test]
fn a_rerun_of_an_unchanged_input_is_served_from_the_cache_and_costs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(dir.path(), &fake, "");
    let input = docs(dir.path(), "docs.jsonl", 12);
    let first = run_batch(dir.path(), &input, &[]);
    assert_eq!(first["request_counts"]["completed"], 12);
    assert!(first["cost_usd"].as_f64().unwrap() > 0.0);
    let calls = fake.stats()["requests"].as_u64().unwrap();
    assert_eq!(calls, 12);

    let second = run_batch(dir.path(), &input, &[]);
    assert_eq!(second["request_counts"]["completed"], 12);
    assert_eq!(second["cost_usd"].as_f64().unwrap(), 0.0, "{second}");
    assert_eq!(
        fake.stats()["requests"].as_u64().unwrap(),
        calls,
        "no calls"
    );
    let lines = read_jsonl(&batch_file(dir.path(), &second, "output.jsonl"));
    assert!(lines.iter().all(|l| l["batchyard"]["cached"] == true));
    assert_eq!(manifest(dir.path(), &second)["cache_hits"], 12);
    // Same answers as the first run.
    let before = read_jsonl(&batch_file(dir.path(), &first, "output.jsonl"));
    let content = |ls: &[Value], id: &str| {
        ls.iter()
            .find(|l| l["custom_id"] == id)
            .map(|l| l["response"]["body"]["choices"][0]["message"]["content"].clone())
            .unwrap()
    };
    assert_eq!(content(&before, "d3"), content(&lines, "d3"));

    let third = run_batch(dir.path(), &input, &["--no-cache"]);
    assert!(third["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(fake.stats()["requests"].as_u64().unwrap(), calls + 12);
}

#[test]
fn a_cached_answer_still_passes_through_validation() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(dir.path(), &fake, "");
    let input = docs(dir.path(), "docs.jsonl", 3);
    run_batch(dir.path(), &input, &[]);
    // Now the task demands what the cached small-model answers lack.
    config(
        dir.path(),
        &fake,
        "[tasks.check.validate]\nregex = \"large-1\"\n",
    );
    let again = run_batch(dir.path(), &input, &[]);
    let lines = read_jsonl(&batch_file(dir.path(), &again, "output.jsonl"));
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["batchyard"]["model"], "large", "{l}");
        assert_eq!(l["batchyard"]["cascade"][0]["cached"], true, "{l}");
        assert_eq!(l["batchyard"]["cascade"][0]["outcome"], "failed_validation");
    }
}

#[test]
fn a_budget_fails_closed_and_spend_never_exceeds_it() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(dir.path(), &fake, "[cache]\nenabled = false\n");
    let input = docs(dir.path(), "docs.jsonl", 60);
    // A call reserves ~$0.00041 (100 output tokens at $4/M) and settles to ~$0.00005 (the
    // fake's short answer), so $0.0015 pays for a few dozen of the 60 items, not all.
    let batch = run_batch(
        dir.path(),
        &input,
        &["--budget-usd", "0.0015", "--concurrency", "4"],
    );
    let spent = batch["cost_usd"].as_f64().unwrap();
    assert!(spent <= 0.0015 + 1e-12, "spent {spent} of 0.0015");
    assert!(spent > 0.0);
    let errors = read_jsonl(&batch_file(dir.path(), &batch, "errors.jsonl"));
    let ok = read_jsonl(&batch_file(dir.path(), &batch, "output.jsonl"));
    assert_eq!(ok.len() + errors.len(), 60);
    assert!(ok.len() >= 5, "some items ran: {}", ok.len());
    assert!(errors.len() >= 10, "the rest stopped: {}", errors.len());
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "budget_exhausted"),
        "{errors:?}"
    );
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--budget-usd"),
        "the message says what to do"
    );
    assert!(fake.stats()["requests"].as_u64().unwrap() <= ok.len() as u64 + 4);
    let m = manifest(dir.path(), &batch);
    assert_eq!(m["budget"]["budget_usd"], 0.0015);
    assert_eq!(m["budget"]["exhausted"], true);
    assert!(m["budget"]["remaining_usd"].as_f64().unwrap() >= 0.0);
}

#[test]
fn estimate_prints_cost_per_model_and_enqueues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let docs = repo_root().join("examples/documents");
    let out = run(batchyard(dir.path()).args([
        "estimate",
        docs.to_str().unwrap(),
        "--task",
        "extract",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let est = last_json(&out);
    assert_eq!(est["items"], 25);
    assert_eq!(est["invalid"], 0);
    assert!(est["prompt_tokens"].as_u64().unwrap() > 100);
    // extract needs tier 2: the small model is never a candidate.
    assert!(est["models"].get("small").is_none(), "{est}");
    let medium = est["models"]["medium"]["cost_if_all_usd"].as_f64().unwrap();
    let large = est["models"]["large"]["cost_if_all_usd"].as_f64().unwrap();
    assert!(medium > 0.0 && large > medium, "{est}");
    let routed = est["routed_expected_usd"].as_f64().unwrap();
    assert!(routed >= medium && routed < medium + large, "{est}");
    assert!(!dir.path().join("batchyard-data/batches").exists());

    // submit --dry-run is the same estimate, and needs no Redis.
    let out = run(batchyard(dir.path()).args([
        "submit",
        docs.to_str().unwrap(),
        "--task",
        "extract",
        "--dry-run",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("nothing was enqueued"), "{printed}");
    assert!(printed.contains("medium"), "{printed}");
}

/// Issue 13 item 17: the worst case bounds the routed expected cost, on an input that mixes
/// short and long documents and a cheap model that usually fails the task's check.
#[test]
fn estimate_worst_case_is_never_below_the_routed_expected_cost() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(
        dir.path(),
        &fake,
        "[tasks.check.validate]\nregex = \"large-1\"\n",
    );
    let body: String = (0..30)
        .map(|i| {
            let words = match i % 3 {
                0 => 3,
                1 => 400,
                _ => 4000,
            };
            let text = format!("doc {i} ") + &"lorem ipsum dolor ".repeat(words);
            format!(
                "{}\n",
                serde_json::json!({"id": format!("m{i}"), "text": text})
            )
        })
        .collect();
    let input = write_file(dir.path(), "mixed.jsonl", body.as_bytes());
    let args = ["estimate", input.to_str().unwrap(), "--task", "check"];
    let out = run(batchyard(dir.path()).args(args).arg("--json"));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let est = last_json(&out);
    let routed = est["routed_expected_usd"].as_f64().unwrap();
    let worst = est["worst_case_usd"].as_f64().unwrap();
    let first = est["first_call_worst_case_usd"].as_f64().unwrap();
    assert!(routed > 0.0 && worst >= routed, "{est}");
    assert!(first <= worst, "{est}");
    // Escalations make the expected cost exceed one call per item: the old "worst case".
    assert!(first < routed, "the input should escalate: {est}");

    let out = run(batchyard(dir.path()).args(args));
    let printed = text(&out.stdout);
    let dollars = |label: &str| -> f64 {
        let line = printed
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line in {printed}"));
        line.split('$')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert!(dollars("worst case") >= dollars("routed"), "{printed}");
}

#[test]
fn estimate_names_the_bad_line_and_the_limit_that_sets_the_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    let cfg = config(dir.path(), &fake, "");
    let mut text_cfg = std::fs::read_to_string(&cfg).unwrap();
    text_cfg = text_cfg.replace("tier = 1\n", "tier = 1\nrpm = 6\n");
    std::fs::write(&cfg, text_cfg).unwrap();
    let input = write_file(
        dir.path(),
        "docs.jsonl",
        b"{\"id\":\"a\",\"text\":\"one\"}\nnot json\n{\"id\":\"b\",\"text\":\"two\"}\n",
    );
    let out =
        run(batchyard(dir.path()).args(["estimate", input.to_str().unwrap(), "--task", "check"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert!(printed.contains("1 invalid"), "{printed}");
    assert!(printed.contains("docs.jsonl:2: invalid JSON"), "{printed}");
    assert!(printed.contains("small rpm 6"), "{printed}");
    assert_eq!(fake.stats()["requests"], 0, "an estimate calls no model");
}

#[test]
fn route_explains_candidates_constraints_and_the_choice() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(batchyard(dir.path()).args([
        "route",
        "--task",
        "extract",
        "--text",
        "Contract between Acme and Bolt, 2024-01-01, $500",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let view = last_json(&out);
    assert_eq!(view["task"], "extract");
    assert_eq!(view["choice"], "medium");
    let rejected = view["rejected"].as_array().unwrap();
    assert!(
        rejected
            .iter()
            .any(|r| r["model"] == "small" && r["reason"].as_str().unwrap().contains("tier")),
        "{view}"
    );
    let cands = view["candidates"].as_array().unwrap();
    assert_eq!(cands.len(), 2);
    for c in cands {
        assert!(c["p"].as_f64().unwrap() > 0.0);
        assert!(c["worst_case_usd"].as_f64().unwrap() >= c["call_cost_usd"].as_f64().unwrap());
        assert_eq!(c["state"], "healthy");
    }
    let human = run(batchyard(dir.path()).args(["route", "--task", "extract", "--text", "hello"]));
    assert!(text(&human.stdout).contains("choice: medium first"));
    let bad = run(batchyard(dir.path()).args(["route", "--text", "x"]));
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad.stderr).contains("--task"),
        "{}",
        text(&bad.stderr)
    );
}
