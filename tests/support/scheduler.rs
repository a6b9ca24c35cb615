//! `batchyard scheduler` replicas and `batchyard pipelines history`, for the tests that fire
//! scheduled pipelines; plus a guard that kills long-running children by PID on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::cluster::{Cluster, Options};
use super::{last_json, run, terminate, text};

/// Child processes (workers, schedulers), SIGKILLed by PID on drop so that a failing test
/// leaves nothing running.
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Children {
    /// Asserts that every child is still running; `what` names them in the failure.
    pub fn assert_alive(&mut self, what: &str) {
        for c in &mut self.0 {
            let exited = c.try_wait().unwrap();
            assert!(
                exited.is_none(),
                "{what} (pid {}) exited: {exited:?}",
                c.id()
            );
        }
    }

    /// SIGTERMs each child and expects a clean exit within 30 s.
    pub fn terminate_all(&mut self) {
        for c in &mut self.0 {
            terminate(c);
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cluster with `extra_toml` (pipelines, tasks) added to its config.
pub fn cluster_with(test: &str, extra_toml: String) -> Option<Cluster> {
    Cluster::start_opts(
        test,
        &[],
        Options {
            extra_toml,
            ..Options::default()
        },
    )
}

/// `batchyard pipelines run NAME --json`, which must succeed; its JSON.
pub fn pipeline_run(cluster: &Cluster, name: &str) -> Value {
    let out = run(cluster.cmd().args(["pipelines", "run", name, "--json"]));
    assert!(
        out.status.success(),
        "pipelines run failed: {}",
        text(&out.stderr)
    );
    last_json(&out)
}

/// A `batchyard scheduler` whose log goes to `scheduler-<n>.log` in the cluster's folder.
pub fn spawn_scheduler(cluster: &Cluster, n: usize) -> Child {
    let log = std::fs::File::create(cluster.dir.path().join(format!("scheduler-{n}.log"))).unwrap();
    cluster
        .cmd()
        .arg("scheduler")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .expect("scheduler should start")
}

/// The pipeline's recorded runs, newest first (at most 1000).
pub fn history(cluster: &Cluster, name: &str) -> Vec<Value> {
    let out = run(cluster
        .cmd()
        .args(["pipelines", "history", name, "--json", "--limit", "1000"]));
    assert!(
        out.status.success(),
        "history failed: {}",
        text(&out.stderr)
    );
    last_json(&out)["runs"].as_array().unwrap().clone()
}

/// A pipeline table that fires every `every_secs` seconds over the documents in `dir`, all of
/// them each time.
pub fn pipeline_toml(name: &str, every_secs: u32, dir: &std::path::Path) -> String {
    format!(
        "\n[pipelines.{name}]\nschedule = \"*/{every_secs} * * * * *\"\ninput = \"file://{}\"\ntask = \"summarize\"\nonly_new = false\n",
        dir.display()
    )
}

/// Whether the pipeline's run lock (`by:pipeline:{<name>}:lock`) is held, asked over `conn`
/// with one inline `EXISTS`.
pub fn run_lock_held(conn: &mut TcpStream, pipeline: &str) -> bool {
    write!(conn, "EXISTS by:pipeline:{{{pipeline}}}:lock\r\n").unwrap();
    let mut reply = [0u8; 4];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[..1], b":", "unexpected EXISTS reply");
    reply[1] == b'1'
}

/// A raw connection to the test Redis on `port`, for [`run_lock_held`].
pub fn redis_conn(port: u16) -> TcpStream {
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    conn
}

/// Waits (at most `limit`) for a moment when `pipeline`'s run lock is `held` and, when it must
/// be free, the clock is also between two whole-second ticks, so that no run is about to take it.
pub fn wait_for_lock(cluster: &Cluster, pipeline: &str, held: bool, limit: Duration) {
    let mut conn = redis_conn(cluster.redis.port);
    let start = Instant::now();
    loop {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_millis();
        let quiet = (300..800).contains(&millis);
        if run_lock_held(&mut conn, pipeline) == held && (held || quiet) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "the run lock of {pipeline} was never {} within {limit:?}",
            if held { "held" } else { "free" }
        );
        std::thread::sleep(Duration::from_millis(if held { 1 } else { 10 }));
    }
}
