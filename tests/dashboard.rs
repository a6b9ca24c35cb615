//! The dashboard at `/`: its assets over real HTTP, and the page in a real headless Chromium
//! (tests/dashboard_check.py over the DevTools protocol) against a live `batchyard serve`, a
//! worker, Redis, S3 and the fake provider.
//!
//! Chromium is `BATCHYARD_CHROMIUM` or `chromium` on PATH (scripts/test installs Debian's
//! package). Under `CI=true` a missing browser or driver fails; elsewhere the test skips.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::api::*;
use support::cluster::{Cluster, Options};
use support::*;

/// tests/dashboard_check.py expects exactly this text on the paused model `large`.
const PAUSE_REASON: &str = "quota <b>exceeded</b> & \"retry\" <script>later</script>";

/// Headers (lower-cased names) and body of one GET, with curl.
fn get(base: &str, path: &str) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-w", "\n%{http_code}"])
        .arg(format!("{base}{path}"))
        .output()
        .unwrap();
    let all = text(&out.stdout);
    let (rest, code) = all.rsplit_once('\n').unwrap();
    let (head, body) = rest.split_once("\r\n\r\n").unwrap_or((rest, ""));
    (
        code.trim().parse().unwrap(),
        head.to_ascii_lowercase(),
        body.to_string(),
    )
}

#[test]
fn page_and_assets_are_public_typed_and_cached() {
    let Some(cluster) = Cluster::start("dash_assets", &[], 30) else {
        return;
    };
    let s = Server::start(&cluster);
    let (code, head, page) = get(&s.base, "/");
    assert_eq!(code, 200, "{head}{page}");
    assert!(
        head.contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(page.contains("id=\"login-form\""), "{page}");
    assert!(!page.contains(TOKEN));
    // The page names its assets with a version; each is served with its type.
    let js = page
        .split('"')
        .find(|p| p.starts_with("/assets/app.js?v="))
        .unwrap_or_else(|| panic!("no versioned script in {page}"));
    for (path, ty) in [
        (js, "text/javascript"),
        ("/assets/app.js", "text/javascript"),
        ("/assets/app.css", "text/css"),
    ] {
        let (code, head, body) = get(&s.base, path);
        assert_eq!(code, 200, "{path}: {head}");
        assert!(
            head.contains(&format!("content-type: {ty}")),
            "{path}: {head}"
        );
        assert!(head.contains("cache-control: public, max-age="), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        assert!(body.len() > 500, "{path} is nearly empty");
    }
    for path in ["/assets/nope.js", "/assets/../Cargo.toml", "/assets/"] {
        assert_eq!(get(&s.base, path).0, 404, "{path}");
    }
    // The data behind the page still needs a token.
    for path in ["/api/queues", "/api/batches", "/api/models"] {
        assert_eq!(curl(&s.base, "GET", path, None, &[]).0, 401, "{path}");
    }
    s.stop();
}

fn skip_or_fail(why: &str) {
    batchyard_testkit::skip_or_fail("dashboard_in_headless_chromium", why);
}

#[test]
fn dashboard_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        skip_or_fail("no chromium (apt-get install chromium, or set BATCHYARD_CHROMIUM)");
        return;
    };
    // Some requests fail for good (one attempt, 500s from the provider), so the batch has
    // dead letters to show; latency keeps the batch running for a few seconds.
    // A pipeline for the pipelines panel: its "Run now" button submits one batch.
    let inbox = tempfile::tempdir().unwrap();
    write_file(
        inbox.path(),
        "a.txt",
        b"a document for the nightly pipeline",
    );
    write_file(inbox.path(), "b.md", b"another document");
    let opts = Options {
        max_attempts: 1,
        extra_toml: format!(
            "[pipelines.nightly]\nschedule = \"0 2 * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\n",
            inbox.path().display()
        ),
        ..Options::default()
    };
    let fake = ["--fail-rate-500", "0.35", "--latency-ms", "60"];
    let Some(cluster) = Cluster::start_opts("dashboard", &fake, opts) else {
        return;
    };
    let s = Server::start(&cluster);
    let dir = cluster.dir.path();
    // Before anything is submitted: the empty states.
    if !drive(&chromium, &cluster, &s, "", "dashboard-empty.png") {
        return;
    }
    let _workers = Workers(vec![cluster.spawn_worker(&["--concurrency", "4"])]);
    let f = upload(&s, &input(dir, "dash", 40));
    let created = ok_json(create_batch(
        &s,
        f["id"].as_str().unwrap(),
        r#"{"batchyard_budget_usd":"5"}"#,
    ));
    let bid = created["id"].as_str().unwrap().to_string();

    // The chart needs at least one history sample: the server takes one every 10 s.
    let start = Instant::now();
    loop {
        let h = ok_json(call(&s, "GET", "/api/queues/history", &[]));
        if h["points"].as_array().is_some_and(|p| !p.is_empty()) {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no history: {h}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let done = wait_batch(&s, &bid, Duration::from_secs(120));
    eprintln!("batch {bid}: {}", done["request_counts"]);

    // A second, bigger batch still runs while the page is open: a live progress bar and ETA.
    let big = upload(&s, &input(dir, "dash-big", 400));
    ok_json(create_batch(&s, big["id"].as_str().unwrap(), "{}"));

    // A paused model, with a reason that would be markup if the page parsed it as HTML.
    let out = run(cluster
        .cmd()
        .args(["models", "pause", "large", "--reason", PAUSE_REASON]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A batch refused at validation (issue 16: it showed a full green bar).
    let bad = write_file(dir, "bad.jsonl", b"{not json}\n");
    let bad = upload(&s, &bad);
    let refused = ok_json(create_batch(&s, bad["id"].as_str().unwrap(), "{}"));
    let refused = refused["id"].as_str().unwrap().to_string();

    if !drive_with(&chromium, &cluster, &s, &bid, &refused, "dashboard.png") {
        return;
    }
    // The replay button's endpoint: the dead letters run again and the batch finishes anew.
    let failed = done["request_counts"]["failed"].as_u64().unwrap();
    let body = r#"{"code": "transient"}"#;
    let replayed = ok_json(call(
        &s,
        "POST",
        &format!("/api/batches/{bid}/retry"),
        &["-H", "Content-Type: application/json", "--data", body],
    ));
    assert_eq!(replayed["retried"].as_u64().unwrap(), failed, "{replayed}");
    let again = wait_batch(&s, &bid, Duration::from_secs(120));
    assert_eq!(
        again["request_counts"]["total"],
        done["request_counts"]["total"]
    );
    assert!(
        again["request_counts"]["completed"].as_u64().unwrap()
            >= done["request_counts"]["completed"].as_u64().unwrap(),
        "{again}"
    );
    s.stop();
}

/// Runs tests/dashboard_check.py against the server (`batch` empty: nothing submitted yet) and
/// keeps its screenshot as `target/NAME`. False when the test skips.
fn drive(chromium: &Path, cluster: &Cluster, s: &Server, batch: &str, name: &str) -> bool {
    drive_with(chromium, cluster, s, batch, "", name)
}

/// As [`drive`], also checking how `refused` (a batch whose input failed validation) shows.
fn drive_with(
    chromium: &Path,
    cluster: &Cluster,
    s: &Server,
    batch: &str,
    refused: &str,
    name: &str,
) -> bool {
    dashboard_check(
        "dashboard_in_headless_chromium",
        chromium,
        cluster,
        s,
        &[
            ("BATCHYARD_DASH_BATCH", batch),
            ("BATCHYARD_DASH_REFUSED", refused),
        ],
        name,
    )
}
