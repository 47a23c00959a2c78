//! The versions listing of our server (`GET /sapi/versions/<path>`, an
//! extension; SERVER.md "Versions listing"): the JSON both sides read, and
//! its paging bounds.
//!
//! Newest first, one page at a time: `?limit=N` (at most
//! [`MAX_VERSIONS_LIMIT`]) and `?before=V` (versions numbered below V). A
//! replica pushed every minute has hundreds of thousands of versions, so
//! no request reads or sends them all.

use serde::{Deserialize, Serialize};

/// Where the listing is served; the replica's path follows.
pub const VERSIONS_PREFIX: &str = "/sapi/versions/";
/// The header our server sets on every answer of the listing, refusals
/// included: its 404 then says the replica is not there (or not readable),
/// not that the server has no listing.
pub const LISTING_MARK: &str = "x-sqlrsync-versions";
/// Versions in a page when `limit` is not given.
pub const DEFAULT_VERSIONS_LIMIT: u32 = 100;
/// Most versions in one page.
pub const MAX_VERSIONS_LIMIT: u32 = 1000;

/// One page of a replica's versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionsPage {
    /// The replica's path.
    pub replica_path: String,
    /// Its replica id (`replicaID` of the other answers).
    #[serde(rename = "replicaID")]
    pub replica_id: String,
    /// Its latest version number (0 before the first push).
    pub latest: u64,
    /// The versions of this page, newest first.
    pub versions: Vec<VersionEntry>,
    /// The `before` of the next page; None on the last.
    pub next_before: Option<u64>,
}

/// One version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionEntry {
    /// Its number.
    pub version: u64,
    /// When it was committed (RFC 3339, milliseconds, UTC).
    pub created: String,
    /// Its size in bytes (page size times page count).
    pub size: u64,
    /// Its page size.
    pub page_size: u32,
    /// Its page count.
    pub page_count: u32,
    /// Pages the push that made it changed.
    pub pages_changed: u32,
    /// Its commit message (may be empty; any text a pusher sent).
    pub message: String,
    /// Its versionHash.
    pub version_hash: String,
    /// When a retention policy pruned it (RFC 3339); absent while kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<String>,
}

/// The query of a listing request: `limit` and `before`, each at most once;
/// other parameters are ignored. Err: what is wrong, for a 400.
pub fn parse_query(q: Option<&str>) -> Result<(u32, Option<u64>), String> {
    let mut limit = DEFAULT_VERSIONS_LIMIT;
    let mut before = None;
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let number = || {
            v.parse::<u64>()
                .ok()
                .filter(|n| *n > 0 && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("{k} must be a whole number above 0"))
        };
        match k {
            "limit" => limit = number()?.min(MAX_VERSIONS_LIMIT as u64) as u32,
            "before" => before = Some(number()?),
            _ => {}
        }
    }
    Ok((limit, before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(parse_query(None), Ok((DEFAULT_VERSIONS_LIMIT, None)));
        assert_eq!(parse_query(Some("limit=5&before=9")), Ok((5, Some(9))));
        assert_eq!(
            parse_query(Some("limit=999999")),
            Ok((MAX_VERSIONS_LIMIT, None))
        );
        assert_eq!(parse_query(Some("x=1")), Ok((DEFAULT_VERSIONS_LIMIT, None)));
        for bad in ["limit=0", "limit=-1", "before=x", "limit=", "before=+3"] {
            assert!(parse_query(Some(bad)).is_err(), "{bad}");
        }
    }
}
