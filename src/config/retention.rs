//! `[retention]`: how long what batches leave behind is kept, and how the workers' collector
//! paces itself. It takes over `[queue] dead_letter_retention_hours` and `[cache] ttl_secs`:
//! both still work; when a key of both tables is set, `[retention]` wins and a warning says so.

use std::time::Duration;

use serde::Deserialize;

use super::parts::MAX_SECS;
use super::raw::RawConfig;
use crate::deadline::{Deadline, parse};

type Bad = (String, String);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Ended batches: ledger record, objects under `batches/<id>/`, API record ("never": kept).
    pub batches: Option<String>,
    /// Uploaded files (`files/`), unless a batch not yet ended reads one ("never": kept).
    pub files: Option<String>,
    pub dead_letters: Option<String>,
    pub cache: Option<String>,
    /// How often a worker collects (one worker of a fleet at a time).
    pub interval: Option<String>,
    /// At most this many batches, files and cache entries each, per pass.
    pub max_per_pass: Option<usize>,
}

/// `[retention]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// `None`: kept forever.
    pub batches: Option<Duration>,
    pub files: Option<Duration>,
    pub dead_letters: Duration,
    pub cache: Duration,
    pub interval: Duration,
    pub max_per_pass: usize,
}

pub const DAY: Duration = Duration::from_secs(86_400);

impl Default for Retention {
    fn default() -> Self {
        Self {
            batches: Some(DAY * 30),
            files: Some(DAY * 30),
            dead_letters: DAY * 7,
            cache: DAY * 30,
            interval: Duration::from_secs(600),
            max_per_pass: 1000,
        }
    }
}

/// A span such as `30d`, `12h` or `90s`; `never` where `forever_ok`.
fn span(key: &str, text: &str, forever_ok: bool) -> Result<Option<Duration>, Bad> {
    let bad = |why: String| (format!("retention.{key}"), why);
    if forever_ok && text.trim() == "never" {
        return Ok(None);
    }
    let never = if forever_ok { ", or never" } else { "" };
    match parse(text) {
        Ok(Deadline::In(d)) if d.as_secs() <= MAX_SECS => Ok(Some(d)),
        Ok(Deadline::In(_)) => Err(bad(format!("must be at most ten years, not {text:?}"))),
        _ => Err(bad(format!(
            "{text:?} is not a span: give one such as 30d, 12h, 90m or 45s{never}"
        ))),
    }
}

/// `[retention]`, with the two older keys as aliases. Warnings go to `warnings`.
pub(super) fn retention(raw: &RawConfig, warnings: &mut Vec<String>) -> Result<Retention, Bad> {
    let r = &raw.retention;
    let d = Retention::default();
    let set = |key: &str, v: &Option<String>, forever_ok: bool, default: Option<Duration>| {
        v.as_deref()
            .map_or(Ok(default), |text| span(key, text, forever_ok))
    };
    let batches = set("batches", &r.batches, true, d.batches)?;
    let files = set("files", &r.files, true, d.files)?;
    let interval = set("interval", &r.interval, false, Some(d.interval))?.unwrap_or(d.interval);
    let old_dead = raw
        .queue
        .dead_letter_retention_hours
        .map(|h| Duration::from_secs(h.saturating_mul(3600)));
    let dead_letters = alias(
        ("dead_letters", &r.dead_letters),
        ("queue.dead_letter_retention_hours", old_dead),
        d.dead_letters,
        warnings,
    )?;
    let old_cache = raw.cache.ttl_secs.map(Duration::from_secs);
    let cache = alias(
        ("cache", &r.cache),
        ("cache.ttl_secs", old_cache),
        d.cache,
        warnings,
    )?;
    let max_per_pass = r.max_per_pass.unwrap_or(d.max_per_pass);
    if !(1..=100_000).contains(&max_per_pass) {
        return Err((
            "retention.max_per_pass".into(),
            format!("must be between 1 and 100000, not {max_per_pass}"),
        ));
    }
    Ok(Retention {
        batches,
        files,
        dead_letters,
        cache,
        interval,
        max_per_pass,
    })
}

/// A batch removed while its webhook is still being retried is never announced.
pub(super) fn warn_if_notify_outlives(
    retention: &Retention,
    notify: &batchyard_workers::notify::NotifyOptions,
    warnings: &mut Vec<String>,
) {
    if let Some(keep) = retention.batches
        && keep < notify.give_up_after
    {
        warnings.push(format!(
            "retention.batches ({} s) is shorter than notify.give_up_hours ({} s): a batch whose webhook is still being retried may be removed first, and is then never announced",
            keep.as_secs(),
            notify.give_up_after.as_secs()
        ));
    }
}

/// The `[retention]` key when set (warning when the older key is set too), else the older
/// key, else the default.
fn alias(
    (key, new): (&str, &Option<String>),
    (old_key, old): (&str, Option<Duration>),
    default: Duration,
    warnings: &mut Vec<String>,
) -> Result<Duration, Bad> {
    let Some(text) = new else {
        return Ok(old.unwrap_or(default));
    };
    let value = span(key, text, false)?.unwrap_or(default);
    if let Some(old) = old {
        warnings.push(format!(
            "retention.{key} ({text}) and {old_key} ({} s) are both set; retention.{key} wins: remove {old_key}",
            old.as_secs()
        ));
    }
    Ok(value)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::config::Settings;

    fn load(text: &str) -> Result<Settings, crate::error::ConfigError> {
        Settings::from_toml(text, None, &BTreeMap::new())
    }

    #[test]
    fn defaults_aliases_and_which_wins() {
        let s = load("").unwrap();
        assert_eq!(s.retention, Retention::default());
        assert_eq!(s.queue.dead_letter_retention, DAY * 7);
        assert_eq!(s.cache.ttl, DAY * 30);
        // The older keys alone still set what they always did.
        let s =
            load("[queue]\ndead_letter_retention_hours = 48\n[cache]\nttl_secs = 600\n").unwrap();
        assert_eq!(s.queue.dead_letter_retention, DAY * 2);
        assert_eq!(s.cache.ttl, Duration::from_secs(600));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // Both set: [retention] wins, with one warning per key naming both.
        let s = load(
            "[queue]\ndead_letter_retention_hours = 48\n[cache]\nttl_secs = 600\n\
             [retention]\ndead_letters = \"1d\"\ncache = \"2h\"\nbatches = \"never\"\nfiles = \"90m\"\n",
        )
        .unwrap();
        assert_eq!(s.queue.dead_letter_retention, DAY);
        assert_eq!(s.cache.ttl, Duration::from_secs(7200));
        assert_eq!(s.retention.batches, None);
        assert_eq!(s.retention.files, Some(Duration::from_secs(5400)));
        assert_eq!(s.warnings.len(), 2, "{:?}", s.warnings);
        assert!(
            s.warnings[0].contains("retention.dead_letters")
                && s.warnings[0].contains("queue.dead_letter_retention_hours")
                && s.warnings[0].contains("wins"),
            "{:?}",
            s.warnings
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("[retention]\nbatches = \"30 days\"\n", "retention.batches"),
            ("[retention]\ncache = \"never\"\n", "retention.cache"),
            (
                "[retention]\ndead_letters = \"0s\"\n",
                "retention.dead_letters",
            ),
            ("[retention]\nfiles = \"99999d\"\n", "retention.files"),
            ("[retention]\nmax_per_pass = 0\n", "retention.max_per_pass"),
            ("[retention]\nkeep = \"1d\"\n", "retention"),
        ] {
            let err = load(text).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }
}
