//! What the service-fault tests share: inputs, polling with bounds, logs for failure messages,
//! and the object-store listing of a pipeline's batches.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::Cluster;
use crate::support::{request_line, write_file};

pub fn long() -> bool {
    std::env::var("BATCHYARD_CHAOS_LONG").is_ok_and(|v| v == "1" || v == "true")
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn input(cluster: &Cluster, prefix: &str, n: usize) -> PathBuf {
    let body: String = (0..n)
        .map(|i| request_line(&format!("{prefix}-{i}"), &format!("document {prefix} {i}")) + "\n")
        .collect();
    write_file(cluster.dir.path(), "in.jsonl", body.as_bytes())
}

pub fn submit(cluster: &Cluster, prefix: &str, n: usize) -> String {
    let path = input(cluster, prefix, n);
    let batch = cluster.submit(path.to_str().unwrap(), &[]);
    batch["id"].as_str().unwrap().to_string()
}

pub fn settled(cluster: &Cluster, id: &str) -> u64 {
    let c = &cluster.status(id)["request_counts"];
    c["completed"].as_u64().unwrap_or(0) + c["failed"].as_u64().unwrap_or(0)
}

/// Polls until at least `n` items of the batch have settled; panics after `limit`.
pub fn wait_settled(cluster: &Cluster, id: &str, n: u64, limit: Duration) {
    let start = Instant::now();
    while settled(cluster, id) < n {
        assert!(
            start.elapsed() < limit,
            "fewer than {n} settled in {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The last lines of every log in the cluster's folder (workers, schedulers, serve), for failure
/// messages.
pub fn logs(cluster: &Cluster) -> String {
    let mut out = String::new();
    let mut names: Vec<PathBuf> = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    for path in names {
        let body = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = body.lines().collect();
        let tail = lines[lines.len().saturating_sub(15)..].join("\n");
        out += &format!("\n--- {} ---\n{tail}", path.display());
    }
    out
}

/// Polls until the batch is terminal; on timeout panics with the queue's depth and the logs.
pub fn wait_done(cluster: &Cluster, id: &str, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let batch = cluster.status(id);
        let status = batch["status"].as_str().unwrap_or_default();
        if ["completed", "failed", "expired", "cancelled"].contains(&status) {
            return batch;
        }
        if start.elapsed() > limit {
            panic!(
                "batch not done in {limit:?}: {batch}\ndepth: {}{}",
                cluster.depth(),
                logs(cluster)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn readyz(base: &str) -> u16 {
    crate::support::api::curl(base, "GET", "/readyz", None, &["--max-time", "5"]).0
}

/// The `batches/<id>/pipeline.json` objects under the cluster's prefix: (batch id, tick).
pub fn pipeline_batches(cluster: &Cluster) -> Vec<(String, i64)> {
    let prefix = cluster.s3_key("batches/");
    let out = std::process::Command::new("curl")
        .args(["-sS", "-f", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:s3", cluster.s3.region))
        .arg("--user")
        .arg(format!("{}:{}", cluster.s3.key_id, cluster.s3.secret))
        .arg(format!(
            "{}/{}?list-type=2&max-keys=1000&prefix={}",
            cluster.s3.endpoint,
            cluster.s3.bucket,
            prefix.replace('/', "%2F")
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "listing {prefix} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!xml.contains("<IsTruncated>true"), "more than 1000 objects");
    xml.split("<Key>")
        .skip(1)
        .filter_map(|s| s.split("</Key>").next())
        .filter(|k| k.ends_with("/pipeline.json"))
        .map(|k| {
            let origin = cluster.s3_get(k);
            let batch = k
                .trim_end_matches("/pipeline.json")
                .rsplit('/')
                .next()
                .unwrap();
            (batch.to_string(), origin["tick_unix"].as_i64().unwrap())
        })
        .collect()
}

pub fn batches_between(runs: &[Value], from: i64, to: i64) -> usize {
    runs.iter()
        .filter(|r| r["outcome"] == "submitted")
        .filter(|r| (from..to).contains(&r["tick_unix"].as_i64().unwrap()))
        .count()
}
