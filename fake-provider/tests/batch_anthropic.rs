//! The fake's Anthropic Message Batches API over real HTTP: the lifecycle with unordered
//! results answered as `/v1/messages` answers, expiry and cancel with partial results, delete,
//! the 429 quota refusal, create-time validation, the list, and the failing fraction.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use common::{KEY, ids, many_lines, many_requests, request, start};
use serde_json::{Value, json};

fn id(batch: &Value) -> String {
    batch["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_message_batch_ends_with_results_answered_as_real_time_does() {
    let (fake, client) = start(&format!(
        "--require-key {KEY} --batch-turnaround-ms 600 --batch-window-secs 30"
    ));
    let mut requests: Vec<Value> = (0..4)
        .map(|i| request(&format!("ok-{i}"), "claude-fake", &format!("question {i}")))
        .collect();
    requests.push(request("ctx", "claude-fake", "FAKE:CONTEXT please"));
    let mut bad = request("no-max", "claude-fake", "hi");
    bad["params"].as_object_mut().unwrap().remove("max_tokens");
    requests.push(bad);

    let anonymous = reqwest::Client::new()
        .post(format!("{}/v1/messages/batches", fake.url))
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"requests": requests}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    // Anthropic's SDK 2.x sends the key as a bearer token: taken as `x-api-key` is.
    let bearer = |key: &str| {
        reqwest::Client::new()
            .get(format!("{}/v1/messages/batches", fake.url))
            .header("anthropic-version", "2023-06-01")
            .bearer_auth(key)
            .send()
    };
    assert_eq!(bearer(KEY).await.unwrap().status().as_u16(), 200);
    assert_eq!(bearer("sk-wrong").await.unwrap().status().as_u16(), 401);

    let (status, created) = client.message_batch(&requests).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["type"], "message_batch");
    assert_eq!(created["processing_status"], "in_progress");
    assert_eq!(
        created["request_counts"],
        json!({"processing": 6, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert!(created["results_url"].is_null() && created["ended_at"].is_null());
    assert!(created["expires_at"].as_str().unwrap() > created["created_at"].as_str().unwrap());
    let (status, early) = client
        .anthropic_get(&format!("/v1/messages/batches/{}/results", id(&created)))
        .await;
    assert_eq!(status, 400, "{early}");

    let ended = client.wait_ended(&id(&created), 10).await;
    assert_eq!(
        ended["request_counts"],
        json!({"processing": 0, "succeeded": 4, "errored": 2, "canceled": 0, "expired": 0})
    );
    assert!(ended["ended_at"].is_string());
    let results = client.results(&ended).await;
    assert_eq!(ids(&results), ids(&requests));
    for r in &results {
        let custom_id = r["custom_id"].as_str().unwrap();
        let result = &r["result"];
        match custom_id {
            "ctx" | "no-max" => {
                assert_eq!(result["type"], "errored", "{r}");
                assert_eq!(result["error"]["type"], "error");
                assert_eq!(result["error"]["error"]["type"], "invalid_request_error");
            }
            _ => {
                assert_eq!(result["type"], "succeeded", "{r}");
                let sent = requests
                    .iter()
                    .find(|q| q["custom_id"] == custom_id)
                    .unwrap();
                let (_, live) = client.messages(&sent["params"]).await;
                assert_eq!(result["message"]["content"], live["content"]);
                assert_eq!(result["message"]["usage"], live["usage"]);
                assert_eq!(result["message"]["stop_reason"], "end_turn");
            }
        }
    }
    let stats = fake.stats()["batches"].clone();
    assert_eq!(stats["created"], 1, "{stats}");
    assert_eq!(stats["anthropic"]["by_status"]["ended"], 1, "{stats}");
}

#[tokio::test]
async fn expired_and_canceled_batches_keep_their_finished_results() {
    let (_fake, client) = start("--batch-expire --batch-turnaround-ms 200 --batch-window-secs 1");
    let requests: Vec<Value> = many_requests("e", 10, "m", "hi");
    let (_, created) = client.message_batch(&requests).await;
    let ended = client.wait_ended(&id(&created), 5).await;
    assert_eq!(ended["request_counts"]["succeeded"], 5);
    assert_eq!(ended["request_counts"]["expired"], 5);
    let results = client.results(&ended).await;
    let expired: BTreeSet<String> = results
        .iter()
        .filter(|r| r["result"]["type"] == "expired")
        .map(|r| r["custom_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(expired, (5..10).map(|i| format!("e{i}")).collect());

    let (fake, client) = start("--batch-turnaround-ms 3000");
    let requests: Vec<Value> = many_requests("c", 40, "m", "hi");
    let (_, created) = client.message_batch(&requests).await;
    let path = format!("/v1/messages/batches/{}", id(&created));
    let (status, _) = client.anthropic_delete(&path).await;
    assert_eq!(status, 400, "an unended batch cannot be deleted");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let (status, canceling) = client.anthropic_post(&format!("{path}/cancel")).await;
    assert_eq!(status, 200, "{canceling}");
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());
    let ended = client.wait_ended(&id(&created), 5).await;
    let counts = &ended["request_counts"];
    let succeeded = counts["succeeded"].as_u64().unwrap();
    assert!((1..40).contains(&succeeded), "{ended}");
    assert_eq!(counts["canceled"].as_u64().unwrap(), 40 - succeeded);
    let results = client.results(&ended).await;
    assert_eq!(results.len(), 40);
    let canceled = results
        .iter()
        .filter(|r| r["result"]["type"] == "canceled")
        .count();
    assert_eq!(canceled as u64, 40 - succeeded);
    let (status, _) = client.anthropic_post(&format!("{path}/cancel")).await;
    assert_eq!(status, 400, "an ended batch cannot be canceled");
    let (status, deleted) = client.anthropic_delete(&path).await;
    assert_eq!(
        (status, &deleted["type"]),
        (200, &json!("message_batch_deleted"))
    );
    let (status, _) = client.anthropic_get(&path).await;
    assert_eq!(status, 404);
    let stats = fake.stats()["batches"].clone();
    assert_eq!(stats["cancelled"], 1, "{stats}");
    assert_eq!(stats["anthropic"]["deleted"], 1, "{stats}");
}

#[tokio::test]
async fn over_the_enqueued_token_limit_a_create_is_refused_with_429() {
    // Anthropic's parse: floor(11 / 4) + 4 = 6 input tokens a request; 10 = 60 of 100.
    let (fake, client) = start("--batch-turnaround-ms 1000 --batch-enqueued-token-limit 100");
    let batch = |tag: &str| -> Vec<Value> {
        (0..10)
            .map(|i| request(&format!("{tag}{i}"), "m", "hello there"))
            .collect()
    };
    let (status, first) = client.message_batch(&batch("a")).await;
    assert_eq!(status, 200, "{first}");
    let (status, refused) = client.message_batch(&batch("b")).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["error"]["type"], "rate_limit_error");
    client.wait_ended(&id(&first), 5).await;
    let (status, third) = client.message_batch(&batch("c")).await;
    assert_eq!(status, 200, "{third}");
    let stats = fake.stats()["batches"].clone();
    assert_eq!(stats["created"], 2, "{stats}");
    assert_eq!(stats["anthropic"]["refused"], 1, "{stats}");
}

#[tokio::test]
async fn a_create_with_bad_custom_ids_is_refused() {
    let (fake, client) = start("");
    for requests in [
        vec![request("has/slash", "m", "hi")],
        vec![request("same", "m", "hi"), request("same", "m", "again")],
        vec![json!({"custom_id": "no-params"})],
        vec![],
    ] {
        let (status, body) = client.message_batch(&requests).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let (status, _) = client
        .http
        .post(format!("{}/v1/messages/batches", fake.url))
        .header("x-api-key", KEY)
        .json(&json!({"requests": [request("a", "m", "hi")]}))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(status, 400, "anthropic-version is required");
    assert_eq!(fake.stats()["batches"]["created"], 0);
}

#[tokio::test]
async fn the_list_pages_newest_first_both_ways() {
    let (_fake, client) = start("");
    let mut made = Vec::new();
    for i in 0..5 {
        let (_, b) = client
            .message_batch(&[request(&format!("l{i}"), "m", "hi")])
            .await;
        made.push(id(&b));
    }
    made.reverse();
    let page_ids =
        |page: &Value| -> Vec<String> { page["data"].as_array().unwrap().iter().map(id).collect() };
    let (_, first) = client.anthropic_get("/v1/messages/batches?limit=2").await;
    assert_eq!(page_ids(&first), made[0..2]);
    assert_eq!(first["has_more"], true);
    assert_eq!(first["last_id"], made[1]);
    let (_, second) = client
        .anthropic_get(&format!(
            "/v1/messages/batches?limit=2&after_id={}",
            made[1]
        ))
        .await;
    assert_eq!(page_ids(&second), made[2..4]);
    let (_, last) = client
        .anthropic_get(&format!(
            "/v1/messages/batches?limit=2&after_id={}",
            made[3]
        ))
        .await;
    assert_eq!(page_ids(&last), made[4..5]);
    assert_eq!(last["has_more"], false);
    let (_, back) = client
        .anthropic_get(&format!(
            "/v1/messages/batches?limit=2&before_id={}",
            made[4]
        ))
        .await;
    assert_eq!(page_ids(&back), made[2..4]);
    assert_eq!(back["has_more"], true);
}

#[tokio::test]
async fn the_failing_items_are_the_same_custom_ids_in_both_apis() {
    let (_fake, client) = start("--batch-item-fail-rate 0.25 --batch-turnaround-ms 100");
    let requests: Vec<Value> = many_requests("f", 100, "m", "hi");
    let (_, created) = client.message_batch(&requests).await;
    let ended = client.wait_ended(&id(&created), 5).await;
    let results = client.results(&ended).await;
    let errored: Vec<&Value> = results
        .iter()
        .filter(|r| r["result"]["type"] == "errored")
        .collect();
    assert!(
        errored
            .iter()
            .all(|r| r["result"]["error"]["error"]["type"] == "api_error")
    );
    let errored: BTreeSet<String> = errored
        .iter()
        .map(|r| r["custom_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ended["request_counts"]["errored"].as_u64().unwrap() as usize,
        errored.len()
    );
    assert!(
        (10..=40).contains(&errored.len()),
        "{} of 100 at 0.25",
        errored.len()
    );

    let lines: Vec<Value> = many_lines("f", 100, "m", "hi");
    let batch = client.openai_batch(&lines).await;
    let (done, _) = client
        .wait(&batch["id"], 5, |b| b["status"] == "completed")
        .await;
    assert_eq!(
        ids(&client.file_lines(&done["error_file_id"]).await),
        errored
    );
}
