//! `batchyard serve`: the OpenAI-compatible Batch API against real Redis, real S3 and a fake
//! provider, driven over real HTTP with curl, and with the official `openai` Python package
//! (tests/api_client.py).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::api::*;
use support::cluster::Cluster;
use support::*;

#[test]
fn serve_refuses_to_start_without_tokens() {
    let Some(cluster) = Cluster::start("api_no_tokens", &[], 30) else {
        return;
    };
    let out = run(cluster
        .cmd()
        .args(["serve", "--addr", "127.0.0.1:0"])
        .env("BATCHYARD_API_TOKENS", " , "));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("BATCHYARD_API_TOKENS"));
}

#[test]
fn auth_probes_and_bad_requests() {
    let Some(cluster) = Cluster::start("api_auth", &[], 30) else {
        return;
    };
    let s = Server::start(&cluster);
    // Probes need no token.
    assert_eq!(curl(&s.base, "GET", "/healthz", None, &[]).0, 200);
    let ready = curl(&s.base, "GET", "/readyz", None, &[]);
    assert_eq!(ready.0, 200, "{}", ready.1);
    assert_eq!(json_of(&ready.1)["redis"], "ok");
    // Prometheus scrapes without a token; the queue depth is sampled at start.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (code, body) = curl(&s.base, "GET", "/metrics", None, &[]);
        assert_eq!(code, 200, "{body}");
        if body.contains("batchyard_queue_depth{") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no queue depth: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // Missing, wrong and empty tokens.
    for token in [None, Some("wrong"), Some("")] {
        let e = expect_error(curl(&s.base, "GET", "/v1/batches", token, &[]), 401);
        assert_eq!(e["code"], "invalid_api_key");
        assert_eq!(e["type"], "invalid_request_error");
    }
    let e = expect_error(
        curl(
            &s.base,
            "GET",
            "/v1/batches",
            None,
            &["-H", "Authorization: Basic abc"],
        ),
        401,
    );
    assert_eq!(e["code"], "invalid_api_key");
    assert!(!serve_log(&cluster).contains(TOKEN), "a token was logged");

    // Bad bodies.
    let json = ["-H", "Content-Type: application/json"];
    expect_error(
        call(
            &s,
            "POST",
            "/v1/batches",
            &[&json[..], &["-d", "{not json"]].concat(),
        ),
        400,
    );
    let e = expect_error(
        call(
            &s,
            "POST",
            "/v1/batches",
            &[
                &json[..],
                &["-d", r#"{"input_file_id":"file-x","endpoint":"/v1/chat/completions","completion_window":"24h","colour":"red"}"#],
            ]
            .concat(),
        ),
        400,
    );
    assert!(e["message"].as_str().unwrap().contains("colour"), "{e}");
    expect_error(
        call(
            &s,
            "POST",
            "/v1/batches",
            &["-H", "Content-Type: text/plain", "-d", "{}"],
        ),
        415,
    );
    let e = expect_error(create_batch(&s, "file-nope", "null"), 400);
    assert_eq!(e["param"], "input_file_id");
    let e = expect_error(
        call(
            &s,
            "POST",
            "/v1/batches",
            &[
                &json[..],
                &["-d", r#"{"input_file_id":"file-x","endpoint":"/v1/embeddings","completion_window":"24h"}"#],
            ]
            .concat(),
        ),
        400,
    );
    assert_eq!(e["param"], "endpoint");
    expect_error(
        call(
            &s,
            "POST",
            "/v1/files",
            &["-H", "Content-Type: application/json", "-d", "{}"],
        ),
        415,
    );
    let bad = write_file(cluster.dir.path(), "x.jsonl", b"{}\n");
    let file = format!("file=@{}", bad.display());
    let e = expect_error(
        call(
            &s,
            "POST",
            "/v1/files",
            &["-F", "purpose=fine-tune", "-F", &file],
        ),
        400,
    );
    assert_eq!(e["param"], "purpose");
    expect_error(call(&s, "GET", "/v1/batches?limit=0", &[]), 400);
    expect_error(call(&s, "GET", "/v1/batches?limit=abc", &[]), 400);

    // Unknown ids and routes.
    expect_error(call(&s, "GET", "/v1/batches/batch_nope", &[]), 404);
    expect_error(call(&s, "GET", "/v1/batches/..%2F..%2Fetc", &[]), 404);
    expect_error(call(&s, "POST", "/v1/batches/batch_nope/cancel", &[]), 404);
    expect_error(call(&s, "GET", "/v1/files/file-nope", &[]), 404);
    expect_error(call(&s, "GET", "/v1/files/file-nope/content", &[]), 404);
    expect_error(call(&s, "DELETE", "/v1/files/file-nope", &[]), 404);
    expect_error(call(&s, "GET", "/v1/nothing", &[]), 404);
    expect_error(curl(&s.base, "GET", "/nothing", None, &[]), 404);
    expect_error(call(&s, "PUT", "/v1/batches", &[]), 405);
    s.stop();
}

#[test]
fn oversized_uploads_and_lost_redis() {
    let Some(mut cluster) = Cluster::start("api_limits", &[], 30) else {
        return;
    };
    let s = Server::start_env(&cluster, &[("BATCHYARD_API_MAX_FILE_BYTES", "1000")]);
    let small = input(cluster.dir.path(), "small", 2);
    upload(&s, &small);
    let big = input(cluster.dir.path(), "big", 40);
    let file = format!("file=@{}", big.display());
    let e = expect_error(
        call(
            &s,
            "POST",
            "/v1/files",
            &["-F", "purpose=batch", "-F", &file],
        ),
        413,
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("BATCHYARD_API_MAX_FILE_BYTES"),
        "{e}"
    );
    // A JSON body far above any real request is refused before it is parsed.
    let huge = format!("{{\"metadata\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let body = write_file(cluster.dir.path(), "huge.json", huge.as_bytes());
    let at = format!("@{}", body.display());
    expect_error(
        call(
            &s,
            "POST",
            "/v1/batches",
            &["-H", "Content-Type: application/json", "--data-binary", &at],
        ),
        413,
    );

    // Without Redis the server stays up, is not ready, and answers in OpenAI's shape.
    cluster.redis.kill();
    assert_eq!(curl(&s.base, "GET", "/healthz", None, &[]).0, 200);
    let ready = curl(&s.base, "GET", "/readyz", None, &[]);
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert_eq!(json_of(&ready.1)["redis"], "unavailable");
    let e = expect_error(call(&s, "GET", "/v1/batches", &[]), 500);
    assert_eq!(e["type"], "server_error");
    cluster.redis.restart();
    let start = Instant::now();
    while curl(&s.base, "GET", "/readyz", None, &[]).0 != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not ready again after redis came back"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    s.stop();
}

#[test]
fn files_and_batches_end_to_end() {
    let Some(cluster) = Cluster::start("api_e2e", &[], 30) else {
        return;
    };
    let s = Server::start(&cluster);
    let dir = cluster.dir.path();

    // Files: upload, metadata, content, delete.
    let path = input(dir, "good", 5);
    let f = upload(&s, &path);
    let fid = f["id"].as_str().unwrap().to_string();
    assert!(fid.starts_with("file-"), "{f}");
    assert_eq!(f["object"], "file");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["status"], "processed");
    assert_eq!(f["filename"], "good.jsonl");
    assert_eq!(f["bytes"], std::fs::metadata(&path).unwrap().len());
    assert_eq!(
        ok_json(call(&s, "GET", &format!("/v1/files/{fid}"), &[])),
        f
    );
    let content = call(&s, "GET", &format!("/v1/files/{fid}/content"), &[]);
    assert_eq!(content.0, 200);
    assert_eq!(content.1, std::fs::read_to_string(&path).unwrap());

    // A batch runs to completion with a worker.
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "4"])]);
    let created = ok_json(create_batch(
        &s,
        &fid,
        r#"{"owner":"api-test","batchyard_budget_usd":"5"}"#,
    ));
    let bid = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["object"], "batch");
    assert_eq!(created["input_file_id"], fid.as_str());
    assert_eq!(created["request_counts"]["total"], 5);
    assert_eq!(created["metadata"]["owner"], "api-test");
    assert_eq!(created["budget_usd"], 5.0);
    let done = wait_batch(&s, &bid, Duration::from_secs(60));
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 5);
    assert!(done["completed_at"].is_u64() && done["in_progress_at"].is_u64());
    assert!(done["error_file_id"].is_null(), "{done}");
    let out_id = done["output_file_id"].as_str().unwrap();
    let out = call(&s, "GET", &format!("/v1/files/{out_id}/content"), &[]);
    assert_eq!(out.0, 200);
    let mut ids: Vec<String> = out
        .1
        .lines()
        .map(|l| json_of(l)["custom_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, (0..5).map(|i| format!("good-{i}")).collect::<Vec<_>>());
    let out_meta = ok_json(call(&s, "GET", &format!("/v1/files/{out_id}"), &[]));
    assert_eq!(out_meta["purpose"], "batch_output");
    expect_error(call(&s, "DELETE", &format!("/v1/files/{out_id}"), &[]), 400);

    // Cancel of a finished batch is refused.
    expect_error(
        call(&s, "POST", &format!("/v1/batches/{bid}/cancel"), &[]),
        400,
    );

    // An invalid file: the batch exists, failed, with line numbers.
    let bad = write_file(
        dir,
        "bad.jsonl",
        format!(
            "{}\nnot json\n{}\n",
            request_line("a", "x"),
            request_line("a", "y")
        )
        .as_bytes(),
    );
    let bad_file = upload(&s, &bad);
    let failed = ok_json(create_batch(&s, bad_file["id"].as_str().unwrap(), "null"));
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["failed_at"].is_u64(), "{failed}");
    let data = failed["errors"]["data"].as_array().unwrap();
    assert_eq!(failed["errors"]["object"], "list");
    let lines: Vec<u64> = data.iter().filter_map(|e| e["line"].as_u64()).collect();
    assert_eq!(lines, vec![2, 3], "{failed}");
    let fid2 = failed["id"].as_str().unwrap();
    assert_eq!(
        ok_json(call(&s, "GET", &format!("/v1/batches/{fid2}"), &[])),
        failed
    );
    // An empty file fails as a whole, without naming where it is stored.
    let empty = upload(&s, &write_file(dir, "empty.jsonl", b""));
    let failed_empty = ok_json(create_batch(&s, empty["id"].as_str().unwrap(), "null"));
    assert_eq!(failed_empty["status"], "failed", "{failed_empty}");
    let e = &failed_empty["errors"]["data"][0];
    assert_eq!(e["code"], "invalid_file", "{failed_empty}");
    assert!(e["line"].is_null(), "{failed_empty}");
    let msg = e["message"].as_str().unwrap();
    assert!(msg.contains("empty") && !msg.contains("files/"), "{msg}");
    let empty_id = failed_empty["id"].as_str().unwrap().to_string();
    // An unknown task is refused before anything is created.
    let e = expect_error(create_batch(&s, &fid, r#"{"batchyard_task":"nope"}"#), 400);
    assert_eq!(e["param"], "metadata");

    // One more batch, then page through all four, newest first.
    let third = ok_json(create_batch(&s, &fid, "{}"));
    let third_id = third["id"].as_str().unwrap().to_string();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let q = match &after {
            Some(a) => format!("/v1/batches?limit=1&after={a}"),
            None => "/v1/batches?limit=1".to_string(),
        };
        let page = ok_json(call(&s, "GET", &q, &[]));
        assert_eq!(page["object"], "list");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 1);
        if let Some(b) = data.first() {
            seen.push(b["id"].as_str().unwrap().to_string());
            assert_eq!(page["first_id"], b["id"]);
            assert_eq!(page["last_id"], b["id"]);
        }
        if page["has_more"] != true {
            break;
        }
        after = Some(page["last_id"].as_str().unwrap().to_string());
        assert!(seen.len() < 10, "pagination does not end: {seen:?}");
    }
    assert_eq!(
        seen,
        vec![third_id.clone(), empty_id, fid2.to_string(), bid.clone()]
    );
    let all = ok_json(call(&s, "GET", "/v1/batches?limit=100", &[]));
    assert_eq!(all["data"].as_array().unwrap().len(), 4);
    assert_eq!(all["has_more"], false);
    wait_batch(&s, &third_id, Duration::from_secs(60));

    // Deleting the file: it is gone afterwards.
    let del = ok_json(call(&s, "DELETE", &format!("/v1/files/{fid}"), &[]));
    assert_eq!(del["deleted"], true);
    expect_error(call(&s, "GET", &format!("/v1/files/{fid}"), &[]), 404);
    expect_error(
        call(&s, "GET", &format!("/v1/files/{fid}/content"), &[]),
        404,
    );
    s.stop();
}

#[test]
fn official_openai_python_client() {
    // Latency makes the batch that gets cancelled slow enough to still be running.
    let Some(cluster) = Cluster::start("api_python", &["--latency-ms", "150"], 30) else {
        return;
    };
    let s = Server::start(&cluster);
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "2"])]);
    let good = input(cluster.dir.path(), "py", 4);
    let slow = input(cluster.dir.path(), "slow", 60);
    let out = Command::new("python3")
        .arg(repo_root().join("tests/api_client.py"))
        .env("BATCHYARD_API_BASE", format!("{}/v1", s.base))
        .env("BATCHYARD_API_TOKEN", TOKEN)
        .env("BATCHYARD_API_INPUT", &good)
        .env("BATCHYARD_API_SLOW_INPUT", &slow)
        .stdin(Stdio::null())
        .output()
        .expect("python3 should run");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if out.status.code() == Some(77) && !batchyard_testkit::in_ci() {
        eprintln!("SKIP official_openai_python_client: {}", stdout.trim());
        return;
    }
    assert!(
        out.status.success(),
        "api_client.py failed ({:?})\nstdout:\n{stdout}\nstderr:\n{stderr}\nserve log:\n{}",
        out.status.code(),
        serve_log(&cluster)
    );
    assert!(stdout.contains("api_client: ok"), "{stdout}");
    s.stop();
}
