//! Usage per tenant for chargeback: batches, items and spend of the batches created in a
//! period, summed from the ledger's batch records (`batchyard usage`, `GET /api/usage`).
//!
//! A batch counts in the period it was created in, with everything it has spent so far (an
//! active batch's figures still grow, and the report says how many were active). Only
//! records still kept count: `[retention] batches` (30 days by default) bounds how far back
//! a report can reach, and the report says when the ledger held more records than it read.

use std::collections::BTreeMap;

use batchyard_jobs::batch::{BatchRecord, nanos_to_usd};
use serde::Serialize;
use serde_json::{Value, json};

use crate::deadline::{self, Deadline};

/// The most batch records one report reads.
pub const MAX_RECORDS: usize = 100_000;

/// The created-at interval a report covers, Unix seconds, `until` excluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub since: u64,
    pub until: u64,
}

impl Period {
    /// `since` and `until` as given (`30d` ago, an RFC 3339 time or a `YYYY-MM-DD` date in UTC);
    /// `since` defaults to 30 days ago, `until` to now. `flag` names the option in errors.
    pub fn parse(
        since: Option<&str>,
        until: Option<&str>,
        now: u64,
        flag: &str,
    ) -> Result<Self, String> {
        let since = match since {
            Some(t) => instant(t, now, &format!("{flag}since"))?,
            None => now.saturating_sub(30 * 86_400),
        };
        let until = match until {
            Some(t) => instant(t, now, &format!("{flag}until"))?,
            None => now.saturating_add(1),
        };
        if since >= until {
            return Err(format!(
                "{flag}since must be before {flag}until; give an earlier start or a later end"
            ));
        }
        Ok(Self { since, until })
    }

    fn holds(&self, at: u64) -> bool {
        (self.since..self.until).contains(&at)
    }
}

/// A span back from `now`, an RFC 3339 time, or a date (its midnight, UTC).
fn instant(text: &str, now: u64, name: &str) -> Result<u64, String> {
    if let Ok(day) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        let at = day.and_time(chrono::NaiveTime::MIN).and_utc().timestamp();
        return u64::try_from(at).map_err(|_| format!("{name}: {text:?} is before 1970"));
    }
    match deadline::parse(text) {
        Ok(Deadline::In(span)) => Ok(now.saturating_sub(span.as_secs())),
        Ok(Deadline::At(at)) => Ok(at),
        Err(_) => Err(format!(
            "{name}: {text:?} is not a time: give a span back from now such as 30d or 12h, a date \
             such as 2026-11-01, or a time such as 2026-11-01T00:00:00Z"
        )),
    }
}

/// One tenant's (or one task's) sums.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Sums {
    pub batches: u64,
    /// Batches not yet ended: their figures may still grow.
    pub active_batches: u64,
    pub items: u64,
    pub completed: u64,
    pub failed: u64,
    #[serde(skip)]
    spent_nanos: i64,
    pub spent_usd: f64,
}

impl Sums {
    fn add(&mut self, record: &BatchRecord) {
        self.batches += 1;
        self.active_batches += u64::from(!record.state.is_terminal());
        self.items += record.counts.total;
        self.completed += record.counts.completed;
        self.failed += record.counts.failed;
        self.spent_nanos = self.spent_nanos.saturating_add(record.spent_nanos.max(0));
        self.spent_usd = nanos_to_usd(self.spent_nanos);
    }
}

/// One tenant's line: its sums and the same per task (`-` for batches without one).
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct TenantUsage {
    pub tenant: String,
    #[serde(flatten)]
    pub sums: Sums,
    pub by_task: BTreeMap<String, Sums>,
}

/// A whole report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Usage {
    pub since: u64,
    pub until: u64,
    pub tenants: Vec<TenantUsage>,
    pub total: Sums,
    /// The ledger held more records than the report read ([`MAX_RECORDS`]): older batches of
    /// the period may be missing.
    pub truncated: bool,
}

/// Sums `records` created within `period`, for the tenants `wanted` lets through.
pub fn summarize<'a>(
    records: impl IntoIterator<Item = &'a BatchRecord>,
    period: Period,
    wanted: impl Fn(&str) -> bool,
    truncated: bool,
) -> Usage {
    let mut tenants: BTreeMap<String, TenantUsage> = BTreeMap::new();
    let mut total = Sums::default();
    for record in records {
        if !period.holds(record.created_at) || !wanted(&record.tenant) {
            continue;
        }
        let line = tenants
            .entry(record.tenant.clone())
            .or_insert_with(|| TenantUsage {
                tenant: record.tenant.clone(),
                ..TenantUsage::default()
            });
        line.sums.add(record);
        let task = record.task.clone().unwrap_or_else(|| "-".into());
        line.by_task.entry(task).or_default().add(record);
        total.add(record);
    }
    let mut tenants: Vec<TenantUsage> = tenants.into_values().collect();
    tenants.sort_by_key(|t| std::cmp::Reverse(t.sums.spent_nanos));
    Usage {
        since: period.since,
        until: period.until,
        tenants,
        total,
        truncated,
    }
}

impl Usage {
    pub fn json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|e| json!({ "error": e.to_string() }))
    }

    /// The table `batchyard usage` prints.
    pub fn render(&self) -> String {
        let when = |t: u64| {
            chrono::DateTime::from_timestamp(t as i64, 0).map_or_else(
                || t.to_string(),
                |d| d.format("%Y-%m-%d %H:%M UTC").to_string(),
            )
        };
        let mut out = format!(
            "usage of batches created {} to {}\n{:<24} {:>8} {:>8} {:>10} {:>10} {:>8} {:>12}\n",
            when(self.since),
            when(self.until),
            "TENANT",
            "BATCHES",
            "ACTIVE",
            "ITEMS",
            "COMPLETED",
            "FAILED",
            "SPENT_USD"
        );
        let row = |name: &str, s: &Sums| {
            format!(
                "{name:<24} {:>8} {:>8} {:>10} {:>10} {:>8} {:>12.4}\n",
                s.batches, s.active_batches, s.items, s.completed, s.failed, s.spent_usd
            )
        };
        for t in &self.tenants {
            out.push_str(&row(&t.tenant, &t.sums));
        }
        out.push_str(&row("total", &self.total));
        if self.total.active_batches > 0 {
            out.push_str("active batches are counted with what they have spent so far\n");
        }
        if self.truncated {
            out.push_str(&format!(
                "only the newest {MAX_RECORDS} batch records were read: older batches of the period may be missing; give a later --since\n"
            ));
        }
        out
    }
}

#[cfg(test)]
#[path = "usage_tests.rs"]
mod tests;
