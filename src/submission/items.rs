//! An input's items as jobs: each read item checked (ids unique, documents rendered with the
//! task) into a job or a bad line (written by [`super::invalid`]). [`Scanner`] reads them
//! without enqueueing, for `estimate` and `route`.

use std::collections::BTreeSet;

use batchyard_jobs::input::{
    DuplicateCheck, InputError, InputOptions, InputReader, InputSource, Item,
};
use batchyard_jobs::job::{Job, Route, job_id_for};

use super::request::SubmitRequest;
use crate::app::App;
use crate::error::UsageError;

/// The task the request names, if any, is configured.
pub(super) fn check_task(app: &App, req: &SubmitRequest) -> Result<(), UsageError> {
    if let Some(t) = &req.task
        && app.settings.catalog.task(t).is_none()
    {
        let known: Vec<String> = app.settings.catalog.task_keys().into_iter().collect();
        return Err(UsageError(format!(
            "unknown task {t:?}; configured tasks: {}",
            known.join(", ")
        )));
    }
    Ok(())
}

pub(super) enum Checked {
    Job(Job),
    Bad(InputError),
}

pub(super) struct Builder<'a> {
    pub(super) app: &'a App,
    pub(super) batch_id: String,
    pub(super) task: Option<String>,
    pub(super) dups: DuplicateCheck,
}

impl Builder<'_> {
    /// Turns one read result into a job or a bad line. `seq` is its place in the batch.
    pub(super) fn check(
        &mut self,
        read: Result<Item, InputError>,
        seq: u64,
    ) -> Result<Checked, InputError> {
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
        let job_id = job_id_for(&self.batch_id, &custom_id);
        Ok(Checked::Job(Job::first_run(
            &self.batch_id,
            job_id,
            seq,
            custom_id,
            body,
            route,
        )))
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

pub(super) async fn open(
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
        check_task(app, req)?;
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

/// Whether a read item belongs to the batch: all of them without a selection; else only
/// documents whose id is selected. Fatal errors always count, so a broken input still fails.
pub(super) fn selected(read: &Result<Item, InputError>, keep: Option<&BTreeSet<String>>) -> bool {
    let Some(keep) = keep else { return true };
    match read {
        Ok(item) => keep.contains(item.custom_id()),
        Err(e) if e.fatal => true,
        Err(e) => e.custom_id.as_ref().is_some_and(|id| keep.contains(id)),
    }
}
