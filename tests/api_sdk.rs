//! `batchyard serve` and the official `openai` package: every batch object, whichever way the
//! batch was made, validates against the SDK's `Batch` model (tests/api_client.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::api::*;
use support::cluster::Cluster;
use support::*;

/// Issue 15: batches made by `submit`, by `run` against Redis, by a pipeline and by the API
/// (one whose input failed validation too) all validate against the SDK's `Batch` model, and
/// finished ones carry `usage` and `model`.
#[test]
fn every_batch_object_validates_with_the_openai_sdk() {
    let inbox = tempfile::tempdir().unwrap();
    write_file(
        inbox.path(),
        "a.txt",
        b"a document for the nightly pipeline",
    );
    let opts = support::cluster::Options {
        extra_toml: format!(
            "[pipelines.nightly]\nschedule = \"0 2 * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\n",
            inbox.path().display()
        ),
        ..Default::default()
    };
    let Some(cluster) = Cluster::start_opts("api_sdk_models", &[], opts) else {
        return;
    };
    let s = Server::start(&cluster);
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "2"])]);
    let cli = input(cluster.dir.path(), "cli", 3);
    let submitted = cluster.submit(cli.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ran = input(cluster.dir.path(), "ran", 2);
    let out = run(cluster.cmd().args(["run", ran.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(cluster
        .cmd()
        .args(["pipelines", "run", "nightly", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let file = upload(&s, &input(cluster.dir.path(), "api", 2));
    let made = ok_json(create_batch(&s, file["id"].as_str().unwrap(), "{}"));
    let bad = write_file(cluster.dir.path(), "bad.jsonl", b"{not json}\n");
    let bad_file = upload(&s, &bad);
    let refused = ok_json(create_batch(&s, bad_file["id"].as_str().unwrap(), "{}"));
    assert_eq!(refused["status"], "failed");

    wait_batch(&s, &submitted, Duration::from_secs(60));
    wait_batch(&s, made["id"].as_str().unwrap(), Duration::from_secs(60));
    let listed = ok_json(call(&s, "GET", "/v1/batches?limit=100", &[]));
    let ids: Vec<String> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    assert!(ids.len() >= 5, "{listed}");
    for id in &ids {
        wait_batch(&s, id, Duration::from_secs(60));
    }
    let cli_view = ok_json(call(&s, "GET", &format!("/v1/batches/{submitted}"), &[]));
    assert_eq!(
        cli_view["input_file_id"],
        format!("file-{submitted}-input"),
        "{cli_view}"
    );
    assert!(
        cli_view["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{cli_view}"
    );
    assert_eq!(cli_view["model"], "small", "{cli_view}");
    let e = expect_error(
        call(&s, "GET", &format!("/v1/files/file-{submitted}-input"), &[]),
        404,
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("submitted from the CLI"),
        "{e}"
    );

    let out = Command::new("python3")
        .arg(repo_root().join("tests/api_client.py"))
        .env("BATCHYARD_API_BASE", format!("{}/v1", s.base))
        .env("BATCHYARD_API_TOKEN", TOKEN)
        .env("BATCHYARD_API_VALIDATE_ONLY", "1")
        .stdin(Stdio::null())
        .output()
        .expect("python3 should run");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.code() == Some(77) && !batchyard_testkit::in_ci() {
        eprintln!(
            "SKIP every_batch_object_validates_with_the_openai_sdk: {}",
            stdout.trim()
        );
        return;
    }
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains(&format!("api_client: validated {}", ids.len())),
        "{stdout}"
    );
    s.stop();
}
