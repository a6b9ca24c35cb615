//! Logging: human-readable to stderr by default, JSON lines with `LOG_FORMAT=json`.
//!
//! Logs must never stop the process: a worker whose stderr pipe was closed (`... | head -3`)
//! still has to hear SIGTERM and drain. tracing-subscriber reports a failed write with
//! `eprintln!`, which panics on a closed stderr, so writes go through [`QuietStderr`], which
//! drops what it can't write, and internal error reports are off.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;

/// Set once stderr refused a write (closed pipe, full disk): later lines are dropped at once.
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Stderr that never fails: a line it can't write is dropped.
pub struct QuietStderr;

impl Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if STDERR_GONE.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        const LS: &[u8] = "\u{2028}".as_bytes();
        const PS: &[u8] = "\u{2029}".as_bytes();
        if buf.windows(3).any(|w| w == LS || w == PS) {
            // A log line (JSON or text) must stay one line for readers that split on Unicode
            // line breaks: write the separators as escapes.
            let escaped = batchyard_jobs::jsonl::escape_line_separators(buf.to_vec());
            return match std::io::stderr().write_all(&escaped) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
                Err(_) => {
                    STDERR_GONE.store(true, Ordering::Relaxed);
                    Ok(buf.len())
                }
                Ok(()) => Ok(buf.len()),
            };
        }
        match std::io::stderr().write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Err(e),
            Err(_) => {
                STDERR_GONE.store(true, Ordering::Relaxed);
                Ok(buf.len())
            }
            ok => ok,
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// Writes one line to stderr, or drops it when stderr is gone (never panics, unlike eprintln!).
pub fn stderr_line(line: &str) {
    let _ = writeln!(QuietStderr, "{line}");
}

/// Colour only for a person at a terminal: not into files, pipes or log collectors, and not
/// when `NO_COLOR` is set (<https://no-color.org>).
fn use_colour(env: &BTreeMap<String, String>) -> bool {
    std::io::stderr().is_terminal() && env.get("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Installs the global subscriber. `default_filter` applies when `RUST_LOG` is unset.
pub fn init(env: &BTreeMap<String, String>, default_filter: &str) {
    let filter = env
        .get("RUST_LOG")
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let json = env.get("LOG_FORMAT").is_some_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| QuietStderr)
        .log_internal_errors(false)
        .with_ansi(!json && use_colour(env))
        .with_target(false);
    // A second init (tests) is harmless: keep the first subscriber.
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Makes a closed stdout end the process quietly, as SIGPIPE does for other CLI tools
/// (`batchyard results ID | head -1`): Rust ignores SIGPIPE, so `println!` to a closed pipe
/// panics instead. Exits 141 (128 + SIGPIPE), what a shell reports for a tool killed by it.
pub fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to std") && message.contains("Broken pipe") {
            std::process::exit(SIGPIPE_EXIT);
        }
        default(info);
    }));
}

/// 128 + SIGPIPE.
pub const SIGPIPE_EXIT: i32 = 141;

/// Whether `err` comes from writing to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
