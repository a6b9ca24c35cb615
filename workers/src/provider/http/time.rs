//! The timestamps providers send in headers: HTTP dates (`Retry-After`) and RFC 3339
//! (`anthropic-ratelimit-*-reset`), read without a date crate.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An HTTP date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) or the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`).
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let (_weekday, rest) = value.trim().split_once(", ")?;
    let mut parts = rest.split_whitespace();
    let first = parts.next()?;
    let (day, month, year) = if first.contains('-') {
        let mut dmy = first.split('-');
        let (d, m, y) = (dmy.next()?, dmy.next()?, dmy.next()?);
        let y: i64 = y.parse().ok()?;
        let y = if y < 100 {
            y + if y >= 70 { 1900 } else { 2000 }
        } else {
            y
        };
        (d, m, y)
    } else {
        let m = parts.next()?;
        let y: i64 = parts.next()?.parse().ok()?;
        (first, m, y)
    };
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = u32::try_from(MONTHS.iter().position(|m| *m == month)? + 1).ok()?;
    let mut hms = time.split(':');
    let (h, mi, s): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()?.checked_mul(86_400)? + h * 3600 + mi * 60 + s;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// An RFC 3339 timestamp: `2025-01-02T03:04:05Z`, with optional fractional seconds and a
/// `±HH:MM` offset instead of `Z`.
pub fn parse_rfc3339(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    let bytes = value.as_bytes();
    if bytes.len() < 20 || !matches!(bytes[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u64> {
        let part = value.get(range)?;
        if !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if bytes[4] != b'-' || bytes[7] != b'-' || bytes[13] != b':' || bytes[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 {
        return None;
    }
    let mut rest = &value[19..];
    let mut nanos = 0u64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let kept = &frac[..digits.min(9)];
        nanos = kept.parse::<u64>().ok()? * 10u64.pow(9 - kept.len() as u32);
        rest = &frac[digits..];
    }
    let offset_secs: i64 = match rest {
        "Z" | "z" => 0,
        _ => {
            let sign = match rest.as_bytes().first()? {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = rest.get(1..)?.split_once(':')?;
            if h.len() != 2 || m.len() != 2 {
                return None;
            }
            let (h, m): (i64, i64) = (h.parse().ok()?, m.parse().ok()?);
            sign * (h * 3600 + m * 60)
        }
    };
    let days = days_from_civil(
        i64::try_from(year).ok()?,
        u32::try_from(month).ok()?,
        u32::try_from(day).ok()?,
    );
    let local = days * 86_400 + i64::try_from(hour * 3600 + minute * 60 + second).ok()?;
    let utc = u64::try_from(local - offset_secs).ok()?;
    UNIX_EPOCH.checked_add(Duration::new(utc, u32::try_from(nanos).ok()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::super::classify::parse_retry_after;
    use super::*;

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert_eq!(t, UNIX_EPOCH);
        assert!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST").is_none());
        assert!(parse_http_date("yesterday").is_none());
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn rfc3339_timestamps() {
        let secs =
            |s: &str| parse_rfc3339(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs_f64());
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0.0));
        assert_eq!(secs("1994-11-06T08:49:37Z"), Some(784_111_777.0));
        assert_eq!(secs("1994-11-06T08:49:37.5Z"), Some(784_111_777.5));
        assert_eq!(secs("1994-11-06T09:49:37+01:00"), Some(784_111_777.0));
        assert_eq!(secs("1994-11-06t07:49:37-01:00"), Some(784_111_777.0));
        assert_eq!(secs("1994-11-06T08:49:37"), None);
        assert_eq!(secs("1994-13-06T08:49:37Z"), None);
        assert_eq!(secs("soon"), None);
        assert_eq!(secs("1994-11-06T08:49:37.Z"), None);
    }
}
