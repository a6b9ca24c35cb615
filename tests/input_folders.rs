//! Folder inputs against a real provider process (the fake provider echoes what it is sent):
//! symbolic links out of the folder never reach it, file names that are not UTF-8 are refused
//! each by its path while valid names keep their ids, and U+2028/U+2029 in answers are escaped
//! in output.jsonl and errors.jsonl.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::*;

/// A config with one model on the fake provider and two tasks: `summarize` passes any
/// answer, `strict` none (so its items end in errors.jsonl with the answer kept).
fn config(dir: &Path, fake: &FakeProvider) -> PathBuf {
    let store = dir.join("store");
    let toml = format!(
        r#"
[storage]
url = "file://{store}"

[cache]
enabled = false

[providers.fake]
kind = "openai"
base_url = "{base}"

[models.m]
provider = "fake"
name = "m-1"
input_usd_per_mtok = 1.0
output_usd_per_mtok = 1.0
context_window = 16000
tier = 1

[tasks.summarize]
prompt = "{{{{ text }}}}"

[tasks.strict]
prompt = "{{{{ text }}}}"

[tasks.strict.validate]
regex = "^never matches$"
"#,
        store = store.display(),
        base = fake.base_url,
    );
    write_file(dir, "batchyard.toml", toml.as_bytes())
}

/// Runs `batchyard run` and returns (exit code, stderr, output lines, error lines, raw bytes
/// of both files).
fn run_batch(
    dir: &Path,
    config: &Path,
    args: &[&str],
) -> (Option<i32>, String, Vec<Value>, Vec<Value>, Vec<u8>) {
    let _ = std::fs::remove_dir_all(dir.join("store"));
    let out = run(batchyard(dir)
        .arg("--config")
        .arg(config)
        .arg("run")
        .args(args));
    let batches = dir.join("store/batches");
    let batch = std::fs::read_dir(&batches)
        .ok()
        .and_then(|mut d| d.next())
        .map(|e| e.unwrap().path());
    let (mut ok, mut errors, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(b) = batch {
        ok = read_jsonl(&b.join("output.jsonl"));
        errors = read_jsonl(&b.join("errors.jsonl"));
        for f in ["output.jsonl", "errors.jsonl"] {
            raw.extend(std::fs::read(b.join(f)).unwrap_or_default());
        }
    }
    (out.status.code(), text(&out.stderr), ok, errors, raw)
}

fn ids(lines: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = lines
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn requests(fake: &FakeProvider) -> u64 {
    fake.stats()["requests"].as_u64().unwrap()
}

#[test]
fn symlinks_out_of_the_folder_never_reach_the_provider() {
    let fake = FakeProvider::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &fake);
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET-OUTSIDE-1 do not send").unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    std::fs::write(inbox.join("a.txt"), "an ordinary document").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", inbox.join("link.txt")).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.txt"), inbox.join("secret.txt")).unwrap();
    std::os::unix::fs::symlink(&outside, inbox.join("out")).unwrap();
    std::os::unix::fs::symlink(inbox.join("a.txt"), inbox.join("same.txt")).unwrap();
    std::os::unix::fs::symlink(&inbox, inbox.join("loop")).unwrap();
    let inbox_arg = inbox.to_str().unwrap();

    // By default every link is skipped, and counted.
    let (code, stderr, ok, errors, raw) =
        run_batch(dir.path(), &config, &[inbox_arg, "--task", "summarize"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ids(&ok), ["a.txt"], "{stderr}");
    assert!(errors.is_empty(), "{errors:?}");
    assert!(
        stderr.contains("skipped 5 symbolic link(s); pass --follow-symlinks"),
        "{stderr}"
    );
    assert_eq!(requests(&fake), 1);
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("root:") && !raw.contains("SECRET-OUTSIDE"),
        "{raw}"
    );

    // Followed: links that leave the folder are refused by name, nothing is sent.
    let follow = [inbox_arg, "--task", "summarize", "--follow-symlinks"];
    let (code, stderr, ..) = run_batch(dir.path(), &config, &follow);
    assert_eq!(code, Some(2), "{stderr}");
    for name in ["link.txt", "secret.txt", "out"] {
        assert!(
            stderr.contains(&format!(
                "inbox/{name}: is a symbolic link to a place outside the input folder"
            )),
            "{name}: {stderr}"
        );
    }
    assert!(stderr.contains("3 invalid item(s)"), "{stderr}");
    assert_eq!(
        requests(&fake),
        1,
        "nothing may be sent for a refused input"
    );

    // With --skip-invalid: the link inside is read, the ones outside are recorded by path.
    let skip = [
        inbox_arg,
        "--task",
        "summarize",
        "--follow-symlinks",
        "--skip-invalid",
    ];
    let (code, stderr, ok, errors, raw) = run_batch(dir.path(), &config, &skip);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ids(&ok), ["a.txt", "same.txt"], "{stderr}");
    assert_eq!(ids(&errors), ["link.txt", "out", "secret.txt"]);
    assert!(errors.iter().all(|e| e["error"]["code"] == "invalid_input"));
    // The loop back to the folder was not walked again.
    assert!(
        stderr.contains("1 symbolic link(s) to a folder read already"),
        "{stderr}"
    );
    assert_eq!(requests(&fake), 3);
    let raw = String::from_utf8_lossy(&raw);
    assert!(
        !raw.contains("root:") && !raw.contains("SECRET-OUTSIDE"),
        "{raw}"
    );
}

#[test]
fn names_that_are_not_utf8_are_refused_by_path_and_valid_names_keep_their_ids() {
    let fake = FakeProvider::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &fake);
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(inbox.join("sub")).unwrap();
    for name in [
        &b"n\xfe.txt"[..],
        b"n\xff.txt",
        "n\u{FFFD}.txt".as_bytes(),
        "café.md".as_bytes(),
        b"sub/x.txt",
    ] {
        std::fs::write(inbox.join(OsStr::from_bytes(name)), "a document").unwrap();
    }
    let inbox_arg = inbox.to_str().unwrap();

    // Refused, each by its path: not "line 2: duplicate custom_id".
    let (code, stderr, ..) = run_batch(dir.path(), &config, &[inbox_arg, "--task", "summarize"]);
    assert_eq!(code, Some(2), "{stderr}");
    for name in [r"n\xFE.txt", r"n\xFF.txt"] {
        assert!(
            stderr.contains(&format!("inbox/{name}\": the file name is not valid UTF-8")),
            "{name}: {stderr}"
        );
    }
    assert!(stderr.contains("2 invalid item(s)"), "{stderr}");
    assert!(
        !stderr.contains("duplicate") && !stderr.contains("line "),
        "{stderr}"
    );
    assert_eq!(requests(&fake), 0);

    // --skip-invalid: the refused files are recorded under their escaped paths, never
    // `line-N`, and every valid name keeps the id it always had (its relative path).
    let args = [inbox_arg, "--task", "summarize", "--skip-invalid"];
    let (code, stderr, ok, errors, _) = run_batch(dir.path(), &config, &args);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(ids(&ok), ["café.md", "n\u{FFFD}.txt", "sub/x.txt"]);
    assert_eq!(ids(&errors), [r"n\xFE.txt", r"n\xFF.txt"]);
    for e in &errors {
        assert_eq!(e["error"]["code"], "invalid_input");
        assert!(e["batchyard"]["line"].is_null(), "{e}");
    }
    assert_eq!(requests(&fake), 3);
}

#[test]
fn line_separators_in_answers_are_escaped_in_output_and_errors() {
    let fake = FakeProvider::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &fake);
    // The fake provider echoes the start of the prompt into its answer.
    let body = "{\"id\":\"d1\",\"text\":\"one\u{2028}two\u{2029}three\"}\n";
    let input = write_file(dir.path(), "docs.jsonl", body.as_bytes());
    let input = input.to_str().unwrap();
    for (task, in_output) in [("summarize", true), ("strict", false)] {
        let (code, stderr, ok, errors, raw) =
            run_batch(dir.path(), &config, &[input, "--task", task]);
        assert_eq!(code, Some(0), "{stderr}");
        let lines = if in_output { &ok } else { &errors };
        assert_eq!(lines.len(), 1, "{task}: {ok:?} {errors:?}");
        let raw = String::from_utf8(raw).unwrap();
        // The answer holds both characters, but only as escapes: one record per line for any
        // reader, also one that splits on Unicode line breaks.
        assert!(raw.contains(r"one\u2028two\u2029three"), "{task}: {raw}");
        assert!(!raw.contains(['\u{2028}', '\u{2029}']), "{task}: {raw}");
        assert_eq!(
            raw.split(['\n', '\u{2028}', '\u{2029}'])
                .filter(|l| !l.is_empty())
                .count(),
            1
        );
        assert!(lines[0].to_string().contains("one\u{2028}two"), "{task}");
    }
}
