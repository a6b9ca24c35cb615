//! Faults between a paid call and its settlement (issue 13, items 2 and 12), against real
//! Redis, the real S3-compatible server and the fake provider over HTTP:
//!
//! - Redis refuses writes (`maxmemory`, `noeviction`) mid-batch: the worker stops claiming,
//!   holds what it could not settle, and counts every call once Redis takes writes again.
//! - A call that outlasts the visibility timeout is kept claimed by the heartbeat, so it is
//!   neither reclaimed nor paid twice.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use support::cluster::{Cluster, Options, wait_exit};
use support::invariants::assert_invariants;
use support::{request_line, write_file};

fn conn(cluster: &Cluster) -> redis::Connection {
    redis::Client::open(cluster.redis.url.as_str())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap()
}

fn config_set(c: &mut redis::Connection, key: &str, value: &str) {
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg(key)
        .arg(value)
        .query(c)
        .unwrap();
}

fn submit(cluster: &Cluster, name: &str, n: usize) -> String {
    let body: String = (0..n)
        .map(|i| request_line(&format!("{name}-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let path = write_file(
        cluster.dir.path(),
        &format!("{name}.jsonl"),
        body.as_bytes(),
    );
    cluster.submit(path.to_str().unwrap(), &["--no-cache"])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status code of `GET /readyz` on the worker's metrics address (0 if it can't be read).
fn readyz(port: u16) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn settled(cluster: &Cluster, id: &str) -> u64 {
    let s = cluster.status(id);
    s["request_counts"]["completed"].as_u64().unwrap()
        + s["request_counts"]["failed"].as_u64().unwrap()
}

fn requests(cluster: &Cluster) -> u64 {
    cluster.fake.stats()["requests"].as_u64().unwrap()
}

/// Spend follows the calls the provider served: every call in this input costs about the same.
fn assert_spend_follows_calls(cluster: &Cluster, id: &str, ok: &[serde_json::Value]) {
    let calls = requests(cluster) as f64;
    let per_call: Vec<f64> = ok
        .iter()
        .map(|l| l["batchyard"]["cascade"][0]["cost_usd"].as_f64().unwrap())
        .collect();
    let mean = per_call.iter().sum::<f64>() / per_call.len() as f64;
    let spent = cluster.status(id)["cost_usd"].as_f64().unwrap();
    assert!(
        (spent - calls * mean).abs() <= 0.02 * calls * mean,
        "ledger spend {spent} vs {calls} calls at ~{mean} each"
    );
}

#[test]
fn redis_at_maxmemory_stops_claims_and_every_call_is_counted() {
    let Some(cluster) = Cluster::start_opts(
        "settle_oom",
        &["--latency-ms", "5"],
        Options {
            visibility_secs: 120,
            ..Options::default()
        },
    ) else {
        return;
    };
    let n = 2000;
    let concurrency = 16u64;
    let id = submit(&cluster, "oom", n);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = cluster.spawn_worker(&[
        "--concurrency",
        "16",
        "--exit-when-idle",
        "2",
        "--metrics-addr",
        &addr,
    ]);
    let start = Instant::now();
    while settled(&cluster, &id) < 300 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the batch did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut c = conn(&cluster);
    config_set(&mut c, "maxmemory-policy", "noeviction");
    config_set(&mut c, "maxmemory", "1");
    let cut = requests(&cluster);
    std::thread::sleep(Duration::from_secs(4));
    let settled_in = requests(&cluster);
    std::thread::sleep(Duration::from_secs(4));
    let during = requests(&cluster);
    // Once the first settle is refused the worker claims nothing more: no call at all in the
    // second half of the outage.
    assert_eq!(
        settled_in, during,
        "the worker kept calling while nothing could be settled: {cut} -> {settled_in} -> {during}"
    );
    // Before that, every call after the cut belongs to a job that holds a slot or waits for
    // its segment, and none of them can leave (their settles are refused): at most
    // concurrency × (1 + HELD_PER_SLOT) calls whose spend waits to be counted.
    let bound = concurrency * (1 + batchyard_workers::job::pool::HELD_PER_SLOT as u64);
    assert!(
        during - cut <= bound,
        "{} calls while Redis refused writes, above {bound}: {cut} -> {during}",
        during - cut
    );
    assert!(
        worker.try_wait().unwrap().is_none(),
        "a worker holding unsettled jobs is not idle"
    );
    config_set(&mut c, "maxmemory", "0");
    let back = Instant::now();
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    let after = back.elapsed();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(readyz(port), 200);
    assert!(
        after < Duration::from_secs(60),
        "done {after:?} after Redis took writes again: no visibility timeout (120 s) waited out"
    );
    let (ok, _) = assert_invariants(&cluster, &id, n);
    assert_spend_follows_calls(&cluster, &id, &ok);
    assert!(wait_exit(&mut worker, Duration::from_secs(60)).success());
    eprintln!(
        "settle_oom: {n} items, {} provider calls, {} calls while Redis refused writes, done {after:?} after",
        requests(&cluster),
        during - cut
    );
}

#[test]
fn a_call_longer_than_the_visibility_timeout_is_not_reclaimed() {
    let Some(cluster) = Cluster::start_opts(
        "settle_heartbeat",
        &["--latency-ms", "7000"],
        Options {
            visibility_secs: 3,
            ..Options::default()
        },
    ) else {
        return;
    };
    let n = 20;
    let id = submit(&cluster, "slow", n);
    let mut a = cluster.spawn_worker(&["--concurrency", "20"]);
    let mut b = cluster.spawn_worker(&["--concurrency", "20"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, _) = assert_invariants(&cluster, &id, n);
    assert_eq!(requests(&cluster), n as u64, "each item called once");
    let manifest = cluster.manifest(&id);
    assert_eq!(manifest["reconciled"], true, "{manifest}");
    assert_spend_follows_calls(&cluster, &id, &ok);
    for w in [&mut a, &mut b] {
        let _ = w.kill();
        let _ = w.wait();
    }
}
