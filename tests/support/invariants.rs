//! What every fault test checks when its batch is over, whatever the fault was:
//! each custom id exactly once in `output.jsonl` ∪ `errors.jsonl`, nothing left pending,
//! the manifest's spend equal to the sum of the per-item costs, and the queue's depth
//! statistics back to zero.

use std::process::Command;

use serde_json::Value;

use super::cluster::Cluster;
use super::{exactly_once, write_file};

impl Cluster {
    /// The object key (inside the test bucket) of a file of this cluster's result store.
    pub fn s3_key(&self, rel: &str) -> String {
        let prefix = self
            .storage_url
            .strip_prefix(&format!("s3://{}/", self.s3.bucket))
            .unwrap_or_default();
        format!("{prefix}/{rel}")
    }

    /// Uploads `body` to `s3://bucket/key` with a SigV4-signed PUT (curl does the signing).
    pub fn s3_put(&self, key: &str, body: &str) {
        let file = write_file(self.dir.path(), "upload.tmp", body.as_bytes());
        let status = self
            .curl_s3()
            .arg("-T")
            .arg(&file)
            .arg(format!("{}/{}/{}", self.s3.endpoint, self.s3.bucket, key))
            .status()
            .unwrap();
        assert!(status.success(), "upload of {key} failed");
    }

    /// Downloads `s3://bucket/key`; `None` when it is not there.
    pub fn s3_get_bytes(&self, key: &str) -> Option<Vec<u8>> {
        let out = self
            .curl_s3()
            .arg(format!("{}/{}/{}", self.s3.endpoint, self.s3.bucket, key))
            .output()
            .unwrap();
        out.status.success().then_some(out.stdout)
    }

    /// Downloads and parses a JSON object; panics when it is missing.
    pub fn s3_get(&self, key: &str) -> Value {
        let body = self
            .s3_get_bytes(key)
            .unwrap_or_else(|| panic!("download of {key} failed"));
        serde_json::from_slice(&body).unwrap()
    }

    /// The keys under `prefix` (inside the test bucket), at most a thousand.
    pub fn s3_list(&self, prefix: &str) -> Vec<String> {
        let out = self
            .curl_s3()
            .arg(format!(
                "{}/{}?list-type=2&prefix={}",
                self.s3.endpoint,
                self.s3.bucket,
                prefix.replace('/', "%2F")
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "listing {prefix} failed");
        let xml = String::from_utf8_lossy(&out.stdout).into_owned();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|rest| rest.split("</Key>").next())
            .map(str::to_owned)
            .collect()
    }

    fn curl_s3(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sS",
            "-f",
            "--aws-sigv4",
            &format!("aws:amz:{}:s3", self.s3.region),
        ])
        .args(["--user", &format!("{}:{}", self.s3.key_id, self.s3.secret)]);
        cmd
    }

    /// The batch's `manifest.json` from the result store.
    pub fn manifest(&self, batch_id: &str) -> Value {
        self.s3_get(&self.s3_key(&format!("batches/{batch_id}/manifest.json")))
    }
}

/// Checks the four invariants of a finished batch and returns its (output, errors) lines.
/// `expected` is how many custom ids the input had.
pub fn assert_invariants(
    cluster: &Cluster,
    batch_id: &str,
    expected: usize,
) -> (Vec<Value>, Vec<Value>) {
    let ok = cluster.results(batch_id, false);
    let errors = cluster.results(batch_id, true);
    assert_eq!(
        exactly_once(&ok, &errors),
        expected,
        "every custom id exactly once in output ∪ errors"
    );

    let status = cluster.status(batch_id);
    let counts = &status["request_counts"];
    assert_eq!(
        counts["completed"].as_u64().unwrap_or(0) + counts["failed"].as_u64().unwrap_or(0),
        expected as u64,
        "nothing left pending: {status}"
    );

    let manifest = cluster.manifest(batch_id);
    let line_cost = |l: &Value| l["batchyard"]["cost_usd"].as_f64().unwrap_or(0.0);
    let sum: f64 = ok.iter().chain(&errors).map(line_cost).sum();
    let spent = manifest["cost_usd"].as_f64().unwrap_or(f64::NAN);
    assert!(
        (spent - sum).abs() < 1e-6,
        "manifest spend {spent} != sum of per-item costs {sum}: {manifest}"
    );

    // Other batches (a pipeline's last run, fired as the scheduler stopped) may still be
    // draining: the queue must come back to zero, within a bounded wait.
    let drained = std::time::Instant::now();
    let mut depth = cluster.depth();
    while ["pending", "in_flight", "delayed"]
        .iter()
        .any(|k| depth[*k].as_u64() != Some(0))
        && drained.elapsed() < std::time::Duration::from_secs(30)
    {
        std::thread::sleep(std::time::Duration::from_millis(250));
        depth = cluster.depth();
    }
    for key in ["pending", "in_flight", "delayed"] {
        assert_eq!(
            depth[key].as_u64(),
            Some(0),
            "depth {key} back to zero: {depth}"
        );
    }
    (ok, errors)
}
