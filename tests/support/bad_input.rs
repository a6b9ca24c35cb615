//! The machinery of tests/bad_input_corpus.rs: generated inputs, bounded runs, and the
//! checks that nothing was enqueued or written.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{batchyard, text};
use batchyard_testkit::{TestRedis, listening_line};

/// One process of a case may take this long; the 100 MB line is the slowest.
const CASE_LIMIT: Duration = Duration::from_secs(60);
pub const TOKEN: &str = "tok-corpus-api-1";

pub fn fixtures() -> PathBuf {
    support::repo_root().join("tests/fixtures/bad-inputs")
}

/// Runs `cmd` with stdout and stderr in files under `dir`, killing it after [`CASE_LIMIT`].
pub fn run_bounded(cmd: &mut Command, dir: &Path) -> (Option<i32>, String, String) {
    let out = dir.join("stdout");
    let err = dir.join("stderr");
    let mut child = cmd
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("batchyard should start");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > CASE_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| text(&std::fs::read(p).unwrap_or_default());
    let code = match status {
        Some(s) => s.code(),
        None => Some(-1),
    };
    (code, read(&out), read(&err))
}

/// Builds a `gen:` input in `dir` and returns its path.
pub fn generate(name: &str, dir: &Path) -> PathBuf {
    let line = |id: &str, content: &str| support::request_line(id, content);
    let file = |body: &[u8]| support::write_file(dir, &format!("{name}.jsonl"), body);
    match name {
        "long-custom-id" => file(line(&"A".repeat(100 * 1024), "hi").as_bytes()),
        "huge-line" => {
            let path = dir.join("huge-line.jsonl");
            let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
            w.write_all(br#"{"custom_id":"big","body":{"messages":[{"role":"user","content":""#)
                .unwrap();
            let chunk = vec![b'x'; 1024 * 1024];
            for _ in 0..100 {
                w.write_all(&chunk).unwrap();
            }
            w.write_all(b"\"}]}}\n").unwrap();
            w.flush().unwrap();
            path
        }
        "deep-nesting" => file(format!("{}\n", "[".repeat(100_000)).as_bytes()),
        "deep-nesting-in-body" => file(
            format!(
                "{{\"custom_id\":\"a\",\"body\":{{\"messages\":{}\n",
                "[".repeat(100_000)
            )
            .as_bytes(),
        ),
        "many-bad-lines" => file("{\n".repeat(10_000).as_bytes()),
        "empty-folder" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            p
        }
        "hostile-file-names" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("report-\u{202E}txt.md"), "hello").unwrap();
            std::fs::write(p.join("two\nlines.txt"), "hello").unwrap();
            p
        }
        "oversized-document" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("big.txt"), "word ".repeat(40)).unwrap();
            std::fs::write(p.join("small.txt"), "fine").unwrap();
            p
        }
        "named-pipe" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("a.txt"), "fine").unwrap();
            let fifo = p.join("pipe.txt");
            let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(made.success(), "mkfifo failed");
            p
        }
        "dangling-symlink" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::symlink(dir.join("gone.txt"), p.join("gone.txt")).unwrap();
            p
        }
        "sparse-10-gb-document" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            // Sparse: 10 GB long, no disk used. Reading it whole would exhaust memory.
            let f = std::fs::File::create(p.join("huge.txt")).unwrap();
            f.set_len(10 << 30).unwrap();
            p
        }
        // Devices are inputs as they are: never read, refused from their metadata.
        "dev-zero" => PathBuf::from("/dev/zero"),
        // Not a path: the URL itself is the case.
        "s3-input-with-keys" => {
            PathBuf::from("s3://AKIACORPUS0013:corpus-input-secret-0013@batchyard/in.jsonl")
        }
        "dev-urandom" => PathBuf::from("/dev/urandom"),
        "symlink-to-passwd" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::os::unix::fs::symlink("/etc/passwd", p.join("link.txt")).unwrap();
            p
        }
        "symlinks-out-and-in" => {
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(p.join("a.txt"), "fine").unwrap();
            std::os::unix::fs::symlink("/etc/passwd", p.join("link.txt")).unwrap();
            std::os::unix::fs::symlink("/etc", p.join("etc")).unwrap();
            std::os::unix::fs::symlink(p.join("a.txt"), p.join("same.txt")).unwrap();
            p
        }
        "symlink-loops" => {
            let p = dir.join(name);
            std::fs::create_dir_all(p.join("sub")).unwrap();
            std::os::unix::fs::symlink(&p, p.join("sub/up")).unwrap();
            std::os::unix::fs::symlink(p.join("l2"), p.join("l1")).unwrap();
            std::os::unix::fs::symlink(p.join("l1"), p.join("l2")).unwrap();
            p
        }
        "non-utf8-names" => {
            use std::os::unix::ffi::OsStrExt;
            let p = dir.join(name);
            std::fs::create_dir(&p).unwrap();
            for n in [&b"n\xfe.txt"[..], b"n\xff.txt"] {
                std::fs::write(p.join(std::ffi::OsStr::from_bytes(n)), "latin-1 name").unwrap();
            }
            std::fs::write(p.join("ok.txt"), "fine").unwrap();
            p
        }
        other => panic!("unknown generated input {other:?}"),
    }
}

/// Every file below `dir`, relative to it.
pub fn files_below(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                found.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    found
}

/// What was enqueued or recorded: batch keys, non-empty streams, delayed or dead jobs.
/// Cleans Redis afterwards, so one bad case does not blame the next.
pub fn redis_leftovers(redis: &TestRedis) -> Vec<String> {
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut con = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut con).unwrap();
    let mut found = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut con).unwrap();
        let len: u64 = if kind == "stream" {
            redis::cmd("XLEN").arg(&key).query(&mut con).unwrap()
        } else {
            0
        };
        if key.starts_with("by:batch")
            || key.ends_with(":delayed")
            || key.ends_with(":dead")
            || len > 0
        {
            found.push(format!("{key} ({kind}, {len} entries)"));
        }
    }
    if !found.is_empty() {
        let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap();
    }
    found
}

/// Replaces the placeholders a fixture config may hold.
pub fn fill(template: &str, redis: &TestRedis, store: &Path) -> String {
    template
        .replace("{redis_url}", &redis.url)
        .replace("{redis_port}", &redis.port.to_string())
        .replace("{storage_url}", &format!("file://{}", store.display()))
}

/// A `batchyard serve` on Redis and a file:// store, killed on drop.
pub struct Serve {
    pub child: Child,
    pub base: String,
    log: PathBuf,
}

impl Serve {
    pub fn start(redis: &TestRedis, dir: &Path, store: &Path) -> Self {
        let config = dir.join("serve.toml");
        let template = std::fs::read_to_string(fixtures().join("base.toml")).unwrap();
        std::fs::write(&config, fill(&template, redis, store)).unwrap();
        let log = dir.join("serve.log");
        let child = batchyard(dir)
            .arg("--config")
            .arg(&config)
            .args(["serve", "--addr", "127.0.0.1:0"])
            .env("BATCHYARD_API_TOKENS", TOKEN)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("serve should start");
        let mut me = Self {
            child,
            base: String::new(),
            log,
        };
        me.base = listening_line(&mut me.child, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("serve: {e}: {}", me.log_text()));
        me
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
