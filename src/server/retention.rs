//! Retention policies: which versions of a replica to keep.
//!
//! The rules are restic's `forget --keep-*`, which operators know: keep the
//! last N versions; keep the newest version of each of the last N hours,
//! days, ISO weeks and months that have one; keep every version made within
//! a duration of the newest one (of the newest, not of now, so that a
//! replica nobody pushes to any more keeps its last stretch). A version any
//! rule keeps is kept; the latest is always kept; a policy with no rule
//! keeps everything. Times are UTC.
//!
//! A policy is stored as its canonical text (`last=10 daily=7 within=30d`),
//! set per replica or per namespace ([`resolve`]: the replica's own first);
//! this module only parses, prints and selects, and never touches a store.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

/// The bucket a version's time falls in, for one of the calendar rules.
type Bucket = fn(&DateTime<Utc>) -> i64;

/// A parsed retention policy; every field None is "keep everything".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub last: Option<u32>,
    pub hourly: Option<u32>,
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
    pub within: Option<Duration>,
}

/// A policy's text that is not one.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid retention policy {text:?}: {why} (expected e.g. `last=10 daily=7 within=30d`)")]
pub struct BadPolicy {
    text: String,
    why: String,
}

impl Policy {
    /// True when it keeps every version.
    pub fn keeps_all(&self) -> bool {
        *self == Policy::default()
    }

    /// Parses the stored form: space-separated `rule=value`.
    pub fn parse(text: &str) -> Result<Policy, BadPolicy> {
        let bad = |why: String| BadPolicy {
            text: text.chars().take(200).collect(),
            why,
        };
        let mut p = Policy::default();
        for part in text.split_whitespace() {
            let (rule, value) = part
                .split_once('=')
                .ok_or_else(|| bad(format!("{part:?} is not rule=value")))?;
            let count = || {
                value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| bad(format!("{rule} needs a whole number above 0")))
            };
            match rule {
                "last" => p.last = Some(count()?),
                "hourly" => p.hourly = Some(count()?),
                "daily" => p.daily = Some(count()?),
                "weekly" => p.weekly = Some(count()?),
                "monthly" => p.monthly = Some(count()?),
                "within" => {
                    let d = crate::client::follow::parse_duration(value).map_err(bad)?;
                    if d.is_zero() {
                        return Err(bad("within needs a duration above 0".into()));
                    }
                    p.within = Some(d);
                }
                other => return Err(bad(format!("no rule {other:?}"))),
            }
        }
        Ok(p)
    }

    /// The version numbers to keep, of `versions` (number and commit time,
    /// newest first, none pruned). The first (the latest) is always kept.
    pub fn keep(&self, versions: &[(u64, DateTime<Utc>)]) -> BTreeSet<u64> {
        let mut keep = BTreeSet::new();
        let Some(&(latest, newest)) = versions.first() else {
            return keep;
        };
        if self.keeps_all() {
            return versions.iter().map(|v| v.0).collect();
        }
        keep.insert(latest);
        if let Some(n) = self.last {
            keep.extend(versions.iter().take(n as usize).map(|v| v.0));
        }
        let buckets: [(Option<u32>, Bucket); 4] = [
            (self.hourly, |t| t.timestamp().div_euclid(3600)),
            (self.daily, |t| t.num_days_from_ce() as i64),
            (self.weekly, |t| {
                let w = t.iso_week();
                w.year() as i64 * 100 + w.week() as i64
            }),
            (self.monthly, |t| t.year() as i64 * 12 + t.month0() as i64),
        ];
        for (count, bucket) in buckets {
            let Some(n) = count else { continue };
            let mut last_bucket = None;
            let mut used = 0;
            for (number, at) in versions {
                let b = bucket(at);
                if last_bucket != Some(b) {
                    last_bucket = Some(b);
                    if used == n {
                        break;
                    }
                    // The newest version of its bucket.
                    keep.insert(*number);
                    used += 1;
                }
            }
        }
        if let Some(d) = self.within {
            let since = newest - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX);
            keep.extend(versions.iter().filter(|v| v.1 >= since).map(|v| v.0));
        }
        keep
    }
}

impl fmt::Display for Policy {
    /// The canonical stored form; `keep-all` for the empty policy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (rule, v) in [
            ("last", self.last),
            ("hourly", self.hourly),
            ("daily", self.daily),
            ("weekly", self.weekly),
            ("monthly", self.monthly),
        ] {
            if let Some(n) = v {
                parts.push(format!("{rule}={n}"));
            }
        }
        if let Some(d) = self.within {
            parts.push(format!("within={}", humantime::format_duration(d)).replace(' ', ""));
        }
        if parts.is_empty() {
            return write!(f, "keep-all");
        }
        write!(f, "{}", parts.join(" "))
    }
}

/// The policy that applies to replica `path` of `namespace`: its own, else
/// its namespace's, else none (keep everything). Each is the stored text.
pub fn resolve<'a>(own: Option<&'a str>, namespace: Option<&'a str>) -> Option<&'a str> {
    own.or(namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    #[test]
    fn policies_parse_and_print_in_one_form() {
        let p = Policy::parse("daily=7  last=10 within=36h").unwrap();
        assert_eq!(p.to_string(), "last=10 daily=7 within=1day12h");
        assert_eq!(Policy::parse(&p.to_string()).unwrap(), p);
        assert_eq!(Policy::parse("").unwrap().to_string(), "keep-all");
        for bad in ["last=0", "last=x", "yearly=3", "within=0", "last"] {
            assert!(Policy::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn each_rule_keeps_what_restic_would() {
        // Newest first: two an hour apart today, one yesterday, one a
        // week ago, one a month ago.
        let vs = vec![
            (6, at("2026-11-30T12:30:00Z")),
            (5, at("2026-11-30T12:10:00Z")),
            (4, at("2026-11-30T11:00:00Z")),
            (3, at("2026-11-29T09:00:00Z")),
            (2, at("2026-11-23T09:00:00Z")),
            (1, at("2026-10-30T09:00:00Z")),
        ];
        let keep =
            |p: &str| -> Vec<u64> { Policy::parse(p).unwrap().keep(&vs).into_iter().collect() };
        assert_eq!(keep("last=2"), vec![5, 6]);
        assert_eq!(keep("hourly=2"), vec![4, 6]);
        assert_eq!(keep("daily=2"), vec![3, 6]);
        // 2026-11-30 is a Monday: v3 (Sunday) is the newest of the week before.
        assert_eq!(keep("weekly=2"), vec![3, 6]);
        assert_eq!(keep("monthly=2"), vec![1, 6]);
        assert_eq!(keep("within=2h"), vec![4, 5, 6]);
        assert_eq!(keep("last=1 monthly=1"), vec![6], "the latest at least");
        assert_eq!(keep(""), vec![1, 2, 3, 4, 5, 6], "no rule keeps all");
        assert!(Policy::default().keep(&[]).is_empty());
    }
}
