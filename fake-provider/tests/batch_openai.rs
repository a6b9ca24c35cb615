//! The fake's OpenAI Files and Batch APIs over real HTTP: the lifecycle, expiry and cancel
//! with partial results, the list, and the deterministic failure fraction (what it refuses is
//! in `batch_openai_refusals.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{KEY, ids, line, many_lines, start};
use serde_json::{Value, json};

const LIFECYCLE: [&str; 4] = ["validating", "in_progress", "finalizing", "completed"];

#[tokio::test]
async fn a_batch_goes_validating_to_completed_and_answers_as_real_time_does() {
    let (fake, client) = start(&format!(
        "--require-key {KEY} --batch-turnaround-ms 1000 --batch-window-secs 30"
    ));
    let mut lines: Vec<Value> = (0..5)
        .map(|i| line(&format!("ok-{i}"), "gpt-fake", &format!("question {i}")))
        .collect();
    lines.push(line("ctx", "gpt-fake", "FAKE:CONTEXT please"));
    let mut short = line("short", "gpt-fake", "a rather long question that gets cut");
    short["body"]["max_tokens"] = json!(2);
    lines.push(short);

    // Without the key, nothing is stored.
    let anonymous = reqwest::Client::new()
        .get(format!("{}/v1/batches", fake.url))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);

    let (status, created) = client
        .create(
            json!({"input_file_id": "file-nope", "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 400, "{created}");
    let content: Vec<String> = lines.iter().map(Value::to_string).collect();
    let (_, file) = client.upload(&content.join("\n")).await;
    assert_eq!(file["purpose"], "batch");
    assert_eq!(
        file["bytes"].as_u64().unwrap() as usize,
        content.join("\n").len()
    );
    let (status, created) = client
        .create(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h", "metadata": {"batchyard_batch": "b1"}}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["status"], "validating");
    assert_eq!(created["request_counts"]["total"], 0);
    assert_eq!(created["metadata"]["batchyard_batch"], "b1");
    assert_eq!(created["model"], "gpt-fake");
    assert_eq!(
        created["expires_at"].as_u64().unwrap() - created["created_at"].as_u64().unwrap(),
        30
    );

    let (done, seen) = client
        .wait(&created["id"], 10, |b| b["status"] == "completed")
        .await;
    in_lifecycle_order(&seen);
    assert!(seen.contains(&"in_progress".to_owned()), "{seen:?}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 7, "completed": 6, "failed": 1})
    );
    for stamp in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[stamp].is_u64(), "{stamp}: {done}");
    }
    for stamp in ["failed_at", "expired_at", "cancelled_at", "cancelling_at"] {
        assert!(done[stamp].is_null(), "{stamp}: {done}");
    }

    let output = client.file_lines(&done["output_file_id"]).await;
    let errors = client.file_lines(&done["error_file_id"]).await;
    assert_eq!(output.len(), 6);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "ctx");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert_eq!(
        errors[0]["response"]["body"]["error"]["code"],
        "context_length_exceeded"
    );
    let usage = same_as_real_time(&client, &lines, &output).await;
    let short = output.iter().find(|o| o["custom_id"] == "short").unwrap();
    assert_eq!(
        short["response"]["body"]["choices"][0]["finish_reason"],
        "length"
    );
    assert!(usage > 0);
    assert_eq!(done["usage"]["input_tokens"], usage);

    let (status, meta) = client
        .get(&format!(
            "/v1/files/{}",
            done["output_file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(
        (status, meta["purpose"].as_str()),
        (200, Some("batch_output"))
    );
    let (status, deleted) = client
        .delete(&format!("/v1/files/{}", file["id"].as_str().unwrap()))
        .await;
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    let (status, _) = client
        .get(&format!(
            "/v1/files/{}/content",
            file["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, 404);

    // With the result files gone too, the batch holds no stored bytes.
    for id in [&done["output_file_id"], &done["error_file_id"]] {
        let (status, _) = client
            .delete(&format!("/v1/files/{}", id.as_str().unwrap()))
            .await;
        assert_eq!(status, 200);
    }

    let stats = fake.stats()["batches"].clone();
    assert_eq!(stats["created"], 1, "{stats}");
    assert_eq!(stats["by_status"]["completed"], 1, "{stats}");
    assert_eq!(stats["files_uploaded"], 1);
    assert_eq!(stats["files_deleted"], 3);
    assert_eq!(stats["stored_bytes"], 0, "{stats}");
}

/// Statuses come in lifecycle order (polling may miss a short phase, never reorder).
fn in_lifecycle_order(seen: &[String]) {
    let positions: Vec<usize> = seen
        .iter()
        .map(|s| {
            LIFECYCLE
                .iter()
                .position(|l| l == s)
                .expect("a lifecycle status")
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
}

/// Each output line answers as `/v1/chat/completions` answers the same body; the prompt
/// tokens they add up to.
async fn same_as_real_time(client: &common::Client, lines: &[Value], output: &[Value]) -> u64 {
    let mut usage = 0;
    for out in output {
        assert!(out["error"].is_null());
        assert_eq!(out["response"]["status_code"], 200);
        let id = out["custom_id"].as_str().unwrap();
        let sent = lines.iter().find(|l| l["custom_id"] == id).unwrap();
        // The same answer the real-time endpoint gives the same body.
        let (_, live) = client.chat(&sent["body"]).await;
        let body = &out["response"]["body"];
        assert_eq!(
            body["choices"][0]["message"], live["choices"][0]["message"],
            "{id}"
        );
        assert_eq!(
            body["choices"][0]["finish_reason"],
            live["choices"][0]["finish_reason"]
        );
        assert_eq!(body["usage"], live["usage"]);
        usage += body["usage"]["prompt_tokens"].as_u64().unwrap();
    }
    usage
}

#[tokio::test]
async fn an_expired_batch_keeps_what_was_done_and_lists_the_rest_as_batch_expired() {
    // --batch-expire: the first half finishes, the batch expires at the 1 s window.
    let (_fake, client) = start("--batch-expire --batch-turnaround-ms 200 --batch-window-secs 1");
    let lines: Vec<Value> = many_lines("e", 10, "m", "hi");
    let created = client.openai_batch(&lines).await;
    let (done, seen) = client
        .wait(&created["id"], 5, |b| b["status"] == "expired")
        .await;
    assert_eq!(seen.last().unwrap(), "expired");
    assert!(!seen.contains(&"completed".to_owned()));
    assert!(
        done["expired_at"].is_u64() && done["completed_at"].is_null(),
        "{done}"
    );
    assert!(done["finalizing_at"].is_null(), "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 10, "completed": 5, "failed": 0})
    );
    let output = client.file_lines(&done["output_file_id"]).await;
    let errors = client.file_lines(&done["error_file_id"]).await;
    let first_half: BTreeSet<String> = (0..5).map(|i| format!("e{i}")).collect();
    assert_eq!(ids(&output), first_half);
    assert_eq!(errors.len(), 5);
    for e in &errors {
        assert!(e["response"].is_null());
        assert_eq!(e["error"]["code"], "batch_expired");
    }
    assert!(ids(&errors).is_disjoint(&first_half));

    // Slower than its window: it expires with the part its clock got through.
    let (_slow, client) = start("--batch-turnaround-ms 4000 --batch-window-secs 1");
    let lines: Vec<Value> = many_lines("s", 16, "m", "hi");
    let created = client.openai_batch(&lines).await;
    let (done, _) = client
        .wait(&created["id"], 5, |b| b["status"] == "expired")
        .await;
    let output = client.file_lines(&done["output_file_id"]).await;
    let errors = client.file_lines(&done["error_file_id"]).await;
    // Done by 1000 ms: floor((1000 - 400) * 16 / 3200) = 3.
    assert_eq!(output.len(), 3, "{done}");
    assert_eq!(output.len() + errors.len(), 16);
    assert_eq!(ids(&output).len() + ids(&errors).len(), 16);
}

#[tokio::test]
async fn a_cancelled_batch_keeps_what_was_done_when_cancelled() {
    let (fake, client) = start("--batch-turnaround-ms 3000");
    let lines: Vec<Value> = many_lines("c", 40, "m", "hi");
    let created = client.openai_batch(&lines).await;
    let id = created["id"].as_str().unwrap();
    client
        .wait(&created["id"], 5, |b| {
            b["request_counts"]["completed"].as_u64() >= Some(5)
        })
        .await;
    let (status, cancelling) = client.post(&format!("/v1/batches/{id}/cancel")).await;
    assert_eq!(status, 200, "{cancelling}");
    assert_eq!(cancelling["status"], "cancelling");
    assert!(cancelling["cancelling_at"].is_u64());
    let (done, _) = client
        .wait(&created["id"], 5, |b| b["status"] == "cancelled")
        .await;
    assert!(done["cancelled_at"].is_u64() && done["completed_at"].is_null());
    let completed = done["request_counts"]["completed"].as_u64().unwrap() as usize;
    assert!((5..40).contains(&completed), "{done}");
    let output = client.file_lines(&done["output_file_id"]).await;
    let errors = client.file_lines(&done["error_file_id"]).await;
    assert_eq!(output.len(), completed);
    assert_eq!(errors.len(), 40 - completed);
    assert!(
        errors
            .iter()
            .all(|e| e["error"]["code"] == "batch_cancelled")
    );
    let everyone: BTreeSet<String> = ids(&output).union(&ids(&errors)).cloned().collect();
    assert_eq!(everyone, ids(&lines));
    // The items done first are the ones kept.
    let kept: BTreeSet<String> = (0..completed).map(|i| format!("c{i}")).collect();
    assert_eq!(ids(&output), kept);

    let (status, again) = client.post(&format!("/v1/batches/{id}/cancel")).await;
    assert_eq!(status, 400, "{again}");
    let stats = fake.stats()["batches"].clone();
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert_eq!(stats["by_status"]["cancelled"], 1, "{stats}");
}

#[tokio::test]
async fn the_list_pages_newest_first() {
    let (_fake, client) = start("--batch-turnaround-ms 600000");
    let mut made = Vec::new();
    for i in 0..5 {
        let batch = client
            .openai_batch(&[line(&format!("l{i}"), "m", "hi")])
            .await;
        made.push(batch["id"].as_str().unwrap().to_owned());
    }
    made.reverse();
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..5 {
        let query = after
            .as_ref()
            .map_or("?limit=2".to_owned(), |a| format!("?limit=2&after={a}"));
        let (status, page) = client.get(&format!("/v1/batches{query}")).await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(page["first_id"].as_str(), ids.first().map(String::as_str));
        assert_eq!(page["last_id"].as_str(), ids.last().map(String::as_str));
        listed.extend(ids);
        if page["has_more"] == false {
            break;
        }
        after = page["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(listed, made);
    let (status, _) = client.get("/v1/batches?limit=0").await;
    assert_eq!(status, 400);

    // The input files list the same way (what a restart lists to find orphaned uploads).
    let mut inputs = Vec::new();
    for id in &made {
        inputs.push(client.batch(&json!(id)).await["input_file_id"].clone());
    }
    let file_ids = |page: &Value| -> Vec<Value> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["id"].clone())
            .collect()
    };
    let (_, page) = client.get("/v1/files?purpose=batch&limit=2").await;
    assert_eq!(file_ids(&page), inputs[..2]);
    assert_eq!(page["has_more"], true);
    let (_, all) = client.get("/v1/files?purpose=batch&order=asc").await;
    inputs.reverse();
    assert_eq!(file_ids(&all), inputs);
    let (_, none) = client.get("/v1/files?purpose=batch_output").await;
    assert_eq!(none["data"], json!([]), "no batch has ended");
}

#[tokio::test]
async fn the_failing_fraction_is_fixed_by_custom_id() {
    let (_fake, client) = start("--batch-item-fail-rate 0.3 --batch-turnaround-ms 100");
    let lines: Vec<Value> = many_lines("f", 200, "m", "hi");
    let mut failing = Vec::new();
    for _ in 0..2 {
        let created = client.openai_batch(&lines).await;
        let (done, _) = client
            .wait(&created["id"], 5, |b| b["status"] == "completed")
            .await;
        let errors = client.file_lines(&done["error_file_id"]).await;
        assert!(errors.iter().all(|e| e["response"]["status_code"] == 500));
        assert_eq!(
            done["request_counts"]["failed"].as_u64().unwrap() as usize,
            errors.len()
        );
        failing.push(ids(&errors));
    }
    assert_eq!(failing[0], failing[1]);
    assert!(
        (40..=80).contains(&failing[0].len()),
        "{} of 200 at 0.3",
        failing[0].len()
    );
}
