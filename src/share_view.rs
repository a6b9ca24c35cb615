//! The share of the workers each batch and tenant is getting, as `status`, the API and the
//! dashboard show it: jobs dispatched to workers in the last minute ÷ all dispatched, beside
//! the target the weights set (a tenant's weight over the weights of tenants with work at
//! the highest priority; a batch's part of its tenant's target). A replay's backlog
//! (`<batch>.<replay>`) counts as its batch's.

use batchyard_jobs::batch::BatchRecord;
use batchyard_jobs::queue::Shares;
use serde_json::{Value, json};

use crate::app::App;

/// The queue's shares; empty (and a warning) when they can't be read, so a view never fails
/// for them.
pub async fn read(app: &App) -> Shares {
    match app.queue.shares().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the fair-share counters");
            Shares::default()
        }
    }
}

fn of_batch(staging: &str) -> &str {
    staging.split_once('.').map_or(staging, |(b, _)| b)
}

/// (dispatched in the window, target, waiting in a backlog) of one batch.
fn batch_figures(shares: &Shares, batch_id: &str) -> (u64, f64, bool) {
    let dispatched = shares
        .batches
        .iter()
        .filter(|(s, _)| of_batch(s) == batch_id)
        .map(|(_, n)| n)
        .sum();
    let mine = shares.active.keys().filter(|s| of_batch(s) == batch_id);
    let (mut target, mut waiting) = (0.0, false);
    for staging in mine {
        target += shares.batch_target(staging);
        waiting = true;
    }
    (dispatched, target, waiting)
}

/// `share` of one batch: its tenant and priority, what it got and should get.
pub fn batch_json(shares: &Shares, record: &BatchRecord) -> Value {
    let (dispatched, target, waiting) = batch_figures(shares, &record.id);
    json!({
        "tenant": record.tenant,
        "priority": record.priority,
        "window_secs": shares.window_secs,
        "dispatched": dispatched,
        "share": round(shares.share(dispatched)),
        "target": round(target),
        "backlog": waiting,
    })
}

/// One line: `share      12% of dispatches in the last 60 s (target 50%), tenant t, priority p`.
pub fn batch_line(shares: &Shares, record: &BatchRecord) -> String {
    let (dispatched, target, _) = batch_figures(shares, &record.id);
    format!(
        "share      {} of dispatches in the last {} s (target {}), tenant {}, priority {}",
        pct(shares.share(dispatched)),
        shares.window_secs,
        pct(target),
        record.tenant,
        record.priority
    )
}

/// Every tenant that has work or got some in the window.
pub fn tenants_json(shares: &Shares) -> Vec<Value> {
    tenants(shares)
        .into_iter()
        .map(|t| {
            let dispatched = shares.tenants.get(&t).copied().unwrap_or(0);
            json!({
                "tenant": t,
                "weight": shares.weights.get(&t).copied().unwrap_or(1),
                "dispatched": dispatched,
                "share": round(shares.share(dispatched)),
                "target": round(shares.tenant_target(&t)),
            })
        })
        .collect()
}

/// The tenants table of `status`, with a heading; empty when nothing ran or waits.
pub fn tenants_text(shares: &Shares) -> String {
    let names = tenants(shares);
    if names.is_empty() {
        return String::new();
    }
    let mut s = format!(
        "TENANTS (share of dispatches in the last {} s)\n{:<24} {:>8} {:>10} {:>8} {:>8}\n",
        shares.window_secs, "TENANT", "WEIGHT", "DISPATCHED", "SHARE", "TARGET"
    );
    for t in names {
        let dispatched = shares.tenants.get(&t).copied().unwrap_or(0);
        s.push_str(&format!(
            "{:<24} {:>8} {:>10} {:>8} {:>8}\n",
            t,
            shares.weights.get(&t).copied().unwrap_or(1),
            dispatched,
            pct(shares.share(dispatched)),
            pct(shares.tenant_target(&t))
        ));
    }
    s
}

/// `SHARE  TARGET` cells of one batch for the active batches table.
pub fn batch_cells(shares: &Shares, batch_id: &str) -> (String, String) {
    let (dispatched, target, _) = batch_figures(shares, batch_id);
    (pct(shares.share(dispatched)), pct(target))
}

fn tenants(shares: &Shares) -> Vec<String> {
    let mut names: Vec<String> = shares.tenants.keys().cloned().collect();
    names.extend(shares.active.values().map(|(_, t)| t.clone()));
    names.sort();
    names.dedup();
    names
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replays_count_as_their_batch_and_targets_follow_weights() {
        let mut shares = Shares {
            window_secs: 60,
            ..Shares::default()
        };
        shares.active.insert("batch_a".into(), (0, "x".into()));
        shares.active.insert("batch_b.r1".into(), (0, "y".into()));
        shares.weights.insert("x".into(), 3);
        shares.batches.insert("batch_a".into(), 30);
        shares.batches.insert("batch_b.r1".into(), 10);
        shares.tenants.insert("x".into(), 30);
        shares.tenants.insert("y".into(), 10);
        let record = BatchRecord::new("batch_b".into(), 10, "file://x".into(), 0);
        let view = batch_json(&shares, &record);
        assert_eq!(
            (view["share"].as_f64(), view["target"].as_f64()),
            (Some(0.25), Some(0.25))
        );
        let t = tenants_json(&shares);
        assert_eq!(t[0]["target"].as_f64(), Some(0.75));
        assert!(tenants_text(&shares).contains("75%"));
        assert!(batch_line(&shares, &record).contains("tenant default, priority normal"));
    }
}
