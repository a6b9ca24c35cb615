//! OpenAI's Batch API on the fake, what it refuses: an input file that fails validation,
//! the enqueued-token quota, and the store's byte cap.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{line, start};
use serde_json::{Value, json};

#[tokio::test]
async fn a_bad_input_file_fails_validation_with_its_lines() {
    let (fake, client) = start("--batch-turnaround-ms 200");
    let mut wrong_url = line("b", "m", "hi");
    wrong_url["url"] = json!("/v1/embeddings");
    let content = [
        line("a", "m", "hi").to_string(),
        "{not json".to_owned(),
        wrong_url.to_string(),
        line("a", "m", "again").to_string(),
    ]
    .join("\n");
    let (_, file) = client.upload(&content).await;
    let (_, created) = client
        .create(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}),
        )
        .await;
    assert_eq!(created["status"], "validating");
    let (failed, seen) = client
        .wait(&created["id"], 5, |b| b["status"] == "failed")
        .await;
    assert_eq!(seen, ["validating", "failed"]);
    let errors: Vec<(String, u64)> = failed["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["code"].as_str().unwrap().to_owned(),
                e["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        errors,
        [
            ("invalid_json_line".to_owned(), 2),
            ("invalid_url".to_owned(), 3),
            ("duplicate_custom_id".to_owned(), 4)
        ]
    );
    assert!(failed["failed_at"].is_u64() && failed["in_progress_at"].is_null());
    assert!(failed["output_file_id"].is_null() && failed["error_file_id"].is_null());
    assert_eq!(failed["request_counts"]["total"], 0);

    // More than 50,000 lines.
    let many: Vec<String> = (0..50_001)
        .map(|i| line(&format!("n{i}"), "m", "x").to_string())
        .collect();
    let (_, file) = client.upload(&many.join("\n")).await;
    let (_, created) = client
        .create(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}),
        )
        .await;
    let (failed, _) = client
        .wait(&created["id"], 5, |b| b["status"] == "failed")
        .await;
    assert_eq!(failed["errors"]["data"][0]["code"], "too_many_requests");

    // Refused at create: these never become batches.
    let too_much: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    for (endpoint, window, metadata) in [
        ("/v1/embeddings", "24h", Value::Null),
        ("/v1/chat/completions", "48h", Value::Null),
        ("/v1/chat/completions", "24h", Value::Object(too_much)),
    ] {
        let (status, body) = client
            .create(json!({"input_file_id": file["id"], "endpoint": endpoint,
                "completion_window": window, "metadata": metadata}))
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    assert_eq!(fake.stats()["batches"]["created"], 2);
}

#[tokio::test]
async fn the_enqueued_token_limit_fails_a_batch_that_would_pass_it() {
    // Each line: floor(11 / 4) + 4 = 6 prompt tokens; 10 lines = 60 of a 100 limit.
    let (fake, client) = start("--batch-turnaround-ms 1500 --batch-enqueued-token-limit 100");
    let batch = |model: &'static str, tag: &'static str| {
        (0..10)
            .map(move |i| line(&format!("{tag}{i}"), model, "hello there"))
            .collect::<Vec<_>>()
    };
    let first = client.openai_batch(&batch("gpt-a", "a")).await;
    let second = client.openai_batch(&batch("gpt-a", "b")).await;
    // Another model has its own quota.
    let other = client.openai_batch(&batch("gpt-b", "c")).await;
    let (failed, _) = client
        .wait(&second["id"], 5, |b| b["status"] != "validating")
        .await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["errors"]["data"][0]["code"], "token_limit_exceeded");
    assert!(
        failed["errors"]["data"][0]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-a")
    );
    let (other, _) = client
        .wait(&other["id"], 5, |b| b["status"] != "validating")
        .await;
    // Past validating (in progress, or further along on a loaded machine), not failed.
    assert_ne!(other["status"], "failed", "{other}");
    // Once the first has ended, its share is free again.
    client
        .wait(&first["id"], 10, |b| b["status"] == "completed")
        .await;
    let third = client.openai_batch(&batch("gpt-a", "d")).await;
    let (third, _) = client
        .wait(&third["id"], 10, |b| b["status"] != "validating")
        .await;
    assert_ne!(third["status"], "failed", "{third}");
    assert!(third["errors"].is_null(), "{third}");
    let stats = fake.stats()["batches"].clone();
    assert_eq!(stats["by_status"]["failed"], 1, "{stats}");
}

#[tokio::test]
async fn the_store_refuses_past_its_byte_cap() {
    let (fake, client) = start("--batch-max-bytes 4000 --batch-turnaround-ms 100");
    let (status, body) = client.upload(&"x".repeat(5000)).await;
    assert_eq!(status, 413, "{body}");
    let lines: Vec<String> = (0..10)
        .map(|i| line(&format!("k{i}"), "m", "hi").to_string())
        .collect();
    let (status, file) = client.upload(&lines.join("\n")).await;
    assert_eq!(status, 200, "{file}");
    // The answers of 10 lines pass what is left of the cap.
    let (status, body) = client
        .create(
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
            "completion_window": "24h"}),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    // Deleting the input frees its bytes.
    client
        .delete(&format!("/v1/files/{}", file["id"].as_str().unwrap()))
        .await;
    assert_eq!(fake.stats()["batches"]["stored_bytes"], 0);
    // So do the answers of 40 message-batch requests.
    let requests: Vec<Value> = (0..40)
        .map(|i| common::request(&format!("r{i}"), "m", "hi"))
        .collect();
    let (status, refused) = client.message_batch(&requests).await;
    assert_eq!(status, 413, "{refused}");
    assert_eq!(refused["error"]["type"], "request_too_large");
}
