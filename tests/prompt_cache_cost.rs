//! Cost is exact with prompt caching: answers whose usage reports prompt-cache reads and writes
//! (the fake provider's `[[cached_tokens=N]]` / `[[cache_write_tokens=N]]`, over real HTTP, in
//! the OpenAI and the Anthropic dialect) are billed at the cached and cache-write prices, and
//! the lines, the manifest (total and per model) and the ledger agree on a hand-computed sum.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use batchyard_testkit::FakeProvider;
use serde_json::{Value, json};
use support::cluster::Cluster;
use support::invariants::assert_invariants;
use support::*;

/// Two models, one per dialect, with every price set apart so a token billed at the wrong
/// price shows. `gpt` leaves the cache-write price unset (it defaults to the input price).
const MODELS: &str = r#"
[models.gpt]
provider = "fake_openai"
name = "gpt-x"
input_usd_per_mtok = 2.0
cached_input_usd_per_mtok = 0.5
output_usd_per_mtok = 8.0
context_window = 16000
tier = 1

[models.claude]
provider = "fake_anthropic"
name = "claude-x"
input_usd_per_mtok = 3.0
cached_input_usd_per_mtok = 0.3
cache_write_usd_per_mtok = 3.75
output_usd_per_mtok = 15.0
context_window = 16000
tier = 1
"#;

fn providers(fake: &FakeProvider) -> String {
    format!(
        r#"
[providers.fake_openai]
kind = "openai"
base_url = "{openai}"

[providers.fake_anthropic]
kind = "anthropic"
base_url = "{anthropic}"
"#,
        openai = fake.base_url,
        anthropic = fake.url,
    )
}

/// One item: (custom id, model, cache read, cache write).
type Item = (&'static str, &'static str, u64, u64);

const ITEMS: [Item; 6] = [
    ("g-read", "gpt", 64, 0),
    ("g-plain", "gpt", 0, 0),
    ("g-write", "gpt", 0, 30),
    ("c-write", "claude", 0, 100),
    ("c-read", "claude", 100, 0),
    ("c-both", "claude", 60, 40),
];

/// Exactly 400 characters: the fake counts 400 / 4 + 4 (one message) = 104 prompt tokens. The
/// first 40 characters are what the fake echoes, so every reply has the same length.
fn content(read: u64, write: u64) -> String {
    let head = "Summarise the quarterly widget report!!!";
    assert_eq!(head.len(), 40);
    let mut text = format!("{head} [[cached_tokens={read}]] [[cache_write_tokens={write}]] ");
    text.extend(std::iter::repeat_n('.', 400 - text.len()));
    assert_eq!(text.chars().count(), 400);
    text
}

const PROMPT_TOKENS: u64 = 104;

/// `fake reply from NAME: ` plus the 40 echoed characters, four characters a token.
fn output_tokens(name: &str) -> u64 {
    (format!("fake reply from {name}: ").len() as u64 + 40).div_ceil(4)
}

fn input_file(dir: &std::path::Path) -> std::path::PathBuf {
    let body: String = ITEMS
        .iter()
        .map(|(id, model, read, write)| {
            json!({
                "custom_id": id,
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": model,
                    "max_tokens": 50,
                    "messages": [{"role": "user", "content": content(*read, *write)}],
                },
            })
            .to_string()
                + "\n"
        })
        .collect();
    write_file(dir, "cached.jsonl", body.as_bytes())
}

/// The hand-computed bill of one item, in micro-dollars (prices are per million tokens).
/// The OpenAI dialect of the fake reports writes only as a gateway would (OpenRouter's
/// `cache_write_tokens`), and `gpt` has no write price: its writes cost the input price.
fn micro_usd(model: &str, read: u64, write: u64) -> f64 {
    let plain = (PROMPT_TOKENS - read - write) as f64;
    let (read, write) = (read as f64, write as f64);
    match model {
        "gpt" => plain * 2.0 + read * 0.5 + write * 2.0 + output_tokens("gpt-x") as f64 * 8.0,
        _ => plain * 3.0 + read * 0.3 + write * 3.75 + output_tokens("claude-x") as f64 * 15.0,
    }
}

fn close(a: f64, b: f64) -> bool {
    // The ledger counts nano-dollars; one per line of rounding at most.
    (a - b).abs() < 1e-8
}

/// Every line, the manifest and the ledger's spend against the hand-computed bill.
fn check(lines: &[Value], manifest: &Value, ledger_usd: f64) {
    assert_eq!(lines.len(), ITEMS.len(), "{lines:?}");
    let mut total = 0.0;
    let mut uncached_total = 0.0;
    for (id, model, read, write) in ITEMS {
        let line = lines.iter().find(|l| l["custom_id"] == id).unwrap();
        let ext = &line["batchyard"];
        let want = micro_usd(model, read, write) / 1e6;
        total += want;
        uncached_total += micro_usd(model, 0, 0) / 1e6;
        assert_eq!(ext["model"], model, "{line}");
        assert!(
            close(ext["cost_usd"].as_f64().unwrap(), want),
            "{id}: {} vs {want}",
            ext["cost_usd"]
        );
        assert_eq!(ext["input_tokens"], PROMPT_TOKENS, "{line}");
        // New fields only when not 0: an uncached line looks as it always did.
        let field = |k: &str| ext.get(k).and_then(Value::as_u64);
        assert_eq!(
            field("cached_input_tokens"),
            (read > 0).then_some(read),
            "{line}"
        );
        assert_eq!(
            field("cache_write_input_tokens"),
            (write > 0).then_some(write),
            "{line}"
        );
        let step = &ext["cascade"][0];
        assert_eq!(
            step["cached_input_tokens"].as_u64().unwrap_or(0),
            read,
            "{line}"
        );
        assert_eq!(
            step["cache_write_input_tokens"].as_u64().unwrap_or(0),
            write,
            "{line}"
        );
        let details = &line["response"]["body"]["usage"]["prompt_tokens_details"];
        assert_eq!(details["cached_tokens"], read, "{line}");
    }
    // The prices are apart enough that caching changes the bill visibly.
    assert!(uncached_total - total > 1e-4, "{uncached_total} vs {total}");

    assert_eq!(manifest["reconciled"], true, "{manifest}");
    assert!(
        close(manifest["cost_usd"].as_f64().unwrap(), total),
        "{manifest}"
    );
    assert!(
        close(manifest["ledger_cost_usd"].as_f64().unwrap(), total),
        "{manifest}"
    );
    assert!(close(ledger_usd, total), "ledger {ledger_usd} vs {total}");
    let sum = |pick: fn(&Item) -> u64, model: Option<&str>| -> u64 {
        ITEMS
            .iter()
            .filter(|i| model.is_none_or(|m| i.1 == m))
            .map(pick)
            .sum()
    };
    assert_eq!(manifest["input_tokens"], PROMPT_TOKENS * ITEMS.len() as u64);
    assert_eq!(
        manifest["cached_input_tokens"],
        sum(|i| i.2, None),
        "{manifest}"
    );
    assert_eq!(
        manifest["cache_write_input_tokens"],
        sum(|i| i.3, None),
        "{manifest}"
    );
    for model in ["gpt", "claude"] {
        let spend = &manifest["spend_by_model"][model];
        let want: f64 = ITEMS
            .iter()
            .filter(|i| i.1 == model)
            .map(|i| micro_usd(i.1, i.2, i.3) / 1e6)
            .sum();
        assert!(
            close(spend["cost_usd"].as_f64().unwrap(), want),
            "{model}: {spend}"
        );
        assert_eq!(
            spend["cached_input_tokens"],
            sum(|i| i.2, Some(model)),
            "{spend}"
        );
        assert_eq!(
            spend["cache_write_input_tokens"],
            sum(|i| i.3, Some(model)),
            "{spend}"
        );
        assert_eq!(spend["calls"], 3, "{spend}");
    }
}

#[test]
fn a_run_bills_cache_reads_and_writes_at_their_prices() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    let config = format!(
        "[storage]\nurl = \"file://{store}\"\n{providers}{MODELS}",
        store = dir.path().join("store").display(),
        providers = providers(&fake),
    );
    write_file(dir.path(), "batchyard.toml", config.as_bytes());
    let input = input_file(dir.path());
    let out = run(batchyard(dir.path()).args(["run", input.to_str().unwrap(), "--json"]));
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed", "{batch}");
    let base = dir
        .path()
        .join("store/batches")
        .join(batch["id"].as_str().unwrap());
    let lines = read_jsonl(&base.join("output.jsonl"));
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(base.join("manifest.json")).unwrap()).unwrap();
    check(&lines, &manifest, batch["cost_usd"].as_f64().unwrap());
}

#[test]
fn a_cluster_ledger_bills_cache_reads_and_writes_at_their_prices() {
    // Real Redis (the ledger) and S3; the cluster's own fake serves both dialects, and its
    // config gains the two models once the fake's address is known.
    let Some(cluster) = Cluster::start("prompt_cache_cost", &[], 30) else {
        return;
    };
    let extra = format!("{}{MODELS}", providers(&cluster.fake));
    let config = std::fs::read_to_string(&cluster.config).unwrap() + &extra;
    std::fs::write(&cluster.config, config).unwrap();
    let input = input_file(cluster.dir.path());
    let batch = cluster.submit(input.to_str().unwrap(), &[]);
    let id = batch["id"].as_str().unwrap().to_string();
    let mut worker = cluster.spawn_worker(&["--concurrency", "4", "--metrics-addr", "127.0.0.1:0"]);
    let done = cluster.wait_terminal(&id, Duration::from_secs(60));
    let metrics = scrape(&cluster.worker_metrics_url());
    let _ = worker.kill();
    let _ = worker.wait();
    assert_eq!(done["status"], "completed", "{done}");
    let (ok, _) = assert_invariants(&cluster, &id, ITEMS.len());
    check(
        &ok,
        &cluster.manifest(&id),
        done["cost_usd"].as_f64().unwrap(),
    );

    // The metrics bill with the same prices, to the nano-dollar.
    for model in ["gpt", "claude"] {
        let want: f64 = ITEMS
            .iter()
            .filter(|i| i.1 == model)
            .map(|i| micro_usd(i.1, i.2, i.3) * 1e3)
            .sum();
        let label = format!("model=\"{model}\"");
        let nanos = sample(&metrics, "batchyard_cost_nanodollars_total", &[&label]);
        assert!((nanos - want).abs() < 2.0, "{model}: {nanos} vs {want}");
        for (cache, pick) in [("read", 2), ("write", 3)] {
            let tokens: u64 = ITEMS
                .iter()
                .filter(|i| i.1 == model)
                .map(|i| if pick == 2 { i.2 } else { i.3 })
                .sum();
            let cache = format!("cache=\"{cache}\"");
            let got = sample(
                &metrics,
                "batchyard_prompt_cache_tokens_total",
                &[&label, &cache],
            );
            assert_eq!(got, tokens as f64, "{model} {cache}:\n{metrics}");
        }
    }
}

fn scrape(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "scrape failed: {}", text(&out.stderr));
    text(&out.stdout)
}

/// The sum of the samples of `name` (exactly that metric) whose labels hold all of `labels`.
fn sample(body: &str, name: &str, labels: &[&str]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let inner = series.strip_prefix(name)?.strip_prefix('{')?;
            labels
                .iter()
                .all(|want| inner.contains(want))
                .then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}
