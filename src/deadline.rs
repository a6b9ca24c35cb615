//! `--deadline`: when a batch must be finished, as a span from now (`24h`, `90m`, `1h30m`,
//! `2d`, `3600s`) or an RFC 3339 time (`2026-12-06T08:00:00Z`).

use std::time::Duration;

/// A deadline as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    In(Duration),
    /// Unix seconds.
    At(u64),
}

impl Deadline {
    /// Unix seconds, counting a span from `now`.
    pub fn unix(self, now: u64) -> u64 {
        match self {
            Self::In(d) => now.saturating_add(d.as_secs()),
            Self::At(t) => t,
        }
    }
}

/// Parses a span (`24h`, `1h30m`, `2d`, `45m`, `3600s`) or an RFC 3339 time.
pub fn parse(text: &str) -> Result<Deadline, String> {
    let text = text.trim();
    if let Ok(at) = chrono::DateTime::parse_from_rfc3339(text) {
        return u64::try_from(at.timestamp())
            .map(Deadline::At)
            .map_err(|_| format!("{text:?} is before 1970"));
    }
    let bad = || {
        format!(
            "{text:?} is not a deadline: give a span such as 24h, 90m, 1h30m or 2d, or a time \
             such as 2026-12-06T08:00:00Z"
        )
    };
    let mut secs: u64 = 0;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        secs = n
            .checked_mul(unit)
            .and_then(|s| secs.checked_add(s))
            .ok_or_else(bad)?;
        number.clear();
    }
    if !number.is_empty() || secs == 0 {
        return Err(bad());
    }
    Ok(Deadline::In(Duration::from_secs(secs)))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_times_parse() {
        assert_eq!(
            parse("24h").unwrap(),
            Deadline::In(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse("1h30m").unwrap(),
            Deadline::In(Duration::from_secs(5_400))
        );
        assert_eq!(
            parse("2d").unwrap(),
            Deadline::In(Duration::from_secs(172_800))
        );
        assert_eq!(
            parse(" 90s ").unwrap(),
            Deadline::In(Duration::from_secs(90))
        );
        assert_eq!(
            parse("2026-12-06T08:00:00Z").unwrap(),
            Deadline::At(1_796_544_000)
        );
        assert_eq!(
            parse("2026-12-06T09:00:00+01:00").unwrap().unix(0),
            1_796_544_000
        );
        assert_eq!(parse("10m").unwrap().unix(100), 700);
        for bad in ["", "24", "h", "0h", "1x", "tomorrow", "1h30", "-1h"] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("24h"), "{bad}: {e}");
        }
    }
}
