//! Providers having a bad day, end to end through an in-process `batchyard run` against the
//! fake provider over loopback HTTP: huge and endless answers (issue 13 item 7), a model that
//! answers garbage and one whose key is refused (item 9).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::*;

/// One provider (`fake`, with `provider_extra` keys) and one model, `small`.
fn config(dir: &Path, fake: &FakeProvider, provider_extra: &str, extra: &str) -> PathBuf {
    write_file(
        dir,
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{store}"

[providers.fake]
kind = "openai"
base_url = "{base}"
{provider_extra}

[models.small]
provider = "fake"
name = "small-1"
input_usd_per_mtok = 0.10
output_usd_per_mtok = 0.40
context_window = 16000
tier = 1
{extra}
"#,
            store = dir.join("store").display(),
            base = fake.base_url,
        )
        .as_bytes(),
    )
}

fn requests(dir: &Path, n: usize) -> PathBuf {
    let body: String = (0..n)
        .map(|i| {
            let mut line = serde_json::from_str::<Value>(&request_line(
                &format!("r{i}"),
                &format!("item {i}"),
            ))
            .unwrap();
            line["body"]["model"] = "small".into();
            format!("{line}\n")
        })
        .collect();
    write_file(dir, "requests.jsonl", body.as_bytes())
}

fn errors_of(dir: &Path, batch: &Value) -> Vec<Value> {
    read_jsonl(
        &dir.join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join("errors.jsonl"),
    )
}

/// Peak resident memory of a live process, in bytes (`VmHWM`).
fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Waits for `child` to exit within `limit`, watching its peak RSS; kills it (by its PID) and
/// fails when it runs over.
fn wait_watching(mut child: Child, limit: Duration) -> (Output, u64) {
    let started = Instant::now();
    let mut peak = 0;
    loop {
        if let Some(rss) = peak_rss(child.id()) {
            peak = peak.max(rss);
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "batchyard run took over {limit:?} (peak rss {} MiB): {}",
                peak >> 20,
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (child.wait_with_output().unwrap(), peak)
}

/// 64 calls in flight, each answered with a body that never ends: every call fails as
/// `response_too_large` at the cap, and the worker's memory stays bounded (before the cap,
/// 64 endless answers grew a worker past 2.5 GB).
#[test]
fn endless_answers_fail_at_the_cap_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(
        dir.path(),
        &fake,
        "timeout_secs = 60\nheaders = { \"x-fake-fault\" = \"endless\" }",
        "[queue]\nmax_attempts = 1\n[retry]\nmax_attempts = 1\n[health]\nfailure_threshold = 1000\n",
    );
    let input = requests(dir.path(), 64);
    let child = batchyard(dir.path())
        .args([
            "run",
            input.to_str().unwrap(),
            "--concurrency",
            "64",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (out, peak) = wait_watching(child, Duration::from_secs(90));
    eprintln!("peak rss of batchyard run: {} MiB", peak >> 20);
    let batch = last_json(&out);
    let errors = errors_of(dir.path(), &batch);
    assert_eq!(errors.len(), 64, "{batch}");
    let too_large = errors
        .iter()
        .filter(|e| e["error"]["code"] == "response_too_large")
        .count();
    // The rest were dropped when the process-wide bound on answers being read was reached.
    assert!(too_large > 0, "{errors:?}");
    assert!(
        errors.iter().all(|e| matches!(
            e["error"]["code"].as_str(),
            Some("response_too_large" | "transient")
        )),
        "{errors:?}"
    );
    // 128 MiB of answers at most, plus the process itself.
    assert!(peak > 0 && peak < 400 << 20, "peak rss {} MiB", peak >> 20);
}

/// Runs `batchyard run` on `input` and waits for it within `limit`.
fn run_within(
    dir: &Path,
    input: &Path,
    env: &[(&str, &str)],
    limit: Duration,
) -> (Value, Duration) {
    let started = Instant::now();
    let mut cmd = batchyard(dir);
    cmd.args(["run", input.to_str().unwrap(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let (out, _) = wait_watching(cmd.spawn().unwrap(), limit);
    (last_json(&out), started.elapsed())
}

/// A model that answers 200 with an HTML page cools down; items that find it cooling down
/// count an attempt each time, so every item ends with a typed error in bounded time (before,
/// 20 items had 0 done after 300 s).
#[test]
fn items_of_a_model_answering_garbage_end_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(
        dir.path(),
        &fake,
        "headers = { \"x-fake-fault\" = \"html\" }",
        "[queue]\nmax_attempts = 3\n[retry]\nbase_ms = 10\ncap_ms = 50\n\
         [health]\nfailure_threshold = 3\ncooldown_secs = 2\n",
    );
    let input = requests(dir.path(), 20);
    let (batch, took) = run_within(dir.path(), &input, &[], Duration::from_secs(120));
    eprintln!("20 items against a garbage-answering model ended in {took:?}");
    let errors = errors_of(dir.path(), &batch);
    assert_eq!(errors.len(), 20, "{batch}");
    let code = |e: &Value| e["error"]["code"].as_str().unwrap().to_owned();
    assert!(
        errors
            .iter()
            .all(|e| matches!(code(e).as_str(), "malformed_response" | "model_unavailable")),
        "{errors:?}"
    );
    let waited: Vec<&Value> = errors
        .iter()
        .filter(|e| code(e) == "model_unavailable")
        .collect();
    assert!(!waited.is_empty(), "{errors:?}");
    let message = waited[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no model could answer in 3 attempts: small (")
            && message.contains("batchyard retry"),
        "{message}"
    );
    // Each item asks at most max_attempts times (and in-place retries stay bounded).
    let calls = fake.stats()["requests"].as_u64().unwrap();
    assert!(calls <= 20 * 3 * 4, "{calls} calls");
}

/// An in-process `run` whose only model is paused (the provider answers 401) can't be
/// resumed from outside: its items end as `model_paused` after their attempts, saying how to
/// rerun, instead of sitting at 0/3 forever.
#[test]
fn an_in_process_run_ends_items_of_a_paused_model() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--require-key", "right-key"]);
    config(
        dir.path(),
        &fake,
        "api_key_env = \"SICK_TEST_KEY\"",
        "[queue]\nmax_attempts = 3\n",
    );
    let input = requests(dir.path(), 3);
    let (batch, took) = run_within(
        dir.path(),
        &input,
        &[("SICK_TEST_KEY", "wrong-key")],
        Duration::from_secs(90),
    );
    eprintln!("3 items of a paused model ended in {took:?}");
    let errors = errors_of(dir.path(), &batch);
    assert_eq!(errors.len(), 3, "{batch}");
    for e in &errors {
        let code = e["error"]["code"].as_str().unwrap();
        assert!(matches!(code, "model_paused" | "auth"), "{e}");
    }
    let paused = errors
        .iter()
        .find(|e| e["error"]["code"] == "model_paused")
        .unwrap_or_else(|| panic!("{errors:?}"));
    let message = paused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("small (paused: auth") && message.contains("run the same command again"),
        "{message}"
    );
    assert!(!message.contains("wrong-key"), "{message}");
}

/// With Redis and two workers: a batch whose models both answer garbage ends, every item with
/// a typed error, instead of one attempt per cooldown window for the whole batch.
#[test]
fn with_redis_items_of_garbage_answering_models_end_in_bounded_time() {
    use support::cluster::{Cluster, Options, wait_exit};
    let Some(cluster) = Cluster::start_opts(
        "sick-garbage",
        &["--malformed-rate", "1.0"],
        Options {
            failure_threshold: 3,
            cooldown_secs: 3,
            max_attempts: 3,
            ..Options::default()
        },
    ) else {
        return;
    };
    let body: String = (0..20)
        .map(|i| request_line(&format!("g-{i}"), "hello") + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    let id = cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let started = Instant::now();
    let mut workers: Vec<_> = (0..2)
        .map(|_| cluster.spawn_worker(&["--concurrency", "4", "--exit-when-idle", "10"]))
        .collect();
    // Before: ~60 attempts, one per 3 s window, for the whole batch.
    let done = cluster.wait_terminal(&id, Duration::from_secs(90));
    eprintln!(
        "20 items on two garbage-answering models ended in {:?}",
        started.elapsed()
    );
    for w in &mut workers {
        assert!(wait_exit(w, Duration::from_secs(30)).success());
    }
    let errors = cluster.results(&id, true);
    assert_eq!(errors.len(), 20, "{done}");
    assert!(
        errors.iter().all(|e| matches!(
            e["error"]["code"].as_str(),
            Some("malformed_response" | "model_unavailable")
        )),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e["error"]["code"] == "model_unavailable"),
        "{errors:?}"
    );
}

/// `max_response_mib` out of range is refused at load, naming the key.
#[test]
fn a_response_cap_out_of_range_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    for bad in ["0", "1025"] {
        config(dir.path(), &fake, &format!("max_response_mib = {bad}"), "");
        let input = requests(dir.path(), 1);
        let out = run(batchyard(dir.path()).args(["run", input.to_str().unwrap()]));
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("providers.fake.max_response_mib") && stderr.contains("1 to 1024"),
            "{stderr}"
        );
    }
    assert_eq!(fake.stats()["requests"], 0);
}
