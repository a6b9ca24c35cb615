//! What users see of the offload lane, against a real cluster (Redis, S3, the fake provider's
//! OpenAI Batch API over loopback, a worker, `batchyard serve`): a batch that opts in through
//! the API's metadata is offloaded, and `status`, `watch`, `/api/batches/{id}`,
//! `/v1/batches/{id}`, `/metrics` and the dashboard show the provider batch the fake holds, with
//! the items in it; a batch without the opt-in is not offloaded; bad values are 400s. After
//! the waves, each provider batch shown held exactly the items answered through it; while the
//! store is away, `status` still answers and says the lane is unknown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::api::*;
use support::cluster::{Cluster, Options, wait_exit};
use support::*;

/// Quick ticks; real-time at 5 items a second, so a deadline of hours is never near; a group
/// for one model needs `min_items` items to be sent.
fn offload(min_items: usize) -> String {
    format!(
        "[offload]\nmin_items = {min_items}\npoll_interval_secs = 1\nswitch_margin_secs = 0\n\
         realtime_items_per_sec = 5\n"
    )
}

/// A cluster whose provider batches take `turnaround_ms`. A wave is cut once `min_items` are
/// parked: with every item of a batch, the first wave holds them all, whenever its tick comes.
fn cluster(name: &str, turnaround_ms: &str, min_items: usize) -> Option<Cluster> {
    Cluster::start_opts(
        name,
        &["--batch-turnaround-ms", turnaround_ms],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: offload(min_items),
            ..Options::default()
        },
    )
}

/// The provider batches the fake holds, newest first.
fn fake_batches(cluster: &Cluster) -> Vec<Value> {
    let (code, body) = curl(
        &cluster.fake.base_url,
        "GET",
        "/batches?limit=100",
        Some("sk-test-secret-123"),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    json_of(&body)["data"].as_array().unwrap().clone()
}

/// Polls `/api/batches/{id}` until `done` holds of its `offload` object (at most `limit`).
fn wait_lane(s: &Server, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let b = ok_json(call(s, "GET", &format!("/api/batches/{id}"), &[]));
        if done(&b["offload"]) {
            return b["offload"].clone();
        }
        assert!(start.elapsed() < limit, "the lane never got there: {b}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The value of one sample line `name{labels} value`, if the scrape has it.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// The dashboard, in headless chromium (tests/dashboard_check.py), shows the batch's lane: the
/// provider batch with the fake's id and `offloaded` items.
fn dashboard_shows(cluster: &Cluster, s: &Server, batch: &str, provider_id: &str, offloaded: u64) {
    let test = "a_batch_that_opts_in_by_metadata_shows_its_lane_everywhere";
    let Some(chromium) = chromium() else {
        batchyard_testkit::skip_or_fail(test, "no chromium for the dashboard step");
        return;
    };
    let lane =
        serde_json::json!({"batch": batch, "provider_id": provider_id, "offloaded": offloaded});
    let lane = lane.to_string();
    dashboard_check(
        test,
        &chromium,
        cluster,
        s,
        &[("BATCHYARD_DASH_LANE", &lane)],
        "dashboard-lane.png",
    );
}

#[test]
fn a_batch_that_opts_in_by_metadata_shows_its_lane_everywhere() {
    // Provider batches take ten minutes here: the lane stays put while it is looked at.
    let Some(cluster) = cluster("lanes-shown", "600000", 8) else {
        return;
    };
    let s = Server::start(&cluster);
    let mut worker = cluster.spawn_worker(&["--concurrency", "2", "--metrics-addr", "127.0.0.1:0"]);
    let dir = cluster.dir.path();
    let file = upload(&s, &input(dir, "lane", 8));
    let fid = file["id"].as_str().unwrap();

    let created = ok_json(create_batch(&s, fid, r#"{"batchyard_deadline":"6h"}"#));
    let id = created["id"].as_str().unwrap().to_string();
    let lane = wait_lane(&s, &id, Duration::from_secs(60), |l| {
        l["provider_batches"][0]["phase"] == "running" && l["lanes"]["offloaded"] == 8
    });
    // The provider batch shown is the one the fake holds, with every item in it.
    let remote = fake_batches(&cluster);
    assert_eq!(remote.len(), 1, "{remote:?}");
    let pid = remote[0]["id"].as_str().unwrap();
    let pb = &lane["provider_batches"][0];
    assert_eq!(pb["provider_id"], pid, "{lane}");
    assert_eq!(
        (pb["model"].as_str(), pb["items"].as_u64()),
        (Some("small"), Some(8))
    );
    assert_eq!(pb["key"], "w1-small-0", "{lane}");
    assert_eq!(
        lane["lanes"],
        serde_json::json!({"realtime": 0, "offloaded": 8, "waiting": 0, "done": 0})
    );
    assert_eq!(lane["waves"], 1);
    let left = lane["seconds_left"].as_u64().unwrap();
    assert!((6 * 3600 - 120..=6 * 3600).contains(&left), "{lane}");
    assert!(lane["realtime_at"].is_null());

    // The OpenAI-compatible object carries it beside batchyard's other extras.
    let object = ok_json(call(&s, "GET", &format!("/v1/batches/{id}"), &[]));
    assert_eq!(object["status"], "in_progress", "{object}");
    assert_eq!(object["offload"]["provider_batches"][0]["provider_id"], pid);
    assert_eq!(object["metadata"]["batchyard_deadline"], "6h");

    // status, as JSON and as text.
    let st = cluster.status(&id);
    assert_eq!(st["offload"]["lanes"]["offloaded"], 8, "{st}");
    assert_eq!(st["offload"]["provider_batches"][0]["provider_id"], pid);
    let out = run(cluster.cmd().args(["status", &id]));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    eprintln!("status {id}:\n{stdout}");
    assert!(
        stdout.contains("0 real-time, 8 offloaded, 0 waiting for the next wave, 0 done"),
        "{stdout}"
    );
    assert!(
        stdout.contains(pid) && stdout.contains("w1-small-0"),
        "{stdout}"
    );
    assert!(stdout.contains("running, 8 items"), "{stdout}");
    let queue = run(cluster.cmd().args(["status"]));
    assert!(
        text(&queue.stdout).contains(&format!("{id}: deadline ")),
        "{}",
        text(&queue.stdout)
    );

    // watch: the plain line for a batch with a deadline.
    let err_path = dir.join("watch.err");
    let mut watch = cluster
        .cmd()
        .args(["watch", &id, "--interval-ms", "200"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let start = Instant::now();
    let watched = loop {
        let err = std::fs::read_to_string(&err_path).unwrap_or_default();
        if err.contains("8 offloaded") || start.elapsed() > Duration::from_secs(20) {
            break err;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    signal(watch.id(), "INT");
    wait_exit(&mut watch, Duration::from_secs(20));
    eprintln!("watch {id}:\n{watched}");
    assert!(
        watched.contains(&format!("batch {id} deadline "))
            && watched.contains("left: 0 real-time, 8 offloaded"),
        "{watched}"
    );

    // /metrics of the worker leading the lane.
    let url = cluster.worker_metrics_url();
    let start = Instant::now();
    let scrape = loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &url])
            .output()
            .unwrap();
        let body = text(&out.stdout);
        if sample(&body, "batchyard_offload_items{lane=\"offloaded\"}") == Some(8.0)
            || start.elapsed() > Duration::from_secs(20)
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let want = [
        ("batchyard_offload_items{lane=\"offloaded\"}", 8.0),
        ("batchyard_offload_items{lane=\"waiting\"}", 0.0),
        ("batchyard_offload_items{lane=\"realtime\"}", 0.0),
        ("batchyard_provider_batches{state=\"running\"}", 1.0),
        (
            "batchyard_provider_batches_created_total{model=\"small\"}",
            1.0,
        ),
    ];
    for (series, value) in want {
        assert_eq!(sample(&scrape, series), Some(value), "{series}\n{scrape}");
    }

    dashboard_shows(&cluster, &s, &id, pid, 8);

    // Bad values: 400s naming the field and why; nothing is created.
    for (meta, says) in [
        (r#"{"batchyard_deadline":"tomorrow"}"#, "batchyard_deadline"),
        (r#"{"batchyard_deadline":"3d"}"#, "completion window"),
        (r#"{"batchyard_offload":"always"}"#, "batchyard_offload"),
        // 8 items at 5 a second (nothing measured real-time yet) take 2 s: a 1 s deadline
        // is refused, as the CLI refuses it.
        (
            r#"{"batchyard_deadline":"1s"}"#,
            "take about 2 s real-time (5 items/s from [offload] realtime_items_per_sec",
        ),
    ] {
        let e = expect_error(create_batch(&s, fid, meta), 400);
        assert_eq!(e["param"], "metadata", "{e}");
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(says), "{meta}: {message}");
    }
    // Without the opt-in (OpenAI's mandatory window alone): real-time, no provider batch.
    let plain = ok_json(create_batch(&s, fid, "{}"));
    let plain_id = plain["id"].as_str().unwrap();
    let done = wait_batch(&s, plain_id, Duration::from_secs(60));
    assert_eq!(done["request_counts"]["completed"], 8, "{done}");
    assert!(done["offload"].is_null(), "{done}");
    assert_eq!(fake_batches(&cluster).len(), 1);

    // `batchyard_offload: "auto"`: the deadline is the completion window's end.
    let auto = ok_json(create_batch(&s, fid, r#"{"batchyard_offload":"auto"}"#));
    let auto_id = auto["id"].as_str().unwrap();
    let lane = wait_lane(&s, auto_id, Duration::from_secs(60), |l| {
        l["provider_batches"][0]["provider_id"].is_string()
    });
    // The window's end, as the create request saw it (the record's clock may be a second on).
    let (deadline, expires) = (
        lane["deadline_at"].as_u64().unwrap(),
        auto["expires_at"].as_u64().unwrap(),
    );
    assert!(expires - deadline <= 1, "{lane}\n{auto}");
    assert_eq!(fake_batches(&cluster).len(), 2);

    let listed = ok_json(call(&s, "GET", "/v1/batches?limit=100", &[]));
    assert_eq!(listed["data"].as_array().unwrap().len(), 3, "{listed}");
    assert_eq!(fake_batches(&cluster).len(), 2);

    let _ = worker.kill();
    let _ = worker.wait();
    s.stop();
}

#[test]
fn status_says_the_lane_is_unknown_while_the_store_is_away() {
    let Some(mut cluster) = cluster("lanes-store-away", "600000", 4) else {
        return;
    };
    let proxy = support::proxy::Proxy::in_front_of_store(&mut cluster);
    let input = input(cluster.dir.path(), "away", 4);
    let batch = cluster.submit(input.to_str().unwrap(), &["--deadline", "6h"]);
    let id = batch["id"].as_str().unwrap();
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "2"])]);
    let start = Instant::now();
    loop {
        let st = cluster.status(id);
        if st["offload"]["lanes"]["offloaded"] == 4 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{st}");
        std::thread::sleep(Duration::from_millis(200));
    }

    proxy.set_up(false);
    let asked = Instant::now();
    let st = cluster.status(id);
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(st["status"], "in_progress", "{st}");
    assert!(st["offload"]["lanes"].is_null(), "{st}");
    assert!(
        st["offload"]["unknown"].as_str().unwrap().contains("store"),
        "{st}"
    );
    assert!(st["offload"]["seconds_left"].as_u64().unwrap() > 0);
    let out = run(cluster.cmd().args(["status", id]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("lanes      unknown ("),
        "{}",
        text(&out.stdout)
    );

    proxy.set_up(true);
    assert_eq!(cluster.status(id)["offload"]["lanes"]["offloaded"], 4);
}

#[test]
fn after_the_waves_status_shows_each_provider_batch_as_the_answers_came() {
    // A task whose check passes "easy" items on any model and "hard" ones only on `large`:
    // wave 1 sends all 10 to `small`, wave 2 the 4 hard ones to `large`.
    let Some(cluster) = Cluster::start_opts(
        "lanes-waves",
        &["--batch-turnaround-ms", "300"],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: format!(
                "[tasks.read]\nprompt = \"{{{{ text }}}}\"\nmax_output_tokens = 100\n\
                 [tasks.read.validate]\nregex = \"^fake reply from (\\\\S+: easy|large-1: hard)\"\n\
                 {}",
                offload(3)
            ),
            ..Options::default()
        },
    ) else {
        return;
    };
    let body: String = (0..6)
        .map(|i| format!("easy-{i}"))
        .chain((0..4).map(|i| format!("hard-{i}")))
        .map(|id| format!("{{\"id\":\"{id}\",\"text\":\"{id} document\"}}\n"))
        .collect();
    let input = write_file(cluster.dir.path(), "docs.jsonl", body.as_bytes());
    let batch = cluster.submit(
        input.to_str().unwrap(),
        &["--task", "read", "--deadline", "1h"],
    );
    let id = batch["id"].as_str().unwrap();
    let _workers = Workers(vec![cluster.spawn_worker(&[
        "--concurrency",
        "2",
        "--metrics-addr",
        "127.0.0.1:0",
    ])]);
    let done = cluster.wait_terminal(id, Duration::from_secs(90));
    assert_eq!(done["status"], "completed", "{done}");
    let st = cluster.status(id);
    let lane = &st["offload"];
    assert_eq!(
        lane["lanes"],
        serde_json::json!({"realtime": 0, "offloaded": 0, "waiting": 0, "done": 10}),
        "{st}"
    );
    // Wave 1 on small, wave 2 (the hard ones) on large; how the items split into provider
    // batches depends on when each tick found them parked (a group under min_items that
    // stopped growing runs real-time), so what is checked is that the view tells it as it
    // happened.
    let pbs = lane["provider_batches"].as_array().unwrap();
    assert_eq!(pbs[0]["key"], "w1-small-0", "{lane}");
    let last = pbs.last().unwrap()["key"].as_str().unwrap();
    assert_eq!(
        format!("w{}", lane["waves"]),
        last.split('-').next().unwrap(),
        "{lane}"
    );
    for pb in pbs {
        assert_eq!(
            (pb["phase"].as_str(), pb["ended"].as_str()),
            (Some("done"), Some("completed")),
            "{pb}"
        );
    }
    // Each provider batch shown held exactly the items whose answers came from it.
    let output = cluster.results(id, false);
    assert_eq!(output.len(), 10);
    for pb in pbs {
        let pid = pb["provider_id"].as_str().unwrap();
        let answered = output
            .iter()
            .flat_map(|l| l["batchyard"]["cascade"].as_array().unwrap().iter())
            .filter(|step| step["provider_batch"] == pid)
            .count();
        assert_eq!(answered as u64, pb["items"].as_u64().unwrap(), "{pb}");
    }
    // The ids shown are the fake's, oldest first.
    let mut remote: Vec<String> = fake_batches(&cluster)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    remote.reverse();
    let ids: Vec<String> = pbs
        .iter()
        .map(|pb| pb["provider_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, remote);
    let scrape = text(
        &Command::new("curl")
            .args(["-sS", "--max-time", "5", &cluster.worker_metrics_url()])
            .output()
            .unwrap()
            .stdout,
    );
    for (series, value) in [
        (
            "batchyard_provider_batches_created_total{model=\"small\"}",
            pbs.iter().filter(|pb| pb["model"] == "small").count() as f64,
        ),
        (
            "batchyard_provider_batches_created_total{model=\"large\"}",
            pbs.iter().filter(|pb| pb["model"] == "large").count() as f64,
        ),
    ] {
        assert_eq!(sample(&scrape, series), Some(value), "{series}\n{scrape}");
    }
}

#[test]
fn a_batch_switched_to_real_time_says_so_and_shows_its_provider_batch_given_back() {
    // Provider batches take ten minutes; 6 items at 1 a second plus 2 s of margin must start
    // real-time 8 s before the 14 s deadline.
    let Some(cluster) = Cluster::start_opts(
        "lanes-switch",
        &["--batch-turnaround-ms", "600000"],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: "[offload]\nmin_items = 6\npoll_interval_secs = 1\n\
                         switch_margin_secs = 2\nrealtime_items_per_sec = 1\n"
                .into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let input = input(cluster.dir.path(), "switch", 6);
    let batch = cluster.submit(input.to_str().unwrap(), &["--deadline", "14s"]);
    let id = batch["id"].as_str().unwrap();
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "2"])]);
    let done = cluster.wait_terminal(id, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    let lane = &cluster.status(id)["offload"];
    let switched = lane["realtime_at"].as_u64().expect("switched to real-time");
    assert!(switched <= lane["deadline_at"].as_u64().unwrap(), "{lane}");
    let pbs = lane["provider_batches"].as_array().unwrap();
    assert_eq!(pbs.len(), 1, "{lane}");
    assert_eq!(pbs[0]["given_back"], true, "{lane}");
    assert_eq!(pbs[0]["items"], 6, "{lane}");
    assert_eq!(
        lane["lanes"],
        serde_json::json!({"realtime": 0, "offloaded": 0, "waiting": 0, "done": 6}),
        "{lane}"
    );
    assert_eq!(cluster.fake.stats()["batches"]["cancelled"], 1);
    let out = run(cluster.cmd().args(["status", id]));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("switched to real-time"), "{stdout}");
    assert!(stdout.contains("given back to real-time"), "{stdout}");
}
