//! Submission: validate the whole input as a stream, then enqueue it in pipelined chunks.
//!
//! Two passes over the input keep memory flat: the first only validates (and remembers a
//! digest per custom id to catch duplicates), the second builds jobs and enqueues them. If the
//! first pass finds bad lines, nothing is enqueued unless `--skip-invalid` was given; then each
//! bad line becomes an `invalid_input` outcome of its own.

//!
//! - [`request`]: what a submit is asked for ([`SubmitRequest`]) and answers ([`Submitted`]).
//! - [`items`]: each read item checked into a job or a bad line, and the [`Scanner`] that
//!   `estimate` and `route` read inputs with.
//! - [`invalid`]: bad lines written as `invalid_input` outcomes, a segment per 1,000 items.
//! - [`record`]: the batch record a submit writes first, resumes, and the store probe.
//! - [`stage`]: jobs staged chunk by chunk under the submit lease, and the seal.

mod invalid;
mod items;
mod record;
mod request;
mod stage;

use std::collections::BTreeSet;

use batchyard_jobs::batch::{BatchRecord, BatchState};
use batchyard_jobs::input::{DuplicateCheck, InputError, InputSource};
use batchyard_jobs::job::new_batch_id;
use batchyard_jobs::queue::FairClass;
use batchyard_jobs::staging::{self, Lease};
use sha2::{Digest, Sha256};

use self::invalid::InvalidLines;
pub use self::items::Scanner;
use self::items::{Builder, Checked, check_task, open, selected};
use self::record::{new_record, probe_store, resume_record, taken_error};
pub use self::request::{SubmitRequest, Submitted};
use self::stage::Sealed;
pub use self::stage::SubmitInterrupted;

use crate::app::App;
use crate::config::tenants::Placement;
use crate::error::{InvalidInput, UsageError};

/// Lines per enqueue round trip.
const CHUNK: usize = 1000;
/// Bad lines listed in an error before the rest are only counted.
const MAX_LISTED: usize = 20;

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

/// A task, budget and tenant the request names, checked before the input is read: where
/// the batch runs (its tenant and priority).
fn check_request(app: &App, req: &SubmitRequest) -> Result<Placement, UsageError> {
    check_task(app, req)?;
    let placement = app
        .settings
        .tenants
        .place(req.tenant.as_deref(), req.priority, req.budget_usd)
        .map_err(UsageError)?;
    if let Some(b) = req.budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err(UsageError(format!(
            "--budget-usd must be 0 or more, not {b}"
        )));
    }
    Ok(placement)
}

/// What pass 1 found: the items, the bad ones (the first [`MAX_LISTED`] of them listed), and
/// a fingerprint of the whole input that a resumed submit must match.
struct Validated {
    total: u64,
    bad_count: u64,
    listed: Vec<InputError>,
    fingerprint: String,
}

/// Pass 1: validate everything, enqueue nothing.
async fn validate_all(
    app: &App,
    source: &InputSource,
    req: &SubmitRequest,
    keep: Option<&BTreeSet<String>>,
    builder: &mut Builder<'_>,
) -> anyhow::Result<Validated> {
    let mut reader = open(app, source, req, keep).await?;
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
    Ok(Validated {
        total,
        bad_count,
        listed,
        fingerprint: hex::encode(fingerprint.finalize()),
    })
}

/// Which submit an interruption names, and how long its input is.
struct Interrupt<'a> {
    batch_id: &'a str,
    input: &'a str,
    total: u64,
}

impl Interrupt<'_> {
    fn at(&self, staged: u64, sealed: bool, cause: String) -> SubmitInterrupted {
        SubmitInterrupted {
            batch_id: self.batch_id.to_string(),
            input: self.input.to_string(),
            staged,
            total: self.total,
            sealed,
            cause,
        }
    }
}

/// Pass 2 up to the seal: the jobs staged chunk by chunk, each bad line's outcome written,
/// then the seal that commits the batch.
async fn stage_all(
    app: &App,
    source: &InputSource,
    req: &SubmitRequest,
    keep: Option<&BTreeSet<String>>,
    builder: &mut Builder<'_>,
    lease: &mut Lease<'_>,
    interrupt: &Interrupt<'_>,
) -> anyhow::Result<()> {
    let batch_id = interrupt.batch_id;
    // Every real id is in here now: a made-up id for a line without one must not take one.
    let mut taken = std::mem::take(&mut builder.dups);
    let mut reader = open(app, source, req, keep).await?;
    let mut chunk = Vec::with_capacity(CHUNK);
    let (mut seq, mut chunk_no) = (0u64, 0u64);
    let mut staged = 0u64;
    let mut taken_from_us = false;
    let mut invalid = InvalidLines::default();
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
                invalid
                    .add(app, batch_id, seq, &e, &mut taken)
                    .await
                    .map_err(|e| interrupt.at(staged, false, format!("{e:#}")))?;
            }
        }
        seq += 1;
        if chunk.len() >= CHUNK {
            match stage::stage(app.queue.as_ref(), &app.store, lease, chunk_no, &chunk).await {
                Ok(true) => {}
                Ok(false) => {
                    taken_from_us = true;
                    break;
                }
                Err(e) => return Err(interrupt.at(staged, false, e).into()),
            }
            staged += chunk.len() as u64;
            chunk_no += 1;
            chunk.clear();
        }
    }
    if !taken_from_us && !chunk.is_empty() {
        match stage::stage(app.queue.as_ref(), &app.store, lease, chunk_no, &chunk).await {
            Ok(true) => {}
            Ok(false) => taken_from_us = true,
            Err(e) => return Err(interrupt.at(staged, false, e.to_string()).into()),
        }
    }
    if taken_from_us {
        return Err(taken_error(app, batch_id).await);
    }
    invalid
        .flush(app, batch_id)
        .await
        .map_err(|e| interrupt.at(staged, false, format!("{e:#}")))?;
    match stage::seal(app.ledger.as_ref(), lease).await {
        Ok(Sealed::Yes) => {}
        Ok(Sealed::Not(BatchState::Cancelled)) => {
            return Err(taken_error(app, batch_id).await);
        }
        // Every item was a bad line: the batch finished without a job to run.
        Ok(Sealed::Not(_)) => {}
        Err(e) => return Err(interrupt.at(staged, false, e.to_string()).into()),
    }
    Ok(())
}

/// As [`submit_with_id`], but of a folder or prefix only the documents whose ids (paths
/// relative to the input) are in `keep`: pipelines submit just the new objects this way.
pub async fn submit_selected(
    app: &App,
    req: &SubmitRequest,
    batch_id: String,
    keep: Option<&BTreeSet<String>>,
) -> anyhow::Result<Submitted> {
    let placement = check_request(app, req)?;
    let source = InputSource::resolve(&req.input).map_err(|e| UsageError(e.to_string()))?;
    let mut builder = Builder {
        app,
        batch_id: batch_id.clone(),
        task: req.task.clone(),
        dups: DuplicateCheck::default(),
    };
    let Validated {
        total,
        bad_count,
        listed,
        fingerprint,
    } = validate_all(app, &source, req, keep, &mut builder).await?;
    if bad_count > 0 && !req.skip_invalid {
        return Err(InvalidInput {
            errors: listed,
            total_bad: bad_count,
        }
        .into());
    }

    check_deadline(app, req, total).await?;
    probe_store(app, &batch_id).await?;

    let lease_len = app.settings.queue.submit_lease;
    let mut lease = Lease::new(app.ledger.as_ref(), &batch_id, lease_len);

    // Pass 2: the batch record first (`validating`, invisible to workers), then the jobs,
    // staged chunk by chunk, then the seal that commits the batch, then the move to the queue.
    let record = match &req.resume {
        Some(_) => resume_record(app, &batch_id, &fingerprint, total, &lease).await?,
        None => {
            let record = new_record(app, req, &batch_id, total, &fingerprint, &lease);
            let record = BatchRecord {
                tenant: placement.tenant.clone(),
                priority: placement.priority,
                budget_usd: placement.budget_usd,
                ..record
            };
            app.ledger.create(&record).await?;
            record
        }
    };
    let sealed_before = record.submit.as_ref().is_some_and(|s| s.sealed);
    let interrupt = Interrupt {
        batch_id: &batch_id,
        input: &req.input,
        total,
    };
    if !sealed_before {
        stage_all(
            app,
            &source,
            req,
            keep,
            &mut builder,
            &mut lease,
            &interrupt,
        )
        .await?;
    }
    staging::publish(
        app.ledger.as_ref(),
        app.queue.as_ref(),
        &batch_id,
        &batch_id,
        &FairClass {
            tenant: placement.tenant.clone(),
            priority: placement.priority,
            weight: Some(placement.weight),
        },
        Some(&mut lease),
    )
    .await
    .map_err(|e| interrupt.at(total, true, e.to_string()))?;
    let record = app.ledger.get(&batch_id).await?.unwrap_or(record);
    let invalid = bad_count;
    tracing::info!(batch_id = %batch_id, total, invalid, "batch submitted");
    Ok(Submitted {
        record,
        invalid,
        capped: placement.cap_notice(),
    })
}

/// A deadline that even real-time could not meet is refused before anything is enqueued,
/// with the numbers it was judged on (the measured real-time throughput, or with none yet
/// the configured rate; see `batchyard_workers::offload::rate`).
async fn check_deadline(app: &App, req: &SubmitRequest, total: u64) -> anyhow::Result<()> {
    let Some(deadline) = req.deadline_at else {
        return Ok(());
    };
    let (needed_secs, basis) = realtime_secs(app, total).await;
    let now = batchyard_jobs::batch::now_secs();
    let left = deadline.saturating_sub(now);
    if needed_secs > left {
        return Err(crate::error::DeadlineUnreachable {
            left_secs: left,
            items: total,
            needed_secs,
            basis,
        }
        .into());
    }
    Ok(())
}

/// How long `items` items would take real-time, in whole seconds, and what that was judged on:
/// what a deadline is checked against at submit, and what `estimate --deadline` prints.
pub(crate) async fn realtime_secs(app: &App, items: u64) -> (u64, String) {
    let measured = app.meter.measure().await;
    let left = batchyard_workers::offload::rate::Left {
        unattributed: items,
        ..Default::default()
    };
    let needed = batchyard_workers::offload::rate::realtime_needed(
        &app.settings.catalog,
        &left,
        measured.as_ref(),
        app.settings.offload.realtime_items_per_sec,
    );
    (needed.secs.ceil() as u64, needed.basis.to_string())
}
