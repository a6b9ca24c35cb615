//! `batchyard run` on embedded defaults: no Redis, no keys, the simulated provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use support::*;

#[test]
fn quick_start_processes_the_example_documents() {
    let dir = tempfile::tempdir().unwrap();
    let docs = repo_root().join("examples/documents");
    let out = run(batchyard(dir.path()).args([
        "run",
        docs.to_str().unwrap(),
        "--task",
        "summarize",
        "--json",
    ]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let batch = last_json(&out);
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["status"], "completed");
    assert_eq!(batch["request_counts"]["total"], 25);
    assert_eq!(batch["request_counts"]["completed"], 25);
    let id = batch["id"].as_str().unwrap();
    let base = dir.path().join("batchyard-data/batches").join(id);
    let lines = read_jsonl(&base.join("output.jsonl"));
    assert_eq!(lines.len(), 25);
    let ids: BTreeSet<_> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 25);
    assert!(ids.contains("tickets/ticket-001.txt"), "{ids:?}");
    assert!(ids.contains("contracts/contract-01.md"), "{ids:?}");
    for line in &lines {
        assert_eq!(line["response"]["status_code"], 200);
        assert_eq!(line["batchyard"]["simulated"], true);
        assert!(line["batchyard"]["cost_usd"].as_f64().unwrap() > 0.0);
        assert!(line["error"].is_null());
    }
    assert!(read_jsonl(&base.join("errors.jsonl")).is_empty());
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(base.join("manifest.json")).unwrap()).unwrap();
    let sum: f64 = lines
        .iter()
        .map(|l| l["batchyard"]["cost_usd"].as_f64().unwrap())
        .sum();
    assert!((manifest["cost_usd"].as_f64().unwrap() - sum).abs() < 1e-9);
    assert_eq!(manifest["reconciled"], true);
    assert!(
        text(&out.stderr).contains("skipped 1 file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn requests_jsonl_routes_pins_and_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo_root().join("examples/requests.jsonl");
    let out = run(batchyard(dir.path()).args(["run", input.to_str().unwrap(), "--json"]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let batch = last_json(&out);
    let id = batch["id"].as_str().unwrap();
    let lines = read_jsonl(
        &dir.path()
            .join("batchyard-data/batches")
            .join(id)
            .join("output.jsonl"),
    );
    let model_of = |cid: &str| {
        lines
            .iter()
            .find(|l| l["custom_id"] == cid)
            .map(|l| l["batchyard"]["model"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(
        model_of("req-3"),
        "large",
        "a pinned request stays on its model"
    );
    assert_eq!(model_of("req-1"), "small", "auto picks the cheapest model");
    assert_eq!(model_of("req-2"), "small");
}

#[test]
fn storage_flag_and_hostile_custom_ids_stay_inside_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = [
        "../../escape",
        "a/b/../../c",
        "with space",
        "ünïcødé ✓",
        "/abs",
    ];
    let body: String = hostile
        .iter()
        .map(|c| request_line(c, "hi") + "\n")
        .collect();
    let input = write_file(dir.path(), "in.jsonl", body.as_bytes());
    let store = dir.path().join("store");
    let out = run(batchyard(dir.path()).args([
        "run",
        input.to_str().unwrap(),
        "--storage",
        &format!("file://{}", store.display()),
        "--json",
    ]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let id = last_json(&out)["id"].as_str().unwrap().to_string();
    let lines = read_jsonl(&store.join("batches").join(&id).join("output.jsonl"));
    let got: BTreeSet<_> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, hostile.iter().copied().collect());
    // Nothing was written outside store/batches/<id>/.
    let mut top: Vec<_> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    top.sort();
    assert_eq!(top, ["batches"]);
    assert!(!dir.path().join("escape").exists());
    // Every outcome is in the batch's result segments, one record a line.
    let records: usize = std::fs::read_dir(store.join("batches").join(&id).join("segments"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .map(|t| t.lines().filter(|l| !l.is_empty()).count())
        .sum();
    assert_eq!(records, hostile.len());
}

#[test]
fn concurrency_and_help_flags_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(batchyard(dir.path()).arg("--help"));
    assert!(out.status.success());
    for sub in ["run", "submit", "worker", "status", "results"] {
        assert!(text(&out.stdout).contains(sub), "{sub} missing from help");
    }
    let out = run(batchyard(dir.path()).args(["run", "x", "--concurrency", "0"]));
    assert_eq!(out.status.code(), Some(2));
    let out = run(batchyard(dir.path()).args(["frobnicate"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn commands_that_need_redis_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let input = repo_root().join("examples/requests.jsonl");
    let out = run(batchyard(dir.path()).args(["submit", input.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("BATCHYARD_REDIS_URL"),
        "{}",
        text(&out.stderr)
    );
}
