//! Submission: validate the whole input as a stream, then enqueue it in pipelined chunks.
//!
//! Two passes over the input keep memory flat: the first only validates (and remembers a
//! digest per custom id to catch duplicates), the second builds jobs and enqueues them. If the
//! first pass finds bad lines, nothing is enqueued unless `--skip-invalid` was given; then each
//! bad line becomes an `invalid_input` outcome of its own.

mod record;
mod stage;

use std::collections::BTreeSet;

use batchyard_jobs::batch::{BatchRecord, BatchState};
use batchyard_jobs::input::{
    DuplicateCheck, InputError, InputOptions, InputReader, InputSource, Item,
};
use batchyard_jobs::job::{Job, Route, job_id_for, new_batch_id};
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::staging::{self, Lease};
use bytes::Bytes;
use sha2::{Digest, Sha256};

use self::record::{new_record, probe_store, resume_record, taken_error};
use self::stage::Sealed;
pub use self::stage::SubmitInterrupted;

use crate::app::App;
use crate::error::{InvalidInput, UsageError};

/// Lines per enqueue round trip.
const CHUNK: usize = 1000;
/// Bad lines listed in an error before the rest are only counted.
const MAX_LISTED: usize = 20;

#[derive(Debug, Clone)]
pub struct SubmitRequest {
    pub input: String,
    pub task: Option<String>,
    pub budget_usd: Option<f64>,
    pub skip_invalid: bool,
    pub no_cache: bool,
    /// OpenAI's `completion_window`: items still queued when it ends are `expired`, not run.
    pub completion_window: Option<std::time::Duration>,
    /// Continue this batch's interrupted submit (same input) instead of starting a new one.
    pub resume: Option<String>,
    /// Of a folder, follow symbolic links whose targets stay inside it.
    pub follow_symlinks: bool,
}

#[derive(Debug, Clone)]
pub struct Submitted {
    pub record: BatchRecord,
    pub invalid: u64,
}

enum Checked {
    Job(Job),
    Bad(InputError),
}

struct Builder<'a> {
    app: &'a App,
    batch_id: String,
    task: Option<String>,
    dups: DuplicateCheck,
}

impl Builder<'_> {
    /// Turns one read result into a job or a bad line. `seq` is its place in the batch.
    fn check(&mut self, read: Result<Item, InputError>, seq: u64) -> Result<Checked, InputError> {
        let item = match read {
            Ok(item) => item,
            Err(e) if e.fatal => return Err(e),
            Err(e) => return Ok(Checked::Bad(e)),
        };
        let custom_id = item.custom_id().to_string();
        let line = item.line();
        let location = item.location().to_string();
        let bad = |reason: String| InputError {
            location: location.clone(),
            line,
            custom_id: Some(custom_id.clone()),
            entry: None,
            reason,
            fatal: false,
        };
        if !self.dups.insert(&custom_id) {
            return Ok(Checked::Bad(bad(format!(
                "duplicate custom_id {custom_id:?}; every item needs its own"
            ))));
        }
        let (body, route) = match item {
            Item::Request { body, route, .. } => (body, route),
            Item::Document { fields, .. } => {
                let Some(task) = self.task.clone() else {
                    return Ok(Checked::Bad(bad(
                        "documents need a task; pass --task NAME".into()
                    )));
                };
                match self.app.settings.catalog.render_document(&task, &fields) {
                    Ok(body) => (body, Route::Task { task }),
                    Err(e) => return Ok(Checked::Bad(bad(e.to_string()))),
                }
            }
        };
        Ok(Checked::Job(Job {
            batch_id: self.batch_id.clone(),
            job_id: job_id_for(&self.batch_id, &custom_id),
            seq,
            custom_id,
            body,
            route,
            attempt: 0,
            last_error: None,
            prior_cost_usd: 0.0,
        }))
    }
}

fn options(app: &App, req: &SubmitRequest, only: Option<&BTreeSet<String>>) -> InputOptions {
    InputOptions {
        only: only.map(|ids| std::sync::Arc::new(ids.clone())),
        max_line_bytes: app.settings.max_line_bytes,
        task: req.task.clone(),
        names: app.settings.known_names(),
        follow_symlinks: req.follow_symlinks,
    }
}

async fn open(
    app: &App,
    source: &InputSource,
    req: &SubmitRequest,
    only: Option<&BTreeSet<String>>,
) -> anyhow::Result<InputReader> {
    InputReader::open(source, options(app, req, only), &app.settings.env)
        .await
        .map_err(|e| UsageError(e.to_string()).into())
}

/// Reads an input's items as jobs without enqueueing anything: for `estimate` and `route`.
pub struct Scanner<'a> {
    reader: InputReader,
    builder: Builder<'a>,
    seq: u64,
}

impl<'a> Scanner<'a> {
    pub async fn open(app: &'a App, req: &SubmitRequest) -> anyhow::Result<Self> {
        if let Some(t) = &req.task
            && app.settings.catalog.task(t).is_none()
        {
            let known: Vec<String> = app.settings.catalog.task_keys().into_iter().collect();
            return Err(UsageError(format!(
                "unknown task {t:?}; configured tasks: {}",
                known.join(", ")
            ))
            .into());
        }
        let source = InputSource::resolve(&req.input).map_err(|e| UsageError(e.to_string()))?;
        Ok(Self {
            reader: open(app, &source, req, None).await?,
            builder: Builder {
                app,
                batch_id: "estimate".into(),
                task: req.task.clone(),
                dups: DuplicateCheck::default(),
            },
            seq: 0,
        })
    }

    /// The next item: a job, or why its line is bad. `Err` only for input that can't be read.
    pub async fn next(&mut self) -> Option<anyhow::Result<Result<Job, InputError>>> {
        let read = self.reader.next().await?;
        let checked = self.builder.check(read, self.seq);
        self.seq += 1;
        Some(match checked {
            Ok(Checked::Job(job)) => Ok(Ok(job)),
            Ok(Checked::Bad(e)) => Ok(Err(e)),
            Err(e) => Err(UsageError(e.to_string()).into()),
        })
    }
}

/// Refuses a batch id that can't be one of ours (it names Redis keys and storage paths).
pub fn check_batch_id(id: &str) -> Result<(), UsageError> {
    let ok = id.starts_with("batch_")
        && id.len() <= 64
        && id[6..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "{id:?} is not a batch id (batch_ followed by letters and digits); check it with `batchyard status`"
        )))
    }
}

/// Validates and enqueues one batch.
pub async fn submit(app: &App, req: &SubmitRequest) -> anyhow::Result<Submitted> {
    submit_with_id(app, req, new_batch_id()).await
}

/// As [`submit`], under an id the caller chose (the API names a batch before it validates).
/// The id must come from [`new_batch_id`], so it is key-safe and sorts by creation.
pub async fn submit_with_id(
    app: &App,
    req: &SubmitRequest,
    batch_id: String,
) -> anyhow::Result<Submitted> {
    submit_selected(app, req, batch_id, None).await
}

/// Whether a read item belongs to the batch: all of them without a selection; else only
/// documents whose id is selected. Fatal errors always count, so a broken input still fails.
fn selected(read: &Result<Item, InputError>, keep: Option<&BTreeSet<String>>) -> bool {
    let Some(keep) = keep else { return true };
    match read {
        Ok(item) => keep.contains(item.custom_id()),
        Err(e) if e.fatal => true,
        Err(e) => e.custom_id.as_ref().is_some_and(|id| keep.contains(id)),
    }
}

/// As [`submit_with_id`], but of a folder or prefix only the documents whose ids (paths
/// relative to the input) are in `keep`: pipelines submit just the new objects this way.
pub async fn submit_selected(
    app: &App,
    req: &SubmitRequest,
    batch_id: String,
    keep: Option<&BTreeSet<String>>,
) -> anyhow::Result<Submitted> {
    if let Some(t) = &req.task
        && app.settings.catalog.task(t).is_none()
    {
        let known: Vec<String> = app.settings.catalog.task_keys().into_iter().collect();
        return Err(UsageError(format!(
            "unknown task {t:?}; configured tasks: {}",
            known.join(", ")
        ))
        .into());
    }
    if let Some(b) = req.budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(UsageError(format!("--budget-usd must be 0 or more, not {b}")).into());
    }
    let source = InputSource::resolve(&req.input).map_err(|e| UsageError(e.to_string()))?;
    let mut builder = Builder {
        app,
        batch_id: batch_id.clone(),
        task: req.task.clone(),
        dups: DuplicateCheck::default(),
    };

    // Pass 1: validate everything, enqueue nothing.
    let mut reader = open(app, &source, req, keep).await?;
    let (mut total, mut bad_count, mut listed) = (0u64, 0u64, Vec::new());
    let mut fingerprint = Sha256::new();
    while let Some(read) = reader.next().await {
        if !selected(&read, keep) {
            continue;
        }
        match builder
            .check(read, total)
            .map_err(|e| UsageError(e.to_string()))?
        {
            Checked::Job(job) => {
                fingerprint.update(serde_json::to_vec(&job)?);
                fingerprint.update(b"\n");
            }
            Checked::Bad(e) => {
                fingerprint.update(e.to_string().as_bytes());
                fingerprint.update(b"\n");
                bad_count += 1;
                if listed.len() < MAX_LISTED {
                    listed.push(e);
                }
            }
        }
        total += 1;
    }
    let skipped = reader.skipped_summary();
    if !skipped.is_empty() {
        eprintln!("skipped {skipped}");
    }
    if bad_count > 0 && !req.skip_invalid {
        return Err(InvalidInput {
            errors: listed,
            total_bad: bad_count,
        }
        .into());
    }

    probe_store(app, &batch_id).await?;

    let fingerprint = hex::encode(fingerprint.finalize());
    let lease_len = app.settings.queue.submit_lease;
    let mut lease = Lease::new(app.ledger.as_ref(), &batch_id, lease_len);

    // Pass 2: the batch record first (`validating`, invisible to workers), then the jobs,
    // staged chunk by chunk, then the seal that commits the batch, then the move to the queue.
    let record = match &req.resume {
        Some(_) => resume_record(app, &batch_id, &fingerprint, total, &lease).await?,
        None => {
            let record = new_record(app, req, &batch_id, total, &fingerprint, &lease);
            app.ledger.create(&record).await?;
            record
        }
    };
    let sealed_before = record.submit.as_ref().is_some_and(|s| s.sealed);
    let interrupted = |staged: u64, sealed: bool, cause: String| SubmitInterrupted {
        batch_id: batch_id.clone(),
        input: req.input.clone(),
        staged,
        total,
        sealed,
        cause,
    };
    if !sealed_before {
        // Every real id is in here now: a made-up id for a line without one must not take one.
        let mut taken = std::mem::take(&mut builder.dups);
        let mut reader = open(app, &source, req, keep).await?;
        let mut chunk = Vec::with_capacity(CHUNK);
        let (mut seq, mut chunk_no) = (0u64, 0u64);
        let mut staged = 0u64;
        let mut taken_from_us = false;
        while let Some(read) = reader.next().await {
            if !selected(&read, keep) {
                continue;
            }
            match builder
                .check(read, seq)
                .map_err(|e| UsageError(e.to_string()))?
            {
                Checked::Job(job) => chunk.push(job),
                Checked::Bad(e) => {
                    record_invalid(app, &batch_id, seq, &e, &mut taken)
                        .await
                        .map_err(|e| interrupted(staged, false, format!("{e:#}")))?;
                }
            }
            seq += 1;
            if chunk.len() >= CHUNK {
                match stage::stage(app.queue.as_ref(), &app.store, &mut lease, chunk_no, &chunk)
                    .await
                {
                    Ok(true) => {}
                    Ok(false) => {
                        taken_from_us = true;
                        break;
                    }
                    Err(e) => return Err(interrupted(staged, false, e).into()),
                }
                staged += chunk.len() as u64;
                chunk_no += 1;
                chunk.clear();
            }
        }
        if !taken_from_us && !chunk.is_empty() {
            match stage::stage(app.queue.as_ref(), &app.store, &mut lease, chunk_no, &chunk).await {
                Ok(true) => {}
                Ok(false) => taken_from_us = true,
                Err(e) => return Err(interrupted(staged, false, e.to_string()).into()),
            }
        }
        if taken_from_us {
            return Err(taken_error(app, &batch_id).await);
        }
        match stage::seal(app.ledger.as_ref(), &lease).await {
            Ok(Sealed::Yes) => {}
            Ok(Sealed::Not(BatchState::Cancelled)) => {
                return Err(taken_error(app, &batch_id).await);
            }
            // Every item was a bad line: the batch finished without a job to run.
            Ok(Sealed::Not(_)) => {}
            Err(e) => return Err(interrupted(staged, false, e.to_string()).into()),
        }
    }
    staging::publish(
        app.ledger.as_ref(),
        app.queue.as_ref(),
        &batch_id,
        &batch_id,
        Some(&mut lease),
    )
    .await
    .map_err(|e| interrupted(total, true, e.to_string()))?;
    let record = app.ledger.get(&batch_id).await?.unwrap_or(record);
    let invalid = bad_count;
    tracing::info!(batch_id = %batch_id, total, invalid, "batch submitted");
    Ok(Submitted { record, invalid })
}

/// Writes a bad line's outcome and counts it, so it lands in `errors.jsonl`.
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

async fn record_invalid(
    app: &App,
    batch_id: &str,
    seq: u64,
    e: &InputError,
    taken: &mut DuplicateCheck,
) -> anyhow::Result<()> {
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
    let bytes = Bytes::from(batchyard_jobs::jsonl::to_line(&line)?);
    app.store
        .put(&app.store.result_path(batch_id, &job_id), bytes)
        .await?;
    if app
        .ledger
        .settle(batch_id, seq, false, 0)
        .await?
        .should_finalize()
    {
        app.finalizer().finalize(batch_id).await?;
    }
    Ok(())
}
