//! One job's walk down its plan: for each candidate, the result cache, then a budget
//! reservation, then the guarded provider call; the answer is checked, and a failed check
//! escalates to the next candidate. Every attempt's cost counts, and every checked answer
//! teaches the adequacy model.
//!
//! - [`Cascade::run`] (here): the walk over the plan's candidates.
//! - `attempt`: one candidate's answer: the cache, or a reservation and the guarded call; a
//!   failed call escalates, goes back to the queue, or ends the walk.
//! - `verdict`: the checks on an answer, and what a passed or failed check makes of the run.
//! - `unavailable`: when every adequate model is cooling down or paused.
//! - `decision`: what the runner gets back.
//! - `warm`: cache-warm dispatch: the first call for a (model, cached prefix) goes alone, the
//!   rest follow it, so the provider's prompt cache is written once and then read.

use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, usd_to_nanos};
use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};

mod attempt;
mod decision;
mod unavailable;
mod verdict;
mod warm;

pub(crate) use decision::Decision;

use super::budget::Budget;
use super::cache::ResultCache;
use crate::call::Guards;
use crate::call::retry::RetryPolicy;
use crate::catalog::{Catalog, TaskSpec};
use crate::provider::ProviderError;
use crate::route::Router;
use crate::route::router::{Candidate, Plan};
use unavailable::Unavailable;

/// The cascade of one worker process, shared by its concurrent jobs: what a job's walk down
/// its plan needs, and nothing of queues, storage or settlement.
pub(crate) struct Cascade {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) router: Router,
    pub(crate) guards: Guards,
    /// The result cache across batches; `None` when `[cache] enabled = false`.
    pub(crate) cache: Option<ResultCache>,
    budget: Budget,
    retry: RetryPolicy,
    options: Limits,
    /// Which cached prefixes this worker has warmed (cache-warm dispatch).
    warmth: warm::Warmth,
}

/// The job-level limits a cascade keeps to (the runner's options say what each means).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) max_attempts: u32,
    pub(crate) unavailable_delay: Duration,
    pub(crate) paused_ends_items: bool,
}

/// What one run of a job has spent and learned so far.
#[derive(Default)]
struct Run {
    ext: Extension,
    cost: f64,
    /// Spend already added to the ledger through reservations (not to be settled again).
    committed_nanos: i64,
}

impl Run {
    fn end(mut self, line: impl FnOnce(Extension) -> OutputLine, dead: bool) -> Decision {
        self.ext.cost_usd = self.cost;
        Decision::End {
            line: line(self.ext),
            dead,
            committed_nanos: self.committed_nanos,
        }
    }

    /// Takes the run out to end it, from code that only borrows it.
    fn take(&mut self) -> Run {
        std::mem::take(self)
    }
}

/// One job's walk down its plan: what it runs on, and what the candidates tried so far left.
struct Walk<'a> {
    job: &'a Job,
    plan: &'a Plan,
    task: Option<&'a TaskSpec>,
    budgeted: bool,
    cache: Option<&'a ResultCache>,
    last_error: Option<ProviderError>,
    /// The last failure was one the queue retries, and the item is out of attempts.
    exhausted: bool,
    unavailable: Unavailable,
    /// After a context overflow only a larger context window can help.
    needs_context_over: Option<u64>,
    /// The batch may still send this item to a provider batch API (its deadline allows).
    offload: bool,
}

/// Where the walk goes after one candidate.
enum Next {
    /// On to the next candidate.
    Continue,
    /// No further candidate can help: end with the last error.
    Stop,
    /// The run is decided.
    End(Box<Decision>),
}

impl Next {
    fn end(decision: Decision) -> Self {
        Self::End(Box::new(decision))
    }
}

impl Cascade {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        budget: Budget,
        guards: Guards,
        retry: RetryPolicy,
        options: Limits,
    ) -> Self {
        Self {
            catalog,
            router: Router::default(),
            guards,
            cache: None,
            budget,
            retry,
            options,
            warmth: warm::Warmth::default(),
        }
    }

    /// Runs `job` through its cascade. `record` is the batch (budget, cache opt-out).
    pub(crate) async fn run(&self, job: &Job, record: Option<&BatchRecord>) -> Decision {
        let mut run = Run::default();
        if let Some(carried) = &job.carried {
            run.ext = (**carried).clone();
        }
        let plan = match self.router.plan(&self.catalog, job).await {
            Ok(plan) => plan,
            Err(e) => {
                return run.end(
                    |ext| {
                        OutputLine::failure(
                            &job.job_id,
                            &job.custom_id,
                            e.code(),
                            e.to_string(),
                            ext,
                        )
                    },
                    false,
                );
            }
        };
        let mut walk = Walk {
            job,
            task: plan.task.as_deref().and_then(|t| self.catalog.task(t)),
            plan: &plan,
            budgeted: record.is_some_and(|r| r.budget_usd.is_some()),
            cache: self
                .cache
                .as_ref()
                .filter(|_| !record.is_some_and(|r| r.no_cache)),
            last_error: None,
            exhausted: false,
            unavailable: Unavailable::default(),
            needs_context_over: None,
            offload: !job.realtime && record.is_some_and(BatchRecord::offloading),
        };
        let count = plan.candidates.len();
        for (index, cand) in plan.candidates.iter().enumerate() {
            let has_next = index + 1 < count && !plan.pinned;
            match self
                .try_candidate(&mut walk, cand, has_next, &mut run)
                .await
            {
                Next::Continue => continue,
                Next::Stop => break,
                Next::End(decision) => return *decision,
            }
        }
        self.unanswered(walk, run).await
    }

    async fn try_candidate(
        &self,
        walk: &mut Walk<'_>,
        cand: &Candidate,
        has_next: bool,
        run: &mut Run,
    ) -> Next {
        let model = &cand.model;
        tracing::Span::current().record("model", model.key.as_str());
        let Some(provider) = self.catalog.provider(&model.provider) else {
            return Next::Continue;
        };
        if walk
            .needs_context_over
            .is_some_and(|window| model.context_window <= window)
        {
            return Next::Continue;
        }
        match self.answer(walk, cand, provider, has_next, run).await {
            Ok((done, origin)) => self.judge(walk, model, has_next, done, origin, run).await,
            Err(next) => next,
        }
    }

    /// No candidate answered: every adequate model unavailable, or the last error ends it.
    async fn unanswered(&self, walk: Walk<'_>, run: Run) -> Decision {
        if walk.last_error.is_none() && !walk.unavailable.is_empty() {
            return self.all_unavailable(walk.job, &walk.unavailable, run).await;
        }
        let (code, message) = match walk.last_error {
            Some(e) => (e.kind.code(), e.message),
            None => (
                codes::NO_ADEQUATE_MODEL,
                "no candidate model has a provider".to_string(),
            ),
        };
        let job = walk.job;
        run.end(
            |ext| OutputLine::failure(&job.job_id, &job.custom_id, code, message, ext),
            walk.exhausted,
        )
    }

    /// Replaces a held reservation with the actual spend.
    async fn commit(&self, job: &Job, reserved: bool, spent: f64, run: &mut Run) {
        if reserved {
            run.committed_nanos += self.budget.commit(job, spent).await;
        }
    }

    /// Parks the job until a provider batch of `model` answers it, carrying what this run
    /// spent. Any earlier batch answer is used up.
    fn park(&self, job: &Job, model: &str, run: Run) -> Decision {
        let mut next = carry(job.clone(), &run);
        next.prefetched = None;
        next.offloaded_to.push(model.to_owned());
        next.carried = Some(Box::new(run.ext.clone()));
        Decision::Park {
            uncommitted_nanos: usd_to_nanos(run.cost) - run.committed_nanos,
            job: next,
        }
    }

    /// Puts the job back for later, carrying what this run spent.
    async fn later(&self, next: Job, delay: Duration, run: Run) -> Decision {
        Decision::Later {
            uncommitted_nanos: usd_to_nanos(run.cost) - run.committed_nanos,
            job: carry(next, &run),
            delay,
        }
    }
}

/// The job to run next time, carrying this run's spend so the item's line counts it.
fn carry(mut job: Job, run: &Run) -> Job {
    job.prior_cost_usd += run.cost;
    job
}
