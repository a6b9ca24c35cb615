//! `batchyard worker --metrics-addr`: a real worker on a real cluster serves Prometheus metrics
//! that add up to what the batch did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options};
use support::*;

const ITEMS: usize = 120;
/// Items submitted again in a second batch.
const AGAIN: usize = 5;

/// The address the worker logged (`metrics on http://ADDR/metrics`); it binds port 0.
fn metrics_url(dir: &Path, worker: &mut Child) -> String {
    let start = Instant::now();
    loop {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            if !name.starts_with("worker-") {
                continue;
            }
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(at) = log.find("metrics on http://") {
                let rest = &log[at + "metrics on ".len()..];
                let url: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                return url;
            }
        }
        if let Some(status) = worker.try_wait().unwrap() {
            panic!("the worker exited ({status}) before serving metrics");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the worker did not log its metrics address"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrape(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", url])
        .output()
        .expect("curl should run");
    assert!(out.status.success(), "scrape failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Every sample of `name` (exactly that metric, any labels) whose labels contain all of
/// `labels`, as (labels, value).
fn samples<'a>(body: &'a str, name: &str, labels: &[&str]) -> Vec<(&'a str, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let labels_part = if rest.is_empty() {
                ""
            } else {
                rest.strip_prefix('{')?.strip_suffix('}')?
            };
            labels
                .iter()
                .all(|want| labels_part.contains(want))
                .then(|| (labels_part, value.parse::<f64>().unwrap()))
        })
        .collect()
}

fn sum(body: &str, name: &str, labels: &[&str]) -> f64 {
    samples(body, name, labels).iter().map(|(_, v)| v).sum()
}

#[test]
fn worker_serves_prometheus_metrics_that_match_the_batch() {
    let Some(cluster) = Cluster::start_opts(
        "metrics",
        // Slow enough that the batch is seen running by the sampler; some 500s (in-place
        // retries) and some truncations (escalations).
        &[
            "--latency-ms",
            "100",
            "--fail-rate-500",
            "0.2",
            "--length-rate",
            "0.2",
        ],
        Options {
            // A declared limit puts every call through the rate limiter.
            small_extra: "rpm = 60000".into(),
            // Answers are cached, so a second batch of the same items hits the cache.
            cache: true,
            extra_toml: "[tenants.team-m]\nweight = 1\n".into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let docs: String = (0..ITEMS)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"id": format!("doc-{i}"), "text": format!("Document {i} says hello to the metrics.")})
            )
        })
        .collect();
    let input = write_file(cluster.dir.path(), "docs.jsonl", docs.as_bytes());

    let mut worker = cluster.spawn_worker(&["--concurrency", "2", "--metrics-addr", "127.0.0.1:0"]);
    let url = metrics_url(cluster.dir.path(), &mut worker);
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/metrics"),
        "{url}"
    );

    let batch = cluster.submit(input.to_str().unwrap(), &["--task", "summarize"]);
    let id = batch["id"].as_str().unwrap().to_string();
    let eta_series = format!("batch=\"{id}\"");

    // While the batch runs, its ETA shows up.
    let mut eta_seen: Option<f64> = None;
    let start = Instant::now();
    loop {
        let body = scrape(&url);
        if let Some((_, eta)) =
            samples(&body, "batchyard_batch_eta_seconds", &[&eta_series]).first()
        {
            eta_seen = Some(*eta);
        }
        let status = cluster.status(&id);
        if status["status"] == "completed" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "batch did not finish: {status}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let done = cluster.status(&id);
    assert_eq!(done["request_counts"]["total"], ITEMS as u64);
    let eta = eta_seen.expect("the batch's ETA should be served while it runs");
    assert!(eta.is_finite() && eta >= 0.0, "ETA {eta}");

    // The same first items again: answered from the cache.
    let again: String = docs.lines().take(AGAIN).map(|l| format!("{l}\n")).collect();
    let again = write_file(cluster.dir.path(), "again.jsonl", again.as_bytes());
    let second = cluster.submit(
        again.to_str().unwrap(),
        &["--task", "summarize", "--tenant", "team-m"],
    );
    let second = cluster.wait_terminal(second["id"].as_str().unwrap(), Duration::from_secs(60));

    // After the next sample the ETA is gone and the depth reads empty; every job is counted.
    let start = Instant::now();
    let body = loop {
        let body = scrape(&url);
        let eta_gone = samples(&body, "batchyard_batch_eta_seconds", &[&eta_series]).is_empty();
        let drained = sum(&body, "batchyard_queue_depth", &["state=\"pending\""]) == 0.0
            && sum(&body, "batchyard_queue_depth", &["state=\"in_flight\""]) == 0.0;
        // The last job is counted just after its ack, a moment after the batch completes.
        let counted = sum(&body, "batchyard_jobs_total", &[]) == (ITEMS + AGAIN) as f64;
        if eta_gone && drained && counted {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the ETA should go and the depth drain after the batch:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };

    // Every item ended once, by outcome and model.
    let jobs = sum(&body, "batchyard_jobs_total", &[]);
    assert_eq!(jobs, (ITEMS + AGAIN) as f64, "{body}");
    // By tenant: the first batch is the default tenant's, the second team-m's.
    assert_eq!(
        (
            sum(&body, "batchyard_jobs_total", &["tenant=\"default\""]),
            sum(&body, "batchyard_jobs_total", &["tenant=\"team-m\""])
        ),
        (ITEMS as f64, AGAIN as f64),
        "{body}"
    );
    let succeeded = sum(&body, "batchyard_jobs_total", &["outcome=\"success\""]);
    assert_eq!(
        succeeded,
        done["request_counts"]["completed"].as_f64().unwrap()
            + second["request_counts"]["completed"].as_f64().unwrap(),
        "{body}"
    );
    assert!(
        sum(&body, "batchyard_cache_hits_total", &["model=\"small\""]) >= AGAIN as f64,
        "{body}"
    );
    assert!(
        sum(
            &body,
            "batchyard_rate_limit_wait_seconds_count",
            &["model=\"small\""]
        ) > 0.0,
        "{body}"
    );
    // Tokens and spend, and the spend agrees with the ledger.
    assert!(
        sum(
            &body,
            "batchyard_tokens_total",
            &["model=\"small\"", "direction=\"input\""]
        ) > 0.0
    );
    assert!(sum(&body, "batchyard_tokens_total", &["direction=\"output\""]) > 0.0);
    let nanos = sum(&body, "batchyard_cost_nanodollars_total", &[]);
    assert!(nanos > 0.0, "{body}");
    let ledger_usd = done["cost_usd"].as_f64().unwrap() + second["cost_usd"].as_f64().unwrap();
    assert!(
        (nanos / 1e9 - ledger_usd).abs() < 1e-6,
        "metrics say ${} spent, the ledger ${ledger_usd}",
        nanos / 1e9
    );
    let usd = sum(&body, "batchyard_cost_usd_total", &[]);
    assert!(
        (usd - ledger_usd).abs() < 1e-6,
        "cost_usd_total {usd} vs {ledger_usd}"
    );
    assert!(
        body.contains("# TYPE batchyard_cost_usd_total counter"),
        "{body}"
    );
    // The depth gauge has every state.
    for state in ["pending", "in_flight", "delayed", "failed", "lost"] {
        let series = format!("state=\"{state}\"");
        assert_eq!(
            samples(&body, "batchyard_queue_depth", &[&series]).len(),
            1,
            "{state}: {body}"
        );
    }
    // Histograms render as histograms.
    assert!(
        body.contains("# TYPE batchyard_job_duration_seconds histogram"),
        "{body}"
    );
    assert_eq!(
        sum(&body, "batchyard_job_duration_seconds_count", &[]),
        (ITEMS + AGAIN) as f64
    );
    // Overhead is recorded for every delivery, including jobs put back for later.
    assert!(
        body.contains("# TYPE batchyard_job_overhead_seconds histogram"),
        "{body}"
    );
    assert!(sum(&body, "batchyard_job_overhead_seconds_count", &[]) >= (ITEMS + AGAIN) as f64);
    assert!(
        body.contains("batchyard_job_overhead_seconds_bucket{le=\"0.001\"}"),
        "{body}"
    );
    assert!(
        !samples(
            &body,
            "batchyard_provider_call_duration_seconds_bucket",
            &["model=\"small\""]
        )
        .is_empty(),
        "{body}"
    );
    // Faults showed up as retries and escalations.
    assert!(
        sum(&body, "batchyard_retries_total", &["kind=\"transient\""]) > 0.0,
        "{body}"
    );
    assert!(
        sum(
            &body,
            "batchyard_escalations_total",
            &["task=\"summarize\""]
        ) > 0.0,
        "{body}"
    );
    assert!(body.contains("# HELP batchyard_jobs_total"), "{body}");

    // SIGTERM stops the metrics server with the worker.
    terminate(&mut worker);
}

#[test]
fn a_taken_metrics_address_fails_naming_it() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run(batchyard(dir.path())
        .args(["worker", "--metrics-addr", &addr])
        .env("BATCHYARD_REDIS_URL", "redis://127.0.0.1:1"));
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&addr), "{stderr}");
    assert!(stderr.contains("cannot serve metrics"), "{stderr}");
}
