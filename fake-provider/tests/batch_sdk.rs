//! The official Python SDKs (`openai`; `anthropic` when installed) against the fake's batch
//! APIs (tests/sdk_batch.py): what batchyard's clients and users' scripts will both talk to.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{FakeProvider, KEY};

#[test]
fn the_official_sdks_drive_the_batch_apis() {
    let fake = FakeProvider::start(&["--require-key", KEY, "--batch-turnaround-ms", "1500"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sdk_batch.py");
    let out = Command::new("python3")
        .arg(script)
        .env("FAKE_URL", &fake.url)
        .env("FAKE_KEY", KEY)
        .stdin(Stdio::null())
        .output()
        .expect("python3 should run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(77) && !batchyard_testkit::in_ci() {
        eprintln!(
            "SKIP the_official_sdks_drive_the_batch_apis: {}",
            stdout.trim()
        );
        return;
    }
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("sdk_batch: openai"), "{stdout}");
    eprintln!("{}", stdout.trim());
}
