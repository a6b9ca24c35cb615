//! `[pipelines.<name>]`: validated at load, so a bad schedule, task or timezone never reaches
//! the scheduler. Whether the input can be listed is checked when the scheduler starts, since
//! that needs the network.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, LocalResult, TimeZone, Utc};
use chrono_tz::Tz;
use cron::Schedule;

use super::raw::RawPipeline;

/// What to do about ticks missed while no scheduler ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Run the most recent missed tick once.
    Latest,
    /// Skip missed ticks.
    None,
}

impl CatchUp {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Latest => "latest",
            Self::None => "none",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub name: String,
    /// The expression as written, for display.
    pub schedule_text: String,
    pub schedule: Schedule,
    pub timezone: Tz,
    pub input: String,
    pub task: String,
    pub budget_usd: Option<f64>,
    pub only_new: bool,
    pub catch_up: CatchUp,
    pub enabled: bool,
    /// Of a folder input, follow symbolic links whose targets stay inside it.
    pub follow_symlinks: bool,
    /// Its batches' tenant (checked against `[tenants]`) and priority, as configured.
    pub tenant: Option<String>,
    pub priority: Option<batchyard_jobs::priority::Priority>,
}

impl Pipeline {
    /// The first fire time strictly after `after`, in the pipeline's timezone.
    ///
    /// The schedule is matched against wall-clock time, as cron users read it. A wall time that
    /// a DST jump skips fires at the first minute that exists after the jump (02:00 on the
    /// spring-forward night fires at 03:00), so a nightly run is never lost; a wall time that
    /// happens twice fires once, at its first occurrence.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Tz>> {
        let tz = self.timezone;
        let mut local = after.with_timezone(&tz).naive_local();
        // Bounded: each round moves `local` forward to the next wall-clock match.
        for _ in 0..64 {
            let wall = self.schedule.after(&local.and_utc()).next()?.naive_utc();
            let found = match tz.from_local_datetime(&wall) {
                LocalResult::Single(t) => Some(t),
                LocalResult::Ambiguous(first, second) => {
                    Some(if first > after { first } else { second })
                }
                LocalResult::None => (1..=24 * 60)
                    .map(|m| wall + chrono::Duration::minutes(m))
                    .find_map(|w| tz.from_local_datetime(&w).earliest()),
            };
            if let Some(t) = found
                && t > after
            {
                return Some(t);
            }
            local = wall;
        }
        None
    }
}

/// Parses a 5-field (minutes) or 6-field (seconds first) cron expression. The cron crate wants
/// seconds first, so a 5-field expression fires at second 0.
pub fn parse_schedule(text: &str) -> Result<Schedule, String> {
    let fields = text.split_whitespace().count();
    let full = match fields {
        5 => format!("0 {}", text.trim()),
        6 => text.trim().to_string(),
        n => {
            return Err(format!(
                "{text:?} has {n} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    };
    Schedule::from_str(&full).map_err(|e| format!("{text:?} is not a valid cron expression: {e}"))
}

/// Validates one pipeline; `Err` is (key, reason) with the key under `pipelines.<name>`.
pub fn build(
    name: &str,
    raw: &RawPipeline,
    tasks: &BTreeSet<String>,
) -> Result<Pipeline, (String, String)> {
    let at = |field: &str| format!("pipelines.{name}.{field}");
    // The name is part of Redis keys; keep it to characters that need no quoting anywhere.
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err((
            format!("pipelines.{name}"),
            "a pipeline name may only hold letters, digits, '-' and '_'".into(),
        ));
    }
    let schedule = parse_schedule(&raw.schedule).map_err(|r| (at("schedule"), r))?;
    let timezone = match &raw.timezone {
        None => Tz::UTC,
        Some(t) => Tz::from_str(t).map_err(|_| {
            (
                at("timezone"),
                format!(
                    "unknown timezone {t:?}; use an IANA name such as \"Europe/Berlin\" or \"UTC\""
                ),
            )
        })?,
    };
    if !tasks.contains(&raw.task) {
        let known: Vec<&str> = tasks.iter().map(String::as_str).collect();
        return Err((
            at("task"),
            format!(
                "unknown task {:?}; configured tasks: {}",
                raw.task,
                known.join(", ")
            ),
        ));
    }
    if let Some(b) = raw.budget_usd
        && !(b.is_finite() && b >= 0.0)
    {
        return Err((at("budget_usd"), format!("must be 0 or more, not {b}")));
    }
    let catch_up = match raw.catch_up.as_deref() {
        None | Some("latest") => CatchUp::Latest,
        Some("none") => CatchUp::None,
        Some(other) => {
            return Err((
                at("catch_up"),
                format!("{other:?} is not one of \"latest\", \"none\""),
            ));
        }
    };
    if raw.input.trim().is_empty() {
        return Err((
            at("input"),
            "needs a folder (file://...) or an object-store prefix (s3://bucket/prefix/)".into(),
        ));
    }
    Ok(Pipeline {
        name: name.to_string(),
        schedule_text: raw.schedule.clone(),
        schedule,
        timezone,
        input: raw.input.clone(),
        task: raw.task.clone(),
        budget_usd: raw.budget_usd,
        only_new: raw.only_new.unwrap_or(true),
        follow_symlinks: raw.follow_symlinks.unwrap_or(false),
        tenant: raw.tenant.clone(),
        priority: raw
            .priority
            .as_ref()
            .map(super::tenants::priority_value)
            .transpose()
            .map_err(|why| (at("priority"), why))?,
        catch_up,
        enabled: raw.enabled.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn pipeline(schedule: &str, tz: &str) -> Pipeline {
        let raw = RawPipeline {
            schedule: schedule.into(),
            timezone: Some(tz.into()),
            input: "file:///tmp/x".into(),
            task: "summarize".into(),
            budget_usd: None,
            only_new: None,
            catch_up: None,
            enabled: None,
            follow_symlinks: None,
            tenant: None,
            priority: None,
        };
        build("p", &raw, &BTreeSet::from(["summarize".to_string()])).unwrap()
    }

    fn fires(p: &Pipeline, from: DateTime<Utc>, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut at = from;
        for _ in 0..n {
            let next = p.next_after(at).unwrap();
            out.push(next.to_rfc3339());
            at = next.with_timezone(&Utc);
        }
        out
    }

    #[test]
    fn next_fire_time_across_dst_changes_in_berlin() {
        let p = pipeline("0 2 * * *", "Europe/Berlin");
        let spring = fires(&p, Utc.with_ymd_and_hms(2026, 3, 27, 12, 0, 0).unwrap(), 4);
        // 02:00 does not exist on 2026-03-29; the run happens when clocks jump to 03:00.
        assert_eq!(
            spring,
            [
                "2026-03-28T02:00:00+01:00",
                "2026-03-29T03:00:00+02:00",
                "2026-03-30T02:00:00+02:00",
                "2026-03-31T02:00:00+02:00",
            ]
        );
        // 02:00 happens twice on 2026-10-25; the run happens once, at the first.
        let autumn = fires(&p, Utc.with_ymd_and_hms(2026, 10, 23, 12, 0, 0).unwrap(), 4);
        assert_eq!(
            autumn,
            [
                "2026-10-24T02:00:00+02:00",
                "2026-10-25T02:00:00+02:00",
                "2026-10-26T02:00:00+01:00",
                "2026-10-27T02:00:00+01:00",
            ]
        );
    }

    #[test]
    fn five_fields_fire_at_second_zero_and_six_fields_take_seconds() {
        let p = pipeline("*/15 * * * *", "UTC");
        let from = Utc.with_ymd_and_hms(2026, 1, 1, 0, 7, 30).unwrap();
        assert_eq!(fires(&p, from, 1), ["2026-01-01T00:15:00+00:00"]);
        let p = pipeline("*/1 * * * * *", "UTC");
        assert_eq!(
            fires(&p, from, 2),
            ["2026-01-01T00:07:31+00:00", "2026-01-01T00:07:32+00:00"]
        );
        assert!(parse_schedule("0 2 * *").is_err());
        assert!(parse_schedule("0 25 * * *").is_err());
    }
}
