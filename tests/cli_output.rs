//! What a newcomer reads: `--help` (defaults, environment, logs), `models` (limits), `run`'s
//! summary and files (costs without float noise, a result path that opens), and logs without
//! colour codes when stderr is not a terminal. The real binary, no services.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;

use support::*;

const CONFIG: &str = r#"
[providers.sim]
kind = "simulated"
tpm = 2000000

[providers.spare]
kind = "simulated"

[models.small]
provider = "sim"
name = "sim-small"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.6
context_window = 128000
tier = 1
rpm = 600
tpm = 90000

[models.large]
provider = "sim"
name = "sim-large"
input_usd_per_mtok = 2.5
output_usd_per_mtok = 10.0
context_window = 200000
tier = 3
"#;

#[test]
fn help_names_the_environment_and_each_default() {
    let dir = tempfile::tempdir().unwrap();
    let top = run(batchyard(dir.path()).arg("--help"));
    assert!(top.status.success());
    let top = text(&top.stdout);
    for needle in [
        "LOG_FORMAT=json",
        "RUST_LOG",
        "BATCHYARD_REDIS_URL",
        "BATCHYARD_STORAGE_URL",
        "BATCHYARD_API_TOKENS",
        "[env: BATCHYARD_CONFIG]",
    ] {
        assert!(top.contains(needle), "--help lacks {needle}:\n{top}");
    }
    for sub in ["worker", "run", "serve"] {
        let out = run(batchyard(dir.path()).args([sub, "--help"]));
        assert!(out.status.success());
        let help = text(&out.stdout);
        assert!(help.contains("LOG_FORMAT=json"), "{sub} --help:\n{help}");
        assert!(help.contains("RUST_LOG"), "{sub} --help:\n{help}");
        // Every option that takes a value says what happens without it.
        for line in help.lines().filter(|l| l.trim_start().starts_with("--")) {
            let takes_value = line.contains(" <");
            let is_config = line.contains("--config");
            if takes_value && !is_config {
                assert!(
                    line.contains("[default:"),
                    "{sub}: no default shown: {line}"
                );
            }
        }
    }
    // A secret in the environment never shows in --help.
    let out = run(batchyard(dir.path())
        .args(["--help"])
        .env("BATCHYARD_CONFIG", "/secret/place.toml"));
    assert!(!text(&out.stdout).contains("/secret/place.toml"));
}

#[test]
fn models_show_rpm_and_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.toml", CONFIG.as_bytes());
    let out = run(batchyard(dir.path()).args(["--config", config.to_str().unwrap(), "models"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let header = table.lines().next().unwrap();
    assert!(header.contains("RPM") && header.contains("TPM"), "{table}");
    let small = table.lines().find(|l| l.starts_with("small")).unwrap();
    assert!(
        small.contains(" 600 ") && small.contains(" 90000 "),
        "{small}"
    );
    // No limit of its own: the provider's account-wide one, marked.
    let large = table.lines().find(|l| l.starts_with("large")).unwrap();
    assert!(
        large.contains(" - ") && large.contains("2000000*"),
        "{large}"
    );

    let out =
        run(batchyard(dir.path()).args(["--config", config.to_str().unwrap(), "models", "--json"]));
    let v = last_json(&out);
    let small = &v["models"].as_array().unwrap()[1];
    assert_eq!(small["model"], "small", "{v}");
    assert_eq!(small["rpm"], 600);
    assert_eq!(small["tpm"], 90000);
    assert_eq!(small["provider_tpm"], 2000000);
}

#[test]
fn the_shipped_catalog_lists_and_fills_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        run(batchyard(dir.path()).args(["models", "catalog", "--provider", "bedrock", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = last_json(&out);
    let models = v["models"].as_array().unwrap();
    assert!(models.len() >= 5, "{v}");
    assert!(
        models.iter().all(|m| m["model"]["kind"] == "bedrock"),
        "{v}"
    );
    assert!(v["source"].as_str().unwrap().contains("litellm"), "{v}");
    assert!(v["age_days"].as_i64().unwrap() >= 0, "{v}");

    let out = run(batchyard(dir.path()).args(["models", "catalog"]));
    let table = text(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("anthropic/claude-haiku-4-5")),
        "{table}"
    );
    assert!(table.contains("prices from litellm"), "{table}");

    // A model that names an entry takes its prices; `models` says where they came from.
    let config = format!(
        "{CONFIG}\n[models.haiku]\nprovider = \"spare\"\ncatalog = \"anthropic/claude-haiku-4-5\"\n"
    );
    let config = write_file(dir.path(), "c.toml", config.as_bytes());
    let out = run(batchyard(dir.path()).args(["--config", config.to_str().unwrap(), "models"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let haiku = table.lines().find(|l| l.starts_with("haiku")).unwrap();
    assert!(
        haiku.contains("claude-haiku-4-5") && haiku.contains(" 1.00 ") && haiku.contains(" 5.00 "),
        "{haiku}"
    );
    assert!(table.contains("from the shipped catalog where the config sets no price: haiku (anthropic/claude-haiku-4-5)"), "{table}");
}

#[test]
fn logs_have_no_colour_when_stderr_is_not_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(dir.path(), "c.toml", CONFIG.as_bytes());
    // `spare` is unused: loading the config logs a warning.
    let out = run(batchyard(dir.path()).args(["--config", config.to_str().unwrap(), "models"]));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no model uses this provider"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI codes in a piped log: {stderr:?}"
    );

    let out = run(batchyard(dir.path())
        .args(["--config", config.to_str().unwrap(), "models"])
        .env("LOG_FORMAT", "json"));
    let line = text(&out.stderr);
    let line = line.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["level"], "WARN", "{v}");
}

/// Every `"cost_usd":NUMBER` in `text` has at most 9 decimals (the ledger's nano-dollars).
fn assert_no_float_noise(what: &str, text: &str) {
    let mut seen = 0;
    for (at, _) in text.match_indices("\"cost_usd\":") {
        let rest = text[at + "\"cost_usd\":".len()..].trim_start();
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | '-' | 'e' | 'E' | '+'))
            .collect();
        if number.is_empty() {
            continue;
        }
        seen += 1;
        let value: f64 = number.parse().unwrap();
        let rounded = (value * 1e9).round() / 1e9;
        assert_eq!(
            number,
            rounded.to_string(),
            "{what}: cost {number} carries float noise"
        );
    }
    assert!(seen > 0, "{what}: no cost_usd found in {text}");
}

#[test]
fn run_prints_clean_costs_and_a_result_path_that_opens() {
    let dir = tempfile::tempdir().unwrap();
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    for i in 0..20 {
        std::fs::write(
            docs.join(format!("d{i}.txt")),
            format!("document {i} about a billing question, item {}", i * 7),
        )
        .unwrap();
    }
    let out = run(batchyard(dir.path()).args([
        "run",
        "docs",
        "--task",
        "summarize",
        "--budget-usd",
        "0.002",
        "--json",
    ]));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let batch = last_json(&out);
    assert_no_float_noise("run --json", &text(&out.stdout));
    let remaining = batch["budget_remaining_usd"].to_string();
    assert!(remaining.len() <= "0.001234567".len(), "{remaining}");

    // The summary names a file that exists, not `file://./...`.
    let output = stderr
        .lines()
        .find_map(|l| l.strip_prefix("output: "))
        .unwrap_or_else(|| panic!("no output line: {stderr}"));
    assert!(Path::new(output).is_absolute(), "{output}");
    assert!(Path::new(output).is_file(), "{output} is not a file");
    // The JSON object's location is a file:// URL of the same file.
    let url = batch["output_file"].as_str().unwrap();
    assert_eq!(url, format!("file://{output}"), "{batch}");
    for line in stderr.lines().filter(|l| l.contains('$')) {
        let cost = line.rsplit('$').next().unwrap();
        assert!(cost.len() <= "0.000028".len(), "{line}");
    }
    let lines = std::fs::read_to_string(output).unwrap();
    assert_eq!(lines.lines().count(), 20);
    assert_no_float_noise("output.jsonl", &lines);
    let manifest = output.replace("output.jsonl", "manifest.json");
    assert_no_float_noise("manifest.json", &std::fs::read_to_string(manifest).unwrap());
}

#[test]
fn rejected_answers_are_not_one_info_line_each() {
    let dir = tempfile::tempdir().unwrap();
    // Default models, and a task no answer passes: every item escalates through all three.
    let config = write_file(
        dir.path(),
        "c.toml",
        b"[tasks.picky]\nprompt = \"{{ text }}\"\n[tasks.picky.validate]\nregex = \"never-in-any-answer-q7z\"\n",
    );
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    for i in 0..20 {
        std::fs::write(docs.join(format!("d{i}.txt")), format!("document {i}")).unwrap();
    }
    let out = run(batchyard(dir.path())
        .args([
            "--config",
            config.to_str().unwrap(),
            "run",
            "docs",
            "--task",
            "picky",
            "--json",
        ])
        .env("RUST_LOG", "info"));
    let stderr = text(&out.stderr);
    assert_eq!(last_json(&out)["request_counts"]["failed"], 20, "{stderr}");
    let rejected = stderr
        .lines()
        .filter(|l| l.contains("answer not accepted"))
        .count();
    assert_eq!(rejected, 0, "one INFO line per rejected answer:\n{stderr}");
    assert!(stderr.lines().count() < 20, "{stderr}");
}

#[test]
fn run_storage_comes_from_the_flag_then_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(
        dir.path(),
        "in.jsonl",
        (request_line("a", "hi") + "\n").as_bytes(),
    );
    let input = input.to_str().unwrap();
    // Empty means unset, as everywhere else: the built-in default.
    let out = run(batchyard(dir.path())
        .args(["run", input])
        .env("BATCHYARD_STORAGE_URL", ""));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join("batchyard-data/batches").is_dir());
    let env_dir = dir.path().join("from-env");
    let out = run(batchyard(dir.path()).args(["run", input]).env(
        "BATCHYARD_STORAGE_URL",
        format!("file://{}", env_dir.display()),
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(env_dir.join("batches").is_dir());
    let flag_dir = dir.path().join("from-flag");
    let out = run(batchyard(dir.path())
        .args(["run", input, "--storage"])
        .arg(format!("file://{}", flag_dir.display()))
        .env(
            "BATCHYARD_STORAGE_URL",
            format!("file://{}", env_dir.display()),
        ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(flag_dir.join("batches").is_dir());
}
