//! A fake OpenAI-compatible provider process (`batchyard-fake-provider`) per test, and request
//! builders for provider tests.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use batchyard_workers::call::retry::{RetryPolicy, call_with_retry};
use batchyard_workers::provider::{
    ChatCall, Completion, OpenAiConfig, OpenAiProvider, ProviderError,
};
use serde_json::{Map, Value, json};

/// A running fake provider, killed on drop.
pub struct FakeServer {
    child: Child,
    url: String,
}

impl FakeServer {
    pub fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_batchyard-fake-provider"))
            .args(["--addr", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the fake provider");
        let stdout = child.stdout.take().expect("its stdout");
        let mut line = String::new();
        // One line, or EOF if it died.
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let url = match line.trim().strip_prefix("listening on ") {
            Some(url) => url.to_owned(),
            None => {
                let _ = child.kill();
                panic!("unexpected first line from the fake provider: {line:?}");
            }
        };
        Self { child, url }
    }

    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn provider(&self) -> OpenAiProvider {
        self.provider_with(OpenAiConfig::default())
    }

    pub fn provider_with(&self, config: OpenAiConfig) -> OpenAiProvider {
        OpenAiProvider::new(OpenAiConfig {
            base_url: self.base_url(),
            ..config
        })
        .expect("build the provider")
    }

    /// Requests served, by status code.
    pub async fn count(&self, status: u16) -> u64 {
        let stats: Value = reqwest::get(format!("{}/stats", self.url))
            .await
            .expect("get /stats")
            .json()
            .await
            .expect("stats json");
        stats["by_status"][status.to_string()].as_u64().unwrap_or(0)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn body_for(text: &str) -> Map<String, Value> {
    let Value::Object(map) = json!({
        "model": "placeholder",
        "messages": [
            {"role": "system", "content": "You summarise documents."},
            {"role": "user", "content": text},
        ],
    }) else {
        unreachable!()
    };
    map
}

pub fn call<'a>(model: &'a str, body: &'a Map<String, Value>) -> ChatCall<'a> {
    ChatCall {
        model_name: model,
        body,
        default_max_tokens: None,
    }
}

pub fn fast_policy(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(5),
        max_attempts,
    }
}

pub fn content(completion: &Completion) -> &str {
    completion.body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
}

pub async fn with_retry(
    provider: &OpenAiProvider,
    policy: &RetryPolicy,
    body: &Map<String, Value>,
) -> (Result<Completion, ProviderError>, u32) {
    call_with_retry(policy, || provider.complete(call("small-1", body))).await
}
