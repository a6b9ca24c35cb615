//! batchyard's own `serve` is an OpenAI-compatible batch server, so one batchyard can offload
//! to another: a downstream `batchyard run --deadline` sends its waves through the upstream's
//! `/v1/files` + `/v1/batches` (real HTTP, a bearer token), and the upstream (Redis, S3, a
//! worker, the fake provider) runs them as its own batches.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::api::{Server, TOKEN, Workers, call, json_of};
use support::cluster::{Cluster, Options};
use support::offload::{QUICK, docs, lane_config, steps};
use support::*;

/// The downstream: a cheap and a strong model, both the upstream's, through its batch API.
fn downstream(server: &Server) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let provider = format!(
        "kind = \"openai\"\nbase_url = \"{}/v1\"\napi_key_env = \"UPSTREAM_TOKEN\"\nbatch_api = true",
        server.base
    );
    lane_config(dir.path(), &provider, ["small", "large"], QUICK, "");
    dir
}

#[test]
fn one_batchyard_offloads_its_waves_to_another() {
    let Some(upstream) = Cluster::start_opts("offload_chain", &[], Options::default()) else {
        return;
    };
    let server = Server::start(&upstream);
    let _workers = Workers(vec![upstream.spawn_worker(&[])]);

    let dir = downstream(&server);
    let input = docs(dir.path(), 6, 4);
    let started = Instant::now();
    let out = run(batchyard(dir.path())
        .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
        .args(["--task", "read", "--json", "--deadline", "1h"])
        .env("UPSTREAM_TOKEN", TOKEN));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(120));
    assert!(!stderr.contains(TOKEN), "the token leaked into the log");
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    let output = read_jsonl(
        &dir.path()
            .join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join("output.jsonl"),
    );
    assert_eq!(output.len(), 10);
    for line in &output {
        let id = line["custom_id"].as_str().unwrap();
        let want: &[(&str, &str)] = if id.starts_with("easy") {
            &[("small", "passed")]
        } else {
            &[("small", "failed_validation"), ("large", "passed")]
        };
        let got = steps(line);
        assert_eq!(got.len(), want.len(), "{line}");
        for ((model, outcome, batched), (m, o)) in got.iter().zip(want) {
            assert_eq!((model.as_str(), outcome.as_str(), *batched), (*m, *o, true));
        }
    }
    // The upstream ran both waves as its own batches, and answered every item through its
    // provider.
    let (status, body) = call(&server, "GET", "/v1/batches?limit=100", &[]);
    assert_eq!(status, 200, "{body}");
    let listed = json_of(&body);
    let batches = listed["data"].as_array().unwrap();
    assert_eq!(batches.len(), 2, "{listed}");
    let mut counts: Vec<u64> = batches
        .iter()
        .map(|b| {
            assert_eq!(b["status"], "completed", "{b}");
            assert!(b["metadata"]["batchyard_tag"].is_string(), "{b}");
            b["request_counts"]["completed"].as_u64().unwrap()
        })
        .collect();
    counts.sort_unstable();
    assert_eq!(counts, [4, 10]);
    assert_eq!(upstream.fake.stats()["requests"], 14);
}

#[test]
fn a_provider_batch_refused_outright_is_not_sent_again_and_its_items_run_real_time() {
    let Some(upstream) = Cluster::start_opts("offload_refused", &[], Options::default()) else {
        return;
    };
    let server = Server::start(&upstream);
    let dir = downstream(&server);
    let input = docs(dir.path(), 4, 0);
    let started = Instant::now();
    // A token the upstream doesn't know: its batch API answers 401.
    let out = run(batchyard(dir.path())
        .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
        .args(["--task", "read", "--json", "--deadline", "1h"])
        .env("UPSTREAM_TOKEN", "tok-not-known-here"));
    let stderr = text(&out.stderr);
    assert!(started.elapsed() < Duration::from_secs(60), "{stderr}");
    assert!(!stderr.contains("tok-not-known-here"), "the token leaked");
    assert!(
        stderr.contains("refused a provider batch"),
        "the refusal is reported: {stderr}"
    );
    let batch = last_json(&out);
    // Real-time has no better luck with a bad token: every item ends, none waits forever.
    assert_eq!(batch["request_counts"]["failed"], 4, "{batch}");
    let (status, body) = call(&server, "GET", "/v1/batches?limit=100", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        json_of(&body)["data"].as_array().unwrap().len(),
        0,
        "{body}"
    );
}
