//! The client's refusals: a sync that would lose what someone meant to
//! keep does not run without `--force`.
//!
//! - A **pull** over an existing database runs only when nothing local
//!   would be lost: the file is not the origin of a replica (it pushes
//!   somewhere, local-secrets.toml says so), and it still is the version it
//!   last matched from this replica ([`super::matched`]), by fingerprint or,
//!   when that moved (a checkpoint does), by hash. A database never pulled
//!   from this replica is refused too, unless its `-sqlrsync` file says it
//!   was (a client that kept no record pulled it).
//! - A **push** runs only when the server's latest version is the one this
//!   database last pushed or pulled: otherwise another machine pushed
//!   meanwhile, and this push would quietly put its version behind ours.
//!   Only servers that say their latest before the stream (ours) can be
//!   checked; with others a push runs as it always did.
//!
//! The decisions are pure functions of what was found, so each rule has a
//! unit test; the modes gather the facts and act on the verdict.

use std::path::PathBuf;

use super::matched::Matched;
use crate::wire::ServerConfig;

/// What a pull found about the database it would write.
pub struct PullFacts {
    /// The local database (absolute).
    pub local: PathBuf,
    /// `NS/NAME.db@V` as asked.
    pub asked: String,
    /// Server URL.
    pub server: String,
    /// The replica this database pushes to (its local-secrets.toml entry),
    /// when it is an origin: `(remote path, server)`.
    pub origin_of: Option<(String, String)>,
    /// Its last match with this replica.
    pub record: Option<Matched>,
    /// Its `-sqlrsync` file names this replica.
    pub dash_matches: bool,
}

/// Why a pull over an existing database must not run, or None when it
/// loses nothing. `fingerprint_now` and `hash_now` are asked only when
/// needed (hashing reads the whole database).
pub fn pull_refusal(
    f: &PullFacts,
    fingerprint_now: impl FnOnce() -> Option<String>,
    hash_now: impl FnOnce() -> Option<String>,
) -> Option<String> {
    let local = f.local.display();
    let elsewhere = format!(
        "pull into another file (sqlrsync {} OTHER.db) or pass --force to replace it",
        f.asked
    );
    if let Some((remote, server)) = &f.origin_of {
        return Some(format!(
            "{local} is the origin of {remote} on {server} (it pushes there); a pull would \
             replace it with {}: {elsewhere}",
            f.asked
        ));
    }
    match &f.record {
        Some(r) => {
            if r.fingerprint.is_some() && r.fingerprint == fingerprint_now() {
                return None;
            }
            // The version it matched, or the one a pull killed after its
            // commit left it (see `Matched::pending_hash`).
            let known = [&r.version_hash, &r.pending_hash];
            if known.iter().any(|h| h.is_some()) {
                let now = hash_now();
                if now.is_some() && known.iter().any(|h| **h == now) {
                    return None;
                }
            }
            Some(format!(
                "{local} has changed since it matched {} of {}; a pull would discard those \
                 changes: {elsewhere}",
                r.describe(),
                r.remote_path
            ))
        }
        None if f.dash_matches => None,
        None => Some(format!(
            "{local} exists and was never pulled from {} on {}; a pull would replace it: \
             {elsewhere}",
            f.asked.split('@').next().unwrap_or(&f.asked),
            f.server
        )),
    }
}

/// What a push decides once the server said its latest.
#[derive(Debug, PartialEq, Eq)]
pub enum PushCheck {
    /// Push as usual.
    Push,
    /// The server's latest already holds this database: send nothing.
    Unchanged,
    /// Another version would be put behind ours: the one line why.
    Conflict(String),
}

/// What a push found before streaming.
pub struct PushFacts<'a> {
    /// Remote path of the replica.
    pub remote_path: &'a str,
    /// The server's answer to CONFIG before the stream.
    pub latest: &'a ServerConfig,
    /// This database's last match with the replica.
    pub record: Option<&'a Matched>,
    /// This database has a local-secrets.toml entry for the replica, from
    /// a client that kept no match record: push as before.
    pub legacy_entry: bool,
    /// The hash of the local database, when it was worth computing.
    pub local_hash: Option<&'a str>,
    /// `--force`.
    pub force: bool,
}

/// The server's latest version number, when it has one.
fn latest_version(c: &ServerConfig) -> Option<&str> {
    c.committed_version_id
        .as_deref()
        .filter(|v| !v.is_empty() && *v != "0")
}

/// Decides a push (see the module docs).
pub fn push_check(f: &PushFacts<'_>) -> PushCheck {
    let Some(version) = latest_version(f.latest) else {
        return PushCheck::Push; // a new replica: nothing to put behind
    };
    let server_hash = f.latest.version_hash.as_deref();
    if server_hash.is_some() && server_hash == f.local_hash {
        return PushCheck::Unchanged;
    }
    if f.force {
        return PushCheck::Push;
    }
    let advice = format!(
        "pull it into another file to compare (sqlrsync {}@{version} OTHER.db), or pass --force \
         to make this database the latest anyway",
        f.remote_path
    );
    match f.record {
        Some(r) => {
            let same = match (&r.version_hash, server_hash) {
                (Some(mine), Some(theirs)) => mine.eq_ignore_ascii_case(theirs),
                _ => r.version.as_deref() == Some(version),
            };
            if same {
                return PushCheck::Push;
            }
            PushCheck::Conflict(format!(
                "{} is at version {version} on the server, but this database last matched {}: \
                 another push came in since, and pushing now would put version {version} \
                 behind this database; {advice}",
                f.remote_path,
                r.describe()
            ))
        }
        None if f.legacy_entry => PushCheck::Push,
        None => PushCheck::Conflict(format!(
            "{} already has version {version} on the server, which this database never pushed \
             or pulled; pushing would put it behind this database; {advice}",
            f.remote_path
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::matched::Role;
    use super::*;

    fn record(version: &str, hash: &str) -> Matched {
        Matched {
            server: "ws://h".into(),
            replica_id: None,
            remote_path: "ns/a.db".into(),
            local: "/x/a.db".into(),
            version: Some(version.into()),
            version_hash: Some(hash.into()),
            fingerprint: Some("fp".into()),
            pending_hash: None,
            role: Role::Push,
            at: "2026-12-01T00:00:00Z".into(),
        }
    }

    fn latest(version: &str, hash: Option<&str>) -> ServerConfig {
        ServerConfig {
            committed_version_id: Some(version.into()),
            version_hash: hash.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn pushes_refuse_to_bury_another_version() {
        let r5 = record("5", "aa");
        let at = |l: &ServerConfig, r: Option<&Matched>, legacy, local, force| {
            push_check(&PushFacts {
                remote_path: "ns/a.db",
                latest: l,
                record: r,
                legacy_entry: legacy,
                local_hash: local,
                force,
            })
        };
        let same = latest("5", Some("AA"));
        let moved = latest("7", Some("bb"));
        let fresh = latest("0", None);
        assert_eq!(at(&fresh, None, false, None, false), PushCheck::Push);
        assert_eq!(at(&same, Some(&r5), false, None, false), PushCheck::Push);
        assert_eq!(
            at(&moved, Some(&r5), false, Some("bb"), false),
            PushCheck::Unchanged
        );
        let PushCheck::Conflict(why) = at(&moved, Some(&r5), false, None, false) else {
            panic!("no conflict")
        };
        assert!(
            why.contains("version 7") && why.contains("version 5"),
            "{why}"
        );
        assert_eq!(at(&moved, Some(&r5), false, None, true), PushCheck::Push);
        assert_eq!(at(&moved, None, true, None, false), PushCheck::Push);
        assert!(matches!(
            at(&moved, None, false, Some("cc"), false),
            PushCheck::Conflict(_)
        ));
        // A server that sends no hash: version numbers decide.
        assert_eq!(
            at(&latest("5", None), Some(&r5), false, None, false),
            PushCheck::Push
        );
        assert!(matches!(
            at(&latest("6", None), Some(&r5), false, None, false),
            PushCheck::Conflict(_)
        ));
    }

    #[test]
    fn pulls_refuse_to_discard_local_changes() {
        let facts = |origin: bool, rec: Option<Matched>, dash| PullFacts {
            local: PathBuf::from("/x/a.db"),
            asked: "ns/a.db@1".into(),
            server: "ws://h".into(),
            origin_of: origin.then(|| ("ns/a.db".into(), "ws://h".into())),
            record: rec,
            dash_matches: dash,
        };
        let fp = |v: &str| {
            let v = v.to_string();
            move || Some(v)
        };
        let origin = pull_refusal(&facts(true, None, true), fp("fp"), fp("aa")).unwrap();
        assert!(origin.contains("is the origin of ns/a.db"), "{origin}");
        assert!(origin.contains("OTHER.db") && origin.contains("--force"));
        let r = || Some(record("5", "aa"));
        assert_eq!(
            pull_refusal(&facts(false, r(), false), fp("fp"), fp("zz")),
            None
        );
        assert_eq!(
            pull_refusal(&facts(false, r(), false), fp("moved"), fp("aa")),
            None
        );
        let pending = || {
            let mut m = record("5", "aa");
            m.pending_hash = Some("pp".into());
            Some(m)
        };
        assert_eq!(
            pull_refusal(&facts(false, pending(), false), fp("moved"), fp("pp")),
            None
        );
        let changed = pull_refusal(&facts(false, r(), false), fp("moved"), fp("zz")).unwrap();
        assert!(
            changed.contains("has changed since it matched version 5"),
            "{changed}"
        );
        assert_eq!(
            pull_refusal(&facts(false, None, true), fp("x"), fp("x")),
            None
        );
        let never = pull_refusal(&facts(false, None, false), fp("x"), fp("x")).unwrap();
        assert!(
            never.contains("was never pulled from ns/a.db on ws://h"),
            "{never}"
        );
    }
}
