//! Helpers for the batch API tests: a client for the fake's OpenAI and Anthropic batch
//! endpoints over real HTTP, and bounded polling.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

pub use batchyard_testkit::FakeProvider;
use serde_json::{Value, json};

pub const KEY: &str = "sk-batch-test";

pub struct Client {
    pub http: reqwest::Client,
    pub url: String,
}

impl Client {
    pub fn new(fake: &FakeProvider) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            url: fake.url.clone(),
        }
    }

    fn openai(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.bearer_auth(KEY)
    }

    fn anthropic(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder
            .header("x-api-key", KEY)
            .header("anthropic-version", "2023-06-01")
    }

    async fn json(builder: reqwest::RequestBuilder) -> (u16, Value) {
        let response = builder.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// `POST /v1/files` (multipart, purpose `batch`), built by hand: the shape every SDK sends.
    pub async fn upload(&self, content: &str) -> (u16, Value) {
        let boundary = "batchyard-test-boundary-5f2c";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"input.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{content}\r\n\
             --{boundary}--\r\n"
        );
        let builder = self
            .http
            .post(format!("{}/v1/files", self.url))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        Self::json(self.openai(builder)).await
    }

    /// Uploads `lines` and creates a batch over them: the created batch.
    pub async fn openai_batch(&self, lines: &[Value]) -> Value {
        let content: Vec<String> = lines.iter().map(Value::to_string).collect();
        let (status, file) = self.upload(&content.join("\n")).await;
        assert_eq!(status, 200, "{file}");
        let (status, batch) = self
            .create(
                json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "24h"}),
            )
            .await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    pub async fn create(&self, body: Value) -> (u16, Value) {
        let builder = self
            .http
            .post(format!("{}/v1/batches", self.url))
            .json(&body);
        Self::json(self.openai(builder)).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        Self::json(self.openai(self.http.get(format!("{}{path}", self.url)))).await
    }

    pub async fn post(&self, path: &str) -> (u16, Value) {
        Self::json(self.openai(self.http.post(format!("{}{path}", self.url)))).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        Self::json(self.openai(self.http.delete(format!("{}{path}", self.url)))).await
    }

    pub async fn batch(&self, id: &Value) -> Value {
        let (status, batch) = self
            .get(&format!("/v1/batches/{}", id.as_str().unwrap()))
            .await;
        assert_eq!(status, 200, "{batch}");
        batch
    }

    /// Polls the batch until `done` holds (every 20 ms, at most `secs`), recording each
    /// status seen.
    pub async fn wait(
        &self,
        id: &Value,
        secs: u64,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut seen: Vec<String> = Vec::new();
        loop {
            let batch = self.batch(id).await;
            let status = batch["status"].as_str().unwrap().to_owned();
            if seen.last() != Some(&status) {
                seen.push(status);
            }
            if done(&batch) {
                return (batch, seen);
            }
            assert!(
                Instant::now() < deadline,
                "batch still {seen:?} after {secs} s: {batch}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The JSONL lines of an OpenAI file (none for a `null` id).
    pub async fn file_lines(&self, id: &Value) -> Vec<Value> {
        let Some(id) = id.as_str() else {
            return Vec::new();
        };
        let response = self
            .openai(self.http.get(format!("{}/v1/files/{id}/content", self.url)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// `POST /v1/chat/completions` with `body`: the real-time answer.
    pub async fn chat(&self, body: &Value) -> (u16, Value) {
        let builder = self
            .http
            .post(format!("{}/v1/chat/completions", self.url))
            .json(body);
        Self::json(self.openai(builder)).await
    }

    pub async fn messages(&self, body: &Value) -> (u16, Value) {
        let builder = self
            .http
            .post(format!("{}/v1/messages", self.url))
            .json(body);
        Self::json(self.anthropic(builder)).await
    }

    pub async fn message_batch(&self, requests: &[Value]) -> (u16, Value) {
        let builder = self
            .http
            .post(format!("{}/v1/messages/batches", self.url))
            .json(&json!({"requests": requests}));
        Self::json(self.anthropic(builder)).await
    }

    pub async fn anthropic_get(&self, path: &str) -> (u16, Value) {
        Self::json(self.anthropic(self.http.get(format!("{}{path}", self.url)))).await
    }

    pub async fn anthropic_post(&self, path: &str) -> (u16, Value) {
        Self::json(self.anthropic(self.http.post(format!("{}{path}", self.url)))).await
    }

    pub async fn anthropic_delete(&self, path: &str) -> (u16, Value) {
        Self::json(self.anthropic(self.http.delete(format!("{}{path}", self.url)))).await
    }

    /// Polls the message batch until `processing_status` is `ended` (at most `secs`).
    pub async fn wait_ended(&self, id: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (status, batch) = self
                .anthropic_get(&format!("/v1/messages/batches/{id}"))
                .await;
            assert_eq!(status, 200, "{batch}");
            if batch["processing_status"] == "ended" {
                return batch;
            }
            assert!(
                Instant::now() < deadline,
                "batch not ended after {secs} s: {batch}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The results at a batch's `results_url`.
    pub async fn results(&self, batch: &Value) -> Vec<Value> {
        let url = batch["results_url"]
            .as_str()
            .expect("an ended batch has a results_url");
        let response = self.anthropic(self.http.get(url)).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let text = response.text().await.unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// The fake with these flags (space-separated), and a client for it.
pub fn start(flags: &str) -> (FakeProvider, Client) {
    let args: Vec<&str> = flags.split_whitespace().collect();
    let fake = FakeProvider::start(&args);
    let client = Client::new(&fake);
    (fake, client)
}

/// `n` input lines `TAG0`, `TAG1`, ... asking `model` the same `text`.
pub fn many_lines(tag: &str, n: usize, model: &str, text: &str) -> Vec<Value> {
    (0..n)
        .map(|i| line(&format!("{tag}{i}"), model, text))
        .collect()
}

/// `n` Anthropic requests `TAG0`, `TAG1`, ...
pub fn many_requests(tag: &str, n: usize, model: &str, text: &str) -> Vec<Value> {
    (0..n)
        .map(|i| request(&format!("{tag}{i}"), model, text))
        .collect()
}

/// An OpenAI batch input line for `/v1/chat/completions`.
pub fn line(custom_id: &str, model: &str, text: &str) -> Value {
    json!({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}]}})
}

/// An Anthropic batch request.
pub fn request(custom_id: &str, model: &str, text: &str) -> Value {
    json!({"custom_id": custom_id, "params": {"model": model, "max_tokens": 64,
        "messages": [{"role": "user", "content": text}]}})
}

/// The custom_ids of some result lines.
pub fn ids(lines: &[Value]) -> BTreeSet<String> {
    lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_owned())
        .collect()
}
