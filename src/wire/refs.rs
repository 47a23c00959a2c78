//! Version references: `name@7`, `@v7`, `@latest`, `@latest-2`, in the
//! user's form and in the `X-ReplicaVersion` header's, and a point in
//! time, `@2026-11-30T12:00:00Z` or `@2026-11-30` (the end of that day,
//! UTC), which only our server resolves: it travels in a header of its
//! own ([`super::headers::VERSION_AT`]), never in `X-ReplicaVersion`.

use std::fmt;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionRef {
    #[default]
    Latest,
    /// `latest-N`: N versions before the latest (N > 0).
    BeforeLatest(u64),
    /// Version number N (N > 0).
    Exact(u64),
    /// The last version committed at or before this instant (our server's
    /// extension; kept to the millisecond, as commit times are).
    At(DateTime<Utc>),
}

impl VersionRef {
    /// Parses the user's form after `@`: `latest`, `latest-N`, `N`, `vN`,
    /// an RFC 3339 time with its zone (`2026-11-30T12:00:00Z`, `...+02:00`)
    /// or a date alone (`2026-11-30`: up to the end of that day, UTC).
    pub fn parse_user(s: &str) -> Result<VersionRef, String> {
        let bad = || {
            format!(
                "invalid version @{s}: use @latest, @latest-N, @N or @vN with N a whole number above 0, \
                 or a time such as @2026-11-30T12:00:00Z or a date such as @2026-11-30"
            )
        };
        if looks_like_time(s) {
            return parse_instant(s).map(VersionRef::At);
        }
        if s == "latest" {
            return Ok(VersionRef::Latest);
        }
        if let Some(n) = s.strip_prefix("latest-") {
            return positive(n).map(VersionRef::BeforeLatest).ok_or_else(bad);
        }
        let n = s.strip_prefix('v').unwrap_or(s);
        positive(n).map(VersionRef::Exact).ok_or_else(bad)
    }

    /// Parses the `X-ReplicaVersion` header form: `""`, `-N`, `N`; the word
    /// `latest` is tolerated for clients that leave it in.
    pub fn parse_header(s: &str) -> Result<VersionRef, String> {
        let s = s.trim();
        let s = s.strip_prefix("latest").unwrap_or(s);
        if s.is_empty() {
            return Ok(VersionRef::Latest);
        }
        let bad = || format!("invalid X-ReplicaVersion {s:?}");
        if let Some(n) = s.strip_prefix('-') {
            return positive(n).map(VersionRef::BeforeLatest).ok_or_else(bad);
        }
        positive(s.strip_prefix('v').unwrap_or(s))
            .map(VersionRef::Exact)
            .ok_or_else(bad)
    }

    /// The `X-ReplicaVersion` header value. A point in time sends none
    /// (the latest, for a server that does not know the extension: the
    /// client then refuses to go on, see [`VersionRef::at_header`]).
    pub fn header_value(&self) -> String {
        match self {
            VersionRef::Latest | VersionRef::At(_) => String::new(),
            VersionRef::BeforeLatest(n) => format!("-{n}"),
            VersionRef::Exact(n) => n.to_string(),
        }
    }

    /// The value of [`super::headers::VERSION_AT`] for a point in time.
    pub fn at_header(&self) -> Option<String> {
        match self {
            VersionRef::At(t) => Some(instant_text(t)),
            _ => None,
        }
    }

    /// Resolves against the newest version number; None when out of range,
    /// and for a point in time, which only the store can resolve.
    pub fn resolve(&self, latest: u64) -> Option<u64> {
        match *self {
            VersionRef::Latest => (latest > 0).then_some(latest),
            VersionRef::BeforeLatest(n) => latest.checked_sub(n).filter(|v| *v > 0),
            VersionRef::Exact(n) => (n <= latest).then_some(n),
            VersionRef::At(_) => None,
        }
    }
}

/// An instant as commit times are recorded (RFC 3339, milliseconds, `Z`),
/// so that the store compares it as text.
pub fn instant_text(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `YYYY-MM-DD...`: a time, not a number or `latest`.
fn looks_like_time(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-'
}

/// A point in time: RFC 3339 with a zone, or a date alone meaning the last
/// millisecond of that day in UTC (a version committed that day counts).
/// Finer than a millisecond is cut to it: commit times are kept to the
/// millisecond, so the same versions are at or before either.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    if s.len() == 10 {
        let day = NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| format!("invalid date @{s}: use YYYY-MM-DD, e.g. @2026-11-30"))?;
        let end = day
            .and_hms_milli_opt(23, 59, 59, 999)
            .ok_or_else(|| format!("invalid date @{s}"))?;
        return Ok(end.and_utc());
    }
    let t = DateTime::parse_from_rfc3339(s).map_err(|_| {
        format!(
            "invalid time @{s}: use RFC 3339 with a zone, e.g. @2026-11-30T12:00:00Z or \
             @2026-11-30T14:00:00+02:00, or a date alone, @2026-11-30"
        )
    })?;
    let t = t.with_timezone(&Utc);
    let ms = t.timestamp_millis();
    DateTime::from_timestamp_millis(ms).ok_or_else(|| format!("invalid time @{s}"))
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Latest => write!(f, "latest"),
            VersionRef::BeforeLatest(n) => write!(f, "latest-{n}"),
            VersionRef::Exact(n) => write!(f, "{n}"),
            VersionRef::At(t) => f.write_str(&instant_text(t)),
        }
    }
}

/// A whole number above zero, digits only (no sign, no spaces).
fn positive(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|n| *n > 0)
}

// ---------------------------------------------------------------------------
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_refs() {
        assert_eq!(VersionRef::parse_user("latest"), Ok(VersionRef::Latest));
        assert_eq!(
            VersionRef::parse_user("latest-2"),
            Ok(VersionRef::BeforeLatest(2))
        );
        assert_eq!(VersionRef::parse_user("7"), Ok(VersionRef::Exact(7)));
        assert_eq!(VersionRef::parse_user("v7"), Ok(VersionRef::Exact(7)));
        for bad in [
            "latest+1", "0", "-1", "x", "latest-0", "v", "", "latest-", " 1", "1.0",
        ] {
            assert!(VersionRef::parse_user(bad).is_err(), "{bad}");
        }
        for v in [
            VersionRef::Latest,
            VersionRef::BeforeLatest(3),
            VersionRef::Exact(9),
        ] {
            assert_eq!(VersionRef::parse_header(&v.header_value()), Ok(v));
        }
        assert_eq!(VersionRef::BeforeLatest(2).resolve(5), Some(3));
        assert_eq!(VersionRef::BeforeLatest(5).resolve(5), None);
        assert_eq!(VersionRef::Exact(6).resolve(5), None);
        assert_eq!(VersionRef::Latest.resolve(0), None);
    }

    #[test]
    fn points_in_time() {
        let at = |s| VersionRef::parse_user(s).map(|v| v.at_header());
        assert_eq!(
            at("2026-11-30T12:00:00Z"),
            Ok(Some("2026-11-30T12:00:00.000Z".into()))
        );
        assert_eq!(
            at("2026-11-30T14:00:00.1234+02:00"),
            Ok(Some("2026-11-30T12:00:00.123Z".into()))
        );
        assert_eq!(
            at("2026-11-30"),
            Ok(Some("2026-11-30T23:59:59.999Z".into()))
        );
        let v = VersionRef::parse_user("2026-11-30").unwrap();
        assert_eq!(v.header_value(), "");
        assert_eq!(v.resolve(5), None);
        assert_eq!(v.to_string(), "2026-11-30T23:59:59.999Z");
        for bad in [
            "2026-11-30T12:00:00",
            "2026-13-01",
            "2026-11-31",
            "2026-11-30T25:00:00Z",
        ] {
            assert!(VersionRef::parse_user(bad).is_err(), "{bad}");
        }
    }
}
