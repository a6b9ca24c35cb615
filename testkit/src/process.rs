//! Child processes that announce their address: the fake provider and `batchyard serve` both
//! print `listening on http://127.0.0.1:PORT` as their first stdout line.

use std::io::{BufRead as _, BufReader};
use std::net::TcpListener;
use std::process::Child;
use std::time::Duration;

/// A port on 127.0.0.1 that was free a moment ago (another process can still take it before
/// the caller binds it; callers that care retry).
pub fn free_port() -> Option<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").ok()?;
    listener.local_addr().ok().map(|a| a.port())
}

/// The URL from `child`'s first stdout line `listening on URL`, waiting at most `limit`.
/// Takes the child's piped stdout; the error says what came instead (the line, or nothing).
pub fn listening_line(child: &mut Child, limit: Duration) -> Result<String, String> {
    let stdout = child
        .stdout
        .take()
        .ok_or("the child's stdout is not piped")?;
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread, so that a child that prints nothing cannot hang the test past `limit`.
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(limit)
        .map_err(|_| format!("no address printed within {limit:?}"))?;
    line.trim()
        .strip_prefix("listening on ")
        .map(str::to_string)
        .ok_or_else(|| format!("unexpected first line {line:?}"))
}
