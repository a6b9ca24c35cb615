//! OpenAI's `completion_window`: items still queued when the window ends are `expired`
//! without a call, those in flight finish, and the batch ends `expired` with partial results.
//! `BATCHYARD_API_WINDOW_SECS` shortens the API's "24h" so the test doesn't wait a day.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::api::*;
use support::cluster::Cluster;

const ITEMS: usize = 50;

fn lines(s: &Server, file_id: &str) -> Vec<serde_json::Value> {
    let (code, body) = call(s, "GET", &format!("/v1/files/{file_id}/content"), &[]);
    assert_eq!(code, 200, "{body}");
    body.lines()
        .filter(|l| !l.trim().is_empty())
        .map(json_of)
        .collect()
}

#[test]
fn a_batch_whose_window_ends_expires_with_partial_results() {
    // 200 ms a call, one at a time: 50 items need 10 s, the window is 4 s.
    let Some(cluster) = Cluster::start("expiry", &["--latency-ms", "200"], 30) else {
        return;
    };
    let s = Server::start_env(&cluster, &[("BATCHYARD_API_WINDOW_SECS", "4")]);
    // The worker is up before the batch exists, so some items surely run within the window.
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "1"])]);
    let file = upload(&s, &input(cluster.dir.path(), "exp", ITEMS));
    let created = ok_json(create_batch(&s, file["id"].as_str().unwrap(), "null"));
    let bid = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["completion_window"], "24h");
    let created_at = created["created_at"].as_u64().unwrap();
    let expires_at = created["expires_at"].as_u64().unwrap();
    assert!(
        (created_at + 4..=created_at + 5).contains(&expires_at),
        "{created}"
    );
    // While it runs, the native view has no manifest yet.
    let running = ok_json(call(&s, "GET", &format!("/api/batches/{bid}"), &[]));
    assert_eq!(running["partial"], true, "{running}");
    assert_eq!(running["expires_at"], expires_at, "{running}");

    let done = wait_batch(&s, &bid, Duration::from_secs(90));
    assert_eq!(done["status"], "expired", "{done}");
    let expired_at = done["expired_at"].as_u64().unwrap();
    assert!(expired_at >= expires_at, "{done}");
    assert!(
        done["completed_at"].is_null() && done["failed_at"].is_null(),
        "{done}"
    );
    let counts = &done["request_counts"];
    let (ok, failed) = (
        counts["completed"].as_u64().unwrap(),
        counts["failed"].as_u64().unwrap(),
    );
    assert_eq!(ok + failed, ITEMS as u64, "{done}");
    assert!(ok >= 1 && failed >= 1, "{done}");

    // Partial results: what ran is in the output, the rest expired, each item exactly once.
    let output = lines(&s, done["output_file_id"].as_str().unwrap());
    let errors = lines(&s, done["error_file_id"].as_str().unwrap());
    assert_eq!(output.len() as u64, ok);
    assert_eq!(errors.len() as u64, failed);
    assert!(
        errors.iter().all(|e| e["error"]["code"] == "expired"),
        "{errors:?}"
    );
    let mut seen: BTreeMap<String, u32> = BTreeMap::new();
    for line in output.iter().chain(&errors) {
        *seen
            .entry(line["custom_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let expected: BTreeMap<String, u32> = (0..ITEMS).map(|i| (format!("exp-{i}"), 1)).collect();
    assert_eq!(seen, expected);
    // Expired items made no call, so only the ones that ran cost anything.
    assert!(
        errors.iter().all(|e| e["batchyard"]["cost_usd"] == 0.0),
        "{errors:?}"
    );

    let native = ok_json(call(&s, "GET", &format!("/api/batches/{bid}"), &[]));
    assert_eq!(native["status"], "expired", "{native}");
    assert_eq!(native["partial"], false, "{native}");
    assert_eq!(native["errors_by_code"]["expired"], failed, "{native}");
    assert!(native["eta_secs"].is_null(), "{native}");
    s.stop();
}
