//! The offload lane across crashes: a worker aborted (as by `kill -9`) at each step of a
//! provider batch's life — recorded but not sent, sent but its id not recorded, half
//! ingested — and another worker taking the lane over. Each time: one paid provider batch,
//! never two, and every item exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::cluster::{Cluster, Options, wait_exit};
use support::offload::assert_once_through_one_provider_batch;
use support::*;

const ITEMS: usize = 6;

fn crash_at(point: &str) {
    let Some(cluster) = Cluster::start_opts(
        &format!("offload_crash_{point}"),
        &["--batch-turnaround-ms", "500"],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: "[offload]\nmin_items = 3\npoll_interval_secs = 1\n\
                         switch_margin_secs = 0\nrealtime_items_per_sec = 1000\n"
                .into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let body: String = (0..ITEMS)
        .map(|i| request_line(&format!("c-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &["--deadline", "1h"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut doomed = cluster
        .cmd()
        .arg("worker")
        .env("BATCHYARD_TEST_CRASH_AT", point)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let status = wait_exit(&mut doomed, Duration::from_secs(60));
    assert!(
        !status.success(),
        "the worker should have aborted at {point}"
    );
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "30"]);
    assert_once_through_one_provider_batch(&cluster, &id, ITEMS);
    let _ = worker.kill();
    let _ = worker.wait();
}

#[test]
fn a_crash_before_the_create_sends_the_batch_once() {
    crash_at("before_create");
}

#[test]
fn a_crash_after_the_create_does_not_send_it_again() {
    crash_at("after_create");
}

#[test]
fn a_crash_mid_ingest_loses_and_repeats_nothing() {
    crash_at("mid_ingest");
}
