//! Bad lines as `invalid_input` outcomes: gathered per window of [`WINDOW`] item numbers and
//! written as one segment (`invalid-<first item number>`), then each counted in the ledger.
//! Written before counted, as before: a submit cut off between the two leaves outcomes the
//! ledger does not count yet, and its resume writes the same segment again (the windows
//! depend on the input only, which a resume checks by its fingerprint) and counts them
//! (a settlement counts once).

use batchyard_jobs::input::{DuplicateCheck, InputError};
use batchyard_jobs::job::job_id_for;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::segments::Record;

use crate::app::App;

/// Item numbers per segment of bad lines: one segment per submit chunk at most.
const WINDOW: u64 = 1000;

/// `line-N` for a bad line with no readable id, and the escaped path of a refused file of a
/// folder, unless an item of the batch is called that: then `BASE-invalid`,
/// `BASE-invalid-2`, ..., so ids stay unique across the output files.
fn made_up_id(base: String, taken: &mut DuplicateCheck) -> String {
    if taken.insert(&base) {
        return base;
    }
    (1u32..)
        .map(|n| match n {
            1 => format!("{base}-invalid"),
            n => format!("{base}-invalid-{n}"),
        })
        .find(|id| taken.insert(id))
        .unwrap_or(base)
}

/// The bad lines of the current window, not written yet.
#[derive(Default)]
pub(super) struct InvalidLines {
    records: Vec<Record>,
}

impl InvalidLines {
    /// Adds bad line `seq`; writes (and counts) the window before it first if `seq` starts
    /// a new one.
    pub(super) async fn add(
        &mut self,
        app: &App,
        batch_id: &str,
        seq: u64,
        e: &InputError,
        taken: &mut DuplicateCheck,
    ) -> anyhow::Result<()> {
        if self
            .records
            .first()
            .is_some_and(|r| r.seq / WINDOW != seq / WINDOW)
        {
            self.flush(app, batch_id).await?;
        }
        let custom_id = match (&e.custom_id, &e.entry, e.line) {
            (Some(id), _, _) => id.clone(),
            (None, Some(entry), _) => made_up_id(entry.clone(), taken),
            (None, None, line) => made_up_id(format!("line-{}", line.unwrap_or(seq + 1)), taken),
        };
        let job_id = job_id_for(batch_id, &format!("\u{0}invalid:{seq}"));
        let line = OutputLine::failure(
            &job_id,
            &custom_id,
            codes::INVALID_INPUT,
            e.to_string(),
            Extension {
                line: e.line,
                ..Extension::default()
            },
        );
        self.records.push(Record::new(&job_id, seq, 0, 0, line));
        Ok(())
    }

    /// Writes the window's bad lines as one segment, named by its first item number (a
    /// resumed submit writes the same one), then counts each so it lands in `errors.jsonl`.
    pub(super) async fn flush(&mut self, app: &App, batch_id: &str) -> anyhow::Result<()> {
        let Some(first) = self.records.first().map(|r| r.seq) else {
            return Ok(());
        };
        batchyard_jobs::segments::write_records(
            &app.store,
            batch_id,
            "invalid",
            first,
            &self.records,
        )
        .await?;
        for record in std::mem::take(&mut self.records) {
            if app
                .ledger
                .settle(batch_id, record.seq, false, 0)
                .await?
                .should_finalize()
            {
                app.finalizer().finalize(batch_id).await?;
            }
        }
        Ok(())
    }
}
