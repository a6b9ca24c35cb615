//! Validator-gated cascade: an answer that fails the task's checks escalates to the next
//! candidate model; when none passes, the item ends as `validation_failed`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batchyard_testkit::FakeProvider;
use support::*;

fn config(dir: &std::path::Path, fake: &FakeProvider, validate: &str) -> std::path::PathBuf {
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
input_usd_per_mtok = 0.10
output_usd_per_mtok = 0.40
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

[tasks.check.validate]
{validate}
"#,
            store = dir.join("store").display(),
            base = fake.base_url,
        )
        .as_bytes(),
    )
}

fn docs(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let body: String = (0..n)
        .map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"document {i}\"}}\n"))
        .collect();
    write_file(dir, "docs.jsonl", body.as_bytes())
}

fn lines(dir: &std::path::Path, batch: &serde_json::Value, file: &str) -> Vec<serde_json::Value> {
    read_jsonl(
        &dir.join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join(file),
    )
}

#[test]
fn a_failing_answer_escalates_to_the_next_model() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    // The fake names the model in its reply; only the large model's answer passes.
    config(dir.path(), &fake, "regex = \"large-1\"\nmin_chars = 5");
    let input = docs(dir.path(), 4);
    let out = run(batchyard(dir.path()).args([
        "run",
        input.to_str().unwrap(),
        "--task",
        "check",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed");
    let ok = lines(dir.path(), &batch, "output.jsonl");
    assert_eq!(ok.len(), 4);
    for line in &ok {
        assert_eq!(line["batchyard"]["model"], "large");
        assert_eq!(line["batchyard"]["escalations"], 1);
        assert_eq!(
            line["batchyard"]["attempts"], 2,
            "one call each to small and large"
        );
        assert!(line["batchyard"]["cost_usd"].as_f64().unwrap() > 0.0);
    }
    assert_eq!(
        fake.stats()["requests"],
        8,
        "small, then large, for every item"
    );
}

#[test]
fn when_no_model_passes_the_item_is_validation_failed() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(dir.path(), &fake, "regex = \"^never$\"");
    let input = docs(dir.path(), 2);
    let out = run(batchyard(dir.path()).args([
        "run",
        input.to_str().unwrap(),
        "--task",
        "check",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "failed");
    let errors = lines(dir.path(), &batch, "errors.jsonl");
    assert_eq!(errors.len(), 2);
    for e in &errors {
        assert_eq!(e["error"]["code"], "validation_failed");
        assert!(
            e["error"]["message"].as_str().unwrap().contains("regex"),
            "{e}"
        );
        assert!(
            e["batchyard"]["cost_usd"].as_f64().unwrap() > 0.0,
            "failed answers still cost"
        );
    }
}

#[test]
fn a_json_schema_validator_checks_structure() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(
        dir.path(),
        &fake,
        "json_schema = { type = \"object\", required = [\"sentiment\"] }",
    );
    let input = docs(dir.path(), 1);
    let out = run(batchyard(dir.path()).args([
        "run",
        input.to_str().unwrap(),
        "--task",
        "check",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let errors = lines(dir.path(), &last_json(&out), "errors.jsonl");
    assert_eq!(errors.len(), 1, "plain text is not JSON");
    assert!(
        errors[0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not JSON"),
        "{}",
        errors[0]
    );
}

#[test]
fn a_bad_validator_is_a_config_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(dir.path(), &fake, "regex = \"(unclosed\"");
    let input = docs(dir.path(), 1);
    let out = run(batchyard(dir.path()).args(["run", input.to_str().unwrap(), "--task", "check"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("tasks.check.validate.regex"), "{stderr}");
}
