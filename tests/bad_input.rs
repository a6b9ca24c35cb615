//! Bad input: a clear error naming the line and the reason, exit 2, and nothing enqueued.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

/// Runs `batchyard run` on `body` and returns (exit code, stderr, batches written).
fn run_on(body: &[u8], extra: &[&str]) -> (Option<i32>, String, usize, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(dir.path(), "in.jsonl", body);
    let mut cmd = batchyard(dir.path());
    cmd.args(["run", input.to_str().unwrap()]).args(extra);
    let out = run(&mut cmd);
    let batches = std::fs::read_dir(dir.path().join("batchyard-data/batches"))
        .map(|d| d.count())
        .unwrap_or(0);
    (out.status.code(), text(&out.stderr), batches, dir)
}

/// The folder of the one batch `run_on` wrote.
fn the_batch_dir(dir: &tempfile::TempDir) -> std::path::PathBuf {
    std::fs::read_dir(dir.path().join("batchyard-data/batches"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
}

fn good(id: &str) -> String {
    request_line(id, "hello")
}

fn assert_rejected(body: &[u8], line: &str, reason: &str) {
    let (code, stderr, batches, _dir) = run_on(body, &[]);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains(line), "expected {line:?} in: {stderr}");
    assert!(stderr.contains(reason), "expected {reason:?} in: {stderr}");
    assert!(
        stderr.contains("nothing was enqueued") || batches == 0,
        "{stderr}"
    );
    assert_eq!(batches, 0, "nothing may be written for rejected input");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn invalid_json_names_the_line() {
    let body = format!("{}\n{{not json\n", good("a"));
    assert_rejected(body.as_bytes(), "in.jsonl:2", "invalid JSON");
}

#[test]
fn a_line_that_is_not_an_object() {
    let body = format!("{}\n[1,2,3]\n", good("a"));
    assert_rejected(body.as_bytes(), "in.jsonl:2", "must be a JSON object");
}

#[test]
fn missing_and_empty_custom_ids() {
    let body = r#"{"method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}]}}"#;
    assert_rejected(body.as_bytes(), "in.jsonl:1", "missing \"custom_id\"");
    let body = r#"{"custom_id":"  ","method":"POST","url":"/v1/chat/completions","body":{"messages":[{"role":"user","content":"x"}]}}"#;
    assert_rejected(body.as_bytes(), "in.jsonl:1", "\"custom_id\" is empty");
    let body = r#"{"id":"","text":"x"}"#;
    assert_rejected(body.as_bytes(), "in.jsonl:1", "\"id\" is empty");
}

#[test]
fn duplicate_custom_id() {
    let body = format!("{}\n{}\n{}\n", good("a"), good("b"), good("a"));
    assert_rejected(
        body.as_bytes(),
        "in.jsonl:3: duplicate custom_id \"a\"",
        "every item needs its own",
    );
}

#[test]
fn unknown_model_or_task() {
    let body = good("a").replace("\"auto\"", "\"gpt-9\"");
    assert_rejected(body.as_bytes(), "in.jsonl:1", "unknown model \"gpt-9\"");
    let body = good("a").replace("\"auto\"", "\"task:nope\"");
    assert_rejected(body.as_bytes(), "in.jsonl:1", "unknown task \"nope\"");
}

#[test]
fn wrong_url_or_method() {
    let body = good("a").replace("/v1/chat/completions", "/v1/embeddings");
    assert_rejected(body.as_bytes(), "in.jsonl:1", "\"url\" must be");
    let body = good("a").replace("POST", "GET");
    assert_rejected(body.as_bytes(), "in.jsonl:1", "\"method\" must be \"POST\"");
}

#[test]
fn body_without_messages() {
    let body =
        r#"{"custom_id":"a","method":"POST","url":"/v1/chat/completions","body":{"model":"auto"}}"#;
    assert_rejected(body.as_bytes(), "in.jsonl:1", "\"messages\"");
}

#[test]
fn document_without_text() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_file(
        dir.path(),
        "docs.jsonl",
        b"{\"id\":\"d1\",\"text\":\"ok\"}\n{\"id\":\"d2\"}\n",
    );
    let out =
        run(batchyard(dir.path()).args(["run", input.to_str().unwrap(), "--task", "summarize"]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("docs.jsonl:2") && stderr.contains("needs \"text\""),
        "{stderr}"
    );
}

#[test]
fn documents_without_a_task() {
    let body = b"{\"id\":\"d1\",\"text\":\"ok\"}\n";
    assert_rejected(body, "in.jsonl:1", "--task");
}

#[test]
fn non_utf8_bytes() {
    let mut body = good("a").into_bytes();
    body.extend_from_slice(b"\n{\"custom_id\":\"b\xff\xfe\"}\n");
    assert_rejected(&body, "in.jsonl:2", "not valid UTF-8");
}

#[test]
fn a_line_over_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "batchyard.toml",
        b"[input]\nmax_line_bytes = 1000\n",
    );
    let big = request_line("big", &"x".repeat(5000));
    let input = write_file(
        dir.path(),
        "in.jsonl",
        format!("{}\n{big}\n{}\n", good("a"), good("c")).as_bytes(),
    );
    let out = run(batchyard(dir.path()).args(["run", input.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("in.jsonl:2") && stderr.contains("longer than the limit of 1000 bytes"),
        "{stderr}"
    );
}

#[test]
fn an_empty_input() {
    assert_rejected(b"", "in.jsonl", "empty");
    assert_rejected(b"\n\n  \n", "in.jsonl", "empty");
}

#[test]
fn blank_lines_crlf_and_bom_are_accepted() {
    let body = format!("\u{feff}{}\r\n\r\n{}\r\n\n", good("a"), good("b"));
    let (code, stderr, batches, _dir) = run_on(body.as_bytes(), &["--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(batches, 1);
}

#[test]
fn every_bad_line_is_listed_not_just_the_first() {
    let body = format!("{{bad\n{}\n[1]\n", good("a"));
    let (code, stderr, _, _dir) = run_on(body.as_bytes(), &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("in.jsonl:1") && stderr.contains("in.jsonl:3"),
        "{stderr}"
    );
    assert!(stderr.contains("2 invalid item(s)"), "{stderr}");
}

#[test]
fn skip_invalid_enqueues_good_lines_and_records_bad_ones() {
    let body = format!("{}\n{{oops\n{}\n{}\n", good("a"), good("b"), good("a"));
    let (code, stderr, batches, dir) = run_on(body.as_bytes(), &["--skip-invalid", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(batches, 1);
    let batch_dir = the_batch_dir(&dir);
    let ok = read_jsonl(&batch_dir.join("output.jsonl"));
    let errors = read_jsonl(&batch_dir.join("errors.jsonl"));
    assert_eq!(ok.len(), 2);
    assert_eq!(errors.len(), 2);
    for e in &errors {
        assert_eq!(e["error"]["code"], "invalid_input");
        assert!(e["response"].is_null());
    }
    let lines: Vec<u64> = errors
        .iter()
        .map(|e| e["batchyard"]["line"].as_u64().unwrap())
        .collect();
    assert!(lines.contains(&2) && lines.contains(&4), "{lines:?}");
    let dup = errors.iter().find(|e| e["batchyard"]["line"] == 4).unwrap();
    assert_eq!(dup["custom_id"], "a");
}

/// 2,250 bad lines among 250 good ones: the bad lines are written a window of 1,000 item
/// numbers per segment (not one segment each), and each is reported once with its line.
#[test]
fn many_bad_lines_share_a_few_segments_and_each_is_reported_once() {
    let body: String = (1..=2500u64)
        .map(|n| match n % 10 {
            0 => good(&format!("ok-{n}")) + "\n",
            _ => "{oops\n".to_owned(),
        })
        .collect();
    let (code, stderr, batches, dir) = run_on(body.as_bytes(), &["--skip-invalid", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(batches, 1);
    let batch_dir = the_batch_dir(&dir);
    let invalid_segments = std::fs::read_dir(batch_dir.join("segments"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("invalid-")
        })
        .count();
    assert_eq!(invalid_segments, 3, "one segment per 1,000 item numbers");
    let ok = read_jsonl(&batch_dir.join("output.jsonl"));
    let errors = read_jsonl(&batch_dir.join("errors.jsonl"));
    assert_eq!(exactly_once(&ok, &errors), 2500);
    assert_eq!(ok.len(), 250);
    let mut lines: Vec<u64> = errors
        .iter()
        .map(|e| {
            assert_eq!(e["error"]["code"], "invalid_input");
            let line = e["batchyard"]["line"].as_u64().unwrap();
            assert_eq!(e["custom_id"], format!("line-{line}"));
            line
        })
        .collect();
    lines.sort_unstable();
    let want: Vec<u64> = (1..=2500).filter(|n| n % 10 != 0).collect();
    assert_eq!(lines, want);
}

#[test]
fn a_bad_line_without_an_id_never_takes_a_real_items_id() {
    // Line 2 has no readable id; an item is already called `line-2`.
    let body = format!("{}\n{{oops\n", good("line-2"));
    let (code, stderr, _, dir) = run_on(body.as_bytes(), &["--skip-invalid", "--json"]);
    assert_eq!(code, Some(0), "{stderr}");
    let batch_dir = the_batch_dir(&dir);
    let ok = read_jsonl(&batch_dir.join("output.jsonl"));
    let errors = read_jsonl(&batch_dir.join("errors.jsonl"));
    assert_eq!(exactly_once(&ok, &errors), 2);
    assert_eq!(ok[0]["custom_id"], "line-2");
    assert_eq!(errors[0]["custom_id"], "line-2-invalid", "{errors:?}");
}

#[test]
fn a_missing_input_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(batchyard(dir.path()).args(["run", "does-not-exist.jsonl"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does-not-exist.jsonl"));
}

#[test]
fn a_bad_config_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    write_file(
        dir.path(),
        "batchyard.toml",
        b"[storage]\nurl = \"file://./x\"\nbogus = 1\n",
    );
    let input = write_file(dir.path(), "in.jsonl", good("a").as_bytes());
    let out = run(batchyard(dir.path()).args(["run", input.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("batchyard.toml") && stderr.contains("bogus"),
        "{stderr}"
    );
}

/// Runs `batchyard run INPUT ARGS` in a fresh folder; returns (exit code, stderr, seconds).
/// Killed (and failed) after 90 s: what this checks used to run forever.
fn run_timed(input: &str, extra: &[&str]) -> (Option<i32>, String, f64) {
    let dir = tempfile::tempdir().unwrap();
    let input = if input.starts_with('/') || input.contains("://") {
        input.to_string()
    } else {
        let path = write_file(dir.path(), input, good("a").as_bytes());
        path.display().to_string()
    };
    let started = std::time::Instant::now();
    let stderr_path = dir.path().join("stderr");
    let mut child = batchyard(dir.path())
        .args(["run", &input])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    let status = support::cluster::wait_exit(&mut child, std::time::Duration::from_secs(90));
    let stderr = text(&std::fs::read(&stderr_path).unwrap());
    (status.code(), stderr, started.elapsed().as_secs_f64())
}

#[test]
fn a_device_as_the_input_is_refused_before_it_is_read() {
    for device in ["/dev/zero", "/dev/urandom"] {
        let (code, stderr, secs) = run_timed(device, &[]);
        assert_eq!(code, Some(2), "{device}: {stderr}");
        assert!(
            stderr.contains(&format!("{device}: is not a regular file or folder")),
            "{stderr}"
        );
        assert!(secs < 10.0, "{device} took {secs:.1} s");
    }
}

#[test]
fn a_store_that_can_never_be_written_fails_the_submission() {
    // A pseudo folder: its subfolders can't be created.
    let (code, stderr, secs) = run_timed("in.jsonl", &["--storage", "file:///proc/self"]);
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("the result store file:///proc/self can't be written"),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was enqueued"), "{stderr}");
    assert!(!stderr.contains("will be retried"), "{stderr}");
    assert!(secs < 20.0, "took {secs:.1} s");
    // A bucket without credentials: no key, no reachable metadata server. Bounded by the
    // probe's 30 s, never a worker's retry loop.
    let (code, stderr, secs) = run_timed(
        "in.jsonl",
        &["--storage", "gs://batchyard-no-such-bucket/p"],
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("can't be written"), "{stderr}");
    assert!(!stderr.contains("will be retried"), "{stderr}");
    assert!(secs < 60.0, "took {secs:.1} s");
}
