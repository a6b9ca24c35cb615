//! `[tasks.X] prompt_cache` end to end, over real HTTP to the fake provider and its TTL prompt
//! cache: with `auto`, a task whose 2,500-token system prompt is static gets a cache point, so
//! the anthropic and bedrock kinds' first item writes the cache and the later ones read it
//! (cheaper, and the lines and the manifest say so); with `off`, no cache point and no cached
//! token. The openai kind caches by itself either way (no cache point reaches it). Concurrent
//! items wait for the first (cache-warm dispatch), and `estimate` shows the cached share.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::*;

/// 10,000 characters: the fake counts 2,500 tokens.
fn system_prompt() -> String {
    let text = "Follow the house rules for summaries closely. ".repeat(200);
    let text = format!("{text}{}", "x".repeat(10_000 - text.len()));
    assert_eq!(text.chars().count(), 10_000);
    text
}

const SYSTEM_TOKENS: u64 = 2_500;
const ITEMS: usize = 6;

/// One model (`m`) of `kind` on the fake, one task (`t`) with the long system prompt.
/// The bedrock fake checks SigV4 with these (test values, named by `*_env` in the config).
const BEDROCK_KEY: (&str, &str) = ("AKIDCACHETEST", "cache-test-secret");

fn config(dir: &Path, fake: &FakeProvider, kind: &str, mode: &str) -> PathBuf {
    let (base, extra) = match kind {
        "anthropic" => (&fake.url, ""),
        "bedrock" => (
            &fake.url,
            "region = \"us-east-1\"\naccess_key_id_env = \"PC_KEY_ID\"\n\
             secret_access_key_env = \"PC_SECRET\"\n",
        ),
        _ => (&fake.base_url, ""),
    };
    write_file(
        dir,
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{store}"

[providers.p]
kind = "{kind}"
base_url = "{base}"
{extra}
[models.m]
provider = "p"
name = "model-{kind}"
input_usd_per_mtok = 3.0
cached_input_usd_per_mtok = 0.3
cache_write_usd_per_mtok = 3.75
output_usd_per_mtok = 15.0
context_window = 200000
tier = 1

[tasks.t]
system = "{system}"
prompt = "{{{{ text }}}}"
max_output_tokens = 50
prompt_cache = "{mode}"
"#,
            store = dir.join("store").display(),
            system = system_prompt(),
        )
        .as_bytes(),
    )
}

/// A config and the input of `ITEMS` documents, in a new directory, with its fake.
fn setup(kind: &str, mode: &str) -> (tempfile::TempDir, FakeProvider, PathBuf) {
    setup_with(kind, mode, &[])
}

fn setup_with(
    kind: &str,
    mode: &str,
    fake_args: &[&str],
) -> (tempfile::TempDir, FakeProvider, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let mut args = fake_args.to_vec();
    if kind == "bedrock" {
        args.extend([
            "--bedrock-key-id",
            BEDROCK_KEY.0,
            "--bedrock-secret",
            BEDROCK_KEY.1,
        ]);
    }
    let fake = FakeProvider::start(&args);
    config(dir.path(), &fake, kind, mode);
    let docs: String = (0..ITEMS)
        .map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"document number {i:04}\"}}\n"))
        .collect();
    let input = write_file(dir.path(), "docs.jsonl", docs.as_bytes());
    (dir, fake, input)
}

/// `batchyard estimate --json` of the setup's input.
fn estimate(kind: &str, mode: &str) -> Value {
    let (dir, _fake, input) = setup(kind, mode);
    let args = ["estimate", input.to_str().unwrap(), "--task", "t", "--json"];
    let out = run(batchyard(dir.path()).args(args));
    assert!(out.status.success(), "{}", text(&out.stderr));
    last_json(&out)
}

/// Runs the batch one item at a time; the output lines in input order, and the manifest.
fn run_batch(kind: &str, mode: &str) -> (Vec<Value>, Value) {
    run_batch_with(kind, mode, &[], 1)
}

/// [`run_batch`] with flags for the fake and `concurrency` items at once.
fn run_batch_with(
    kind: &str,
    mode: &str,
    fake_args: &[&str],
    concurrency: usize,
) -> (Vec<Value>, Value) {
    let (dir, _fake, input) = setup_with(kind, mode, fake_args);
    let started = Instant::now();
    let out = run(batchyard(dir.path())
        .env("PC_KEY_ID", BEDROCK_KEY.0)
        .env("PC_SECRET", BEDROCK_KEY.1)
        .args([
            "run",
            input.to_str().unwrap(),
            "--task",
            "t",
            "--concurrency",
            &concurrency.to_string(),
            "--json",
        ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(120));
    let batch = last_json(&out);
    assert_eq!(batch["status"], "completed", "{batch}");
    let base = dir
        .path()
        .join("store/batches")
        .join(batch["id"].as_str().unwrap());
    let mut lines = read_jsonl(&base.join("output.jsonl"));
    lines.sort_by_key(|l| l["custom_id"].as_str().unwrap().to_owned());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(base.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(lines.len(), ITEMS);
    (lines, manifest)
}

fn field(line: &Value, key: &str) -> u64 {
    line["batchyard"][key].as_u64().unwrap_or(0)
}

fn cost(manifest: &Value) -> f64 {
    manifest["cost_usd"].as_f64().unwrap()
}

#[test]
fn auto_puts_a_cache_point_the_anthropic_kind_reads_and_off_does_not() {
    explicit_caching_reads_with_auto_only("anthropic");
}

#[test]
fn auto_puts_a_cache_point_the_bedrock_kind_reads_and_off_does_not() {
    // The bedrock kind sends it as a cachePoint block; the fake checks SigV4.
    explicit_caching_reads_with_auto_only("bedrock");
}

fn explicit_caching_reads_with_auto_only(kind: &str) {
    let (auto, auto_manifest) = run_batch(kind, "auto");
    let (off, off_manifest) = run_batch(kind, "off");
    // auto: the first item writes the system prompt, every later one reads it.
    assert_eq!(field(&auto[0], "cache_write_input_tokens"), SYSTEM_TOKENS);
    assert_eq!(field(&auto[0], "cached_input_tokens"), 0);
    for line in &auto[1..] {
        assert_eq!(field(line, "cached_input_tokens"), SYSTEM_TOKENS, "{line}");
        assert_eq!(field(line, "cache_write_input_tokens"), 0, "{line}");
        assert!(
            line["batchyard"]["cost_usd"].as_f64().unwrap()
                < auto[0]["batchyard"]["cost_usd"].as_f64().unwrap() / 2.0,
            "{line}"
        );
    }
    let read = SYSTEM_TOKENS * (ITEMS as u64 - 1);
    assert_eq!(
        auto_manifest["cached_input_tokens"], read,
        "{auto_manifest}"
    );
    assert_eq!(auto_manifest["cache_write_input_tokens"], SYSTEM_TOKENS);
    let spend = &auto_manifest["spend_by_model"]["m"];
    assert_eq!(spend["cached_input_tokens"], read, "{spend}");
    // off: no cache point, so the explicit-caching kind reads and writes nothing.
    for line in &off {
        assert_eq!(field(line, "cached_input_tokens"), 0, "{line}");
        assert_eq!(field(line, "cache_write_input_tokens"), 0, "{line}");
    }
    assert_eq!(off_manifest["cached_input_tokens"].as_u64().unwrap_or(0), 0);
    // Same answers, same token totals, a third of the bill or less.
    assert_eq!(auto_manifest["input_tokens"], off_manifest["input_tokens"]);
    for (a, o) in auto.iter().zip(&off) {
        assert_eq!(
            a["response"]["body"]["choices"][0]["message"]["content"],
            o["response"]["body"]["choices"][0]["message"]["content"]
        );
    }
    assert!(
        cost(&auto_manifest) < 0.4 * cost(&off_manifest),
        "auto {} vs off {}",
        cost(&auto_manifest),
        cost(&off_manifest)
    );
}

#[test]
fn the_openai_kind_caches_by_itself_in_128_token_steps_either_way() {
    // 10,000 + 20 characters of prompt: the longest cacheable step is 1024 + 11 * 128 tokens.
    let step = 1024 + 11 * 128;
    for mode in ["auto", "off"] {
        let (lines, manifest) = run_batch("openai", mode);
        assert_eq!(field(&lines[0], "cached_input_tokens"), 0, "{mode}");
        for line in &lines[1..] {
            assert_eq!(field(line, "cached_input_tokens"), step, "{mode}: {line}");
            // The part arrays never reach the openai kind: its body is flattened (10,020 / 4 + 4
            // per message).
            assert_eq!(field(line, "input_tokens"), 2_513, "{mode}: {line}");
        }
        assert_eq!(
            manifest["cached_input_tokens"],
            step * (ITEMS as u64 - 1),
            "{mode}: {manifest}"
        );
    }
}

#[test]
fn estimate_shows_the_cached_share_and_the_saving() {
    let auto = estimate("anthropic", "auto");
    let off = estimate("anthropic", "off");
    // Five of six items read 2,500 of their ~2,510 prompt tokens; the first writes them.
    let share = auto["cached_share"].as_f64().unwrap();
    assert!((0.8..0.84).contains(&share), "{auto}");
    assert_eq!(off["cached_share"], 0.0, "{off}");
    let routed = |e: &Value| e["routed_expected_usd"].as_f64().unwrap();
    let saving = auto["cache_saving_usd"].as_f64().unwrap();
    assert!(
        (routed(&off) - routed(&auto) - saving).abs() < 1e-9,
        "{auto} {off}"
    );
    assert!(routed(&auto) < 0.4 * routed(&off), "{auto} {off}");
    // The table says it too.
    let (dir, _fake, input) = setup("anthropic", "auto");
    let out = run(batchyard(dir.path()).args(["estimate", input.to_str().unwrap(), "--task", "t"]));
    let table = text(&out.stdout);
    assert!(table.contains("prompt cache 8"), "{table}");
}

#[test]
fn concurrent_items_wait_for_the_first_to_warm_the_cache() {
    // Six items at once, 300 ms a call: without cache-warm dispatch all six would miss.
    let slow = ["--latency-ms", "300"];
    let (lines, manifest) = run_batch_with("anthropic", "auto", &slow, 6);
    let writes: Vec<u64> = lines
        .iter()
        .map(|l| field(l, "cache_write_input_tokens"))
        .collect();
    assert_eq!(writes.iter().filter(|w| **w > 0).count(), 1, "{writes:?}");
    assert_eq!(manifest["cache_write_input_tokens"], SYSTEM_TOKENS);
    assert_eq!(
        manifest["cached_input_tokens"],
        SYSTEM_TOKENS * (ITEMS as u64 - 1),
        "{manifest}"
    );
    // With off there is nothing to wait for: no point, no cached token.
    let (_, off) = run_batch_with("anthropic", "off", &slow, 6);
    assert_eq!(off["cached_input_tokens"].as_u64().unwrap_or(0), 0);
}

#[test]
fn a_bad_prompt_cache_value_names_the_key() {
    let (dir, _fake, input) = setup("anthropic", "sometimes");
    let out = run(batchyard(dir.path()).args(["estimate", input.to_str().unwrap(), "--task", "t"]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("prompt_cache"), "{err}");
    assert!(err.contains("auto") && err.contains("off"), "{err}");
}

#[test]
fn route_prices_the_cached_prefix() {
    let (dir, _fake, _) = setup("anthropic", "auto");
    let args = ["route", "--text", "a document", "--task", "t", "--json"];
    let out = run(batchyard(dir.path()).args(args));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = last_json(&out);
    let first = &plan["candidates"][0];
    // The system prompt up to its cache point, as the router's warm-cache price reads it.
    assert_eq!(first["cached_prompt_tokens"], SYSTEM_TOKENS, "{plan}");
    assert!(
        first["call_cost_usd"].as_f64().unwrap() < 0.5 * first["worst_case_usd"].as_f64().unwrap()
    );
}
