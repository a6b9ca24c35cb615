//! Results lost from storage after their items settled (issue 13, item 3): the batch must not
//! say `completed`; each lost item ends in `errors.jsonl` as `result_lost` (named from the
//! batch's kept input) and can be run again with `retry`; the counts equal the lines in the
//! files. Real Redis and the fake provider over HTTP; results in a `file://` store, deleted
//! with `rm` as an operator or a cleanup job would.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options};
use support::{exactly_once, last_json, request_line, run, text, write_file};

struct FileStore {
    dir: PathBuf,
    url: String,
}

fn file_store(cluster: &Cluster) -> FileStore {
    let dir = cluster.dir.path().join("store");
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("file://{}", dir.display());
    FileStore { dir, url }
}

fn cmd(cluster: &Cluster, store: &FileStore) -> std::process::Command {
    let mut cmd = cluster.cmd();
    cmd.env("BATCHYARD_STORAGE_URL", &store.url);
    cmd
}

fn worker(cluster: &Cluster, store: &FileStore) -> Child {
    let log = std::fs::File::create(cluster.dir.path().join("worker.log")).unwrap();
    cmd(cluster, store)
        .args(["worker", "--concurrency", "4"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .unwrap()
}

fn status(cluster: &Cluster, store: &FileStore, id: &str) -> serde_json::Value {
    let out = run(cmd(cluster, store).args(["status", id, "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    last_json(&out)
}

fn wait_terminal(cluster: &Cluster, store: &FileStore, id: &str) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = status(cluster, store, id);
        if ["completed", "failed", "cancelled", "expired"].contains(&s["status"].as_str().unwrap())
        {
            return s;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "not done: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn lines(cluster: &Cluster, store: &FileStore, id: &str, errors: bool) -> Vec<serde_json::Value> {
    let mut c = cmd(cluster, store);
    c.args(["results", id]);
    if errors {
        c.arg("--errors");
    }
    let out = run(&mut c);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn segments_dir(store: &FileStore, id: &str) -> PathBuf {
    store.dir.join("batches").join(id).join("segments")
}

/// The batch's result segments (names sort by writer, then order written).
fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|f| f.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    files
}

/// Outcomes in one segment: a record a line.
fn records_in(file: &Path) -> usize {
    std::fs::read_to_string(file)
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

fn stored(dir: &Path) -> usize {
    segment_files(dir).iter().map(|f| records_in(f)).sum()
}

/// Submits `n` items and starts a worker; returns once `results` outcomes are in segments.
fn start_batch(cluster: &Cluster, store: &FileStore, n: usize, results: usize) -> (String, Child) {
    let body: String = (0..n)
        .map(|i| request_line(&format!("doc-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let path = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let out = run(cmd(cluster, store).args(["submit", path.to_str().unwrap(), "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = last_json(&out)["id"].as_str().unwrap().to_string();
    let w = worker(cluster, store);
    let dir = segments_dir(store, &id);
    let start = Instant::now();
    while stored(&dir) < results {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no results appeared"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    (id, w)
}

#[test]
fn results_deleted_mid_run_end_result_lost_not_completed_and_retry_runs_them() {
    let Some(cluster) =
        Cluster::start_opts("result_lost", &["--latency-ms", "40"], Options::default())
    else {
        return;
    };
    let store = file_store(&cluster);
    let n = 200;
    let (id, mut w) = start_batch(&cluster, &store, n, 60);
    let dir = segments_dir(&store, &id);
    // Whole segments go: at least 25 outcomes.
    let mut deleted = 0;
    for f in segment_files(&dir) {
        if deleted >= 25 {
            break;
        }
        deleted += records_in(&f);
        std::fs::remove_file(f).unwrap();
    }
    assert!(deleted < n, "some outcomes are left");
    let done = wait_terminal(&cluster, &store, &id);
    assert_eq!(
        done["status"], "failed",
        "an incomplete batch is not completed: {done}"
    );
    assert_eq!(done["errors"]["data"][0]["code"], "result_lost", "{done}");
    let (ok, errors) = (
        lines(&cluster, &store, &id, false),
        lines(&cluster, &store, &id, true),
    );
    assert_eq!(
        exactly_once(&ok, &errors),
        n,
        "every item is named in a file"
    );
    let lost = errors
        .iter()
        .filter(|l| l["error"]["code"] == "result_lost")
        .count();
    assert_eq!(lost, deleted);
    let counts = &done["request_counts"];
    assert_eq!(
        counts["completed"].as_u64().unwrap(),
        ok.len() as u64,
        "{done}"
    );
    assert_eq!(
        counts["failed"].as_u64().unwrap(),
        errors.len() as u64,
        "{done}"
    );

    let out = run(cmd(&cluster, &store).args(["retry", &id, "--code", "result_lost"]));
    assert!(out.status.success(), "retry: {}", text(&out.stderr));
    let done = wait_terminal(&cluster, &store, &id);
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = (
        lines(&cluster, &store, &id, false),
        lines(&cluster, &store, &id, true),
    );
    assert_eq!(exactly_once(&ok, &errors), n);
    assert_eq!(ok.len(), n);
    let _ = w.kill();
    let _ = w.wait();
}

#[test]
fn a_batch_whose_whole_folder_is_lost_says_failed_not_completed() {
    let Some(cluster) = Cluster::start_opts(
        "result_bucket_lost",
        &["--latency-ms", "40"],
        Options::default(),
    ) else {
        return;
    };
    let store = file_store(&cluster);
    let n = 120;
    let (id, mut w) = start_batch(&cluster, &store, n, 30);
    std::fs::remove_dir_all(store.dir.join("batches").join(&id)).unwrap();
    let done = wait_terminal(&cluster, &store, &id);
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["errors"]["data"][0]["code"], "result_lost", "{done}");
    let (ok, errors) = (
        lines(&cluster, &store, &id, false),
        lines(&cluster, &store, &id, true),
    );
    let counts = &done["request_counts"];
    assert_eq!(
        counts["completed"].as_u64().unwrap(),
        ok.len() as u64,
        "{done}"
    );
    assert_eq!(
        counts["failed"].as_u64().unwrap(),
        errors.len() as u64,
        "{done}"
    );
    assert!(ok.len() + errors.len() < n, "some were lost for good");
    let _ = w.kill();
    let _ = w.wait();
}
