//! Fail-closed budgets across worker processes, and `retry --budget-usd` resuming a batch
//! that ran out. Real Redis, the real S3-compatible server, the fake provider over HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::cluster::{Cluster, Options, wait_exit};
use support::*;

#[test]
fn two_workers_never_overspend_and_retry_with_more_budget_finishes_the_batch() {
    let Some(cluster) = Cluster::start_opts("budget", &["--latency-ms", "20"], Options::default())
    else {
        return;
    };
    let total = 120;
    let body: String = (0..total)
        .map(|i| format!("{{\"id\":\"b-{i}\",\"text\":\"budget item {i}\"}}\n"))
        .collect();
    let input = write_file(cluster.dir.path(), "docs.jsonl", body.as_bytes());
    // A call on small reserves ~$0.000123 (300 output tokens at $0.40/M) and settles to
    // ~$0.0000094 (the fake's short answer): $0.0005 pays for about 50 of the 120 items.
    let budget = 0.0005;
    let id = cluster.submit(
        input.to_str().unwrap(),
        &["--task", "summarize", "--budget-usd", &budget.to_string()],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut workers: Vec<_> = (0..2)
        .map(|_| cluster.spawn_worker(&["--concurrency", "8", "--exit-when-idle", "2"]))
        .collect();
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    let spent = done["cost_usd"].as_f64().unwrap();
    assert!(spent <= budget + 1e-12, "spent {spent} of {budget}: {done}");
    assert_eq!(done["budget_exhausted"], true, "{done}");
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_eq!(exactly_once(&ok, &errors), total);
    assert!(!ok.is_empty() && ok.len() < total, "ok {}", ok.len());
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "budget_exhausted")
    );
    let calls = cluster.fake.stats()["requests"].as_u64().unwrap();
    assert_eq!(calls, ok.len() as u64, "no call without a reservation");

    // Without more budget, a retry refuses and says what to do.
    let out = run(cluster.cmd().args(["retry", &id]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--budget-usd"),
        "{}",
        text(&out.stderr)
    );

    let out = run(cluster
        .cmd()
        .args(["retry", &id, "--budget-usd", "1", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut worker = cluster.spawn_worker(&["--concurrency", "8", "--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], total as u64, "{done}");
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_eq!(exactly_once(&ok, &errors), total);
    assert!(errors.is_empty());
    let spent_after = done["cost_usd"].as_f64().unwrap();
    assert!(spent_after > spent && spent_after <= spent + 1.0, "{done}");
    let line_sum: f64 = ok
        .iter()
        .map(|l| l["batchyard"]["cost_usd"].as_f64().unwrap())
        .sum();
    assert!(
        (line_sum - spent_after).abs() < 1e-6,
        "{line_sum} vs {spent_after}"
    );
}

/// Issue 13 item 8: a budget's worst case counts every choice a request asks for (`n`), and
/// a request without `max_tokens` is held to the allowance the budget reserved.
#[test]
fn a_budget_holds_for_requests_asking_for_many_choices() {
    let reply = format!("small-1={}", "every choice is long ".repeat(40));
    let Some(cluster) = Cluster::start_opts(
        "budget-n",
        &["--reply", &reply, "--latency-ms", "20"],
        Options::default(),
    ) else {
        return;
    };
    let total = 100;
    let body: String = (0..total)
        .map(|i| {
            let line = serde_json::json!({
                "custom_id": format!("n-{i}"),
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "small", "n": 8, "max_tokens": 100,
                         "messages": [{"role": "user", "content": format!("item {i}")}]},
            });
            format!("{line}\n")
        })
        .collect();
    let input = write_file(cluster.dir.path(), "n.jsonl", body.as_bytes());
    // One call: ~12 prompt tokens and 8 × 100 output tokens at $0.40/M ≈ $0.00032, so the
    // budget pays for about 6 of the 100 items. Counting one choice, it reserved $0.00004.
    let budget = 0.002;
    let id = cluster.submit(
        input.to_str().unwrap(),
        &["--budget-usd", &budget.to_string()],
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut worker = cluster.spawn_worker(&["--concurrency", "16", "--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    let spent = done["cost_usd"].as_f64().unwrap();
    assert!(spent <= budget + 1e-12, "spent {spent} of {budget}: {done}");
    assert_eq!(done["budget_exhausted"], true, "{done}");
    let ok = cluster.results(&id, false);
    let errors = cluster.results(&id, true);
    assert_eq!(exactly_once(&ok, &errors), total);
    assert!(!ok.is_empty(), "{done}");
    for line in &ok {
        let body = &line["response"]["body"];
        assert_eq!(body["choices"].as_array().unwrap().len(), 8, "{line}");
        assert_eq!(body["usage"]["completion_tokens"], 800, "{line}");
    }
}

/// A tenant's `max_budget_usd`: a batch without a budget gets it, a larger one is lowered
/// to it (stderr says so), the workers stop spending at it, and a replay may not ask for more.
#[test]
fn a_tenants_max_budget_bounds_its_batches_and_replays() {
    let Some(cluster) = Cluster::start_opts(
        "budget-tenant",
        &["--latency-ms", "20"],
        Options {
            extra_toml: "[tenants.capped]\nmax_budget_usd = 0.0002\n".into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let body: String = (0..40)
        .map(|i| format!("{{\"id\":\"c-{i}\",\"text\":\"capped item {i}\"}}\n"))
        .collect();
    let input = write_file(cluster.dir.path(), "docs.jsonl", body.as_bytes());
    let input = input.to_str().unwrap();
    let out = run(cluster.cmd().args([
        "submit",
        input,
        "--task",
        "summarize",
        "--tenant",
        "capped",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no budget given"),
        "{}",
        text(&out.stderr)
    );
    let batch = last_json(&out);
    assert_eq!(batch["budget_usd"], 0.0002, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    let out = run(cluster.cmd().args([
        "submit",
        input,
        "--task",
        "summarize",
        "--tenant",
        "capped",
        "--budget-usd",
        "5",
        "--json",
    ]));
    assert!(
        text(&out.stderr).contains("budget $5 is above"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(last_json(&out)["budget_usd"], 0.0002);
    let other = last_json(&out)["id"].as_str().unwrap().to_string();
    run(cluster.cmd().args(["cancel", &other]));

    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    assert_eq!(done["budget_exhausted"], true, "{done}");
    assert!(
        done["cost_usd"].as_f64().unwrap() <= 0.0002 + 1e-12,
        "{done}"
    );

    let out = run(cluster.cmd().args(["retry", &id, "--budget-usd", "1"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("max_budget_usd") && stderr.contains("0.0002"),
        "{stderr}"
    );
    let out = run(cluster
        .cmd()
        .args(["retry", &id, "--budget-usd", "0.0002", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
}
