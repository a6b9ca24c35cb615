//! A batch's ETA from its recent settle rate, and the [`BATCH_ETA`] gauge rendered from
//! [`ETAS`] (kept outside the recorder; see the module map in `mod.rs`).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::Instant;

use batchyard_jobs::batch::BatchRecord;

use super::{BATCH_ETA, ETAS, RATE_WINDOW};

/// Seconds until `record` has settled every item, at the settle rate seen over the last
/// [`RATE_WINDOW`] (or since the batch started, until there are two samples). `None` while
/// nothing has settled: no rate, no estimate.
pub(super) fn estimate(
    record: &BatchRecord,
    history: &mut VecDeque<(Instant, u64)>,
    now: Instant,
    now_secs: u64,
) -> Option<f64> {
    let settled = record.settled();
    let remaining = record.counts.total.saturating_sub(settled);
    history.push_back((now, settled));
    // Keep one sample older than the window, so the rate spans the whole window.
    while history.len() > 2
        && history
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
    {
        history.pop_front();
    }
    if remaining == 0 {
        return Some(0.0);
    }
    let windowed = match (history.front(), history.back()) {
        (Some((t0, s0)), Some((t1, s1))) if t1 > t0 && s1 > s0 => {
            Some((s1 - s0) as f64 / t1.duration_since(*t0).as_secs_f64())
        }
        _ => None,
    };
    let since_start = record.in_progress_at.and_then(|started| {
        let elapsed = now_secs.saturating_sub(started);
        (elapsed > 0 && settled > 0).then(|| settled as f64 / elapsed as f64)
    });
    let rate = if history.len() >= 2 {
        windowed
    } else {
        since_start
    };
    rate.filter(|r| *r > 0.0).map(|r| remaining as f64 / r)
}

/// Appends the batch ETA gauge in the Prometheus text format (nothing when no batch is
/// active here).
pub fn render_batch_etas(out: &mut String) {
    let Ok(etas) = ETAS.lock() else {
        return;
    };
    if etas.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "# HELP {BATCH_ETA} Estimated seconds until an active batch has settled every item, at the recent settle rate"
    );
    let _ = writeln!(out, "# TYPE {BATCH_ETA} gauge");
    for (batch, eta) in etas.iter() {
        let label = batch
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = writeln!(out, "{BATCH_ETA}{{batch=\"{label}\"}} {eta}");
    }
}
