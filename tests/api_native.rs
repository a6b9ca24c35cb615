//! `/api/*`, batchyard's own views for dashboards: queues, their last hour, batch summaries
//! with spend and errors, and model health, against real Redis, real S3 and a fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::api::*;
use support::cluster::Cluster;
use support::*;

const ROUTES: [&str; 5] = [
    "/api/queues",
    "/api/queues/history",
    "/api/batches",
    "/api/batches/batch_nope",
    "/api/models",
];

#[test]
fn native_endpoints_describe_queues_batches_and_models() {
    let Some(cluster) = Cluster::start("api_native", &[], 30) else {
        return;
    };
    let s = Server::start(&cluster);

    // The same tokens as /v1, and OpenAI-shaped refusals.
    for path in ROUTES {
        for token in [None, Some("wrong")] {
            let e = expect_error(curl(&s.base, "GET", path, token, &[]), 401);
            assert_eq!(e["code"], "invalid_api_key", "{path}");
        }
    }
    let e = expect_error(call(&s, "GET", "/api/batches/batch_nope", &[]), 404);
    assert_eq!(e["type"], "invalid_request_error");
    expect_error(call(&s, "GET", "/api/batches/..%2Fetc", &[]), 404);
    for q in ["limit=0", "limit=101", "limit=abc", "colour=red"] {
        expect_error(call(&s, "GET", &format!("/api/batches?{q}"), &[]), 400);
    }
    expect_error(call(&s, "POST", "/api/queues", &[]), 405);

    // The sampler takes its first point when serve starts.
    let start = Instant::now();
    let history = loop {
        let h = ok_json(call(&s, "GET", "/api/queues/history", &[]));
        if !h["points"].as_array().unwrap().is_empty() {
            break h;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no history: {h}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(history["interval_secs"], 10);
    let p = &history["points"][0];
    for k in ["t", "pending", "in_flight", "delayed", "dead"] {
        assert!(p[k].is_u64(), "{k}: {history}");
    }

    // A small batch through /v1 with a worker.
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "2"])]);
    let file = upload(&s, &input(cluster.dir.path(), "nat", 5));
    let created = ok_json(create_batch(
        &s,
        file["id"].as_str().unwrap(),
        r#"{"batchyard_budget_usd":"5"}"#,
    ));
    let bid = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        wait_batch(&s, &bid, Duration::from_secs(60))["status"],
        "completed"
    );

    let queues = ok_json(call(&s, "GET", "/api/queues", &[]));
    let q = &queues["queues"][0];
    assert!(q["name"].is_string(), "{queues}");
    for k in ["pending", "in_flight", "delayed", "dead", "total_pending"] {
        assert!(q[k].is_u64(), "{k}: {queues}");
    }
    assert_eq!(q["in_flight"], 0, "{queues}");
    assert!(queues["sampled_at"].as_u64().unwrap() > 1_700_000_000);

    // The list: newest first, finished, with its spend.
    let list = ok_json(call(&s, "GET", "/api/batches?limit=5", &[]));
    let data = list["data"].as_array().unwrap();
    assert_eq!(data.len(), 1, "{list}");
    let b = &data[0];
    assert_eq!(b["id"], bid.as_str());
    assert_eq!(b["status"], "completed");
    assert_eq!(b["progress"], 1.0);
    assert_eq!(b["request_counts"]["total"], 5);
    assert_eq!(b["request_counts"]["completed"], 5);
    assert!(b["cost_usd"].as_f64().unwrap() > 0.0, "{b}");
    assert_eq!(b["budget_usd"], 5.0);
    assert!(b["rate_per_sec"].as_f64().unwrap() > 0.0, "{b}");
    assert!(b["eta_secs"].is_null(), "{b}");
    assert!(
        b["created_at"].is_u64() && b["completed_at"].is_u64(),
        "{b}"
    );
    assert!(b.get("task").is_some(), "{b}");
    assert_eq!(
        ok_json(call(&s, "GET", "/api/batches", &[]))["data"],
        list["data"]
    );

    // One batch: the summary plus what the manifest says.
    // Replay: nothing failed, so nothing runs again; bad bodies and unknown batches are refused.
    let json_body = |b: &'static str| ["-H", "Content-Type: application/json", "--data", b];
    let r = ok_json(call(
        &s,
        "POST",
        &format!("/api/batches/{bid}/retry"),
        &json_body("{}"),
    ));
    assert_eq!(r["retried"], 0, "{r}");
    expect_error(
        call(
            &s,
            "POST",
            "/api/batches/batch_nope/retry",
            &json_body("{}"),
        ),
        404,
    );
    expect_error(
        call(
            &s,
            "POST",
            &format!("/api/batches/{bid}/retry"),
            &json_body(r#"{"cod": "x"}"#),
        ),
        400,
    );
    let one = ok_json(call(&s, "GET", &format!("/api/batches/{bid}"), &[]));
    for (k, v) in b.as_object().unwrap() {
        assert_eq!(&one[k], v, "{k}: {one}");
    }
    assert_eq!(one["partial"], false, "{one}");
    assert_eq!(one["errors_by_code"], serde_json::json!({}), "{one}");
    assert_eq!(one["dead_letters_by_code"], serde_json::json!({}), "{one}");
    let spend = one["spend_by_model"].as_object().unwrap();
    assert!(!spend.is_empty(), "{one}");
    let by_model: f64 = spend
        .values()
        .map(|m| m["cost_usd"].as_f64().unwrap())
        .sum();
    let cost = one["cost_usd"].as_f64().unwrap();
    assert!(
        (by_model - cost).abs() < 1e-9,
        "{by_model} vs {cost}: {one}"
    );
    let requests: u64 = spend
        .values()
        .map(|m| m["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(requests, 5, "{one}");

    // Models: every configured one, by tier, with prices and live health.
    let out = run(cluster
        .cmd()
        .args(["models", "pause", "large", "--reason", "auth: test pause"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let models = ok_json(call(&s, "GET", "/api/models", &[]));
    let list = models.as_array().unwrap();
    let names: Vec<&str> = list.iter().map(|m| m["model"].as_str().unwrap()).collect();
    assert_eq!(names, ["small", "large"], "{models}");
    let small = &list[0];
    assert_eq!(small["state"], "healthy", "{models}");
    assert_eq!(small["provider"], "fake");
    assert_eq!(small["tier"], 1);
    assert_eq!(small["input_usd_per_mtok"], 0.1);
    assert_eq!(small["output_usd_per_mtok"], 0.4);
    assert!(
        small["reason"].is_null() && small["until_ms"].is_null(),
        "{models}"
    );
    let large = &list[1];
    assert_eq!(large["state"], "paused", "{models}");
    assert_eq!(large["reason"], "auth: test pause", "{models}");
    s.stop();
}

fn history_times(s: &Server) -> Vec<u64> {
    ok_json(call(s, "GET", "/api/queues/history", &[]))["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["t"].as_u64().unwrap())
        .collect()
}

/// Issue 16: a batch refused at validation is shown failed with its reason (not a full green
/// bar), a cancelled batch has no rate, and the queue history survives a restart of `serve`.
#[test]
fn refused_and_cancelled_batches_tell_the_truth_and_history_survives_a_restart() {
    let Some(cluster) = Cluster::start("api_native_truth", &["--latency-ms", "100"], 30) else {
        return;
    };
    let s = Server::start(&cluster);
    let start = Instant::now();
    let before = loop {
        let t = history_times(&s);
        if !t.is_empty() {
            break t;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "no history");
        std::thread::sleep(Duration::from_millis(100));
    };

    // Three bad lines of four.
    let body = format!(
        "{}\n{{not json}}\n{{\"custom_id\": 3}}\nplain\n",
        request_line("ok-1", "hi")
    );
    let bad = write_file(cluster.dir.path(), "bad.jsonl", body.as_bytes());
    let file = upload(&s, &bad);
    let refused = ok_json(create_batch(&s, file["id"].as_str().unwrap(), "{}"));
    assert_eq!(refused["status"], "failed", "{refused}");
    let rid = refused["id"].as_str().unwrap();
    let one = ok_json(call(&s, "GET", &format!("/api/batches/{rid}"), &[]));
    assert_eq!(one["status"], "failed", "{one}");
    assert_eq!(one["progress"], 0.0, "nothing ran: {one}");
    assert_eq!(
        one["partial"], false,
        "an ended batch is not partial: {one}"
    );
    assert_eq!(
        one["errors_by_code"],
        serde_json::json!({"invalid_input": 3}),
        "{one}"
    );
    let reason = one["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("line 2") && reason.contains("and 2 more"),
        "the reason names the first bad line: {one}"
    );
    assert!(
        one["errors"].as_array().is_some_and(|e| e.len() == 3),
        "{one}"
    );

    // Cancelled while most items were queued: they settle at once without running.
    let file = upload(&s, &input(cluster.dir.path(), "slow", 200));
    let created = ok_json(create_batch(&s, file["id"].as_str().unwrap(), "{}"));
    let bid = created["id"].as_str().unwrap().to_string();
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "1"])]);
    let start = Instant::now();
    while cluster.status(&bid)["request_counts"]["completed"]
        .as_u64()
        .unwrap()
        < 3
    {
        assert!(start.elapsed() < Duration::from_secs(60), "no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok_json(call(&s, "POST", &format!("/v1/batches/{bid}/cancel"), &[]));
    assert_eq!(
        wait_batch(&s, &bid, Duration::from_secs(60))["status"],
        "cancelled"
    );
    let one = ok_json(call(&s, "GET", &format!("/api/batches/{bid}"), &[]));
    assert!(one["rate_per_sec"].is_null(), "{one}");
    assert!(
        one["errors_by_code"]["cancelled"].as_u64().unwrap() > 100,
        "{one}"
    );

    // Replay it; a second replay while the first runs is refused, naming the first.
    let json_body = ["-H", "Content-Type: application/json", "--data", "{}"];
    let retry = format!("/api/batches/{bid}/retry");
    let first = ok_json(call(&s, "POST", &retry, &json_body));
    let replay = first["replay_id"].as_str().unwrap();
    assert!(first["retried"].as_u64().unwrap() > 100, "{first}");
    let e = expect_error(call(&s, "POST", &retry, &json_body), 409);
    assert!(
        e["message"].as_str().unwrap().contains(replay),
        "the refusal names {replay}: {e}"
    );
    let done = wait_batch(&s, &bid, Duration::from_secs(120));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 200, "{done}");

    // A restart keeps the samples taken before it.
    s.stop();
    std::thread::sleep(Duration::from_millis(1100));
    let s = Server::start(&cluster);
    let after = history_times(&s);
    assert!(
        after.contains(&before[0]),
        "the first serve's sample {} is gone after a restart: {after:?}",
        before[0]
    );
    s.stop();
}
