//! The queue-depth gauge splits dead letters into `failed` (items that ended with an ordinary
//! error, kept for replay) and `lost`: after a normal run whose answers fail validation, `lost`
//! stays 0, so an alert on it does not fire after every run. Real worker, real redis-server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use batchyard_testkit::TestRedis;
use support::*;

fn gauge(body: &str, state: &str) -> Option<f64> {
    let series = format!("state=\"{state}\"");
    body.lines()
        .filter(|l| l.starts_with("batchyard_queue_depth{") && l.contains(&series))
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
}

fn scrape(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", url])
        .output()
        .expect("curl should run");
    text(&out.stdout)
}

struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ordinary_failures_are_not_lost_jobs_on_the_gauge() {
    let Some(redis) = TestRedis::start(module_path!()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        dir.path(),
        "c.toml",
        b"[tasks.picky]\nprompt = \"{{ text }}\"\n[tasks.picky.validate]\nregex = \"never-in-any-answer-q7z\"\n",
    );
    let docs = dir.path().join("docs");
    std::fs::create_dir(&docs).unwrap();
    for i in 0..6 {
        std::fs::write(docs.join(format!("d{i}.txt")), format!("document {i}")).unwrap();
    }
    let storage = format!("file://{}", dir.path().join("data").display());
    let cmd = |args: &[&str]| {
        let mut c = batchyard(dir.path());
        c.arg("--config")
            .arg(&config)
            .args(args)
            .env("BATCHYARD_REDIS_URL", &redis.url)
            .env("BATCHYARD_STORAGE_URL", &storage);
        c
    };
    let out = run(&mut cmd(&["submit", "docs", "--task", "picky", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = last_json(&out)["id"].as_str().unwrap().to_string();

    let log = dir.path().join("worker.log");
    let worker = Stop(
        cmd(&["worker", "--metrics-addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    let url = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(at) = text.find("metrics on http://") {
            let rest = &text[at + "metrics on ".len()..];
            break rest
                .chars()
                .take_while(|c| !c.is_whitespace())
                .collect::<String>();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no metrics address: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // The batch ends with every item failed validation (an ordinary outcome).
    let start = Instant::now();
    loop {
        let out = run(&mut cmd(&["status", &id, "--json"]));
        let batch = last_json(&out);
        // Every item failed, so OpenAI's status is `failed`; either way the batch ended.
        if batch["status"] == "completed" || batch["status"] == "failed" {
            assert_eq!(batch["request_counts"]["failed"], 6, "{batch}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "{batch}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The sampler runs every 5 s: wait for a sample that saw the dead letters.
    let start = Instant::now();
    let body = loop {
        let body = scrape(&url);
        if gauge(&body, "failed") == Some(6.0) {
            break body;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{body}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(gauge(&body, "lost"), Some(0.0), "{body}");
    // `status` says the same: six dead letters, none of them lost.
    let view = last_json(&run(&mut cmd(&["status", "--json"])));
    assert_eq!(view["queues"][0]["dead"], 6, "{view}");
    assert_eq!(view["queues"][0]["lost"], 0, "{view}");
    assert_eq!(
        gauge(&body, "dead"),
        None,
        "the ambiguous `dead` series is gone: {body}"
    );
    drop(worker);
}
