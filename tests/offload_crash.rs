//! The offload lane across crashes: a worker aborted (as by `kill -9`) at each step of a
//! provider batch's life — recorded but not sent, sent but its id not recorded, half
//! ingested — and another worker taking the lane over. Each time: one paid provider batch,
//! never two, and every item exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::cluster::{Cluster, Options, QUICK_OFFLOAD};
use support::offload::assert_once_through_one_provider_batch;

const ITEMS: usize = 6;

fn crash_at(point: &str) {
    let Some(cluster) = Cluster::start_opts(
        &format!("offload_crash_{point}"),
        &["--batch-turnaround-ms", "500"],
        Options {
            provider_extra: "batch_api = true".into(),
            extra_toml: QUICK_OFFLOAD.into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = cluster.submit_with_deadline("c", ITEMS);
    cluster.crash_worker_at(point);
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
