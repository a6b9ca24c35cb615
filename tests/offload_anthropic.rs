//! The offload lane on an `anthropic`-kind provider (and a `gemini` one): waves through the
//! fake's Message Batches API (Gemini's batch mode), every line billed at the batch price, each
//! provider batch deleted once ingested; and across a `kill -9` between the create and
//! recording its id, where Anthropic keeps no tag to find the batch by: no second paid batch,
//! every item exactly once, and a look-alike batch of someone else's left alone (Gemini keeps
//! the tag as the batch's display name: found for sure).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use serde_json::{Value, json};
use support::cluster::{Cluster, Options, QUICK_OFFLOAD};
use support::*;

/// `small` answers "easy" items well enough; "hard" ones pass only on `large`. `small` has
/// its own batch prices; `large` gets the default, half its real-time prices.
fn write_config(dir: &Path, kind: &str, base_url: &str) {
    let mut toml = format!(
        "[storage]\nurl = \"file://{}\"\n[routing]\nlearn = false\n\
         [providers.claude]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\n\
         [tasks.read]\nprompt = \"{{{{ text }}}}\"\nmax_output_tokens = 100\n\
         validate = {{ regex = '^fake reply from (\\S+: easy|large-1: hard)' }}\n{}",
        dir.join("store").display(),
        // Any group is worth a provider batch here: items that come back from a wave at
        // different times would otherwise run real-time as a group too small to wait for.
        QUICK_OFFLOAD.replace("min_items = 3", "min_items = 1"),
    );
    for (key, input, output, batch) in [
        (
            "small",
            1.0,
            5.0,
            "batch_input_usd_per_mtok = 0.5\nbatch_output_usd_per_mtok = 2.5\n",
        ),
        ("large", 3.0, 15.0, ""),
    ] {
        toml.push_str(&format!(
            "[models.{key}]\nprovider = \"claude\"\nname = \"{key}-1\"\n\
             input_usd_per_mtok = {input}\noutput_usd_per_mtok = {output}\n{batch}\
             context_window = 16000\ntier = 1\n"
        ));
    }
    write_file(dir, "batchyard.toml", toml.as_bytes());
}

/// Runs `n_easy` + `n_hard` items with a deadline; the batch and its output lines.
fn offload_run(dir: &Path, n_easy: usize, n_hard: usize) -> (Value, Vec<Value>) {
    let mut input = String::new();
    for (kind, n) in [("easy", n_easy), ("hard", n_hard)] {
        for i in 0..n {
            input.push_str(
                &json!({"id": format!("{kind}-{i}"), "text": format!("{kind} {i}")}).to_string(),
            );
            input.push('\n');
        }
    }
    let path = write_file(dir, "items.jsonl", input.as_bytes());
    let started = Instant::now();
    let out = run(batchyard(dir).args([
        "--config",
        "batchyard.toml",
        "run",
        path.to_str().unwrap(),
        "--task",
        "read",
        "--deadline",
        "1h",
        "--json",
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(120));
    let batch = last_json(&out);
    let id = batch["id"].as_str().unwrap();
    let lines = read_jsonl(&dir.join(format!("store/batches/{id}/output.jsonl")));
    (batch, lines)
}

#[test]
fn waves_run_through_message_batches_at_the_batch_price() {
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    waves(&fake, "anthropic", &fake.url, "msgbatch_");
}

#[test]
fn waves_run_through_gemini_batches_too() {
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    waves(&fake, "gemini", &format!("{}/v1beta", fake.url), "batches/");
}

/// 5 easy and 3 hard items through `kind`'s batch API, whose batch ids start with `prefix`.
fn waves(fake: &FakeProvider, kind: &str, base_url: &str, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), kind, base_url);
    let (batch, lines) = offload_run(dir.path(), 5, 3);
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(lines.len(), 8);
    // (input, output) batch price per token: small's from the table, large's half its price.
    let price = |model: &str| {
        if model == "small" {
            (0.5, 2.5)
        } else {
            (1.5, 7.5)
        }
    };
    let mut sum = 0.0;
    let mut remote = BTreeSet::new();
    for line in &lines {
        let steps = line["batchyard"]["cascade"].as_array().unwrap();
        let trail: Vec<(&str, &str)> = steps
            .iter()
            .map(|s| (s["model"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
            .collect();
        let hard = line["custom_id"].as_str().unwrap().starts_with("hard");
        let want: &[(&str, &str)] = if hard {
            &[("small", "failed_validation"), ("large", "passed")]
        } else {
            &[("small", "passed")]
        };
        assert_eq!(trail, want, "{line}");
        for s in steps {
            let by = s["provider_batch"]
                .as_str()
                .unwrap_or_else(|| panic!("real-time: {line}"));
            assert!(by.starts_with(prefix), "{line}");
            remote.insert(by.to_owned());
        }
        let cost: f64 = steps
            .iter()
            .map(|s| {
                let (i, o) = price(s["model"].as_str().unwrap());
                (s["input_tokens"].as_f64().unwrap() * i + s["output_tokens"].as_f64().unwrap() * o)
                    / 1e6
            })
            .sum();
        let billed = line["batchyard"]["cost_usd"].as_f64().unwrap();
        assert!((billed - cost).abs() < 1e-9, "{billed} vs {cost}: {line}");
        sum += billed;
    }
    assert!(
        (batch["cost_usd"].as_f64().unwrap() - sum).abs() < 1e-8,
        "{batch}"
    );
    let stats = fake.stats()["batches"].clone();
    // A wave per model at least (a wave cut while items are still being parked is split).
    let created = stats[kind]["created"].as_u64().unwrap();
    assert!(created >= 2, "{stats}");
    assert_eq!(
        remote.len() as u64,
        created,
        "every provider batch answered: {stats}"
    );
    assert_eq!(stats["openai"]["created"], 0, "{stats}");
    assert_eq!(
        stats[kind]["deleted"], created,
        "deleted once ingested: {stats}"
    );
}

const ITEMS: usize = 6;

/// A worker killed right after the create (its id unrecorded), another taking over; with
/// `decoy` (Anthropic only), a batch of the same size made by someone else in between.
fn killed_after_create(kind: &'static str, decoy: bool) {
    let name = format!("offload_{kind}_crash_{decoy}");
    let Some(cluster) = Cluster::start_opts(
        &name,
        &["--batch-turnaround-ms", "500"],
        Options {
            provider_kind: kind,
            extra_toml: QUICK_OFFLOAD.into(),
            ..Options::default()
        },
    ) else {
        return;
    };
    let id = cluster.submit_with_deadline("k", ITEMS);
    cluster.crash_worker_at("after_create");
    // Made after ours, so the takeover reads it first.
    let decoy_id = decoy.then(|| make_decoy(&cluster.fake));
    let mut worker = cluster.spawn_worker(&["--exit-when-idle", "30"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(120));
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(done["status"], "completed", "{done}");
    let logs: String = std::fs::read_dir(cluster.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    assert!(
        logs.contains("found a provider batch whose id was not recorded"),
        "{logs}"
    );
    // With the decoy, two candidates: told apart by their results, not by a guess. Gemini
    // keeps the tag: no candidates, the batch is known.
    let candidates = match (kind, decoy) {
        ("anthropic", true) => r#"candidates=["msgbatch_fake2", "msgbatch_fake1"]"#,
        ("anthropic", false) => r#"candidates=["msgbatch_fake1"]"#,
        _ => "remote_id=batches/fake1",
    };
    assert!(logs.contains(candidates), "{logs}");
    assert_eq!(logs.contains("is another's batch"), decoy, "{logs}");
    let lines = cluster.results(&id, false);
    let ids: BTreeSet<&str> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        (lines.len(), ids.len()),
        (ITEMS, ITEMS),
        "each item exactly once: {lines:?}"
    );
    let mut remote = BTreeSet::new();
    for line in &lines {
        let steps = line["batchyard"]["cascade"].as_array().unwrap();
        let by_batch: Vec<&str> = steps
            .iter()
            .filter_map(|s| s["provider_batch"].as_str())
            .collect();
        assert_eq!(by_batch.len(), 1, "answered by the adopted batch: {line}");
        remote.insert(by_batch[0].to_owned());
    }
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert!(
        !remote.contains(decoy_id.as_deref().unwrap_or("")),
        "the decoy was adopted"
    );
    let stats = cluster.fake.stats()["batches"][kind].clone();
    let made = 1 + u64::from(decoy);
    assert_eq!(stats["created"], made, "one paid batch of ours: {stats}");
    assert_eq!(
        stats["deleted"], 1,
        "ours deleted once ingested, the decoy left: {stats}"
    );
    assert_eq!(stats["cancelled"], 0, "{stats}");
}

/// A batch of `ITEMS` requests that is not batchyard's, created now on the fake.
fn make_decoy(fake: &FakeProvider) -> String {
    let requests: Vec<Value> = (0..ITEMS)
        .map(|i| {
            json!({"custom_id": format!("decoy-{i}"), "params": {"model": "small-1",
            "max_tokens": 20, "messages": [{"role": "user", "content": "not batchyard's"}]}})
        })
        .collect();
    let body = json!({"requests": requests}).to_string();
    let host = fake.url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "POST /v1/messages/batches HTTP/1.1\r\nHost: {host}\r\nanthropic-version: 2023-06-01\r\n\
         x-api-key: sk-test-secret-123\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let created: Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    created["id"].as_str().unwrap().to_owned()
}

#[test]
fn a_crash_after_the_create_adopts_the_batch_without_sending_it_again() {
    killed_after_create("anthropic", false);
}

#[test]
fn a_look_alike_batch_is_told_apart_by_its_results_and_left_alone() {
    killed_after_create("anthropic", true);
}

#[test]
fn a_crash_after_a_gemini_create_finds_the_batch_by_its_tag() {
    killed_after_create("gemini", false);
}

#[test]
fn an_item_the_batch_api_cannot_take_runs_real_time_and_its_wave_goes_on() {
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), "anthropic", &fake.url);
    let line = |id: &str, messages: Value| {
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "small", "messages": messages}})
        .to_string()
            + "\n"
    };
    let mut input: String = (0..3)
        .map(|i| {
            line(
                &format!("ok-{i}"),
                json!([{"role": "user", "content": "easy"}]),
            )
        })
        .collect();
    // A tool result without its call id: no Anthropic request can be written for it.
    input.push_str(&line(
        "bad",
        json!([{"role": "user", "content": "easy"}, {"role": "tool", "content": "x"}]),
    ));
    let path = write_file(dir.path(), "items.jsonl", input.as_bytes());
    let out = run(batchyard(dir.path())
        .args(["--config", "batchyard.toml", "run", path.to_str().unwrap()])
        .args(["--deadline", "1h", "--json"]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let batch = last_json(&out);
    let id = batch["id"].as_str().unwrap();
    let lines = read_jsonl(&dir.path().join(format!("store/batches/{id}/output.jsonl")));
    let errors = read_jsonl(&dir.path().join(format!("store/batches/{id}/errors.jsonl")));
    assert_eq!(lines.len(), 3, "{lines:?}\n{stderr}");
    for l in &lines {
        let steps = l["batchyard"]["cascade"].as_array().unwrap();
        assert!(steps[0]["provider_batch"].is_string(), "{l}");
    }
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["custom_id"], "bad");
    assert_eq!(
        errors[0]["error"]["code"], "invalid_request",
        "{}",
        errors[0]
    );
    assert!(stderr.contains("can't take runs real-time"), "{stderr}");
    // One Message Batch for the three, none refused.
    let stats = fake.stats();
    assert_eq!(stats["batches"]["anthropic"]["created"], 1, "{stats}");
    assert_eq!(stats["batches"]["anthropic"]["refused"], 0, "{stats}");
}
