//! A whole deployment on loopback: real Redis, real S3 (SeaweedFS), a fake provider over HTTP,
//! and a config file that names them.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{batchyard, last_json, run, text};
use batchyard_testkit::{FakeProvider, RedisOptions, S3Env, TestRedis, s3_env_or_skip};

/// Knobs for one cluster's config.
pub struct Options {
    pub visibility_secs: u64,
    pub aof: bool,
    /// Transient failures in a row that cool a model down. High by default so tests about
    /// other things are not disturbed by cooldowns.
    pub failure_threshold: u32,
    pub cooldown_secs: u64,
    /// Deliveries of a job after transient failures before it is a dead letter.
    pub max_attempts: u32,
    /// Appended to the config: more providers, models or queue keys.
    pub extra_toml: String,
    /// Appended to `[providers.fake]`.
    pub provider_extra: String,
    /// `[providers.fake] kind`: `openai` unless a test says.
    pub provider_kind: &'static str,
    /// Extra keys of `[models.small]`, e.g. `rpm = 20`.
    pub small_extra: String,
    /// The result cache across batches. Off by default so that call counts equal item counts.
    pub cache: bool,
    /// `[queue] submit_lease_secs`: how soon a silent submit's batch is ended.
    pub submit_lease_secs: u64,
    /// `[retry] max_attempts`: a call's attempts in place (the default unless set).
    pub retry_attempts: Option<u32>,
    /// `[health] retry_budget_min`: in-place retries always allowed per minute and model.
    pub retry_budget_min: Option<u32>,
    /// A Redis Cluster of its own (3 masters, 3 replicas) instead of one redis-server.
    pub redis_cluster: bool,
    /// With `redis_cluster`: TLS only (`rediss+cluster://...?tls_ca_file=`) and this password.
    pub redis_cluster_tls: Option<String>,
    /// `[queue] ready_window`: jobs kept ready ahead of the workers (the default unless set).
    pub ready_window: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            visibility_secs: 30,
            aof: false,
            failure_threshold: 1000,
            cooldown_secs: 30,
            max_attempts: 5,
            extra_toml: String::new(),
            provider_extra: String::new(),
            provider_kind: "openai",
            small_extra: String::new(),
            cache: false,
            submit_lease_secs: 120,
            retry_attempts: None,
            retry_budget_min: None,
            redis_cluster: false,
            redis_cluster_tls: None,
            ready_window: None,
        }
    }
}

static WORKER_LOGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

pub struct Cluster {
    pub redis: TestRedis,
    pub s3: S3Env,
    pub fake: FakeProvider,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub storage_url: String,
}

impl Cluster {
    /// `None` (with a skip line) only outside CI when a service is missing.
    pub fn start(test: &str, fake_args: &[&str], visibility_secs: u64) -> Option<Self> {
        Self::start_opts(
            test,
            fake_args,
            Options {
                visibility_secs,
                ..Options::default()
            },
        )
    }

    /// As [`Cluster::start`], with Redis persisting to an AOF when `aof` is true.
    pub fn start_with(
        test: &str,
        fake_args: &[&str],
        visibility_secs: u64,
        aof: bool,
    ) -> Option<Self> {
        Self::start_opts(
            test,
            fake_args,
            Options {
                visibility_secs,
                aof,
                ..Options::default()
            },
        )
    }

    pub fn start_opts(test: &str, fake_args: &[&str], opts: Options) -> Option<Self> {
        let s3 = s3_env_or_skip(test)?;
        let redis = if opts.redis_cluster {
            TestRedis::start_cluster_with(
                test,
                RedisOptions {
                    tls: opts.redis_cluster_tls.is_some(),
                    password: opts.redis_cluster_tls.clone(),
                    aof: false,
                },
            )?
        } else {
            TestRedis::start_with(
                test,
                RedisOptions {
                    aof: opts.aof,
                    ..RedisOptions::default()
                },
            )?
        };
        let fake = FakeProvider::start(fake_args);
        let visibility_secs = opts.visibility_secs;
        let dir = tempfile::tempdir().unwrap();
        let storage_url = s3.storage_url(test);
        let config = dir.path().join("batchyard.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[queue]
redis_url = "{redis}"
visibility_timeout_secs = {visibility_secs}
max_reclaims = 3
max_attempts = {max_attempts}
submit_lease_secs = {submit_lease_secs}
{ready_window}

[storage]
url = "{storage_url}"

[worker]
drain_timeout_secs = 10

[cache]
enabled = {cache}

[retry]
base_ms = 20
cap_ms = 200
{retry_attempts}

[health]
failure_threshold = {threshold}
cooldown_secs = {cooldown}
{retry_budget}

[providers.fake]
kind = "{provider_kind}"
base_url = "{base}"
api_key_env = "FAKE_API_KEY"
{provider_extra}

[models.small]
provider = "fake"
name = "small-1"
input_usd_per_mtok = 0.10
output_usd_per_mtok = 0.40
context_window = 16000
tier = 1
{small_extra}

[models.large]
provider = "fake"
name = "large-1"
input_usd_per_mtok = 2.50
output_usd_per_mtok = 10.00
context_window = 128000
tier = 3

[tasks.summarize]
system = "You are a precise summarizer."
prompt = "Summarize in 3 bullet points:\n\n{{{{ text }}}}"
min_tier = 1
max_output_tokens = 300
{extra}
"#,
                redis = redis.url,
                // Gemini's base names its API version; the others' take `/v1`.
                base = match opts.provider_kind {
                    "gemini" => format!("{}/v1beta", fake.url),
                    _ => fake.base_url.clone(),
                },
                threshold = opts.failure_threshold,
                max_attempts = opts.max_attempts,
                cooldown = opts.cooldown_secs,
                extra = opts.extra_toml,
                provider_extra = opts.provider_extra,
                provider_kind = opts.provider_kind,
                small_extra = opts.small_extra,
                cache = opts.cache,
                submit_lease_secs = opts.submit_lease_secs,
                retry_budget = opts
                    .retry_budget_min
                    .map_or(String::new(), |n| format!("retry_budget_min = {n}")),
                ready_window = opts
                    .ready_window
                    .map(|n| format!("ready_window = {n}"))
                    .unwrap_or_default(),
                retry_attempts = opts
                    .retry_attempts
                    .map_or(String::new(), |n| format!("max_attempts = {n}")),
            ),
        )
        .unwrap();
        Some(Self {
            redis,
            s3,
            fake,
            dir,
            config,
            storage_url,
        })
    }

    pub fn cmd(&self) -> Command {
        let mut cmd = batchyard(self.dir.path());
        self.s3.apply(&mut cmd);
        cmd.arg("--config")
            .arg(&self.config)
            .env("FAKE_API_KEY", "sk-test-secret-123");
        cmd
    }

    pub fn submit(&self, input: &str, extra: &[&str]) -> Value {
        let out = run(self.cmd().args(["submit", input, "--json"]).args(extra));
        assert!(out.status.success(), "submit failed: {}", text(&out.stderr));
        last_json(&out)
    }

    /// A worker whose log goes to a file in the cluster's folder (a pipe nobody reads would
    /// block the worker once it filled).
    pub fn spawn_worker(&self, extra: &[&str]) -> Child {
        let n = WORKER_LOGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::fs::File::create(self.dir.path().join(format!("worker-{n}.log"))).unwrap();
        self.cmd()
            .arg("worker")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("worker should start")
    }

    pub fn status(&self, batch_id: &str) -> Value {
        let out = run(self.cmd().args(["status", batch_id, "--json"]));
        assert!(out.status.success(), "status failed: {}", text(&out.stderr));
        last_json(&out)
    }

    pub fn depth(&self) -> Value {
        let out = run(self.cmd().args(["status", "--json"]));
        assert!(out.status.success(), "status failed: {}", text(&out.stderr));
        last_json(&out)["queues"][0].clone()
    }

    pub fn results(&self, batch_id: &str, errors: bool) -> Vec<Value> {
        let mut cmd = self.cmd();
        cmd.args(["results", batch_id]);
        if errors {
            cmd.arg("--errors");
        }
        let out: Output = run(&mut cmd);
        assert!(
            out.status.success(),
            "results failed: {}",
            text(&out.stderr)
        );
        text(&out.stdout)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The address a worker of this cluster logged (`metrics on http://ADDR/metrics`, from
    /// `--metrics-addr`); waits at most 20 s.
    pub fn worker_metrics_url(&self) -> String {
        for _ in 0..200 {
            for entry in std::fs::read_dir(self.dir.path()).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if !name.starts_with("worker-") {
                    continue;
                }
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                if let Some(at) = log.find("metrics on http://") {
                    let rest = &log[at + "metrics on ".len()..];
                    return rest.chars().take_while(|c| !c.is_whitespace()).collect();
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no worker logged its metrics address");
    }

    /// Polls until the batch is terminal; panics after `limit`.
    pub fn wait_terminal(&self, batch_id: &str, limit: Duration) -> Value {
        let start = Instant::now();
        loop {
            let batch = self.status(batch_id);
            let status = batch["status"].as_str().unwrap_or_default().to_string();
            if ["completed", "failed", "expired", "cancelled"].contains(&status.as_str()) {
                return batch;
            }
            assert!(
                start.elapsed() < limit,
                "batch did not finish in {limit:?}: {batch}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// `[offload]` of the lane's crash tests: quick ticks, the deadline never near.
pub const QUICK_OFFLOAD: &str = "[offload]\nmin_items = 3\npoll_interval_secs = 1\n\
                                 switch_margin_secs = 0\nrealtime_items_per_sec = 1000\n";

impl Cluster {
    /// Submits `n` items (`{prefix}-{i}`) due in an hour, so they go through the offload
    /// lane; the batch id.
    pub fn submit_with_deadline(&self, prefix: &str, n: usize) -> String {
        let body: String = (0..n)
            .map(|i| super::request_line(&format!("{prefix}-{i}"), &format!("item {i}")) + "\n")
            .collect();
        let input = super::write_file(self.dir.path(), "in.jsonl", body.as_bytes());
        self.submit(input.to_str().unwrap(), &["--deadline", "1h"])["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Runs a worker that aborts at the offload lane's step `point`
    /// (`BATCHYARD_TEST_CRASH_AT`), as a `kill -9` there would, and waits until it has.
    pub fn crash_worker_at(&self, point: &str) {
        let mut doomed = self
            .cmd()
            .arg("worker")
            .env("BATCHYARD_TEST_CRASH_AT", point)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut doomed, Duration::from_secs(60));
        assert!(
            !status.success(),
            "the worker should have aborted at {point}"
        );
    }
}

/// Waits for a child to exit, killing it (and failing) after `limit`.
pub fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
