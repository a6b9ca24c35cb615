//! `batchyard watch` and the queue view of `batchyard status`, against a real cluster.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use support::cluster::{Cluster, wait_exit};
use support::*;

fn input(cluster: &Cluster, name: &str, items: usize) -> PathBuf {
    let body: String = (0..items)
        .map(|i| request_line(&format!("{name}-{i}"), "x") + "\n")
        .collect();
    write_file(
        cluster.dir.path(),
        &format!("{name}.jsonl"),
        body.as_bytes(),
    )
}

/// `batchyard ARGS...` in the background, stdout and stderr going to files (a pipe nobody
/// reads could block it).
fn spawn_logged(cluster: &Cluster, name: &str, args: &[&str]) -> (Child, PathBuf, PathBuf) {
    let out = cluster.dir.path().join(format!("{name}.out"));
    let err = cluster.dir.path().join(format!("{name}.err"));
    let child = cluster
        .cmd()
        .args(args)
        .stdout(Stdio::from(std::fs::File::create(&out).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err).unwrap()))
        .spawn()
        .expect("batchyard should start");
    (child, out, err)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn last_json_line(stdout: &str, stderr: &str) -> serde_json::Value {
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!("last stdout line is not JSON ({e}): {stdout}\nstderr: {stderr}")
    })
}

#[test]
fn watch_follows_a_running_batch_until_it_completes() {
    let Some(cluster) = Cluster::start_opts(
        "watch-follow",
        &["--latency-ms", "30"],
        support::cluster::Options::default(),
    ) else {
        return;
    };
    let total = 200;
    let path = input(&cluster, "follow", total);
    let id = cluster.submit(path.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (mut watch, out, err) = spawn_logged(
        &cluster,
        "watch",
        &["watch", &id, "--json", "--interval-ms", "200"],
    );
    // Watching starts before any worker: the batch can't have finished yet.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch ended before the batch ran: {}",
        read(&err)
    );
    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    let status = wait_exit(&mut watch, Duration::from_secs(90));
    let (stdout, stderr) = (read(&out), read(&err));
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    let batch = last_json_line(&stdout, &stderr);
    assert_eq!(batch["id"], id.as_str());
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], total as u64);
    assert!(batch["output_file"].is_string(), "{batch}");
    // Not a terminal: plain progress lines, not one per poll, then the summary.
    assert!(
        stderr.contains(&format!("/{total} items")),
        "no progress line: {stderr}"
    );
    let lines = stderr.lines().filter(|l| l.contains(" items (")).count();
    assert!(lines < 20, "a progress line per poll: {stderr}");
    assert!(
        stderr.contains(&format!("batch {id} completed")),
        "no summary: {stderr}"
    );
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
}

#[test]
fn watch_exits_1_for_a_cancelled_batch_and_2_for_an_unknown_one() {
    let Some(cluster) = Cluster::start_opts(
        "watch-cancel",
        &["--latency-ms", "30"],
        support::cluster::Options::default(),
    ) else {
        return;
    };
    let out = run(cluster.cmd().args(["watch", "batch_doesnotexist"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("batch_doesnotexist was not found"),
        "{}",
        text(&out.stderr)
    );

    let path = input(&cluster, "cancel", 50);
    let id = cluster.submit(path.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(cluster.cmd().args(["cancel", &id, "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (mut watch, out, err) = spawn_logged(
        &cluster,
        "watch-cancel",
        &["watch", &id, "--json", "--interval-ms", "100"],
    );
    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    let status = wait_exit(&mut watch, Duration::from_secs(90));
    let (stdout, stderr) = (read(&out), read(&err));
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!("batch {id} was cancelled")),
        "no reason given: {stderr}"
    );
    assert_eq!(last_json_line(&stdout, &stderr)["status"], "cancelled");
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());

    // A batch already over: the same answer at once.
    let out = run(cluster.cmd().args(["watch", &id]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("was cancelled"));
}

#[test]
fn status_shows_active_batches_and_fails_above_a_pending_threshold() {
    let Some(cluster) = Cluster::start_opts(
        "status-queue",
        &["--latency-ms", "30"],
        support::cluster::Options::default(),
    ) else {
        return;
    };
    let out = run(cluster.cmd().args(["status", "--fail-above", "0"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("no active batches"));

    let total = 40;
    let path = input(&cluster, "queued", total);
    let id = cluster.submit(path.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();

    // Over the threshold: the JSON first, then exit 1 with the figure.
    let out = run(cluster
        .cmd()
        .args(["status", "--json", "--fail-above", "0"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let view = last_json(&out);
    assert_eq!(view["total_pending"], total as u64, "{view}");
    assert!(
        text(&out.stderr).contains(&format!("{total} job(s) pending")),
        "{}",
        text(&out.stderr)
    );
    let active = view["active_batches"].as_array().unwrap();
    assert_eq!(active.len(), 1, "{view}");
    assert_eq!(active[0]["id"], id.as_str());
    assert_eq!(active[0]["request_counts"]["total"], total as u64);
    let out = run(cluster
        .cmd()
        .args(["status", "--fail-above", &total.to_string()]));
    assert_eq!(out.status.code(), Some(0), "at the threshold is fine");
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("ACTIVE BATCHES") && stdout.contains(&id),
        "{stdout}"
    );

    // Flags that make no sense together.
    let out = run(cluster
        .cmd()
        .args(["status", "--watch", "--fail-above", "0"]));
    assert_eq!(out.status.code(), Some(2));

    // Without a terminal, --watch prints one snapshot per refresh, a blank line between.
    let (mut watch, watch_out, _) = spawn_logged(&cluster, "status-watch", &["status", "--watch"]);
    std::thread::sleep(Duration::from_millis(4500));
    let _ = watch.kill();
    let _ = watch.wait();
    let snapshots = read(&watch_out);
    assert!(
        snapshots.matches("QUEUE").count() >= 2,
        "not refreshed: {snapshots}"
    );
    assert!(snapshots.contains("\n\nQUEUE"), "{snapshots}");
    assert!(!snapshots.contains('\x1b'), "no ANSI codes off a terminal");

    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    cluster.wait_terminal(&id, Duration::from_secs(60));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    let out = run(cluster
        .cmd()
        .args(["status", "--json", "--fail-above", "0"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let view = last_json(&out);
    assert_eq!(view["total_pending"], 0);
    assert_eq!(
        view["active_batches"].as_array().unwrap().len(),
        0,
        "{view}"
    );
    assert_eq!(view["batches"][0]["status"], "completed", "{view}");
    let stdout = text(&run(cluster.cmd().arg("status")).stdout);
    assert!(stdout.contains("RECENT FINISHED BATCHES"), "{stdout}");
}
