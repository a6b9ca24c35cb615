//! `batchyard status [BATCH_ID]`: the queue's depth with active and recent batches (of one
//! tenant with `--tenant`), or one batch.
//! A batch with a deadline also shows its offload lane (items per lane, provider batches,
//! time left; `offload` in `--json`), as unknown when the store or Redis doesn't answer.
//!
//! - `--watch` redraws the view every [`REFRESH`] until Ctrl-C (which exits 0): on a terminal
//!   the screen is cleared first; otherwise each snapshot follows the last after a blank line
//!   (with `--json`, one JSON object per line and no blank lines).
//! - `--fail-above N` (queue view only, not with `--watch`): after printing the view, exits 1
//!   when the total pending jobs, pending + delayed (waiting to run; in-flight and dead jobs
//!   are not counted), are above N. For cron and monitoring checks.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::time::Duration;

use batchyard_jobs::batch::BatchRecord;
use batchyard_jobs::queue::{QueueDepth, Shares};
use serde_json::{Value, json};

use crate::app::App;
use batchyard_workers::offload::view::LaneView;

use crate::batch_view::batch_json;
use crate::cli::StatusArgs;
use crate::error::UsageError;

/// How often `--watch` redraws.
const REFRESH: Duration = Duration::from_secs(2);
/// One snapshot may take this long to read.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Active batches are looked for among this many newest batches.
const SCAN: usize = 200;
/// Finished batches shown in the text view.
const RECENT_FINISHED: usize = 10;
/// Batches (any state) in the JSON `batches` list.
const RECENT_JSON: usize = 20;

pub async fn status(
    config: Option<&Path>,
    args: &StatusArgs,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    if args.fail_above.is_some() && args.batch_id.is_some() {
        return Err(UsageError(
            "--fail-above checks the queue depth; leave out the batch id".into(),
        )
        .into());
    }
    if args.tenant.is_some() && args.batch_id.is_some() {
        return Err(
            UsageError("--tenant lists a tenant's batches; leave out the batch id".into()).into(),
        );
    }
    if args.fail_above.is_some() && args.watch {
        return Err(
            UsageError("--fail-above is a one-shot check; leave out --watch".into()).into(),
        );
    }
    let settings = super::load_settings(config, env)?;
    let app = App::connect(settings, None, false, "status").await?;
    if args.watch {
        return watch(&app, args).await;
    }
    let snapshot = read(&app, args).await?;
    print!("{}", snapshot.render(&app, args.json));
    if let (Some(limit), Snapshot::Queue(q)) = (args.fail_above, &snapshot) {
        let total = q.total_pending();
        if total > limit {
            anyhow::bail!(
                "{total} job(s) pending in queue {} (pending {} + delayed {}), above --fail-above {limit}",
                q.name,
                q.depth.pending,
                q.depth.delayed
            );
        }
    }
    Ok(())
}

/// Redraws until Ctrl-C. A snapshot that can't be read is shown as an error and retried.
async fn watch(app: &App, args: &StatusArgs) -> anyhow::Result<()> {
    let clear = std::io::stdout().is_terminal() && !args.json;
    let shutdown = super::shutdown_signal();
    tokio::pin!(shutdown);
    let mut first = true;
    loop {
        let body = tokio::select! {
            snapshot = read(app, args) => match snapshot {
                Ok(s) => s.render(app, args.json),
                Err(e) if args.batch_id.is_some() && e.downcast_ref::<UsageError>().is_some() => {
                    return Err(e);
                }
                Err(e) => {
                    let e = format!("{e:#}; retrying in {}s", REFRESH.as_secs());
                    if args.json {
                        format!("{}\n", json!({ "error": e }))
                    } else {
                        format!("error: {e}\n")
                    }
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let mut out = std::io::stdout().lock();
        if clear {
            write!(out, "\x1b[2J\x1b[H")?;
        } else if !first && !args.json {
            writeln!(out)?;
        }
        write!(out, "{body}")?;
        out.flush()?;
        drop(out);
        first = false;
        tokio::select! {
            () = tokio::time::sleep(REFRESH) => {}
            () = &mut shutdown => return Ok(()),
        }
    }
}

enum Snapshot {
    /// A batch, what its queued items wait for, its offload lane (with a deadline), and
    /// the shares of the workers.
    Batch(Box<BatchRecord>, Vec<String>, Option<LaneView>, Shares),
    Queue(QueueView),
}

struct QueueView {
    name: String,
    depth: QueueDepth,
    /// Of `depth.dead`, the jobs lost rather than ended with an ordinary error.
    lost: u64,
    /// Newest first.
    batches: Vec<BatchRecord>,
    /// The offload lanes of the active batches with a deadline, by batch id.
    lanes: BTreeMap<String, LaneView>,
    /// What each batch and tenant is getting of the workers.
    shares: Shares,
}

impl QueueView {
    /// Jobs waiting to run: pending plus delayed.
    fn total_pending(&self) -> u64 {
        self.depth.pending + self.depth.delayed
    }
}

async fn read(app: &App, args: &StatusArgs) -> anyhow::Result<Snapshot> {
    let reading = async {
        match &args.batch_id {
            Some(id) => match app.ledger.get(id).await? {
                Some(record) => {
                    let waits = if record.state.is_terminal() {
                        Vec::new()
                    } else {
                        crate::batch_view::waiting_for(app).await
                    };
                    let lane = crate::batch_view::lane(app, &record).await;
                    let shares = crate::share_view::read(app).await;
                    Ok(Snapshot::Batch(Box::new(record), waits, lane, shares))
                }
                None => Err(UsageError(format!(
                    "batch {id} was not found; `batchyard status` lists recent batches"
                ))
                .into()),
            },
            None => {
                let batches = match &args.tenant {
                    Some(tenant) => app.ledger.list_tenant(tenant, SCAN).await?,
                    None => app.ledger.list(SCAN).await?,
                };
                // At once: each read waits at most its own timeout for a store that hangs.
                let active = batches.iter().filter(|r| !r.state.is_terminal());
                let lanes = futures::future::join_all(active.map(|r| async {
                    crate::batch_view::lane(app, r)
                        .await
                        .map(|lane| (r.id.clone(), lane))
                }))
                .await
                .into_iter()
                .flatten()
                .collect();
                Ok(Snapshot::Queue(QueueView {
                    name: app.queue.name().to_string(),
                    depth: app.queue.depth().await?,
                    lost: app.queue.lost().await?,
                    batches,
                    lanes,
                    shares: crate::share_view::read(app).await,
                }))
            }
        }
    };
    tokio::time::timeout(READ_TIMEOUT, reading)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "reading the status took longer than {}s; check redis",
                READ_TIMEOUT.as_secs()
            ))
        })
}

impl Snapshot {
    /// The whole view, ending with a newline.
    fn render(&self, app: &App, json: bool) -> String {
        match (self, json) {
            (Self::Batch(record, waits, lane, shares), true) => {
                let mut view = batch_json(record, &app.store);
                view["share"] = crate::share_view::batch_json(shares, record);
                view["waiting_for"] = json!(waits);
                view["offload"] = json!(lane);
                format!("{}\n", crate::batch_view::json_line(&view))
            }
            (Self::Batch(record, waits, lane, shares), false) => {
                let mut text = batch_text(record, &batch_json(record, &app.store));
                if !record.state.is_terminal() {
                    let _ = writeln!(text, "{}", crate::share_view::batch_line(shares, record));
                }
                for line in lane.iter().flat_map(crate::batch_view::lane_lines) {
                    let _ = writeln!(text, "{line}");
                }
                for w in waits {
                    let _ = writeln!(text, "waiting    {w}");
                }
                text
            }
            (Self::Queue(q), true) => {
                format!("{}\n", crate::batch_view::json_line(&queue_json(q, app)))
            }
            (Self::Queue(q), false) => queue_text(q),
        }
    }
}

fn batch_text(record: &BatchRecord, view: &Value) -> String {
    let c = record.counts;
    let mut s = String::new();
    let _ = writeln!(s, "batch      {}", record.id);
    let _ = writeln!(s, "status     {}", record.state.as_str());
    let _ = writeln!(
        s,
        "items      {} total, {} completed, {} failed",
        c.total, c.completed, c.failed
    );
    let _ = writeln!(s, "progress   {}", progress(record));
    let _ = writeln!(s, "cost       ${:.6}", record.cost_usd());
    if let Some(b) = record.budget_usd {
        let exhausted = if record.budget_exhausted_at.is_some() {
            " (exhausted)"
        } else {
            ""
        };
        let _ = writeln!(s, "budget     ${b:.4}{exhausted}");
    }
    if let Some(out) = view.get("output_file").and_then(|v| v.as_str()) {
        let _ = writeln!(s, "output     {out}");
    }
    if let Some(submit) = &record.submit {
        let what = if submit.sealed {
            "submitted; its jobs are being moved into the queue"
        } else if record.state == batchyard_jobs::batch::BatchState::Validating {
            "being submitted: nothing of it runs until the whole input is staged"
        } else {
            "its submit stopped before the whole input was staged"
        };
        let _ = writeln!(s, "submit     {what}");
    }
    if let Some(f) = &record.failure {
        let _ = writeln!(s, "failure    {}: {}", f.code, f.message);
    }
    s
}

fn queue_json(q: &QueueView, app: &App) -> Value {
    let d = q.depth;
    let active: Vec<Value> = q
        .batches
        .iter()
        .filter(|r| !r.state.is_terminal())
        .map(|r| {
            let mut view = batch_json(r, &app.store);
            view["share"] = crate::share_view::batch_json(&q.shares, r);
            if let Some(lane) = q.lanes.get(&r.id) {
                view["offload"] = json!(lane);
            }
            view
        })
        .collect();
    let recent: Vec<Value> = q
        .batches
        .iter()
        .take(RECENT_JSON)
        .map(|r| batch_json(r, &app.store))
        .collect();
    json!({
        "queues": [{
            "name": q.name,
            "pending": d.pending,
            "in_flight": d.in_flight,
            "delayed": d.delayed,
            "dead": d.dead,
            "lost": q.lost,
            "total_pending": q.total_pending(),
        }],
        "total_pending": q.total_pending(),
        "active_batches": active,
        "tenants": crate::share_view::tenants_json(&q.shares),
        "share_window_secs": q.shares.window_secs,
        "batches": recent,
    })
}

fn queue_text(q: &QueueView) -> String {
    let d = q.depth;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "QUEUE", "PENDING", "IN_FLIGHT", "DELAYED", "DEAD", "LOST"
    );
    let _ = writeln!(
        s,
        "{:<16} {:>10} {:>10} {:>10} {:>10} {:>10}",
        q.name, d.pending, d.in_flight, d.delayed, d.dead, q.lost
    );
    let _ = writeln!(
        s,
        "total pending (pending + delayed): {}",
        q.total_pending()
    );
    let (active, finished): (Vec<&BatchRecord>, Vec<&BatchRecord>) =
        q.batches.iter().partition(|r| !r.state.is_terminal());
    let _ = writeln!(s);
    if active.is_empty() {
        let _ = writeln!(s, "no active batches");
    } else {
        let _ = writeln!(s, "ACTIVE BATCHES");
        batch_table(&mut s, &active, Some(&q.shares));
        for (id, lane) in &q.lanes {
            let _ = writeln!(
                s,
                "{id}: deadline {}, {}",
                lane.left_text(),
                lane.lanes_text()
            );
        }
    }
    let finished: Vec<&BatchRecord> = finished.into_iter().take(RECENT_FINISHED).collect();
    if !finished.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "RECENT FINISHED BATCHES");
        batch_table(&mut s, &finished, None);
    }
    let tenants = crate::share_view::tenants_text(&q.shares);
    if !tenants.is_empty() {
        let _ = writeln!(s);
        s.push_str(&tenants);
    }
    s
}

/// With `shares` (active batches), also tenant, priority and the share of the workers.
fn batch_table(s: &mut String, batches: &[&BatchRecord], shares: Option<&Shares>) {
    let _ = write!(
        s,
        "{:<34} {:<12} {:>20} {:>8} {:>12} {:>12}",
        "BATCH", "STATUS", "PROGRESS", "FAILED", "COST_USD", "BUDGET_USD"
    );
    if shares.is_some() {
        let _ = write!(
            s,
            " {:<16} {:>8} {:>6} {:>6}",
            "TENANT", "PRIORITY", "SHARE", "TARGET"
        );
    }
    let _ = writeln!(s);
    for r in batches {
        let budget = r
            .budget_usd
            .map_or_else(|| "-".to_string(), |b| format!("{b:.4}"));
        let _ = write!(
            s,
            "{:<34} {:<12} {:>20} {:>8} {:>12.6} {:>12}",
            r.id,
            r.state.as_str(),
            progress(r),
            r.counts.failed,
            r.cost_usd(),
            budget
        );
        if let Some(shares) = shares {
            let (share, target) = crate::share_view::batch_cells(shares, &r.id);
            let _ = write!(
                s,
                " {:<16} {:>8} {:>6} {:>6}",
                r.tenant,
                r.priority.to_string(),
                share,
                target
            );
        }
        let _ = writeln!(s);
    }
}

/// `120/500 (24%)`: settled items of the total.
fn progress(r: &BatchRecord) -> String {
    let total = r.counts.total;
    let settled = r.settled();
    if total == 0 {
        return format!("{settled}/{total}");
    }
    let pct = (settled as f64 / total as f64 * 100.0).floor();
    format!("{settled}/{total} ({pct:.0}%)")
}
