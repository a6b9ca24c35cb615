//! Scheduled pipelines: exactly one batch per tick across scheduler replicas, only-new
//! documents across runs (including a changed object), failed runs that keep the schedule, and
//! the config errors. Real Redis, the real S3-compatible server, the fake provider over HTTP.
//! The DST rules are unit tests in src/config/pipeline_spec.rs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::process::Child;
use std::time::Duration;

use serde_json::Value;
use support::cluster::Cluster;
use support::scheduler::{cluster_with, history, pipeline_run, spawn_scheduler};
use support::*;

#[test]
fn three_schedulers_submit_exactly_one_batch_per_tick() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.txt", b"first document");
    write_file(dir.path(), "b.md", b"second document");
    let extra = format!(
        r#"
[pipelines.every-second]
schedule = "*/1 * * * * *"
input = "file://{}"
task = "summarize"
only_new = false
"#,
        dir.path().display()
    );
    let Some(cluster) = cluster_with("pipelines_once", extra) else {
        return;
    };
    let mut schedulers: Vec<Child> = (0..3).map(|n| spawn_scheduler(&cluster, n)).collect();
    std::thread::sleep(Duration::from_secs(11));
    for s in &mut schedulers {
        terminate(s);
    }
    let runs = history(&cluster, "every-second");
    assert!(runs.len() >= 8, "expected about 10 ticks, got {runs:?}");
    let mut ticks = BTreeSet::new();
    let mut batches = BTreeSet::new();
    for r in &runs {
        assert_eq!(r["trigger"], "schedule", "{r}");
        assert_eq!(r["outcome"], "submitted", "every tick has input: {r}");
        assert_eq!(r["items"], 2, "{r}");
        assert!(
            ticks.insert(r["tick"].as_str().unwrap().to_string()),
            "tick twice: {r}"
        );
        assert!(
            batches.insert(r["batch_id"].as_str().unwrap().to_string()),
            "batch twice: {r}"
        );
    }
    // No tick was lost either: the ticks are consecutive seconds.
    let secs: Vec<i64> = ticks
        .iter()
        .map(|t| chrono_secs(t))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        secs.last().unwrap() - secs.first().unwrap() + 1,
        secs.len() as i64,
        "a tick was skipped: {ticks:?}"
    );
    // The ledger holds exactly one batch per tick: none made outside a recorded run.
    let out = run(cluster.cmd().args(["status", "--json"]));
    let in_ledger: BTreeSet<String> = last_json(&out)["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(in_ledger, batches, "batches in the ledger vs runs");
    // Each run's batch is in the ledger with the pipeline's two documents.
    for id in &batches {
        let batch = cluster.status(id);
        assert_eq!(batch["request_counts"]["total"], 2, "{batch}");
    }
}

/// Seconds of an RFC 3339 UTC time such as `2026-11-22T05:10:03+00:00`.
fn chrono_secs(t: &str) -> i64 {
    let time = &t[11..19];
    let parts: Vec<i64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    let day: i64 = t[8..10].parse().unwrap();
    ((day * 24 + parts[0]) * 60 + parts[1]) * 60 + parts[2]
}

#[test]
fn only_new_objects_are_submitted_across_runs_including_a_changed_one() {
    let Some(probe) = batchyard_testkit::s3_env_or_skip("pipelines_only_new") else {
        return;
    };
    let prefix = probe.unique_prefix("inbox");
    let extra = format!(
        r#"
[pipelines.inbox]
schedule = "0 2 * * *"
timezone = "Europe/Berlin"
input = "s3://{}/{prefix}/"
task = "summarize"
budget_usd = 5.0
"#,
        probe.bucket
    );
    let Some(cluster) = cluster_with("pipelines_only_new", extra) else {
        return;
    };
    cluster.s3_put(&format!("{prefix}/a.txt"), "first document");
    cluster.s3_put(&format!("{prefix}/sub/b.md"), "second document");
    cluster.s3_put(&format!("{prefix}/skip.pdf"), "not a document");

    let first = pipeline_run(&cluster, "inbox");
    assert_eq!(first["outcome"], "submitted", "{first}");
    assert_eq!(first["items"], 2, "{first}");
    let second = pipeline_run(&cluster, "inbox");
    assert_eq!(second["outcome"], "nothing_new", "{second}");
    assert!(second["batch_id"].is_null(), "{second}");

    // A changed object (new ETag) is new again; the unchanged one is not.
    cluster.s3_put(&format!("{prefix}/a.txt"), "first document, revised");
    let third = pipeline_run(&cluster, "inbox");
    assert_eq!(third["outcome"], "submitted", "{third}");
    assert_eq!(third["items"], 1, "{third}");
    let batch = cluster.status(third["batch_id"].as_str().unwrap());
    assert_eq!(batch["request_counts"]["total"], 1, "{batch}");
    // The batch names its pipeline and tick, and the documents it took, in object storage.
    let origin = cluster.s3_get(&cluster.s3_key(&format!(
        "batches/{}/pipeline.json",
        third["batch_id"].as_str().unwrap()
    )));
    assert_eq!(origin["pipeline"], "inbox", "{origin}");
    assert_eq!(origin["tick"], third["tick"], "{origin}");
    let docs: Vec<&String> = origin["documents"].as_object().unwrap().keys().collect();
    assert_eq!(docs, ["a.txt"], "{origin}");

    let runs = history(&cluster, "inbox");
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["submitted", "nothing_new", "submitted"]);
    assert!(runs.iter().all(|r| r["trigger"] == "manual"));

    let out = run(cluster.cmd().args(["pipelines", "list", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = last_json(&out)["pipelines"][0].clone();
    assert_eq!(listed["name"], "inbox");
    assert_eq!(listed["timezone"], "Europe/Berlin");
    assert_eq!(listed["enabled"], true);
    let next = listed["next_fire"].as_str().unwrap();
    assert!(
        next.contains("T02:00:00+0"),
        "next fire at 02:00 Berlin: {next}"
    );
    assert_eq!(listed["last_run"]["batch_id"], third["batch_id"]);
    assert_eq!(listed["last_run"]["state"], "in_progress", "{listed}");
}

#[test]
fn an_unlistable_input_fails_at_start_and_records_a_failed_run_later() {
    let dir = tempfile::tempdir().unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    write_file(&inbox, "a.txt", b"a document");
    let extra = format!(
        r#"
[pipelines.gone]
schedule = "0 2 * * *"
input = "file://{}"
task = "summarize"
"#,
        inbox.display()
    );
    let Some(cluster) = cluster_with("pipelines_unlistable", extra) else {
        return;
    };
    std::fs::remove_dir_all(&inbox).unwrap();
    let out = run(cluster.cmd().arg("scheduler"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains("pipelines.gone.input"), "{err}");

    // At run time the same problem is a failed run, recorded, not a crash.
    let out = run(cluster.cmd().args(["pipelines", "run", "gone", "--json"]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let runs = history(&cluster, "gone");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["outcome"], "failed");
    assert!(
        runs[0]["error"]
            .as_str()
            .unwrap()
            .contains("pipelines.gone.input"),
        "{}",
        runs[0]
    );
}

#[test]
fn bad_pipeline_config_is_rejected_naming_the_pipeline_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("schedule = \"0 25 * * *\"", "pipelines.nightly.schedule"),
        ("schedule = \"every day\"", "pipelines.nightly.schedule"),
        ("timezone = \"Mars/Olympus\"", "pipelines.nightly.timezone"),
        ("task = \"translate\"", "pipelines.nightly.task"),
        ("catch_up = \"all\"", "pipelines.nightly.catch_up"),
        ("colour = \"blue\"", "colour"),
    ];
    for (n, (line, key)) in cases.iter().enumerate() {
        let mut fields = vec![
            ("schedule", "schedule = \"0 2 * * *\""),
            ("timezone", "timezone = \"UTC\""),
            ("task", "task = \"summarize\""),
        ];
        let name = line.split(' ').next().unwrap();
        fields.retain(|(k, _)| *k != name);
        let body: Vec<&str> = fields.iter().map(|(_, l)| *l).chain([*line]).collect();
        let config = write_file(
            dir.path(),
            &format!("bad-{n}.toml"),
            format!(
                "[pipelines.nightly]\ninput = \"file:///tmp\"\n{}\n",
                body.join("\n")
            )
            .as_bytes(),
        );
        let out = run(batchyard(dir.path())
            .arg("--config")
            .arg(&config)
            .arg("scheduler"));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{line}: {err}");
        assert!(err.contains(key), "{line}: expected {key} in {err}");
        assert!(err.contains(&config.display().to_string()), "{line}: {err}");
    }
}

fn wait_for_runs(cluster: &Cluster, name: &str, n: usize) {
    let start = std::time::Instant::now();
    while history(cluster, name).len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "{name} never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_restarted_scheduler_runs_only_the_latest_missed_tick_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    write_file(dir.path(), "a.txt", b"a document");
    let pipeline = |name: &str, catch_up: &str| {
        format!(
            "\n[pipelines.{name}]\nschedule = \"*/3 * * * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\nonly_new = false\ncatch_up = \"{catch_up}\"\n",
            dir.path().display()
        )
    };
    let extra = pipeline("latest", "latest") + &pipeline("skip", "none");
    let Some(cluster) = cluster_with("pipelines_catch_up", extra) else {
        return;
    };
    let mut first = spawn_scheduler(&cluster, 0);
    wait_for_runs(&cluster, "latest", 1);
    wait_for_runs(&cluster, "skip", 1);
    terminate(&mut first);
    let stopped = unix_now() + 1;
    // Two or more ticks (every 3 s) pass with no scheduler.
    std::thread::sleep(Duration::from_secs(7));
    let restarted = unix_now();
    let mut second = spawn_scheduler(&cluster, 1);
    std::thread::sleep(Duration::from_secs(2));
    terminate(&mut second);

    let runs = history(&cluster, "latest");
    let caught: Vec<&Value> = runs.iter().filter(|r| r["trigger"] == "catch_up").collect();
    assert_eq!(caught.len(), 1, "one catch-up run: {runs:?}");
    let tick = caught[0]["tick_unix"].as_i64().unwrap();
    assert_eq!(caught[0]["outcome"], "submitted", "{}", caught[0]);
    assert!(
        tick > stopped && tick >= stopped + 3,
        "the latest missed tick: {runs:?}"
    );
    let older_missed = runs
        .iter()
        .filter(|r| {
            let t = r["tick_unix"].as_i64().unwrap();
            t >= stopped && t < tick
        })
        .count();
    assert_eq!(
        older_missed, 0,
        "only the latest missed tick runs: {runs:?}"
    );

    let runs = history(&cluster, "skip");
    assert!(runs.iter().all(|r| r["trigger"] == "schedule"), "{runs:?}");
    let missed = runs
        .iter()
        .filter(|r| {
            let t = r["tick_unix"].as_i64().unwrap();
            t >= stopped && t <= restarted
        })
        .count();
    assert_eq!(
        missed, 0,
        "catch_up = \"none\" skips missed ticks: {runs:?}"
    );
}
