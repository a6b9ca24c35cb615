//! Running pipelines in production: a budget stop inside a pipeline's batch, the seen-state
//! rebuilt from object storage after Redis lost its data, `/api/pipelines` on `serve`, and the
//! scheduler's pipeline metrics. Real Redis, the real S3-compatible server, the fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api::*;
use support::cluster::{Cluster, wait_exit};
use support::invariants::assert_invariants;
use support::scheduler::{cluster_with, pipeline_run};
use support::*;

fn listed(cluster: &Cluster) -> Value {
    let out = run(cluster.cmd().args(["pipelines", "list", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    last_json(&out)
}

fn flush_redis(cluster: &Cluster) {
    let client = ::redis::Client::open(cluster.redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let () = ::redis::cmd("FLUSHALL").query(&mut conn).unwrap();
}

#[test]
fn a_budget_stop_inside_a_pipeline_run_ends_the_batch_and_retry_resumes_it() {
    let inbox = tempfile::tempdir().unwrap();
    let total = 30;
    for i in 0..total {
        write_file(
            inbox.path(),
            &format!("doc-{i:02}.txt"),
            format!("nightly document number {i}").as_bytes(),
        );
    }
    // A call on small reserves ~$0.000123 and settles to ~$0.00001: $0.0004 pays for a few
    // items of the 30, then the batch runs out.
    let budget = 0.0004;
    let extra = format!(
        "[pipelines.capped]\nschedule = \"0 2 * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\nbudget_usd = {budget}\n",
        inbox.path().display()
    );
    let Some(cluster) = cluster_with("pipelines_budget", extra) else {
        return;
    };
    let first = pipeline_run(&cluster, "capped");
    assert_eq!(first["outcome"], "submitted", "{first}");
    assert_eq!(first["items"], total, "{first}");
    let id = first["batch_id"].as_str().unwrap().to_string();
    let status = cluster.status(&id);
    assert_eq!(status["budget_usd"].as_f64(), Some(budget), "{status}");

    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    assert_eq!(done["budget_exhausted"], true, "{done}");
    let spent = done["cost_usd"].as_f64().unwrap();
    assert!(spent <= budget + 1e-12, "spent {spent} of {budget}: {done}");
    let (ok, errors) = assert_invariants(&cluster, &id, total as usize);
    assert!(
        !ok.is_empty() && ok.len() < total as usize,
        "ok {}",
        ok.len()
    );
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "budget_exhausted"),
        "{errors:?}"
    );
    assert_eq!(
        cluster.fake.stats()["requests"].as_u64().unwrap(),
        ok.len() as u64,
        "no call without a reservation"
    );

    // The pipeline shows the stopped batch, and a new run does not take its documents again:
    // they belong to that batch, which `retry --budget-usd` resumes.
    let last = listed(&cluster)["pipelines"][0]["last_run"].clone();
    assert_eq!(last["batch_id"].as_str(), Some(id.as_str()), "{last}");
    assert!(
        last["cost_usd"].as_f64().unwrap() <= budget + 1e-12,
        "{last}"
    );
    let again = pipeline_run(&cluster, "capped");
    assert_eq!(again["outcome"], "nothing_new", "{again}");
    let out = run(cluster.cmd().args(["pipelines", "history", "capped"]));
    let shown = text(&out.stdout);
    assert!(out.status.success() && shown.contains(&id), "{shown}");

    let out = run(cluster.cmd().args(["retry", &id, "--budget-usd", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert!(wait_exit(&mut worker, Duration::from_secs(30)).success());
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, errors) = assert_invariants(&cluster, &id, total as usize);
    assert_eq!((ok.len(), errors.len()), (total as usize, 0));
}

#[test]
fn after_redis_loses_its_data_the_seen_state_is_rebuilt_from_object_storage() {
    let probe = batchyard_testkit::s3_env_or_skip("pipelines_rebuild");
    let Some(probe) = probe else { return };
    let prefix = probe.unique_prefix("pipelines-rebuild-inbox");
    let extra = format!(
        "[pipelines.inbox]\nschedule = \"0 2 * * *\"\ninput = \"s3://{}/{prefix}/\"\ntask = \"summarize\"\n",
        probe.bucket
    );
    let Some(cluster) = cluster_with("pipelines_rebuild", extra) else {
        return;
    };
    cluster.s3_put(&format!("{prefix}/a.txt"), "first document");
    cluster.s3_put(&format!("{prefix}/b.md"), "second document");
    let first = pipeline_run(&cluster, "inbox");
    assert_eq!(first["items"], 2, "{first}");
    cluster.s3_put(&format!("{prefix}/a.txt"), "first document, revised");
    let second = pipeline_run(&cluster, "inbox");
    assert_eq!(second["items"], 1, "{second}");
    // The pipeline's own index of origin records, next to the batches'.
    let record = cluster.s3_get(&cluster.s3_key(&format!(
        "pipelines/inbox/batches/{}.json",
        second["batch_id"].as_str().unwrap()
    )));
    assert_eq!(record["pipeline"], "inbox", "{record}");

    flush_redis(&cluster);
    let out = run(cluster
        .cmd()
        .args(["pipelines", "history", "inbox", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        last_json(&out)["runs"],
        serde_json::json!([]),
        "redis is empty"
    );

    // Nothing changed since: the rebuilt state knows both documents at their newest versions.
    let after = pipeline_run(&cluster, "inbox");
    assert_eq!(after["outcome"], "nothing_new", "{after}");
    // A new document, and a changed one, are still new.
    cluster.s3_put(&format!("{prefix}/c.txt"), "third document");
    cluster.s3_put(&format!("{prefix}/b.md"), "second document, revised");
    let next = pipeline_run(&cluster, "inbox");
    assert_eq!(next["outcome"], "submitted", "{next}");
    assert_eq!(next["items"], 2, "{next}");
}

/// The address a process logged as `metrics on http://ADDR/metrics`.
fn metrics_url(log: &std::path::Path, child: &mut Child) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(at) = text.find("metrics on http://") {
            let rest = &text[at + "metrics on ".len()..];
            return rest.chars().take_while(|c| !c.is_whitespace()).collect();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited ({status}) before serving metrics: {text}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no metrics address logged: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn scrape(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The value of the sample whose line starts with `series` (name and labels, exactly).
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn the_scheduler_exports_runs_by_outcome_and_the_last_success() {
    let inbox = tempfile::tempdir().unwrap();
    write_file(inbox.path(), "a.txt", b"a document");
    let extra = format!(
        "[pipelines.ticker]\nschedule = \"*/1 * * * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\n",
        inbox.path().display()
    );
    let Some(cluster) = cluster_with("pipelines_metrics", extra) else {
        return;
    };
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let log = cluster.dir.path().join("scheduler.log");
    let mut scheduler = cluster
        .cmd()
        .args(["scheduler", "--metrics-addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    let url = metrics_url(&log, &mut scheduler);
    // The first tick submits the document; later ticks find nothing new.
    let submitted = "batchyard_pipeline_runs_total{pipeline=\"ticker\",outcome=\"submitted\"}";
    let nothing = "batchyard_pipeline_runs_total{pipeline=\"ticker\",outcome=\"nothing_new\"}";
    let start = Instant::now();
    let body = loop {
        let body = scrape(&url);
        if sample(&body, nothing).is_some_and(|n| n >= 2.0) {
            break body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no nothing_new runs counted: {body}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    terminate(&mut scheduler);
    assert_eq!(sample(&body, submitted), Some(1.0), "{body}");
    assert!(
        body.contains("# TYPE batchyard_pipeline_last_success_timestamp_seconds gauge"),
        "{body}"
    );
    let last = sample(
        &body,
        "batchyard_pipeline_last_success_timestamp_seconds{pipeline=\"ticker\"}",
    )
    .unwrap_or_else(|| panic!("no last success: {body}"));
    assert!(
        last >= started.floor(),
        "last success {last} < start {started}"
    );
}

#[test]
fn the_api_lists_pipelines_shows_runs_and_runs_one_now() {
    let inbox = tempfile::tempdir().unwrap();
    write_file(inbox.path(), "a.txt", b"a document");
    write_file(inbox.path(), "b.md", b"another document");
    let extra = format!(
        "[pipelines.nightly]\nschedule = \"0 2 * * *\"\ntimezone = \"Europe/Berlin\"\ninput = \"file://{}\"\ntask = \"summarize\"\nbudget_usd = 2.5\n",
        inbox.path().display()
    );
    let Some(cluster) = cluster_with("pipelines_api", extra) else {
        return;
    };
    let s = Server::start(&cluster);
    expect_error(curl(&s.base, "GET", "/api/pipelines", None, &[]), 401);
    let list = ok_json(call(&s, "GET", "/api/pipelines", &[]));
    let row = &list["pipelines"][0];
    assert_eq!(row["name"], "nightly", "{list}");
    assert_eq!(row["timezone"], "Europe/Berlin", "{list}");
    assert_eq!(row["budget_usd"], 2.5, "{list}");
    assert!(row["last_run"].is_null(), "{list}");
    // The same rows as the CLI.
    let cli = listed(&cluster);
    assert_eq!(cli["pipelines"][0]["next_fire"], row["next_fire"]);

    let ran = ok_json(call(&s, "POST", "/api/pipelines/nightly/run", &[]));
    assert_eq!(ran["outcome"], "submitted", "{ran}");
    assert_eq!(ran["trigger"], "manual", "{ran}");
    assert_eq!(ran["items"], 2, "{ran}");
    let again = ok_json(call(&s, "POST", "/api/pipelines/nightly/run", &[]));
    assert_eq!(again["outcome"], "nothing_new", "{again}");

    let runs = ok_json(call(&s, "GET", "/api/pipelines/nightly/runs?limit=5", &[]));
    let outcomes: Vec<&str> = runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["nothing_new", "submitted"], "{runs}");
    // A run that made a batch shows the batch's state and spend now.
    let made = &runs["runs"][1];
    assert_eq!(made["batch_id"], ran["batch_id"], "{runs}");
    assert!(
        made["state"].is_string() && made["cost_usd"].is_number(),
        "{runs}"
    );
    assert!(runs["runs"][0]["state"].is_null(), "{runs}");
    let list = ok_json(call(&s, "GET", "/api/pipelines", &[]));
    assert_eq!(list["pipelines"][0]["last_run"]["outcome"], "nothing_new");

    expect_error(call(&s, "GET", "/api/pipelines/nope/runs", &[]), 404);
    expect_error(call(&s, "POST", "/api/pipelines/nope/run", &[]), 404);
    expect_error(
        call(&s, "GET", "/api/pipelines/nightly/runs?bogus=1", &[]),
        400,
    );
    s.stop();
}

/// A pipeline over a file:// folder reads links by the same rule as `run`: skipped by
/// default, followed with `follow_symlinks = true` only inside the folder, and a link out
/// (to /etc/passwd, to a folder outside) is never submitted, on any run.
#[test]
fn a_pipeline_never_follows_a_symlink_out_of_its_folder() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET-OUTSIDE-2").unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::write(inbox.join("a.txt"), "first document").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", inbox.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, inbox.join("out")).unwrap();
    std::os::unix::fs::symlink(inbox.join("a.txt"), inbox.join("same.txt")).unwrap();
    std::os::unix::fs::symlink(&inbox, inbox.join("loop")).unwrap();
    let extra = format!(
        "[pipelines.plain]\nschedule = \"0 2 * * *\"\ninput = \"file://{inbox}\"\ntask = \"summarize\"\n\n\
         [pipelines.follow]\nschedule = \"0 2 * * *\"\ninput = \"file://{inbox}\"\ntask = \"summarize\"\nfollow_symlinks = true\n",
        inbox = inbox.display()
    );
    let Some(cluster) = cluster_with("pipelines_symlinks", extra) else {
        return;
    };
    let plain = pipeline_run(&cluster, "plain");
    assert_eq!(plain["items"], 1, "{plain}");
    let follow = pipeline_run(&cluster, "follow");
    assert_eq!(follow["items"], 2, "a.txt and same.txt only: {follow}");
    // Nothing new on the next run: the refused links don't look new forever.
    let again = pipeline_run(&cluster, "follow");
    assert_eq!(again["outcome"], "nothing_new", "{again}");
    let mut workers = cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "2"]);
    wait_exit(&mut workers, Duration::from_secs(60));
    for run in [&plain, &follow] {
        let id = run["batch_id"].as_str().unwrap();
        let batch = cluster.wait_terminal(id, Duration::from_secs(60));
        assert_eq!(batch["request_counts"]["failed"], 0, "{batch}");
        let ok = cluster.results(id, false);
        let text = serde_json::to_string(&ok).unwrap();
        assert!(
            !text.contains("root:") && !text.contains("SECRET-OUTSIDE"),
            "{text}"
        );
        let mut ids: Vec<&str> = ok
            .iter()
            .map(|l| l["custom_id"].as_str().unwrap())
            .collect();
        ids.sort_unstable();
        let want: &[&str] = if run == &plain {
            &["a.txt"]
        } else {
            &["a.txt", "same.txt"]
        };
        assert_eq!(ids, want);
    }
}
