//! The `command` check: an executable named in the config file gets the output on stdin and
//! passes it on exit 0.
//!
//! Only [`super::Validators::compile`] builds one, from the config file; request data can
//! never name, change or pick a command, it only reaches the command as stdin. The child
//! runs with a cleared environment (only `PATH`), without blocking the async runtime
//! (`tokio::process`), under a timeout after which it is killed and reaped, and only the
//! first [`CAPTURE_LIMIT`] bytes of its stdout and stderr are kept (the rest is drained).
//!
//! A command that forks must `exec` its last step (or wait for its children): only the
//! direct child is killed on timeout.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use super::ValidateConfigError;

/// How long a command may run when `command_timeout_secs` is not set.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(10);
/// How many bytes of the command's stdout (and of its stderr) a failure message keeps.
pub const CAPTURE_LIMIT: usize = 1024;

const KEY: &str = "command";

pub(super) struct CommandCheck {
    program: PathBuf,
    args: Vec<String>,
    timeout: Duration,
    /// The worker's `PATH` at config load: the only variable the child sees.
    path_env: Option<OsString>,
}

impl std::fmt::Debug for CommandCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandCheck")
            .field("program", &self.program)
            .field("args", &self.args)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CommandCheck {
    /// Resolves `argv[0]`: a path with a `/` is relative to `base_dir` (the config file's
    /// folder), a bare name is looked up on `PATH`. It must be an executable file now.
    pub(super) fn compile(
        argv: &[String],
        timeout_secs: Option<u64>,
        base_dir: &Path,
    ) -> Result<Self, ValidateConfigError> {
        let Some((name, args)) = argv.split_first() else {
            return Err(ValidateConfigError::new(
                KEY,
                "empty; give the argv of an executable, e.g. [\"./check.sh\", \"--strict\"]",
            ));
        };
        let timeout = match timeout_secs {
            None => DEFAULT_COMMAND_TIMEOUT,
            Some(0) => {
                return Err(ValidateConfigError::new(
                    "command_timeout_secs",
                    "must be at least 1",
                ));
            }
            Some(secs) => Duration::from_secs(secs),
        };
        let path_env = std::env::var_os("PATH");
        let program = resolve(name, base_dir, path_env.as_deref())
            .map_err(|reason| ValidateConfigError::new(KEY, reason))?;
        Ok(Self {
            program,
            args: args.to_vec(),
            timeout,
            path_env,
        })
    }

    /// Runs the command on `content`; Ok on exit 0, else a short message.
    pub(super) async fn check(&self, content: &str) -> Result<(), String> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(path) = &self.path_env {
            cmd.env("PATH", path);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("command {} could not start: {e}", self.program.display()))?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take();
        let stderr = child.stderr.take();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A command may exit without reading all its input (`grep -q`): not an error.
                let _ = stdin.write_all(content.as_bytes()).await;
                let _ = stdin.shutdown().await;
            }
        };
        let run = async {
            let ((), out, err, status) =
                tokio::join!(feed, capture(stdout), capture(stderr), child.wait());
            (out, err, status)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok((out, err, Ok(status))) => judge(status, &out, &err),
            Ok((_, _, Err(e))) => Err(format!("command could not be awaited: {e}")),
            Err(_) => {
                // Kill and reap, so no process outlives its check.
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(format!(
                    "command timed out after {} s and was killed",
                    self.timeout.as_secs()
                ))
            }
        }
    }
}

/// The program to run for `name`, or why there is none.
fn resolve(
    name: &str,
    base_dir: &Path,
    path_env: Option<&std::ffi::OsStr>,
) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("the program name is empty".to_owned());
    }
    if name.contains('/') {
        let path = base_dir.join(name);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(format!("{} is not an executable file", path.display()))
        };
    }
    path_env
        .into_iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .ok_or_else(|| format!("{name:?} is not an executable on PATH"))
}

fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else {
        return false;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.is_file() && meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        meta.is_file()
    }
}

/// The first [`CAPTURE_LIMIT`] bytes of a pipe, and whether there was more; reads to the end
/// so the child never blocks on a full pipe.
async fn capture<R: AsyncRead + Unpin>(pipe: Option<R>) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut more = false;
    let Some(mut pipe) = pipe else {
        return (kept, more);
    };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = CAPTURE_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                more |= n > room;
            }
        }
    }
    (kept, more)
}

fn judge(status: ExitStatus, out: &(Vec<u8>, bool), err: &(Vec<u8>, bool)) -> Result<(), String> {
    if status.success() {
        return Ok(());
    }
    let mut message = match status.code() {
        Some(code) => format!("command exited with code {code}"),
        None => ended_by_signal(status),
    };
    for (name, (bytes, more)) in [("stderr", err), ("stdout", out)] {
        let text = String::from_utf8_lossy(bytes);
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        if !text.is_empty() {
            let cut = if *more { "…" } else { "" };
            message.push_str(&format!("; {name}: {text}{cut}"));
        }
    }
    Err(message)
}

#[cfg(unix)]
fn ended_by_signal(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => format!("command was killed by signal {sig}"),
        None => format!("command failed ({status})"),
    }
}

#[cfg(not(unix))]
fn ended_by_signal(status: ExitStatus) -> String {
    format!("command failed ({status})")
}
