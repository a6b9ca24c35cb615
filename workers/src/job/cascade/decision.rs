//! What became of one job run: the cascade's answer to the runner.

use std::time::Duration;

use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::OutputLine;

/// What became of one job run.
pub(crate) enum Decision {
    /// Store this line, settle, then ack it (or keep it as a replayable dead letter when
    /// `dead`). `committed_nanos` of the line's cost is already in the ledger.
    End {
        line: OutputLine,
        dead: bool,
        committed_nanos: i64,
    },
    /// A reclaimed job whose success is already stored (its worker stopped before acking):
    /// settle it on that run's behalf and ack, without another call.
    Stored { line: OutputLine },
    /// Put the job back with a delay; `uncommitted_nanos` were spent and must be counted now.
    Later {
        job: Job,
        delay: Duration,
        uncommitted_nanos: i64,
    },
    /// Park the job for its batch's next provider-batch wave (the offload lane): `job`
    /// names the model it waits for last in `offloaded_to`. `uncommitted_nanos` as for
    /// `Later`.
    Park { job: Job, uncommitted_nanos: i64 },
}

impl Decision {
    pub(crate) fn done(line: OutputLine) -> Self {
        Self::End {
            line,
            dead: false,
            committed_nanos: 0,
        }
    }

    pub(crate) fn dead(line: OutputLine) -> Self {
        Self::End {
            line,
            dead: true,
            committed_nanos: 0,
        }
    }
}
