//! Version references: `name@7`, `@v7`, `@latest`, `@latest-2`, in the
//! user's form and in the `X-ReplicaVersion` header's.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VersionRef {
    #[default]
    Latest,
    /// `latest-N`: N versions before the latest (N > 0).
    BeforeLatest(u64),
    /// Version number N (N > 0).
    Exact(u64),
}

impl VersionRef {
    /// Parses the user's form after `@`: `latest`, `latest-N`, `N`, `vN`.
    pub fn parse_user(s: &str) -> Result<VersionRef, String> {
        let bad = || {
            format!(
                "invalid version @{s}: use @latest, @latest-N, @N or @vN with N a whole number above 0"
            )
        };
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

    /// The `X-ReplicaVersion` header value.
    pub fn header_value(&self) -> String {
        match self {
            VersionRef::Latest => String::new(),
            VersionRef::BeforeLatest(n) => format!("-{n}"),
            VersionRef::Exact(n) => n.to_string(),
        }
    }

    /// Resolves against the newest version number; None when out of range.
    pub fn resolve(&self, latest: u64) -> Option<u64> {
        match *self {
            VersionRef::Latest => (latest > 0).then_some(latest),
            VersionRef::BeforeLatest(n) => latest.checked_sub(n).filter(|v| *v > 0),
            VersionRef::Exact(n) => (n <= latest).then_some(n),
        }
    }
}

impl fmt::Display for VersionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VersionRef::Latest => write!(f, "latest"),
            VersionRef::BeforeLatest(n) => write!(f, "latest-{n}"),
            VersionRef::Exact(n) => write!(f, "{n}"),
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
}
