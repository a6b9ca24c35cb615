//! A real model end to end: `batchyard run` against llama.cpp's OpenAI-compatible server
//! (`llama-cpp-python[server]`) serving SmolLM2-135M-Instruct, as an `openai` provider.
//!
//! `scripts/test` installs and starts the server (scripts/lib/llama.sh) and exports
//! `BATCHYARD_TEST_LLAMA_URL` (`http://127.0.0.1:PORT/v1`). Without it these tests skip,
//! except under `CI=true`, where they fail. Generation is kept short (tens of tokens), so
//! each test takes seconds; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// The model alias the server is started with (`--model_alias`).
const SERVED_NAME: &str = "smollm2";
/// A bound on one `batchyard run` against the real model (it answers in well under a
/// second a request; this leaves room for a loaded CI machine).
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

/// The server's base URL, or `None` (skip) outside CI when scripts/test did not start it.
fn llama_url(test: &str) -> Option<String> {
    let url = std::env::var("BATCHYARD_TEST_LLAMA_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|url| url.trim().trim_end_matches('/').to_string());
    batchyard_testkit::require(
        url,
        test,
        "no real model (BATCHYARD_TEST_LLAMA_URL unset); scripts/test installs and starts the \
         llama.cpp server (scripts/lib/llama.sh)",
    )
}

/// A config with one free local model behind the llama.cpp server, results under `store`.
fn write_config(dir: &Path, url: &str, store: &Path) -> std::path::PathBuf {
    let toml = format!(
        r#"
[storage]
url = "file://{store}"

[providers.llama]
kind = "openai"
base_url = "{url}"
timeout_secs = 120

[models.smol]
provider = "llama"
name = "{SERVED_NAME}"
input_usd_per_mtok = 0.0
output_usd_per_mtok = 0.0
context_window = 2048
tier = 1
capabilities = ["json"]

[tasks.summarize]
system = "You are a concise assistant."
prompt = "Summarize this in one short sentence:\n\n{{{{ text }}}}"
min_tier = 1
max_output_tokens = 48
"#,
        store = store.display(),
    );
    write_file(dir, "batchyard.toml", toml.as_bytes())
}

/// Runs `cmd` with stdout/stderr in files and a hard time limit (killed past it).
fn run_bounded(cmd: &mut Command, dir: &Path, timeout: Duration) -> Output {
    let out_path = dir.join("stdout.log");
    let err_path = dir.join("stderr.log");
    let mut child = cmd
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .expect("batchyard should start");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "batchyard run did not finish within {timeout:?} against the real model\n\
                 stdout: {}\nstderr: {}",
                std::fs::read_to_string(&out_path).unwrap_or_default(),
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: std::fs::read(&out_path).unwrap_or_default(),
        stderr: std::fs::read(&err_path).unwrap_or_default(),
    }
}

/// `batchyard --config CONFIG run INPUT ARGS... --json`, bounded; asserts a completed batch
/// with `n` successes and returns its output lines.
fn run_batch(dir: &Path, config: &Path, input: &Path, args: &[&str], n: usize) -> Vec<Value> {
    let t0 = Instant::now();
    let mut cmd = batchyard(dir);
    cmd.arg("--config")
        .arg(config)
        .arg("run")
        .arg(input)
        .args(args)
        .args(["--concurrency", "2", "--json"]);
    let out = run_bounded(&mut cmd, dir, RUN_TIMEOUT);
    let elapsed = t0.elapsed();
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed", "batch: {batch}");
    assert_eq!(batch["request_counts"]["total"], n, "batch: {batch}");
    assert_eq!(batch["request_counts"]["completed"], n, "batch: {batch}");
    assert_eq!(batch["request_counts"]["failed"], 0, "batch: {batch}");
    let id = batch["id"].as_str().unwrap();
    let base = dir.join("store/batches").join(id);
    let errors = read_jsonl(&base.join("errors.jsonl"));
    assert!(errors.is_empty(), "errors: {errors:?}");
    let lines = read_jsonl(&base.join("output.jsonl"));
    assert_eq!(lines.len(), n, "output lines: {lines:?}");
    eprintln!(
        "real model: {n} request(s) in {:.2}s ({:.0} ms per request, concurrency 2)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / n as f64
    );
    lines
}

/// The checks every real answer passes: a non-empty message from the configured model,
/// real token counts, and nothing simulated.
fn assert_real_answer(line: &Value) -> String {
    let body = &line["response"]["body"];
    assert_eq!(line["response"]["status_code"], 200, "line: {line}");
    assert!(line["error"].is_null(), "line: {line}");
    let content = body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no choices[0].message.content: {line}"));
    assert!(!content.trim().is_empty(), "empty content: {line}");
    assert_eq!(line["batchyard"]["model"], "smol", "line: {line}");
    assert!(
        line["batchyard"].get("simulated").is_none(),
        "a real model's output must not be marked simulated: {line}"
    );
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert!(
            body["usage"][field].as_u64().unwrap_or(0) > 0,
            "usage.{field} should be > 0: {line}"
        );
    }
    assert!(
        line["batchyard"]["input_tokens"].as_u64().unwrap_or(0) > 0,
        "line: {line}"
    );
    assert!(
        line["batchyard"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "line: {line}"
    );
    assert_eq!(
        line["batchyard"]["cost_usd"], 0.0,
        "a free local model: {line}"
    );
    content.to_string()
}

const DOCUMENTS: [(&str, &str); 4] = [
    (
        "weather.txt",
        "The national weather service expects heavy rain across the northern coast on \
         Thursday, with up to 60 millimetres in places and wind gusts of 80 km/h. Ferries may \
         be cancelled and drivers are advised to avoid the coastal road until Friday morning.",
    ),
    (
        "library.txt",
        "The city library will extend its opening hours from next month. The main branch will \
         stay open until 9 pm on weekdays and open on Sundays from 10 am to 4 pm. Members can \
         now borrow up to fifteen books at a time, up from ten.",
    ),
    (
        "recall.txt",
        "A kitchen appliance maker is recalling 12,000 electric kettles sold between March and \
         June because the lid can open while the water is boiling. Customers should stop using \
         the kettle and return it to any store for a full refund.",
    ),
    (
        "match.txt",
        "The home team won the final 3-1 after trailing at half time. Two goals in the last \
         fifteen minutes, both from corners, sealed the club's first title in twelve years, \
         and the captain was named player of the tournament.",
    ),
];

#[test]
fn a_folder_of_documents_runs_through_a_real_model() {
    let Some(url) = llama_url("a_folder_of_documents_runs_through_a_real_model") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = write_config(dir.path(), &url, &store);
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    for (name, body) in DOCUMENTS {
        write_file(&docs, name, body.as_bytes());
    }

    let lines = run_batch(
        dir.path(),
        &config,
        &docs,
        &["--task", "summarize"],
        DOCUMENTS.len(),
    );
    let mut ids: Vec<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    let mut want: Vec<&str> = DOCUMENTS.iter().map(|(n, _)| *n).collect();
    want.sort_unstable();
    assert_eq!(
        ids, want,
        "one line per document, keyed by its relative path"
    );
    for line in &lines {
        let content = assert_real_answer(line);
        // The task's limit reached the provider: at most 48 generated tokens.
        let generated = line["response"]["body"]["usage"]["completion_tokens"]
            .as_u64()
            .unwrap();
        assert!(generated <= 48, "max_output_tokens not applied: {line}");
        eprintln!("  {}: {content:?}", line["custom_id"].as_str().unwrap());
    }
}

#[test]
fn a_json_schema_response_format_yields_schema_valid_json() {
    let Some(url) = llama_url("a_json_schema_response_format_yields_schema_valid_json") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let config = write_config(dir.path(), &url, &store);
    let reviews = [
        (
            "review-1",
            "I love this coffee grinder. It is quiet, fast and the grind is perfectly even.",
        ),
        (
            "review-2",
            "Terrible headphones. The left side stopped working after two days and support \
             never answered.",
        ),
    ];
    // llama-cpp-python's server takes a JSON schema as `{"type": "json_object", "schema":
    // {...}}` and enforces it with a grammar. (It rejects OpenAI's `{"type": "json_schema",
    // "json_schema": {...}}` shape: its request model allows only "text" and "json_object",
    // and it answers that with HTTP 500.) batchyard passes `response_format` through as is.
    let format = json!({
        "type": "json_object",
        "schema": {
            "type": "object",
            "properties": {
                "sentiment": {"type": "string", "enum": ["positive", "negative"]}
            },
            "required": ["sentiment"]
        }
    });
    let body: String = reviews
        .iter()
        .map(|(id, review)| {
            json!({
                "custom_id": id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "smol",
                    "messages": [
                        {"role": "system", "content": "Classify the sentiment of the review. Answer in JSON."},
                        {"role": "user", "content": review}
                    ],
                    "response_format": format,
                    "max_tokens": 32,
                    "temperature": 0
                }
            })
            .to_string()
                + "\n"
        })
        .collect();
    let input = write_file(dir.path(), "requests.jsonl", body.as_bytes());

    let lines = run_batch(dir.path(), &config, &input, &[], reviews.len());
    for line in &lines {
        let content = assert_real_answer(line);
        let parsed: Value = serde_json::from_str(&content)
            .unwrap_or_else(|e| panic!("content is not JSON ({e}): {content:?}\nline: {line}"));
        let sentiment = parsed["sentiment"]
            .as_str()
            .unwrap_or_else(|| panic!("no string `sentiment` field: {content:?}"));
        assert!(
            ["positive", "negative"].contains(&sentiment),
            "sentiment {sentiment:?} is outside the schema's enum: {content:?}"
        );
        eprintln!("  {}: {content}", line["custom_id"].as_str().unwrap());
    }
}

/// The real cascade: the free local model goes first; when its JSON fails the schema, the item
/// escalates to a stronger (paid) model, here the fake provider answering schema-valid JSON.
#[test]
fn a_real_cascade_escalates_from_the_local_model_when_its_json_fails_the_schema() {
    let Some(url) = llama_url("a_real_cascade_escalates") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // The schema also wants a `unit` the prompt never mentions: the small local model can't
    // know it, so its answers fail the schema and the items escalate, every run.
    let strong_answer = r#"{"city": "Oslo", "temperature_c": 12, "unit": "celsius"}"#;
    let reply = format!("strong-1={strong_answer}");
    let fake = batchyard_testkit::FakeProvider::start(&["--reply", &reply]);
    let store = dir.path().join("store");
    let toml = format!(
        r#"
[storage]
url = "file://{store}"

[cache]
enabled = false

[providers.llama]
kind = "openai"
base_url = "{url}"
timeout_secs = 120

[providers.fake]
kind = "openai"
base_url = "{fake}"

[models.smol]
provider = "llama"
name = "{SERVED_NAME}"
input_usd_per_mtok = 0.0
output_usd_per_mtok = 0.0
context_window = 2048
tier = 1
capabilities = ["json"]

[models.strong]
provider = "fake"
name = "strong-1"
input_usd_per_mtok = 2.50
output_usd_per_mtok = 10.00
context_window = 128000
tier = 3
capabilities = ["json"]

[tasks.weather]
system = "You extract fields. Reply with JSON only."
prompt = "Give the city and the temperature in Celsius of this report as JSON with the keys city and temperature_c:\n\n{{{{ text }}}}"
requires = ["json"]
max_output_tokens = 48

[tasks.weather.validate]
json_schema = {{ type = "object", required = ["city", "temperature_c", "unit"], additionalProperties = false, properties = {{ city = {{ type = "string" }}, temperature_c = {{ type = "integer" }}, unit = {{ const = "celsius" }} }} }}
"#,
        store = store.display(),
        fake = fake.base_url,
    );
    let config = write_file(dir.path(), "batchyard.toml", toml.as_bytes());
    let docs = "{\"id\":\"w1\",\"text\":\"Oslo: 12 degrees and light rain this morning.\"}\n\
                {\"id\":\"w2\",\"text\":\"Bergen reports 9 degrees with strong wind.\"}\n\
                {\"id\":\"w3\",\"text\":\"In Tromso it is 3 degrees under clear skies.\"}\n";
    let input = write_file(dir.path(), "weather.jsonl", docs.as_bytes());
    let lines = run_batch(dir.path(), &config, &input, &["--task", "weather"], 3);
    let mut escalated = 0;
    for line in &lines {
        let ext = &line["batchyard"];
        let cascade = ext["cascade"].as_array().unwrap();
        // The free local model always goes first: trying it costs nothing.
        assert_eq!(cascade[0]["model"], "smol", "line: {line}");
        let content = line["response"]["body"]["choices"][0]["message"]["content"]
            .as_str()
            .unwrap();
        let parsed: Value = serde_json::from_str(content.trim())
            .unwrap_or_else(|e| panic!("an accepted answer is JSON ({e}): {line}"));
        // JSON Schema's "integer" accepts 9.0 (a number with no fraction), as the validator does.
        let whole = parsed["temperature_c"]
            .as_f64()
            .is_some_and(|t| t.fract() == 0.0);
        assert!(parsed["city"].is_string() && whole, "{line}");
        if ext["model"] == "strong" {
            escalated += 1;
            // Its answer failed the schema, or ran past its token limit unfinished.
            let outcome = cascade[0]["outcome"].as_str().unwrap();
            assert!(
                outcome == "failed_validation" || outcome == "truncated",
                "line: {line}"
            );
            assert_eq!(ext["escalations"], 1, "line: {line}");
            assert!(ext["cost_usd"].as_f64().unwrap() > 0.0, "line: {line}");
        } else {
            assert_eq!(ext["cost_usd"], 0.0, "line: {line}");
        }
    }
    eprintln!("real cascade: {escalated} of 3 items escalated from smol to strong");
    assert!(
        escalated >= 1,
        "SmolLM2-135M can't guess the schema's `unit`: {lines:?}"
    );
    assert!(
        fake.stats()["requests"].as_u64().unwrap() == escalated,
        "the strong model is called only for escalations"
    );
}
