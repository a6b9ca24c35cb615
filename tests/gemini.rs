//! A `kind = "gemini"` model in a whole deployment (real Redis, S3, worker processes, the fake
//! provider's Gemini dialect over loopback): routed to first as the cheapest, its
//! `RESOURCE_EXHAUSTED` throttling waited out with Google's `retryDelay`, its usage billed,
//! and its items falling back to the next model when it is out of quota or overloaded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::cluster::{Cluster, Options, wait_exit};
use support::*;

/// What `Cluster::cmd` puts in `FAKE_API_KEY`; the Gemini fake requires it as `x-goog-api-key`.
const KEY: &str = "sk-test-secret-123";

/// A Gemini provider on `gemini`'s fake, with one model cheaper than the cluster's `small`,
/// so the router tries it first. `headers` are extra provider headers (a fake fault).
fn gemini_toml(gemini: &FakeProvider, headers: &str) -> String {
    format!(
        r#"
[providers.google]
kind = "gemini"
base_url = "{}/v1beta"
api_key_env = "FAKE_API_KEY"
{headers}

[models.flash]
provider = "google"
name = "gemini-2.5-flash"
input_usd_per_mtok = 0.05
output_usd_per_mtok = 0.20
context_window = 1000000
tier = 1
"#,
        gemini.url
    )
}

fn submit_items(cluster: &Cluster, prefix: &str, n: usize) -> String {
    let body: String = (0..n)
        .map(|i| request_line(&format!("{prefix}-{i}"), &format!("item {i} of {prefix}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Runs two workers until the batch is terminal and they are idle.
fn work(cluster: &Cluster, id: &str) -> Value {
    let mut workers: Vec<_> = (0..2)
        .map(|_| cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "3"]))
        .collect();
    let done = cluster.wait_terminal(id, Duration::from_secs(120));
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    done
}

fn worker_logs(cluster: &Cluster) -> String {
    let mut logs = String::new();
    for entry in std::fs::read_dir(cluster.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "log") {
            logs.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    logs
}

#[test]
fn a_throttled_gemini_model_answers_after_its_retry_delay_and_bills_its_usage() {
    // Four requests per 2 s window: twelve items need three windows, so some calls are
    // answered 429 RESOURCE_EXHAUSTED with a retryDelay to the window's end.
    let gemini = FakeProvider::start(&["--require-key", KEY, "--rpm", "4", "--window-secs", "2"]);
    let Some(cluster) = Cluster::start_opts(
        "gemini_throttled",
        &[],
        Options {
            extra_toml: gemini_toml(&gemini, ""),
            // Twelve items through 4 slots a window: on a busy machine an item may lose the
            // race for a slot a few windows running, and the 429s can use up the default
            // retry budget (a separate guard, tested in workers/tests/retry_gate.rs and health.rs). Here both are
            // roomy: the point is that routine throttling is waited out in place, on flash.
            retry_attempts: Some(8),
            retry_budget_min: Some(200),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = submit_items(&cluster, "g", 12);
    let started = std::time::Instant::now();
    let done = work(&cluster, &id);
    let elapsed = started.elapsed();
    assert_eq!(
        done["status"],
        "completed",
        "{done} {:?}",
        cluster.results(&id, true).first()
    );
    assert_eq!(done["request_counts"]["completed"], 12, "{done}");

    let ok = cluster.results(&id, false);
    assert_eq!(ok.len(), 12);
    let mut billed = 0.0;
    for line in &ok {
        assert_eq!(line["batchyard"]["model"], "flash", "{line}");
        let body = &line["response"]["body"];
        assert_eq!(body["model"], "gemini-2.5-flash", "{line}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{line}");
        let content = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            content.starts_with("fake reply from gemini-2.5-flash: "),
            "{content}"
        );
        // The cost is usageMetadata at flash's prices.
        let (input, output) = (
            body["usage"]["prompt_tokens"].as_f64().unwrap(),
            body["usage"]["completion_tokens"].as_f64().unwrap(),
        );
        assert!(input > 0.0 && output > 0.0, "{line}");
        let cost = line["batchyard"]["cost_usd"].as_f64().unwrap();
        let expected = (input * 0.05 + output * 0.20) / 1e6;
        assert!((cost - expected).abs() < 1e-12, "{cost} vs {expected}");
        billed += cost;
    }
    assert!(
        (done["cost_usd"].as_f64().unwrap() - billed).abs() < 1e-9,
        "{done}"
    );

    let stats = gemini.stats();
    eprintln!(
        "gemini throttled: 12 items in {elapsed:?}, {} calls answered 429 RESOURCE_EXHAUSTED, \
         at most {} admitted per 2 s window",
        stats["by_status"]["429"], stats["max_requests_per_window"]
    );
    assert_eq!(stats["by_status"]["200"], 12, "{stats}");
    assert!(
        stats["by_status"]["429"].as_u64().unwrap_or(0) > 0,
        "the limit was hit: {stats}"
    );
    assert!(
        stats["max_requests_per_window"].as_u64().unwrap() <= 4,
        "{stats}"
    );
    assert_eq!(cluster.fake.stats()["requests"], 0, "nothing fell back");
    assert!(
        !worker_logs(&cluster).contains(KEY),
        "the key reached a log"
    );
}

#[test]
fn a_gemini_model_out_of_quota_or_overloaded_falls_back_to_the_next_model() {
    // Out of quota: a per-day QuotaFailure pauses flash after its first answer, and every
    // item moves on to the next adequate model, small.
    let gemini = FakeProvider::start(&["--require-key", KEY]);
    let Some(cluster) = Cluster::start_opts(
        "gemini_quota",
        &[],
        Options {
            extra_toml: gemini_toml(&gemini, "headers = { \"x-fake-fault\" = \"quota\" }"),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = submit_items(&cluster, "q", 10);
    let done = work(&cluster, &id);
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 10, "{done}");
    let ok = cluster.results(&id, false);
    assert!(
        ok.iter().all(|l| l["batchyard"]["model"] == "small"),
        "all on the fallback"
    );
    let quota_calls = gemini.stats()["by_status"]["429"].as_u64().unwrap();
    assert!(
        (1..=8).contains(&quota_calls),
        "a paused model is not called again: {quota_calls}"
    );
    let out = run(cluster.cmd().args(["models", "--json"]));
    let models = last_json(&out);
    let flash = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["model"] == "flash")
        .unwrap()
        .clone();
    let detail = flash["detail"].as_str().unwrap();
    assert!(detail.starts_with("paused"), "{flash}");
    assert!(detail.contains("quota"), "{flash}");
    assert!(!detail.contains(KEY), "{flash}");

    // Overloaded: 503 UNAVAILABLE on every call is transient; three in a row cool flash down
    // and the items fall back.
    let gemini = FakeProvider::start(&["--require-key", KEY, "--fail-rate-503", "1.0"]);
    let Some(cluster) = Cluster::start_opts(
        "gemini_overloaded",
        &[],
        Options {
            failure_threshold: 3,
            cooldown_secs: 120,
            extra_toml: gemini_toml(&gemini, ""),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = submit_items(&cluster, "o", 10);
    let done = work(&cluster, &id);
    assert_eq!(done["status"], "completed", "{done}");
    let ok = cluster.results(&id, false);
    assert_eq!(ok.len(), 10);
    assert!(
        ok.iter().all(|l| l["batchyard"]["model"] == "small"),
        "all on the fallback"
    );
    let overloaded = gemini.stats()["by_status"]["503"].as_u64().unwrap();
    assert!(
        (3..60).contains(&overloaded),
        "the breaker stopped the calls: {overloaded}"
    );
    assert!(
        !worker_logs(&cluster).contains(KEY),
        "the key reached a log"
    );
}
