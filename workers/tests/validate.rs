//! Output validators: each check passes and fails where it should, the command check is
//! bounded by its timeout and leaves no process behind, and config errors name their key.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_jobs::retry::Retryable as _;
use batchyard_workers::catalog::validate::{
    CHECK_COMMAND, CHECK_FINISH_REASON, CHECK_JSON_SCHEMA, CHECK_MAX_CHARS, CHECK_MIN_CHARS,
    CHECK_REFUSAL, CHECK_REGEX, Failure, SchemaSource, ValidateConfig, ValidateConfigError,
    Validators,
};
use serde_json::json;

fn config(v: serde_json::Value) -> ValidateConfig {
    serde_json::from_value(v).unwrap()
}

fn build(v: serde_json::Value) -> Validators {
    Validators::compile(&config(v), Path::new(".")).unwrap()
}

fn compile_err(v: serde_json::Value, base: &Path) -> ValidateConfigError {
    Validators::compile(&config(v), base).unwrap_err()
}

async fn fails(v: &Validators, content: &str) -> Failure {
    v.check(content, Some("stop")).await.unwrap_err()
}

fn sentiment_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "required": ["sentiment"],
        "properties": {"sentiment": {"enum": ["positive", "negative"]}}
    })
}

#[test]
fn validators_are_shareable_and_errors_are_final() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Validators>();
    let f = Failure {
        check: CHECK_REGEX,
        message: "x".into(),
    };
    assert!(!f.is_retryable());
    let e = compile_err(json!({"regex": "("}), Path::new("."));
    assert!(!e.is_retryable());
}

#[test]
fn config_shape() {
    let c = config(json!({"json_schema": "schemas/out.json"}));
    assert_eq!(
        c.json_schema,
        Some(SchemaSource::File("schemas/out.json".into()))
    );
    let c = config(json!({"json_schema": {"type": "object"}}));
    assert_eq!(
        c.json_schema,
        Some(SchemaSource::Inline(json!({"type": "object"})))
    );
    let unknown = serde_json::from_value::<ValidateConfig>(json!({"regexp": "x"}));
    assert!(unknown.unwrap_err().to_string().contains("unknown field"));
}

#[tokio::test]
async fn json_schema_inline() {
    let v = build(json!({"json_schema": sentiment_schema()}));
    assert!(!v.is_empty());
    v.check(r#"{"sentiment": "positive"}"#, Some("stop"))
        .await
        .unwrap();
    v.check("  \n{\"sentiment\": \"negative\"}\n ", Some("stop"))
        .await
        .unwrap();

    let f = fails(&v, r#"{"sentiment": "meh"}"#).await;
    assert_eq!(f.check, CHECK_JSON_SCHEMA);
    assert_eq!(
        f.message,
        r#"/sentiment: "meh" is not one of "positive" or "negative""#
    );

    let f = fails(&v, "Sure! Here it is").await;
    assert_eq!(f.check, CHECK_JSON_SCHEMA);
    assert!(
        f.message
            .starts_with("output is not JSON: expected value at line 1"),
        "{f}"
    );

    let f = fails(&v, "{}").await;
    assert!(
        f.message.contains("\"sentiment\" is a required property"),
        "{f}"
    );
}

#[tokio::test]
async fn json_schema_reports_three_errors_with_paths() {
    let v = build(json!({"json_schema": {
        "type": "array",
        "items": {"type": "integer"}
    }}));
    let f = fails(&v, r#"["a", "b", "c", "d", 1]"#).await;
    assert!(f.message.starts_with("/0: "), "{f}");
    assert!(
        f.message.contains("/1: ") && f.message.contains("/2: "),
        "{f}"
    );
    assert!(!f.message.contains("/3: "), "{f}");
    assert!(f.message.ends_with("; and more"), "{f}");
}

#[tokio::test]
async fn json_schema_fenced() {
    let v = build(json!({"json_schema": sentiment_schema()}));
    for fenced in [
        "```json\n{\"sentiment\": \"positive\"}\n```",
        "\n```JSON\n{\"sentiment\": \"positive\"}\n```\n",
        "```\n{\"sentiment\": \"positive\"}```",
    ] {
        v.check(fenced, Some("stop")).await.unwrap();
    }
    let f = fails(&v, "```json\n{\"sentiment\": \"meh\"}\n```").await;
    assert!(f.message.starts_with("/sentiment: "), "{f}");
    // Another language's fence, or text around the fence, is not JSON.
    for not_json in [
        "```python\n{\"sentiment\": \"positive\"}\n```",
        "Here you go:\n```json\n{\"sentiment\": \"positive\"}\n```",
    ] {
        let f = fails(&v, not_json).await;
        assert!(f.message.starts_with("output is not JSON"), "{f}");
    }
}

#[tokio::test]
async fn json_schema_from_file_relative_to_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("schemas")).unwrap();
    std::fs::write(
        dir.path().join("schemas/out.json"),
        sentiment_schema().to_string(),
    )
    .unwrap();
    let cfg = config(json!({"json_schema": "schemas/out.json"}));
    let v = Validators::compile(&cfg, dir.path()).unwrap();
    v.check(r#"{"sentiment":"negative"}"#, None).await.unwrap();
    assert_eq!(fails(&v, "[]").await.check, CHECK_JSON_SCHEMA);
}

#[tokio::test]
async fn regex_finds_a_match() {
    let v = build(json!({"regex": r"^\d{3}-\d{4}$"}));
    v.check("555-1234", Some("stop")).await.unwrap();
    let f = fails(&v, "call 555-1234").await;
    assert_eq!(f.check, CHECK_REGEX);
    assert!(f.message.starts_with("output does not match regex"), "{f}");
    // Unanchored: a match anywhere passes.
    let v = build(json!({"regex": "ANSWER:"}));
    v.check("thinking...\nANSWER: 4", Some("stop"))
        .await
        .unwrap();
}

#[tokio::test]
async fn char_bounds_count_unicode_chars() {
    let v = build(json!({"min_chars": 3, "max_chars": 4}));
    // 4 chars, 12 bytes.
    v.check("日本語!", Some("stop")).await.unwrap();
    v.check("ééé", Some("stop")).await.unwrap();
    let f = fails(&v, "日本").await; // 2 chars, 6 bytes
    assert_eq!(f.check, CHECK_MIN_CHARS);
    assert!(f.message.contains("2 characters"), "{f}");
    let f = fails(&v, "日本語です").await; // 5 chars
    assert_eq!(f.check, CHECK_MAX_CHARS);
    assert!(f.message.contains("5 characters"), "{f}");
}

#[tokio::test]
async fn finish_reason_defaults_to_stop() {
    let v = build(json!({}));
    assert!(v.is_empty());
    assert!(Validators::default().is_empty());
    v.check("anything", Some("stop")).await.unwrap();
    v.check("anything", None).await.unwrap();
    let f = v.check("cut off mid", Some("length")).await.unwrap_err();
    assert_eq!(f.check, CHECK_FINISH_REASON);
    assert_eq!(f.message, r#"finish_reason is "length", expected "stop""#);

    let any = build(json!({"finish_reason": "any"}));
    assert!(any.is_empty());
    any.check("cut off mid", Some("length")).await.unwrap();

    let tools = build(json!({"finish_reason": "tool_calls"}));
    assert!(!tools.is_empty());
    tools.check("", Some("tool_calls")).await.unwrap();
    assert!(tools.check("", Some("stop")).await.is_err());
}

#[tokio::test]
async fn refusal_patterns_case_insensitive() {
    let v = build(json!({"refusal_patterns": [
        "I can't help with that",
        r"as an ai (language )?model",
        "cost: $5 (",
    ]}));
    v.check("Here is the summary.", Some("stop")).await.unwrap();
    for refusal in [
        "I CAN'T HELP WITH THAT.",
        "Sorry, i can't help with that request",
        "As an AI model, I cannot",
        "as an AI language model",
        "the COST: $5 ( or so",
    ] {
        let f = fails(&v, refusal).await;
        assert_eq!(f.check, CHECK_REFUSAL, "{refusal}");
        assert!(f.message.starts_with("output looks like a refusal"), "{f}");
    }
}

#[tokio::test]
async fn command_passes_on_exit_zero() {
    let v = build(json!({"command": ["sh", "-c", "grep -q ok"]}));
    assert!(!v.is_empty());
    v.check("ok", Some("stop")).await.unwrap();
    v.check("it is ok\nreally", Some("stop")).await.unwrap();
    let f = fails(&v, "nope").await;
    assert_eq!(f.check, CHECK_COMMAND);
    assert!(f.message.contains("exited with code 1"), "{f}");
}

#[tokio::test]
async fn command_failure_captures_bounded_output_and_sees_no_env() {
    // cargo sets this for the test process; the child's environment is cleared but for PATH.
    assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
    let v = build(json!({"command": ["sh", "-c",
        "echo \"secret=${CARGO_MANIFEST_DIR:-unset} path=${PATH:+set}\" >&2; head -c 5000 /dev/zero | tr '\\0' x; exit 3"]}));
    let f = fails(&v, "whatever").await;
    assert!(f.message.starts_with("command exited with code 3"), "{f}");
    assert!(f.message.contains("secret=unset path=set"), "{f}");
    assert!(f.message.contains("; stdout: xxx"), "{f}");
    assert!(f.message.len() < 1024 + 200, "{}", f.message.len());
    assert!(f.message.ends_with('…'), "{f}");
}

#[tokio::test]
async fn command_large_input_not_read() {
    // The command exits without reading a large stdin: no deadlock, no error from the pipe.
    let v = build(json!({"command": ["true"]}));
    let big = "x".repeat(1 << 20);
    v.check(&big, Some("stop")).await.unwrap();
}

#[tokio::test]
async fn command_timeout_kills_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; exec sleep 5", pid_file.display());
    let v = build(json!({"command": ["sh", "-c", script], "command_timeout_secs": 1}));
    let started = Instant::now();
    let f = fails(&v, "x").await;
    let took = started.elapsed();
    assert_eq!(f.check, CHECK_COMMAND);
    assert_eq!(f.message, "command timed out after 1 s and was killed");
    assert!(took >= Duration::from_millis(900), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let pid = pid.trim();
    assert!(!pid.is_empty());
    // Killed and reaped: no process, not even a zombie, is left.
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} still exists"
    );
}

#[tokio::test]
async fn checks_run_cheapest_first() {
    let v = build(json!({
        "json_schema": {"type": "object"},
        "refusal_patterns": ["cannot"],
        "max_chars": 100
    }));
    let f = v.check("I cannot", Some("length")).await.unwrap_err();
    assert_eq!(f.check, CHECK_FINISH_REASON);
    assert_eq!(fails(&v, "I cannot").await.check, CHECK_REFUSAL);
    assert_eq!(fails(&v, "[]").await.check, CHECK_JSON_SCHEMA);
    assert_eq!(f.to_string(), format!("finish_reason: {}", f.message));
}

#[test]
fn compile_errors_name_the_key() {
    let here = Path::new(".");
    let e = compile_err(json!({"regex": "(unclosed"}), here);
    assert_eq!(e.key, "validate.regex");
    assert!(
        e.to_string().starts_with("validate.regex: invalid regex"),
        "{e}"
    );
    assert!(!e.to_string().contains('\n'), "{e}");

    let e = compile_err(json!({"json_schema": {"type": 12}}), here);
    assert_eq!(e.key, "validate.json_schema");
    assert!(e.reason.starts_with("invalid schema"), "{e}");

    // No network or file resolver is built in: a remote $ref fails at load, not per output.
    let e = compile_err(
        json!({"json_schema": {"$ref": "https://example.com/s.json"}}),
        here,
    );
    assert_eq!(e.key, "validate.json_schema");

    let dir = tempfile::tempdir().unwrap();
    let e = compile_err(json!({"json_schema": "missing.json"}), dir.path());
    assert!(
        e.to_string()
            .starts_with("validate.json_schema: cannot read schema file"),
        "{e}"
    );
    assert!(e.reason.contains("missing.json"), "{e}");

    std::fs::write(dir.path().join("bad.json"), "{not json").unwrap();
    let e = compile_err(json!({"json_schema": "bad.json"}), dir.path());
    assert!(e.reason.contains("is not JSON"), "{e}");

    let e = compile_err(json!({"refusal_patterns": ["ok", ""]}), here);
    assert_eq!(e.key, "validate.refusal_patterns[1]");
    let e = compile_err(json!({"refusal_patterns": ["x*"]}), here);
    assert_eq!(e.key, "validate.refusal_patterns[0]");

    let e = compile_err(json!({"min_chars": 5, "max_chars": 2}), here);
    assert_eq!(e.key, "validate.min_chars");

    let e = compile_err(json!({"command": []}), here);
    assert_eq!(e.key, "validate.command");
    let e = compile_err(json!({"command": ["no-such-validator-xyz"]}), here);
    assert!(e.reason.contains("not an executable on PATH"), "{e}");
    let e = compile_err(json!({"command": ["./missing.sh"]}), dir.path());
    assert!(e.reason.contains("missing.sh"), "{e}");
    let e = compile_err(
        json!({"command": ["true"], "command_timeout_secs": 0}),
        here,
    );
    assert_eq!(e.key, "validate.command_timeout_secs");
    let e = compile_err(json!({"command_timeout_secs": 5}), here);
    assert_eq!(e.key, "validate.command_timeout_secs");
    let e = compile_err(json!({"finish_reason": ""}), here);
    assert_eq!(e.key, "validate.finish_reason");
}

#[tokio::test]
async fn command_relative_to_config_dir() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("check.sh");
    std::fs::write(&script, "#!/bin/sh\ngrep -q '^yes$'\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = config(json!({"command": ["./check.sh"]}));
    let v = Validators::compile(&cfg, dir.path()).unwrap();
    v.check("yes", Some("stop")).await.unwrap();
    assert_eq!(fails(&v, "no").await.check, CHECK_COMMAND);
}
