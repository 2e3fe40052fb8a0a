//! Time formatting shared by status output and error messages (no date crate needed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// RFC 3339 UTC with seconds, e.g. `2026-12-03T17:05:01Z` (proleptic Gregorian).
pub fn rfc3339(t: SystemTime) -> String {
    utc_secs(
        t.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs(),
    )
}

/// RFC 3339 UTC of a Unix time in seconds.
pub fn utc_secs(secs: u64) -> String {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's civil_from_days).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(utc_secs(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_secs(1_796_317_501), "2026-12-03T17:05:01Z");
    }
}
