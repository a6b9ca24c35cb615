//! Faults between the steps of `submit` (issue 13, item 1): a submit cut off by Redis running
//! out of memory, or killed, leaves no job that can run or spend; `--resume` finishes it
//! exactly once, and a silent submit's batch is ended `submit_interrupted` by a worker's
//! sweep. Against real Redis, the real S3-compatible server and the fake provider.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options, wait_exit};
use support::{exactly_once, request_line, run, text, write_file};

fn conn(cluster: &Cluster) -> redis::Connection {
    let client = redis::Client::open(cluster.redis.url.as_str()).unwrap();
    client
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

fn stream_len(c: &mut redis::Connection) -> u64 {
    redis::cmd("XLEN")
        .arg("by:{default}:stream")
        .query(c)
        .unwrap()
}

fn staged_len(c: &mut redis::Connection, id: &str) -> u64 {
    redis::cmd("LLEN")
        .arg(format!("by:{{default}}:staged:{id}"))
        .query(c)
        .unwrap()
}

/// Caps Redis at what it uses now plus `headroom` bytes, refusing writes past it.
fn cap_memory(c: &mut redis::Connection, headroom: u64) {
    let info: String = redis::cmd("INFO").arg("memory").query(c).unwrap();
    let used: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory-policy")
        .arg("noeviction")
        .query(c)
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used + headroom)
        .query(c)
        .unwrap();
}

fn uncap_memory(c: &mut redis::Connection) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(0)
        .query(c)
        .unwrap();
}

fn input(cluster: &Cluster, name: &str, n: usize, filler: &str) -> String {
    let body: String = (0..n)
        .map(|i| request_line(&format!("{name}-{i}"), &format!("item {i} {filler}")) + "\n")
        .collect();
    write_file(
        cluster.dir.path(),
        &format!("{name}.jsonl"),
        body.as_bytes(),
    )
    .to_string_lossy()
    .into_owned()
}

/// The batch id a failed submit names in its error.
fn batch_id_in(stderr: &str) -> String {
    let start = stderr.find("batch_").expect("the error names the batch");
    stderr[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// A cluster whose silent submits are ended after 2 s.
fn short_lease_cluster(name: &str) -> Option<Cluster> {
    Cluster::start_opts(
        name,
        &[],
        Options {
            submit_lease_secs: 2,
            ..Options::default()
        },
    )
}

/// A submit that hits Redis's memory limit partway: returns (batch id, stderr).
fn oom_submit(cluster: &Cluster, path: &str) -> (String, String) {
    let mut c = conn(cluster);
    // A chunk's own request (~0.5 MB) counts against the limit too.
    cap_memory(&mut c, 2_000_000);
    let out = run(cluster.cmd().args(["submit", path, "--json"]));
    uncap_memory(&mut c);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "submit should fail at maxmemory: {stderr}"
    );
    (batch_id_in(&stderr), stderr)
}

#[test]
fn a_submit_cut_off_at_maxmemory_runs_nothing_and_resumes_exactly_once() {
    let Some(cluster) = Cluster::start("submit_oom", &[], 30) else {
        return;
    };
    let n = 5000;
    let path = input(&cluster, "oom", n, &"x".repeat(300));
    let (id, stderr) = oom_submit(&cluster, &path);
    assert!(
        stderr.contains(&format!("--resume {id}")) && stderr.contains("no item of it can run"),
        "the error says what to run next: {stderr}"
    );
    let mut c = conn(&cluster);
    assert_eq!(stream_len(&mut c), 0, "nothing is visible to workers");
    let staged = staged_len(&mut c, &id);
    assert!(staged > 0 && staged < n as u64, "partly staged: {staged}");
    assert_eq!(cluster.status(&id)["status"], "validating");

    // A worker meanwhile has nothing to run and spends nothing.
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "2"]);
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
    assert_eq!(cluster.fake.stats()["requests"].as_u64().unwrap(), 0);

    // A changed input is refused.
    let other = input(&cluster, "other", n, "changed");
    let out = run(cluster.cmd().args(["submit", &other, "--resume", &id]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not the one first submitted"));

    let out = run(cluster
        .cmd()
        .args(["submit", &path, "--resume", &id, "--json"]));
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    // Published: a window of jobs is ready in the stream, the rest wait in the batch's
    // backlog (its staging list, now in the claim order).
    let (ready, backlog) = (stream_len(&mut c), staged_len(&mut c, &id));
    assert_eq!(ready + backlog, n as u64, "every job once, none twice");
    assert!(
        ready <= 256,
        "only the ready window is in the stream: {ready}"
    );

    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "3"]);
    let batch = cluster.wait_terminal(&id, Duration::from_secs(180));
    wait_exit(&mut worker, Duration::from_secs(60));
    assert_eq!(batch["status"], "completed", "{batch}");
    let (ok, errors) = (cluster.results(&id, false), cluster.results(&id, true));
    assert_eq!(exactly_once(&ok, &errors), n);
    assert_eq!(ok.len(), n);
    assert_eq!(cluster.fake.stats()["requests"].as_u64().unwrap(), n as u64);
}

#[test]
fn a_silent_submit_ends_submit_interrupted_and_can_still_be_resumed() {
    let Some(cluster) = short_lease_cluster("submit_lease") else {
        return;
    };
    let n = 5000;
    let path = input(&cluster, "lease", n, &"y".repeat(300));
    let (id, _) = oom_submit(&cluster, &path);
    let mut worker = cluster.spawn_worker(&[]);
    let batch = cluster.wait_terminal(&id, Duration::from_secs(40));
    assert_eq!(batch["status"], "failed", "{batch}");
    assert_eq!(
        batch["errors"]["data"][0]["code"], "submit_interrupted",
        "{batch}"
    );
    let mut c = conn(&cluster);
    assert_eq!(
        staged_len(&mut c, &id),
        0,
        "the sweep drops what was staged"
    );
    assert_eq!(stream_len(&mut c), 0);
    assert_eq!(cluster.fake.stats()["requests"].as_u64().unwrap(), 0);

    // `--resume` takes up even an ended submit, since nothing of it ran.
    let out = run(cluster.cmd().args(["submit", &path, "--resume", &id]));
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    let batch = cluster.wait_terminal(&id, Duration::from_secs(180));
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], n as u64);
    let _ = worker.kill();
    let _ = worker.wait();
}

/// Starts a submit of 100,000 lines and SIGKILLs it once it has staged something (long
/// before it could finish); returns the batch id. `other` is a batch staged before, ignored.
fn kill_mid_submit(
    cluster: &Cluster,
    c: &mut redis::Connection,
    name: &str,
    other: Option<&str>,
) -> String {
    let path = input(cluster, name, 100_000, "z");
    let mut submit = cluster
        .cmd()
        .args(["submit", &path])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let id = loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg("by:{default}:staged:*")
            .query(c)
            .unwrap();
        let fresh = keys.iter().find(|k| other.is_none_or(|o| !k.ends_with(o)));
        if let Some(k) = fresh {
            break k.rsplit(':').next().unwrap().to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "nothing was staged"
        );
        assert!(
            submit.try_wait().unwrap().is_none(),
            "submit ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    submit.kill().unwrap();
    submit.wait().unwrap();
    id
}

#[test]
fn a_killed_submit_leaves_nothing_runnable_and_its_batch_ends() {
    let Some(cluster) = short_lease_cluster("submit_kill") else {
        return;
    };
    let mut c = conn(&cluster);
    let id = kill_mid_submit(&cluster, &mut c, "kill", None);
    assert_eq!(stream_len(&mut c), 0, "nothing is visible to workers");

    // Cancel of a batch still being submitted ends it at once, without workers.
    let out = run(cluster.cmd().args(["cancel", &id]));
    assert!(out.status.success(), "cancel: {}", text(&out.stderr));
    assert_eq!(cluster.status(&id)["status"], "cancelled");

    // And a killed submit that nobody cancels is ended by a worker's sweep.
    let id2 = kill_mid_submit(&cluster, &mut c, "kill2", Some(&id));
    let mut worker = cluster.spawn_worker(&[]);
    let batch = cluster.wait_terminal(&id2, Duration::from_secs(40));
    assert_eq!(batch["status"], "failed", "{batch}");
    assert_eq!(batch["errors"]["data"][0]["code"], "submit_interrupted");
    assert_eq!(stream_len(&mut c), 0);
    assert_eq!(cluster.fake.stats()["requests"].as_u64().unwrap(), 0);
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn every_non_terminal_state_reaches_a_terminal_one_once_workers_run() {
    let Some(cluster) = short_lease_cluster("submit_states") else {
        return;
    };
    let mut c = conn(&cluster);
    let submit = |name: &str, n: usize| -> String {
        cluster.submit(&input(&cluster, name, n, "s"), &[])["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // finalizing: a finished batch put back in `finalizing`, as a finalizer killed mid-write
    // leaves it.
    let finalizing = submit("fin", 20);
    let mut w = cluster.spawn_worker(&["--exit-when-idle", "1"]);
    assert_eq!(
        cluster.wait_terminal(&finalizing, Duration::from_secs(60))["status"],
        "completed"
    );
    wait_exit(&mut w, Duration::from_secs(60));
    let _: () = redis::cmd("HSET")
        .arg(format!("by:batch:{{{finalizing}}}"))
        .arg("state")
        .arg("finalizing")
        .query(&mut c)
        .unwrap();
    // validating: a submit cut off before its seal.
    let path = input(&cluster, "val", 5000, &"v".repeat(300));
    let (validating, _) = oom_submit(&cluster, &path);
    // in_progress and cancelling: queued, with no worker running.
    let in_progress = submit("run", 50);
    // `cancel` with nothing in flight ends the batch at once, every unrun item `cancelled`.
    let at_once = submit("now", 30);
    let out = run(cluster.cmd().args(["cancel", &at_once]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(cluster.status(&at_once)["status"], "cancelled");
    let errors = cluster.results(&at_once, true);
    assert_eq!(errors.len(), 30);
    assert!(errors.iter().all(|l| l["error"]["code"] == "cancelled"));
    // cancelling: as a cancel leaves a batch while other jobs are in flight.
    let cancelling = submit("can", 50);
    let _: () = redis::cmd("HSET")
        .arg(format!("by:batch:{{{cancelling}}}"))
        .arg("state")
        .arg("cancelling")
        .arg("cancel_requested_at")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let states = [
        (&finalizing, "finalizing", "completed"),
        (&validating, "validating", "failed"),
        (&in_progress, "in_progress", "completed"),
        (&cancelling, "cancelling", "cancelled"),
    ];
    for (id, before, _) in states {
        assert_eq!(cluster.status(id)["status"], before, "{id}");
    }
    let mut worker = cluster.spawn_worker(&[]);
    for (id, before, after) in states {
        let end = cluster.wait_terminal(id, Duration::from_secs(60));
        assert_eq!(end["status"], after, "{before} -> {end}");
    }
    let errors = cluster.results(&cancelling, true);
    assert_eq!(errors.len(), 50);
    assert!(errors.iter().all(|l| l["error"]["code"] == "cancelled"));
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn a_retry_cut_off_by_redis_leaves_the_batch_as_it_was_and_can_run_again() {
    let Some(cluster) = Cluster::start_opts(
        "retry_oom",
        &["--fail-rate-500", "1.0"],
        Options {
            max_attempts: 1,
            ..Options::default()
        },
    ) else {
        return;
    };
    let n = 40;
    let id = cluster.submit(&input(&cluster, "r", n, "x"), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut w = cluster.spawn_worker(&["--exit-when-idle", "2"]);
    let first = cluster.wait_terminal(&id, Duration::from_secs(60));
    wait_exit(&mut w, Duration::from_secs(60));
    assert_eq!(first["request_counts"]["failed"], n as u64, "{first}");

    let mut c = conn(&cluster);
    cap_memory(&mut c, 0);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(1)
        .query(&mut c)
        .unwrap();
    let out = run(cluster.cmd().args(["retry", &id]));
    uncap_memory(&mut c);
    assert!(!out.status.success(), "the retry should fail at maxmemory");
    let after = cluster.status(&id);
    assert_eq!(after["status"], first["status"], "left as it was: {after}");
    assert_eq!(after["request_counts"], first["request_counts"]);
    let staged: Vec<String> = redis::cmd("KEYS")
        .arg("by:{default}:staged:*")
        .query(&mut c)
        .unwrap();
    assert!(
        staged.is_empty(),
        "nothing staged is left behind: {staged:?}"
    );
    assert_eq!(stream_len(&mut c), 0);

    // Not refused as "being replayed": the batch was never reopened.
    let out = run(cluster.cmd().args(["retry", &id]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut w = cluster.spawn_worker(&["--exit-when-idle", "2"]);
    let again = cluster.wait_terminal(&id, Duration::from_secs(60));
    wait_exit(&mut w, Duration::from_secs(60));
    assert_eq!(again["request_counts"]["failed"], n as u64, "{again}");
    assert_eq!(cluster.results(&id, true).len(), n);
}
