//! The bad-input corpus (`tests/fixtures/bad-inputs/cases.toml`): every malformed JSONL file,
//! document, folder, config file and API request there is run through the real binary, or a
//! real `batchyard serve`, against a real Redis. Each must give its expected error, enqueue
//! nothing (no batch or job keys in Redis), write nothing (the result store and the working
//! folder stay empty), never echo what it is told not to (secrets, hostile ids), and never
//! panic (no exit 101, no `panicked at`, no 5xx).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::Instant;

use batchyard_testkit::TestRedis;
use serde::Deserialize;
use support::bad_input::{
    Serve, TOKEN, files_below, fill, fixtures, generate, redis_leftovers, run_bounded,
};
use support::batchyard;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Corpus {
    case: Vec<Case>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    kind: String,
    // CLI cases.
    input: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    command: Option<String>,
    config: Option<String>,
    config_extra: Option<String>,
    exit: Option<i32>,
    // API cases.
    method: Option<String>,
    path: Option<String>,
    content_type: Option<String>,
    body: Option<String>,
    body_file: Option<String>,
    body_gen: Option<String>,
    #[serde(default)]
    form: Vec<String>,
    token: Option<String>,
    status: Option<u16>,
    param: Option<String>,
    // Both.
    #[serde(default)]
    expect: Vec<String>,
    #[serde(default)]
    forbid: Vec<String>,
}

fn corpus() -> Corpus {
    let path = fixtures().join("cases.toml");
    let body = std::fs::read_to_string(&path).unwrap();
    toml::from_str(&body).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_corpus_is_well_formed() {
    let corpus = corpus();
    assert!(corpus.case.len() >= 30, "{} cases", corpus.case.len());
    let mut names = std::collections::BTreeSet::new();
    for c in &corpus.case {
        assert!(names.insert(&c.name), "two cases are named {:?}", c.name);
        match c.kind.as_str() {
            "cli" => {
                let input = c
                    .input
                    .as_deref()
                    .unwrap_or_else(|| panic!("{}: no input", c.name));
                if !input.starts_with("gen:") {
                    assert!(fixtures().join(input).exists(), "{}: no {input}", c.name);
                }
                assert!(!c.expect.is_empty(), "{}: expects nothing", c.name);
            }
            "api" => assert!(
                c.method.is_some() && c.path.is_some() && c.status.is_some(),
                "{}: an api case needs method, path and status",
                c.name
            ),
            other => panic!("{}: unknown kind {other:?}", c.name),
        }
    }
    // Each category of the issue is present.
    for (needle, what) in [
        ("jsonl/", "JSONL files"),
        ("docs/", "document lines"),
        ("folders/", "folders"),
        ("config/", "config files"),
    ] {
        assert!(
            corpus.case.iter().any(|c| {
                c.input.as_deref().is_some_and(|i| i.starts_with(needle))
                    || c.config.as_deref().is_some_and(|i| i.starts_with(needle))
            }),
            "no case covers {what}"
        );
    }
    assert!(corpus.case.iter().filter(|c| c.kind == "api").count() >= 10);
}

/// Runs one CLI case; returns what went wrong.
fn cli_case(case: &Case, redis: &TestRedis) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    let [work, conf, generated, store] = ["work", "conf", "gen", "store"].map(|d| {
        let p = root.path().join(d);
        std::fs::create_dir(&p).unwrap();
        p
    });
    let config_name = case.config.as_deref().unwrap_or("base.toml");
    let fixture_config = fixtures().join(config_name);
    let config = match std::fs::read(&fixture_config) {
        Ok(bytes) => {
            let dest = conf.join(fixture_config.file_name().unwrap());
            let bytes = match String::from_utf8(bytes) {
                Ok(t) => fill(
                    &(t + case.config_extra.as_deref().unwrap_or("")),
                    redis,
                    &store,
                )
                .into_bytes(),
                // Kept as it is: the case is the bytes themselves.
                Err(e) => e.into_bytes(),
            };
            std::fs::write(&dest, bytes).unwrap();
            dest
        }
        // A missing config is a case of its own.
        Err(_) => fixture_config,
    };
    let input = case.input.as_deref().unwrap_or_default();
    let input = match input.strip_prefix("gen:") {
        Some(name) => generate(name, &generated),
        None => fixtures().join(input),
    };
    let mut cmd = batchyard(&work);
    cmd.arg("--config")
        .arg(&config)
        .args(
            case.command
                .as_deref()
                .unwrap_or("submit")
                .split_whitespace(),
        )
        .arg(&input)
        .args(&case.args);
    let (code, stdout, stderr) = run_bounded(&mut cmd, root.path());
    let mut wrong = Vec::new();
    let expected = case.exit.unwrap_or(2);
    if code != Some(expected) {
        wrong.push(format!("exit code {code:?}, expected {expected}"));
    }
    if code == Some(101) || stderr.contains("panicked at") {
        wrong.push("it panicked".into());
    }
    // Errors go to stderr; the reports of `estimate` and `--dry-run` (exit 0) to stdout.
    let said = if expected == 0 { &stdout } else { &stderr };
    for e in &case.expect {
        if !said.contains(e.as_str()) {
            wrong.push(format!("the output lacks {e:?}"));
        }
    }
    for f in &case.forbid {
        if stderr.contains(f.as_str()) || stdout.contains(f.as_str()) {
            wrong.push(format!("output shows {f:?}, which it must not"));
        }
    }
    for (what, dir) in [("result store", &store), ("working folder", &work)] {
        let written = files_below(dir);
        if !written.is_empty() {
            wrong.push(format!("the {what} was written to: {written:?}"));
        }
    }
    let left = redis_leftovers(redis);
    if !left.is_empty() {
        wrong.push(format!("redis holds {left:?}"));
    }
    if !wrong.is_empty() {
        let cut = |s: &str| s.chars().take(2000).collect::<String>();
        wrong.push(format!(
            "stderr: {}\n    stdout: {}",
            cut(&stderr),
            cut(&stdout)
        ));
    }
    wrong
}

/// Sends one API case; returns what went wrong.
fn api_case(case: &Case, serve: &Serve, dir: &Path) -> Vec<String> {
    let method = case.method.as_deref().unwrap_or("GET");
    let path = match case.path.as_deref().unwrap_or("/") {
        "gen:long-batch-id" => format!("/v1/batches/batch_{}", "a".repeat(10 * 1024)),
        p => p.to_string(),
    };
    let mut extra: Vec<String> = vec!["--max-time".into(), "30".into()];
    if let Some(ct) = &case.content_type {
        extra.extend(["-H".into(), format!("Content-Type: {ct}")]);
    }
    let body: Option<Vec<u8>> = match (&case.body, &case.body_file, &case.body_gen) {
        (Some(b), _, _) => Some(b.clone().into_bytes()),
        (_, Some(f), _) => Some(std::fs::read(fixtures().join(f)).unwrap()),
        (_, _, Some(g)) => Some(match g.as_str() {
            "deep-nesting" => "[".repeat(100_000).into_bytes(),
            "two-megabytes" => format!("{{\"metadata\":\"{}\"}}", "x".repeat(2 << 20)).into_bytes(),
            other => panic!("unknown generated body {other:?}"),
        }),
        _ => None,
    };
    if let Some(body) = body {
        let file = support::write_file(dir, "body", &body);
        extra.extend(["--data-binary".into(), format!("@{}", file.display())]);
    }
    for field in &case.form {
        let field = match field.split_once("=@") {
            Some((k, f)) => format!("{k}=@{}", fixtures().join(f).display()),
            None => field.clone(),
        };
        extra.extend(["-F".into(), field]);
    }
    let token = match case.token.as_deref() {
        Some("none") => None,
        _ => Some(TOKEN),
    };
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (status, body) = support::api::curl(&serve.base, method, &path, token, &extra);
    let mut wrong = Vec::new();
    let expected = case.status.unwrap_or(400);
    if status != expected {
        wrong.push(format!("status {status}, expected {expected}"));
    }
    if status >= 500 {
        wrong.push("a server error".into());
    }
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) => {
            let message = v["error"]["message"].as_str().unwrap_or_default();
            if message.is_empty() {
                wrong.push("no error.message".into());
            }
            for e in &case.expect {
                if !message.contains(e.as_str()) {
                    wrong.push(format!("error.message lacks {e:?}"));
                }
            }
            if let Some(p) = &case.param
                && v["error"]["param"] != p.as_str()
            {
                wrong.push(format!(
                    "error.param is {}, expected {p:?}",
                    v["error"]["param"]
                ));
            }
        }
        Err(e) => wrong.push(format!("the answer is not JSON ({e})")),
    }
    for f in &case.forbid {
        if body.contains(f.as_str()) {
            wrong.push(format!("the answer shows {f:?}, which it must not"));
        }
    }
    if !wrong.is_empty() {
        wrong.push(format!(
            "body: {}",
            body.chars().take(2000).collect::<String>()
        ));
    }
    wrong
}

/// The checks can fail: a good input, submitted the same way, leaves its batch in Redis.
#[test]
fn a_good_submission_is_seen_by_the_checks() {
    let Some(redis) = TestRedis::start(module_path!()) else {
        return;
    };
    let case = Case {
        name: "control".into(),
        kind: "cli".into(),
        input: Some("jsonl/good.jsonl".into()),
        exit: Some(2),
        ..Case::default()
    };
    let wrong = cli_case(&case, &redis).join("\n");
    assert!(wrong.contains("exit code Some(0), expected 2"), "{wrong}");
    assert!(
        wrong.contains("redis holds") && wrong.contains("by:batch:"),
        "{wrong}"
    );
    assert!(
        redis_leftovers(&redis).is_empty(),
        "leftovers are cleaned up"
    );
    // And a good upload through the API is seen in the store.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    std::fs::create_dir(&store).unwrap();
    let serve = Serve::start(&redis, dir.path(), &store);
    let file = format!("file=@{}", fixtures().join("jsonl/good.jsonl").display());
    let (status, body) = support::api::curl(
        &serve.base,
        "POST",
        "/v1/files",
        Some(TOKEN),
        &["-F", "purpose=batch", "-F", &file],
    );
    assert_eq!(status, 200, "{body}");
    assert!(!files_below(&store).is_empty(), "the upload is not seen");
}

#[test]
fn every_bad_input_is_refused_cleanly() {
    let Some(redis) = TestRedis::start(module_path!()) else {
        return;
    };
    let corpus = corpus();
    let dir = tempfile::tempdir().unwrap();
    let api_store = dir.path().join("api-store");
    std::fs::create_dir(&api_store).unwrap();
    let mut serve = Serve::start(&redis, dir.path(), &api_store);
    let mut failures = Vec::new();
    let started = Instant::now();
    for case in &corpus.case {
        let t = Instant::now();
        let mut wrong = match case.kind.as_str() {
            "cli" => cli_case(case, &redis),
            "api" => {
                let mut wrong = api_case(case, &serve, dir.path());
                let written = files_below(&api_store);
                if !written.is_empty() {
                    wrong.push(format!("the result store was written to: {written:?}"));
                    std::fs::remove_dir_all(&api_store).unwrap();
                    std::fs::create_dir(&api_store).unwrap();
                }
                let left = redis_leftovers(&redis);
                if !left.is_empty() {
                    wrong.insert(0, format!("redis holds {left:?}"));
                }
                wrong
            }
            other => vec![format!("unknown kind {other:?}")],
        };
        eprintln!(
            "{:>6} ms  {:<4} {}{}",
            t.elapsed().as_millis(),
            case.kind,
            case.name,
            if wrong.is_empty() { "" } else { "  FAILED" }
        );
        if !wrong.is_empty() {
            wrong.insert(0, format!("case {:?} ({}):", case.name, case.kind));
            failures.push(wrong.join("\n    "));
        }
    }
    let log = serve.log_text();
    if log.contains("panicked at") {
        failures.push(format!("serve panicked: {log}"));
    }
    if let Ok(Some(status)) = serve.child.try_wait() {
        failures.push(format!("serve exited ({status}) during the corpus: {log}"));
    }
    eprintln!(
        "{} cases in {:.1} s",
        corpus.case.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases went wrong:\n{}",
        failures.len(),
        corpus.case.len(),
        failures.join("\n\n")
    );
}
