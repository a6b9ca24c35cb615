//! The binary's user-facing errors and its exit codes: 0 ok, 2 bad usage or bad input (the
//! user's to fix), 1 anything else. The errors that decide the exit code live here, below every
//! module that raises them, so this module imports none of them.

use batchyard_jobs::batch::BatchState;
use batchyard_jobs::input::InputError;

/// An error that is the user's to fix: bad flags, bad config, bad input. Exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A config problem, naming the file, the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("config {file}: {key}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// The input had bad lines and nothing was enqueued.
#[derive(Debug, thiserror::Error)]
pub struct InvalidInput {
    pub errors: Vec<InputError>,
    pub total_bad: u64,
}

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "the input has {} invalid item(s); nothing was enqueued:",
            self.total_bad
        )?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        if self.total_bad > self.errors.len() as u64 {
            writeln!(
                f,
                "  ... and {} more",
                self.total_bad - self.errors.len() as u64
            )?;
        }
        write!(
            f,
            "fix these lines, or pass --skip-invalid to enqueue the good ones"
        )
    }
}

/// A replay refused because the batch is not finished: another replay (named when known) or
/// the first run is still going. Only one replay of a batch runs at a time.
#[derive(Debug)]
pub struct ReplayBusy {
    pub batch_id: String,
    pub state: BatchState,
    pub replay: Option<String>,
}

impl std::fmt::Display for ReplayBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (id, state) = (&self.batch_id, self.state.as_str());
        match &self.replay {
            Some(replay) => write!(
                f,
                "batch {id} is {state}, being replayed by {replay}; one replay of a batch runs at a time: wait for it (`batchyard watch {id}`), then retry what still failed"
            ),
            None => write!(
                f,
                "batch {id} is {state}; retry works on finished batches (wait, or cancel it first)"
            ),
        }
    }
}

impl std::error::Error for ReplayBusy {}

impl ReplayBusy {
    pub(crate) fn new(batch_id: &str, state: BatchState, replay: Option<String>) -> Self {
        Self {
            batch_id: batch_id.to_string(),
            state,
            replay,
        }
    }
}

/// A deadline that even real-time could not meet, refused before anything is enqueued, with
/// the numbers it was judged on. Exits with 2; the API answers 400.
#[derive(Debug, thiserror::Error)]
#[error(
    "--deadline leaves {left_secs} s, but {items} items take about {needed_secs} s real-time \
     ({basis}); give a later deadline, or raise [offload] realtime_items_per_sec if your \
     workers and provider limits allow more"
)]
pub struct DeadlineUnreachable {
    pub left_secs: u64,
    pub items: u64,
    pub needed_secs: u64,
    /// What the time was judged on: a declared limit, the measured rate or the configured one.
    pub basis: String,
}

pub fn code_for(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UsageError>().is_some()
        || err.downcast_ref::<DeadlineUnreachable>().is_some()
        || err.downcast_ref::<ConfigError>().is_some()
        || err.downcast_ref::<InvalidInput>().is_some()
        || err.downcast_ref::<ReplayBusy>().is_some()
    {
        2
    } else {
        1
    }
}
