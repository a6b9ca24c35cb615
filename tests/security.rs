//! Security checks against real services: Redis with a password and over TLS (a CA made at
//! test time), secrets that must never show in logs, files or API responses, and object keys
//! that must stay inside the store's prefix.
//!
//! Every deployment here is a [`Cluster`] (real S3, fake provider, config file) whose Redis is
//! replaced through `BATCHYARD_REDIS_URL` by a secure `redis-server` of the test's own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use batchyard_testkit::{RedisOptions, TestRedis};
use serde_json::Value;
use support::api::{Workers, curl, json_of};
use support::cluster::{Cluster, Options};
use support::*;

const REDIS_PASSWORD: &str = "rpw-canary-8c2f7a61";
const API_KEY: &str = "sk-canary-apikey-5d1e90";
const API_TOKEN: &str = "tok-canary-b3e91d47";

/// A cluster driven through a secure Redis: every command gets its URL and the canary key.
struct Secured<'a> {
    cluster: &'a Cluster,
    redis_url: String,
    logs: Vec<std::path::PathBuf>,
    outputs: String,
}

impl<'a> Secured<'a> {
    fn new(cluster: &'a Cluster, redis: &TestRedis) -> Self {
        Self {
            cluster,
            redis_url: redis.url.clone(),
            logs: Vec::new(),
            outputs: String::new(),
        }
    }

    fn cmd(&self) -> Command {
        let mut cmd = self.cluster.cmd();
        cmd.env("BATCHYARD_REDIS_URL", &self.redis_url)
            .env("FAKE_API_KEY", API_KEY)
            .env("RUST_LOG", "debug");
        cmd
    }

    /// Runs a command to success and keeps its stdout and stderr for the secret scan.
    fn ok(&mut self, args: &[&str]) -> Output {
        let out = run(self.cmd().args(args));
        self.outputs.push_str(&text(&out.stdout));
        self.outputs.push_str(&text(&out.stderr));
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        out
    }

    fn spawn(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
        let path = self.cluster.dir.path().join(format!("{name}.log"));
        let log = std::fs::File::create(&path).unwrap();
        self.logs.push(path);
        // `serve` prints its address on stdout (and nothing more); others get no pipe that
        // could fill up and block them.
        let stdout = if args.first() == Some(&"serve") {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        self.cmd()
            .args(args)
            .envs(env.iter().copied())
            .stdout(stdout)
            .stderr(Stdio::from(log))
            .spawn()
            .expect("batchyard should start")
    }

    fn submit(&mut self, name: &str, n: usize) -> String {
        let body: String = (0..n)
            .map(|i| request_line(&format!("{name}-{i}"), &format!("say {i}")) + "\n")
            .collect();
        let input = write_file(
            self.cluster.dir.path(),
            &format!("{name}.jsonl"),
            body.as_bytes(),
        );
        let out = self.ok(&["submit", input.to_str().unwrap(), "--json"]);
        last_json(&out)["id"].as_str().unwrap().to_string()
    }

    /// Waits for the batch to finish and checks that every item is there exactly once,
    /// nothing is pending and the queue is empty.
    fn finish(&mut self, batch_id: &str, n: usize) {
        let start = Instant::now();
        loop {
            let out = self.ok(&["status", batch_id, "--json"]);
            let batch = last_json(&out);
            if batch["status"] == "completed" {
                assert_eq!(batch["request_counts"]["completed"], n as u64, "{batch}");
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "batch did not finish: {batch}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let lines = |out: Output| -> Vec<Value> {
            text(&out.stdout)
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let ok = lines(self.ok(&["results", batch_id]));
        let errors = lines(self.ok(&["results", batch_id, "--errors"]));
        assert_eq!(exactly_once(&ok, &errors), n);
        assert!(errors.is_empty(), "{errors:?}");
        let depth = last_json(&self.ok(&["status", "--json"]))["queues"][0].clone();
        for key in ["pending", "in_flight", "delayed"] {
            assert_eq!(depth[key].as_u64(), Some(0), "{key}: {depth}");
        }
    }

    /// Everything batchyard wrote or printed: command outputs, process logs and every object
    /// under the cluster's storage prefix (results, output, errors, manifest, uploads).
    fn everything_written(&self) -> (String, usize) {
        let mut all = self.outputs.clone();
        for log in &self.logs {
            let text = std::fs::read_to_string(log).unwrap();
            // RUST_LOG=debug: an empty log would make the scan prove nothing.
            assert!(!text.trim().is_empty(), "{} is empty", log.display());
            all.push_str(&text);
        }
        let (objects, n) = s3_objects(self.cluster);
        all.push_str(&objects);
        (all, n)
    }
}

fn s3_curl(cluster: &Cluster) -> Command {
    let s3 = &cluster.s3;
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-f", "--aws-sigv4"])
        .arg(format!("aws:amz:{}:s3", s3.region))
        .args(["--user", &format!("{}:{}", s3.key_id, s3.secret)]);
    cmd
}

/// The bodies of all objects under the cluster's prefix (ListObjectsV2), and how many.
fn s3_objects(cluster: &Cluster) -> (String, usize) {
    let s3 = &cluster.s3;
    // SigV4 signs the query as sent: the slashes of the prefix go percent-encoded.
    let prefix = cluster.s3_key("").replace('/', "%2F");
    let out = s3_curl(cluster)
        .arg(format!(
            "{}/{}?list-type=2&max-keys=1000&prefix={prefix}",
            s3.endpoint, s3.bucket
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "listing failed: {}",
        text(&out.stderr)
    );
    let listing = text(&out.stdout);
    assert!(!listing.contains("<IsTruncated>true"), "{listing}");
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k))
        .collect();
    let mut bodies = String::new();
    for key in &keys {
        let body = cluster
            .s3_get_bytes(key)
            .unwrap_or_else(|| panic!("{key} listed but not readable"));
        bodies.push_str(&String::from_utf8_lossy(&body));
    }
    (bodies, keys.len())
}

fn secure_cluster(name: &str, secure: RedisOptions) -> Option<(Cluster, TestRedis)> {
    let cluster = Cluster::start_opts(name, &["--require-key", API_KEY], Options::default())?;
    let redis = TestRedis::start_with(name, secure)?;
    Some((cluster, redis))
}

fn assert_no_password(written: &str, what: &str) {
    assert!(
        !written.contains(REDIS_PASSWORD) && !written.contains("rpw-canary"),
        "the redis password shows in {what}"
    );
}

/// A wrong, missing or unreachable Redis fails with an error that says what is wrong and
/// never holds the password that was given.
#[test]
fn wrong_redis_password_fails_clearly_without_showing_it() {
    let Some(redis) = TestRedis::start_with(
        "wrong_redis_password",
        RedisOptions {
            password: Some(REDIS_PASSWORD.into()),
            ..RedisOptions::default()
        },
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = redis.port;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let wrong = "rpw-canary-wrong-0000";
    let cases = [
        (
            format!("redis://:{wrong}@127.0.0.1:{port}/"),
            "authentication failed",
        ),
        (
            format!("redis://127.0.0.1:{port}/"),
            "authentication required",
        ),
        (
            format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{closed_port}/"),
            "connection refused",
        ),
    ];
    for (url, expected) in cases {
        let started = Instant::now();
        let out = run(batchyard(dir.path())
            .env("BATCHYARD_REDIS_URL", &url)
            .env("RUST_LOG", "debug")
            .args(["status", "--json"]));
        let all = text(&out.stdout) + &text(&out.stderr);
        assert!(!out.status.success(), "{url}: {all}");
        assert!(
            all.to_lowercase().contains(expected),
            "{expected} not named: {all}"
        );
        assert!(all.contains("redis"), "{all}");
        assert_no_password(&all, "an error");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{url} took {:?}",
            started.elapsed()
        );
    }
}

/// A batch end to end through a TLS-only Redis with a password, trusting a CA made for the
/// test; without that CA the connection is refused for an unknown issuer.
#[test]
fn tls_redis_with_a_private_ca_runs_a_batch() {
    let Some((cluster, redis)) = secure_cluster(
        "security_tls",
        RedisOptions {
            password: Some(REDIS_PASSWORD.into()),
            tls: true,
            aof: false,
        },
    ) else {
        return;
    };
    assert!(redis.url.starts_with("rediss://"), "{}", redis.url);
    let mut s = Secured::new(&cluster, &redis);
    let id = s.submit("tls", 12);
    let worker = s.spawn("worker", &["worker", "--concurrency", "4"], &[]);
    let _workers = Workers(vec![worker]);
    s.finish(&id, 12);
    let (written, objects) = s.everything_written();
    assert!(
        objects >= 4,
        "result segments, output, errors, manifest: {objects}"
    );
    assert!(
        written.contains("\"custom_id\":\"tls-0\""),
        "the scan saw outputs"
    );
    assert_no_password(&written, "logs, outputs or objects");

    // The system roots do not know the test CA: refused, and said so.
    let no_ca = format!("rediss://:{REDIS_PASSWORD}@127.0.0.1:{}/", redis.port);
    let out = run(cluster
        .cmd()
        .env("BATCHYARD_REDIS_URL", &no_ca)
        .args(["status", "--json"]));
    let all = text(&out.stdout) + &text(&out.stderr);
    assert!(!out.status.success(), "{all}");
    assert!(all.to_lowercase().contains("certificate"), "{all}");
    assert_no_password(&all, "a TLS error");
    // A plain-text client on the TLS port fails too, rather than hanging.
    let plain = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}/", redis.port);
    let started = Instant::now();
    let out = run(cluster
        .cmd()
        .env("BATCHYARD_REDIS_URL", &plain)
        .args(["status", "--json"]));
    assert!(!out.status.success());
    assert!(started.elapsed() < Duration::from_secs(40));
    assert_no_password(&(text(&out.stdout) + &text(&out.stderr)), "an error");
}

/// One batch through the API with a recognisable provider key, Redis password and API
/// token: none of them shows in any log, result, manifest, upload or API response body.
/// (tests/resilience.rs checks the provider key alone for `run`.)
#[test]
fn no_secret_shows_in_logs_files_or_api_responses() {
    let Some((cluster, redis)) = secure_cluster(
        "security_grep",
        RedisOptions {
            password: Some(REDIS_PASSWORD.into()),
            tls: false,
            aof: false,
        },
    ) else {
        return;
    };
    let mut s = Secured::new(&cluster, &redis);
    let tokens = format!("other-canary-token,{API_TOKEN}");
    let mut serve = s.spawn(
        "serve",
        &["serve", "--addr", "127.0.0.1:0"],
        &[("BATCHYARD_API_TOKENS", tokens.as_str())],
    );
    let worker = s.spawn("worker", &["worker", "--concurrency", "4"], &[]);
    let _workers = Workers(vec![worker]);
    let base = serve_address(&mut serve);
    let _serve = Workers(vec![serve]);

    let mut bodies = String::new();
    let mut api = |method: &str, path: &str, token: Option<&str>, extra: &[&str]| {
        let (code, body) = curl(&base, method, path, token, extra);
        bodies.push_str(&body);
        (code, body)
    };
    // Wrong tokens (one that starts with the real one) are refused and not echoed.
    for token in [
        None,
        Some(""),
        Some("tok-canary-b3e91d47x"),
        Some("tok-canary"),
    ] {
        assert_eq!(api("GET", "/v1/batches", token, &[]).0, 401);
    }
    let body: String = (0..8)
        .map(|i| request_line(&format!("api-{i}"), &format!("item {i}")) + "\n")
        .collect();
    let input = write_file(cluster.dir.path(), "api.jsonl", body.as_bytes());
    let form = format!("file=@{}", input.display());
    let (code, upload) = api(
        "POST",
        "/v1/files",
        Some(API_TOKEN),
        &["-F", "purpose=batch", "-F", &form],
    );
    assert_eq!(code, 200, "{upload}");
    let file_id = json_of(&upload)["id"].as_str().unwrap().to_string();
    let create = format!(
        r#"{{"input_file_id":"{file_id}","endpoint":"/v1/chat/completions","completion_window":"24h"}}"#
    );
    let json = ["-H", "Content-Type: application/json", "-d", &create];
    let (code, batch) = api("POST", "/v1/batches", Some(API_TOKEN), &json);
    assert_eq!(code, 200, "{batch}");
    let batch_id = json_of(&batch)["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    let batch = loop {
        let (code, b) = api(
            "GET",
            &format!("/v1/batches/{batch_id}"),
            Some(API_TOKEN),
            &[],
        );
        assert_eq!(code, 200, "{b}");
        let b = json_of(&b);
        if b["status"] == "completed" {
            break b;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "not done: {b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let output_id = batch["output_file_id"].as_str().unwrap();
    let (code, output) = api(
        "GET",
        &format!("/v1/files/{output_id}/content"),
        Some(API_TOKEN),
        &[],
    );
    assert_eq!(code, 200);
    assert_eq!(output.lines().count(), 8, "{output}");
    for path in [
        "/v1/batches",
        "/api/batches",
        &format!("/api/batches/{batch_id}"),
        "/api/queues",
        "/api/models",
        "/readyz",
        "/metrics",
    ] {
        let (code, body) = api("GET", path, Some(API_TOKEN), &[]);
        assert_eq!(code, 200, "{path}: {body}");
    }
    s.finish(&batch_id, 8);

    let (mut written, objects) = s.everything_written();
    // A result segment, output, errors, manifest and the upload.
    let at_least = 5;
    assert!(objects >= at_least, "only {objects} objects");
    written.push_str(&bodies);
    assert!(
        written.contains("\"custom_id\":\"api-0\""),
        "the scan saw outputs"
    );
    assert!(written.contains("invalid_api_key"), "the scan saw the 401s");
    assert_no_password(&written, "logs, objects or API bodies");
    for (secret, what) in [(API_KEY, "provider key"), (API_TOKEN, "API token")] {
        assert!(!written.contains(secret), "the {what} shows somewhere");
    }
    assert!(
        !written.contains("canary"),
        "part of a secret shows somewhere"
    );
}

/// Ids in API paths become object keys; one that climbs out (`..`, `/`) must not reach an
/// object next to the uploads, nor delete it.
#[test]
fn api_ids_cannot_reach_objects_outside_their_place() {
    let Some(cluster) = Cluster::start("security_keys", &[], 30) else {
        return;
    };
    let s = support::api::Server::start(&cluster);
    let sentinel = "sentinel-line-7a1c";
    let key = cluster.s3_key("secret.jsonl");
    cluster.s3_put(&key, sentinel);
    cluster.s3_put(&cluster.s3_key("secret.json"), "{\"id\":\"x\"}");
    let climbs = [
        "..%2Fsecret",
        "file-..%2F..%2Fsecret",
        "%2E%2E%2Fsecret",
        "..%5Csecret",
        "file-x%2F..%2F..%2Fsecret",
    ];
    for id in climbs {
        for path in [format!("/v1/files/{id}"), format!("/v1/files/{id}/content")] {
            let (code, body) = support::api::call(&s, "GET", &path, &[]);
            assert!(code == 404 || code == 400, "{path}: {code} {body}");
            assert!(!body.contains(sentinel), "{path} read the sentinel");
        }
        let (code, _) = support::api::call(&s, "DELETE", &format!("/v1/files/{id}"), &[]);
        assert!(code == 404 || code == 400, "DELETE {id}: {code}");
        let create = format!(
            r#"{{"input_file_id":"{}","endpoint":"/v1/chat/completions","completion_window":"24h"}}"#,
            id.replace("%2F", "/").replace("%2E", ".")
        );
        let (code, body) = support::api::call(
            &s,
            "POST",
            "/v1/batches",
            &["-H", "Content-Type: application/json", "-d", &create],
        );
        assert!(
            (400..500).contains(&code),
            "create from {id}: {code} {body}"
        );
        assert!(!body.contains(sentinel));
    }
    assert_eq!(
        cluster.s3_get_bytes(&key).as_deref(),
        Some(sentinel.as_bytes()),
        "the sentinel object is still there"
    );
}

/// Reads the `listening on URL` line that `serve` prints first on stdout.
fn serve_address(serve: &mut Child) -> String {
    let stdout = serve.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("serve should print its address within 20 s");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string()
}
