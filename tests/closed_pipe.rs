//! A closed stdout or stderr (`batchyard worker 2>&1 | head -3`, `batchyard results ID | head -1`)
//! never panics the binary, never keeps it from hearing SIGTERM, and never turns into an
//! `error: Broken pipe` exit 1. Real binary, real pipes, real redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use batchyard_testkit::TestRedis;
use support::*;

fn wait_for_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Exit 0, or what a shell reports for SIGPIPE (141, or the signal itself).
fn quiet_pipe_exit(status: ExitStatus) -> bool {
    status.code() == Some(0) || status.code() == Some(141) || status.signal() == Some(13)
}

#[test]
fn worker_hears_sigterm_after_its_log_pipe_closes() {
    let Some(redis) = TestRedis::start(module_path!()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = {
        // The Command holds a copy of the write end until dropped: drop it, or the pipe
        // never closes.
        let mut cmd = batchyard(dir.path());
        cmd.args(["worker", "--concurrency", "2"])
            .env("BATCHYARD_REDIS_URL", &redis.url)
            .env(
                "BATCHYARD_STORAGE_URL",
                format!("file://{}", dir.path().join("data").display()),
            )
            .env("RUST_LOG", "debug")
            .stdout(writer.try_clone().unwrap())
            .stderr(writer);
        cmd.spawn().expect("batchyard should start")
    };
    // `head -3`-like: read until the worker says it started (bounded), then close the pipe.
    let (tx, rx) = mpsc::channel();
    let head = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(reader).lines().take(500) {
            let Ok(line) = line else { break };
            let started = line.contains("worker starting");
            seen.push(line);
            if started {
                break;
            }
        }
        let _ = tx.send(seen);
        // The reader is dropped here: from now on every log line meets a closed pipe.
    });
    let seen = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the worker should log `worker starting` within 30 s");
    head.join().unwrap();
    assert!(
        seen.iter().any(|l| l.contains("worker starting")),
        "{seen:?}"
    );
    // Let it log into the closed pipe for a while (debug logs from the claim loop).
    std::thread::sleep(Duration::from_millis(1500));
    if let Some(status) = child.try_wait().unwrap() {
        panic!("the worker died once its log pipe closed: {status}");
    }
    signal(child.id(), "TERM");
    let status = wait_for_exit(&mut child, Duration::from_secs(20));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = status.expect("the worker should stop within 20 s of SIGTERM");
    assert_eq!(status.code(), Some(0), "worker exit: {status}");
}

#[test]
fn results_into_a_closed_pipe_exits_quietly() {
    let Some(redis) = TestRedis::start(module_path!()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let storage = format!("file://{}", dir.path().join("data").display());
    let body: String = (0..200)
        .map(|i| request_line(&format!("r{i}"), "hello") + "\n")
        .collect();
    let input = write_file(dir.path(), "in.jsonl", body.as_bytes());
    let out = run(batchyard(dir.path())
        .args(["run", input.to_str().unwrap(), "--json"])
        .env("BATCHYARD_REDIS_URL", &redis.url)
        .env("BATCHYARD_STORAGE_URL", &storage));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = last_json(&out)["id"].as_str().unwrap().to_string();

    for errors in [false, true] {
        // The reader is gone before the first byte: every write meets a closed pipe.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = batchyard(dir.path());
        cmd.args(["results", &id])
            .env("BATCHYARD_REDIS_URL", &redis.url)
            .env("BATCHYARD_STORAGE_URL", &storage)
            .stdout(writer)
            .stderr(Stdio::piped());
        if errors {
            // errors.jsonl of a clean batch is empty: nothing to write, plain exit 0.
            cmd.arg("--errors");
        }
        let out = cmd.output().expect("batchyard should start");
        let stderr = text(&out.stderr);
        assert!(
            quiet_pipe_exit(out.status),
            "results --errors={errors}: {} {stderr}",
            out.status
        );
        assert!(!stderr.contains("Broken pipe"), "{stderr}");
        assert!(!stderr.contains("error"), "{stderr}");
    }
}

#[test]
fn printing_commands_into_a_closed_pipe_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["models"][..], &["models", "--json"], &["--help"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = batchyard(dir.path())
            .args(args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("batchyard should start");
        let stderr = text(&out.stderr);
        assert!(
            quiet_pipe_exit(out.status),
            "{args:?}: {} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
