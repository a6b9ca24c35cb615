//! What the worker-fault chaos tests share: the short/long mode switch, a seeded RNG, a set of
//! worker processes stopped by PID on drop, signals, and a look into the queue's pending
//! entries (who holds what) through Redis `XPENDING`.

use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::cluster::Cluster;
use crate::support::{request_line, write_file};

/// `BATCHYARD_CHAOS_LONG=1` selects the long soak sizes.
pub fn long_mode() -> bool {
    std::env::var("BATCHYARD_CHAOS_LONG").is_ok_and(|v| v == "1" || v == "true")
}

/// SplitMix64: tiny, deterministic, and enough to pick victims and intervals reproducibly.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `BATCHYARD_CHAOS_SEED` when set, else from the clock; the seed is printed
    /// so a failing run can be replayed.
    pub fn from_env(test: &str) -> Self {
        let seed = std::env::var("BATCHYARD_CHAOS_SEED")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(7)
            });
        eprintln!("{test}: seed {seed} (replay with BATCHYARD_CHAOS_SEED={seed})");
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[lo, hi)`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let span = hi.saturating_sub(lo).as_millis() as u64;
        lo + Duration::from_millis(self.below(span.max(1)))
    }
}

/// Worker processes by slot. Every one still running is SIGKILLed (by PID) on drop, also when
/// it is SIGSTOPped.
pub struct Workers<'a> {
    cluster: &'a Cluster,
    args: Vec<String>,
    slots: Vec<Child>,
    pub spawned: usize,
}

impl<'a> Workers<'a> {
    pub fn start(cluster: &'a Cluster, count: usize, args: &[&str]) -> Self {
        let mut me = Self {
            cluster,
            args: args.iter().map(|a| a.to_string()).collect(),
            slots: Vec::new(),
            spawned: 0,
        };
        for _ in 0..count {
            let child = me.spawn();
            me.slots.push(child);
        }
        me
    }

    fn spawn(&mut self) -> Child {
        self.spawned += 1;
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        self.cluster.spawn_worker(&args)
    }

    pub fn pid(&self, slot: usize) -> u32 {
        self.slots[slot].id()
    }

    pub fn count(&self) -> usize {
        self.slots.len()
    }

    /// SIGKILLs the worker in `slot`, reaps it, and returns its PID.
    pub fn kill(&mut self, slot: usize) -> u32 {
        let child = &mut self.slots[slot];
        let pid = child.id();
        child.kill().unwrap();
        child.wait().unwrap();
        pid
    }

    /// Starts a fresh worker in `slot` (whose old process must be gone).
    pub fn restart(&mut self, slot: usize) {
        let child = self.spawn();
        self.slots[slot] = child;
    }

    /// True while the worker in `slot` has not exited.
    pub fn alive(&mut self, slot: usize) -> bool {
        self.slots[slot].try_wait().unwrap().is_none()
    }
}

impl Drop for Workers<'_> {
    fn drop(&mut self) {
        for child in &mut self.slots {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pending (claimed, unacked) entries per consumer of the cluster's queue. A worker's consumer
/// name is `<host>-<pid>-<ulid>`, so [`held_by`] can tell whose they are.
pub fn pending_by_consumer(cluster: &Cluster) -> Vec<(String, u64)> {
    let queue = cluster.depth()["name"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    let client = ::redis::Client::open(cluster.redis.url.as_str()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let reply: ::redis::Value = ::redis::cmd("XPENDING")
        .arg(format!("by:{{{queue}}}:stream"))
        .arg("workers")
        .query(&mut conn)
        .unwrap();
    let ::redis::Value::Array(parts) = reply else {
        panic!("unexpected XPENDING reply: {reply:?}");
    };
    match parts.get(3) {
        None | Some(::redis::Value::Nil) => Vec::new(),
        Some(list) => ::redis::from_redis_value_ref::<Vec<(String, u64)>>(list).unwrap(),
    }
}

/// How many entries the worker with this PID holds (claimed and not acked).
pub fn held_by(cluster: &Cluster, pid: u32) -> u64 {
    let tag = format!("-{pid}-");
    pending_by_consumer(cluster)
        .iter()
        .filter(|(consumer, _)| consumer.contains(&tag))
        .map(|(_, n)| n)
        .sum()
}

/// Submits `n` request lines `c-0`..`c-{n-1}`; `content(i)` gives each line's user message.
pub fn submit_batch(cluster: &Cluster, n: usize, content: impl Fn(usize) -> String) -> String {
    let mut body = String::with_capacity(n * 160);
    for i in 0..n {
        body.push_str(&request_line(&format!("c-{i}"), &content(i)));
        body.push('\n');
    }
    let input = write_file(cluster.dir.path(), "in.jsonl", body.as_bytes());
    cluster.submit(input.to_str().unwrap(), &[])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Completed plus failed items of a batch status.
pub fn settled(status: &Value) -> u64 {
    let counts = &status["request_counts"];
    counts["completed"].as_u64().unwrap_or(0) + counts["failed"].as_u64().unwrap_or(0)
}

pub fn is_terminal(status: &Value) -> bool {
    matches!(
        status["status"].as_str().unwrap_or_default(),
        "completed" | "failed" | "expired" | "cancelled"
    )
}

/// Polls until at least `target` items are settled; panics after `limit`.
pub fn wait_settled(cluster: &Cluster, batch_id: &str, target: u64, limit: Duration) -> Value {
    let start = Instant::now();
    loop {
        let status = cluster.status(batch_id);
        if settled(&status) >= target || is_terminal(&status) {
            return status;
        }
        assert!(
            start.elapsed() < limit,
            "{target} items not settled within {limit:?}: {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The fake provider's request count (every answered request, whatever its status).
pub fn provider_requests(cluster: &Cluster) -> u64 {
    cluster.fake.stats()["requests"].as_u64().unwrap_or(0)
}

/// The error code of an `errors.jsonl` line.
pub fn error_code(line: &Value) -> &str {
    line["error"]["code"].as_str().unwrap_or_default()
}

/// Lines containing `needle` across the logs of every worker the cluster started.
pub fn worker_log_count(cluster: &Cluster, needle: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(cluster.dir.path()) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("worker-"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .map(|log| log.lines().filter(|l| l.contains(needle)).count())
        .sum()
}
