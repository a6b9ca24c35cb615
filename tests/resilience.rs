//! Resilience over real HTTP with several worker processes: cooldown and fallback, operator
//! pause and resume, replay onto another provider, and keys that never leak.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use support::cluster::{Cluster, Options, wait_exit};
use support::*;

/// A second provider, healthy, with one model between small and large in price.
fn backup_toml(backup: &FakeProvider) -> String {
    format!(
        r#"
[providers.backup]
kind = "openai"
base_url = "{}"

[models.backup]
provider = "backup"
name = "backup-1"
input_usd_per_mtok = 0.50
output_usd_per_mtok = 2.00
context_window = 16000
tier = 1
"#,
        backup.base_url
    )
}

fn models_state(cluster: &Cluster) -> serde_json::Value {
    let out = run(cluster.cmd().args(["models", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    last_json(&out)
}

fn state_of(models: &serde_json::Value, key: &str) -> String {
    models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == key)
        .map(|m| m["detail"].as_str().unwrap().to_string())
        .unwrap()
}

#[test]
fn a_sick_model_cools_down_and_work_falls_back_to_the_next_adequate_one() {
    let backup = FakeProvider::start(&[]);
    let Some(cluster) = Cluster::start_opts(
        "cooldown",
        &["--fail-rate-500", "1.0"],
        Options {
            failure_threshold: 3,
            cooldown_secs: 120,
            extra_toml: backup_toml(&backup),
            ..Options::default()
        },
    ) else {
        return;
    };
    let body: String = (0..30)
        .map(|i| request_line(&format!("f-{i}"), "hello") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut workers: Vec<_> = (0..2)
        .map(|_| cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "3"]))
        .collect();
    let done = cluster.wait_terminal(&id, Duration::from_secs(120));
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 30, "{done}");
    let ok = cluster.results(&id, false);
    assert!(
        ok.iter().all(|l| l["batchyard"]["model"] == "backup"),
        "all on the fallback"
    );
    let models = models_state(&cluster);
    assert!(
        state_of(&models, "small").starts_with("cooling_down"),
        "{models}"
    );
    // The sick provider saw few calls: the breaker stopped the storm.
    let sick_calls = cluster.fake.stats()["requests"].as_u64().unwrap();
    assert!(sick_calls < 60, "calls to the sick provider: {sick_calls}");
}

#[test]
fn auth_failures_pause_the_model_until_an_operator_resumes_it() {
    let key = "sk-test-secret-123"; // what Cluster::cmd gives workers
    let Some(cluster) = Cluster::start("pause_resume", &["--require-key", key], 30) else {
        return;
    };
    let body: String = (0..6)
        .map(|i| request_line(&format!("p-{i}"), "hello") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();

    let mut wrong = cluster.cmd();
    wrong
        .env("FAKE_API_KEY", "sk-wrong-key-999")
        .args(["worker", "--exit-when-idle", "2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let out = wrong.output().unwrap();
    assert!(
        !text(&out.stderr).contains("sk-wrong-key-999"),
        "a key leaked into logs"
    );
    let models = models_state(&cluster);
    for m in ["small", "large"] {
        let s = state_of(&models, m);
        assert!(s.starts_with("paused: auth"), "{m}: {s}");
        assert!(
            !s.contains("sk-wrong"),
            "a key leaked into the pause reason: {s}"
        );
    }
    let status = cluster.status(&id);
    assert_eq!(
        status["status"], "in_progress",
        "items wait, they don't fail: {status}"
    );
    assert_eq!(status["request_counts"]["failed"], 0, "{status}");
    // `status` says what the items wait for, and what to run.
    let waits = status["waiting_for"].as_array().unwrap();
    assert!(
        waits.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("batchyard models resume small")),
        "{status}"
    );
    let out = run(cluster.cmd().args(["status", &id]));
    assert!(
        text(&out.stdout).contains("waiting    model small is paused"),
        "{}",
        text(&out.stdout)
    );
    // And so do the native API and the dashboard's detail view.
    let server = support::api::Server::start(&cluster);
    let detail = support::api::ok_json(support::api::call(
        &server,
        "GET",
        &format!("/api/batches/{id}"),
        &[],
    ));
    assert!(
        detail["waiting_for"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w.as_str().unwrap().contains("models resume small")),
        "{detail}"
    );
    drop(server);

    // The right key alone is not enough: the model stays paused until resumed.
    // Paused items come back every few seconds; the worker must outlast that.
    let mut right = cluster.spawn_worker(&["--exit-when-idle", "10"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(cluster.status(&id)["request_counts"]["completed"], 0);
    let out = run(cluster.cmd().args(["models", "resume", "small"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert!(wait_exit(&mut right, Duration::from_secs(30)).success());
    assert_eq!(done["status"], "completed", "{done}");
    let ok = cluster.results(&id, false);
    assert_eq!(ok.len(), 6);
    assert!(ok.iter().all(|l| l["batchyard"]["model"] == "small"));
    assert!(state_of(&models_state(&cluster), "large").starts_with("paused"));
    let out = run(cluster.cmd().args(["models", "resume", "nope"]));
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn retry_moves_failed_items_to_another_provider() {
    let backup = FakeProvider::start(&[]);
    let Some(cluster) = Cluster::start_opts(
        "retry_backup",
        &["--fail-rate-500", "1.0"],
        Options {
            max_attempts: 1,
            extra_toml: backup_toml(&backup),
            ..Options::default()
        },
    ) else {
        return;
    };
    let body: String = (0..8)
        .map(|i| request_line(&format!("r-{i}"), "hi") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(cluster.cmd().args(["worker", "--exit-when-idle", "2"]));
    assert!(out.status.success());
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "failed", "{done}");
    let errors = cluster.results(&id, true);
    assert_eq!(errors.len(), 8);
    assert!(errors.iter().all(|e| e["error"]["code"] == "transient"));
    assert_eq!(
        cluster.depth()["dead"],
        8,
        "exhausted retries are dead letters"
    );
    let failed_cost: f64 = errors
        .iter()
        .map(|e| e["batchyard"]["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(
        errors.iter().all(|e| e.get("job").is_none()),
        "replay data stays out of errors.jsonl"
    );
    // Bad retries are refused; a filter that matches nothing retries nothing.
    let out = run(cluster.cmd().args(["retry", &id, "--model", "nope"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = run(cluster
        .cmd()
        .args(["retry", &id, "--code", "auth", "--json"]));
    assert!(out.status.success());
    assert_eq!(last_json(&out)["retried"], 0);

    let out = run(cluster.cmd().args([
        "retry",
        &id,
        "--code",
        "transient",
        "--model",
        "backup",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let view = last_json(&out);
    assert_eq!(view["retried"], 8);
    assert_eq!(view["status"], "in_progress");
    let out = run(cluster.cmd().args(["retry", &id]));
    assert_eq!(
        out.status.code(),
        Some(2),
        "retry of a running batch: {}",
        text(&out.stderr)
    );
    let out = run(cluster.cmd().args(["worker", "--exit-when-idle", "2"]));
    assert!(out.status.success());
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let ok = cluster.results(&id, false);
    assert_eq!(ok.len(), 8);
    assert!(cluster.results(&id, true).is_empty());
    assert!(
        ok.iter()
            .all(|l| l["response"]["body"]["model"] == "backup-1")
    );
    let line_cost: f64 = ok
        .iter()
        .map(|l| l["batchyard"]["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(line_cost >= failed_cost);
    assert!(
        (done["cost_usd"].as_f64().unwrap() - line_cost).abs() < 1e-6,
        "{done}"
    );
}

#[test]
fn a_recognisable_key_appears_nowhere_we_write() {
    let key = "sk-canary-7f3a9c1e5b";
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--require-key", key]);
    let store = dir.path().join("store");
    write_file(
        dir.path(),
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{}"
[providers.p]
kind = "openai"
base_url = "{}"
api_key_env = "CANARY_KEY"
[models.m]
provider = "p"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
context_window = 8000
tier = 1
"#,
            store.display(),
            fake.base_url
        )
        .as_bytes(),
    );
    let body = [
        request_line("ok", "hello"),
        request_line("bad", "FAKE:CONTEXT"),
        request_line("flaky", "FAKE:500_ONCE"),
    ]
    .join("\n");
    let input = write_file(dir.path(), "in.jsonl", body.as_bytes());
    let out = run(batchyard(dir.path())
        .env("CANARY_KEY", key)
        .env("RUST_LOG", "debug")
        .args(["run", input.to_str().unwrap(), "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut written = text(&out.stdout) + &text(&out.stderr);
    let start = Instant::now();
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        assert!(start.elapsed() < Duration::from_secs(10));
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                written.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
    }
    assert!(
        written.contains("\"custom_id\":\"ok\""),
        "the scan saw the outputs"
    );
    assert!(!written.contains(key), "the API key was written somewhere");
    assert!(
        !written.contains("canary"),
        "part of the API key was written somewhere"
    );
}
