//! Start-up recovery: delete only what is provably garbage, refuse the rest.
//!
//! A crash leaves files the metadata does not point at. Most are garbage
//! and are removed: staging copies and cached rebuilds (never the only copy
//! of anything), a previous latest file whose version the metadata records
//! (it is rebuilt from back deltas), and what a commit that had not reached
//! its commit point wrote: its new version file and its pack bytes. That
//! last proof is the commit's in-flight record (`commits_in_flight`), made
//! durable before its first append and ended by the commit's own
//! transaction, and it only holds because commits run one at a time.
//! Compaction takes such a record for its copies too, and the packs its
//! transaction retired (`retired_packs`, indexing nothing) are deleted, as
//! are the folders of replicas whose deletion was committed
//! (`deleted_replicas`).
//!
//! Anything else cannot be proven garbage, and may well be the only copy
//! of a version: metadata restored from a backup or one commit behind
//! (files it does not know), a missing latest file, a missing or short
//! pack, pack bytes no record explains. Then nothing is touched and the
//! server refuses to start ([`Refusal`]) with one line naming
//! `sqlrsync-server repair`, which keeps such files in `lost+found/`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::meta::{InFlight, Meta, ReplicaRow};
use super::pages::BlobPosition;
use super::pages::packs::pack_path;

/// Something on disk that recovery cannot account for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The latest version's file is missing or has the wrong size.
    LatestFile {
        replica: String,
        file: PathBuf,
        problem: &'static str,
    },
    /// A file in a replica folder the metadata does not know.
    UnknownFile { replica: String, file: PathBuf },
    /// A replica folder the metadata has no replica for.
    UnknownReplicaDir { dir: PathBuf },
    /// A pack the metadata points into is missing or shorter than that.
    Pack { pack: u32, problem: String },
    /// Pack bytes past the last indexed page that no in-flight commit
    /// explains.
    PackTail { pack: u32, bytes: u64 },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::LatestFile {
                replica,
                file,
                problem,
            } => write!(
                f,
                "the latest file of {replica} ({}) is {problem}",
                name(file)
            ),
            Finding::UnknownFile { replica, file } => {
                write!(
                    f,
                    "{} in {replica} is not a version the metadata knows",
                    name(file)
                )
            }
            Finding::UnknownReplicaDir { dir } => {
                write!(f, "replicas/{} belongs to no replica", name(dir))
            }
            Finding::Pack { pack, problem } => write!(f, "pack {pack} is {problem}"),
            Finding::PackTail { pack, bytes } => {
                write!(f, "pack {pack} has {bytes} bytes no commit accounts for")
            }
        }
    }
}

fn name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// What recovery found that it could not account for.
#[derive(Debug, Default)]
pub struct Findings {
    pub items: Vec<Finding>,
}

impl Findings {
    pub fn is_clean(&self) -> bool {
        self.items.is_empty()
    }
}

/// The server refuses to start: the one line to show.
#[derive(Debug, thiserror::Error)]
pub struct Refusal {
    pub findings: Findings,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items = &self.findings.items;
        let shown: Vec<String> = items.iter().take(3).map(|i| i.to_string()).collect();
        let more = match items.len() {
            n if n > 3 => format!(" (and {} more)", n - 3),
            _ => String::new(),
        };
        write!(
            f,
            "the data dir does not match its metadata: {}{more}; nothing was changed \
             (is meta.db older than the files, e.g. restored from a backup?); \
             `sqlrsync-server repair --data-dir DIR` keeps what it cannot use in lost+found/ and rebuilds what it can",
            shown.join("; ")
        )
    }
}

/// Recovers `data_dir` after a crash: removes what is provably garbage
/// (only when `apply`; otherwise only looks) and returns the rest.
pub fn recover(data_dir: &Path, meta: &Meta, apply: bool) -> Result<Findings> {
    let mut findings = Findings::default();
    if apply {
        for d in ["staging", "cache"] {
            for e in std::fs::read_dir(data_dir.join(d))? {
                let p = e?.path();
                tracing::info!(file = %p.display(), "removing leftover file");
                let _ = std::fs::remove_file(&p);
            }
        }
    }
    let in_flight = meta.commits_in_flight()?;
    let replicas = meta.all_replicas()?;
    replica_files(data_dir, meta, &replicas, &in_flight, apply, &mut findings)?;
    packs(data_dir, meta, &in_flight, apply, &mut findings)?;
    // The records did their work once every garbage they prove is gone.
    if apply && findings.is_clean() {
        for f in &in_flight {
            meta.end_commit(f.id)?;
        }
        for uid in meta.deleted_replicas()? {
            if !data_dir.join("replicas").join(&uid).exists() {
                meta.forget_deleted_replica(&uid)?;
            }
        }
    }
    Ok(findings)
}

/// Long: one pass over every replica folder, each file judged by the one
/// table of rules in the module doc.
fn replica_files(
    data_dir: &Path,
    meta: &Meta,
    replicas: &[ReplicaRow],
    in_flight: &[InFlight],
    apply: bool,
    findings: &mut Findings,
) -> Result<()> {
    let root = data_dir.join("replicas");
    let by_uid: HashMap<&str, &ReplicaRow> = replicas.iter().map(|r| (r.uid.as_str(), r)).collect();
    let deleted: std::collections::HashSet<String> = meta.deleted_replicas()?.into_iter().collect();
    for e in std::fs::read_dir(&root)? {
        let dir = e?.path();
        let uid = name(&dir);
        if deleted.contains(&uid) && !by_uid.contains_key(uid.as_str()) {
            // `replica delete` committed and died before removing it.
            if apply {
                tracing::info!(dir = %dir.display(), "removing a deleted replica's folder");
                std::fs::remove_dir_all(&dir)?;
            }
            continue;
        }
        let Some(r) = by_uid.get(uid.as_str()) else {
            if std::fs::read_dir(&dir)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false)
            {
                if apply {
                    let _ = std::fs::remove_dir(&dir);
                }
            } else {
                findings.items.push(Finding::UnknownReplicaDir { dir });
            }
            continue;
        };
        for f in std::fs::read_dir(&dir)? {
            let file = f?.path();
            match judge(meta, r, &file, in_flight)? {
                Verdict::Keep => {}
                Verdict::Garbage(why) => {
                    if apply {
                        tracing::info!(file = %file.display(), why, "removing");
                        std::fs::remove_file(&file)?;
                    }
                }
                Verdict::Unknown => findings.items.push(Finding::UnknownFile {
                    replica: r.path.clone(),
                    file,
                }),
            }
        }
    }
    for r in replicas.iter().filter(|r| r.latest > 0) {
        let file = root.join(&r.uid).join(format!("v{}.db", r.latest));
        let want = meta.version(r, r.latest)?.map(|v| v.size());
        let problem = match std::fs::symlink_metadata(&file) {
            Err(_) => Some("missing"),
            Ok(m) if !m.is_file() => Some("not a file"),
            Ok(m) if Some(m.len()) != want => Some("of the wrong size"),
            Ok(_) => None,
        };
        if let Some(problem) = problem {
            findings.items.push(Finding::LatestFile {
                replica: r.path.clone(),
                file,
                problem,
            });
        }
    }
    Ok(())
}

/// What to do with one file of a replica folder.
enum Verdict {
    Keep,
    Garbage(&'static str),
    Unknown,
}

fn judge(meta: &Meta, r: &ReplicaRow, file: &Path, in_flight: &[InFlight]) -> Result<Verdict> {
    let number = name(file)
        .strip_prefix('v')
        .and_then(|s| s.strip_suffix(".db"))
        .and_then(|s| s.parse::<u64>().ok());
    let Some(n) = number else {
        return Ok(Verdict::Unknown);
    };
    if n == r.latest {
        return Ok(Verdict::Keep);
    }
    if n < r.latest && meta.version(r, n)?.is_some() {
        // A previous latest whose reader was still there: its version
        // is rebuilt from back deltas.
        return Ok(Verdict::Garbage("previous latest file"));
    }
    if n > r.latest && in_flight.iter().any(|f| f.replica == r.id && f.number == n) {
        return Ok(Verdict::Garbage("file of a commit that never landed"));
    }
    Ok(Verdict::Unknown)
}

/// Checks every pack against the metadata: present and long enough where
/// pages are indexed, and any tail past the last indexed page explained by
/// an in-flight commit (then cut, when `apply`).
fn packs(
    data_dir: &Path,
    meta: &Meta,
    in_flight: &[InFlight],
    apply: bool,
    findings: &mut Findings,
) -> Result<()> {
    let dir = data_dir.join("packs");
    let mut ends: BTreeMap<u32, u64> = meta.pack_ends()?.into_iter().collect();
    let retired = retired_packs(&dir, meta, &ends, apply, findings)?;
    for e in std::fs::read_dir(&dir)? {
        let n = name(&e?.path());
        if let Some(p) = n
            .strip_prefix("pack-")
            .and_then(|s| s.strip_suffix(".dat"))
            .and_then(|s| s.parse::<u32>().ok())
            && !retired.contains(&p)
        {
            ends.entry(p).or_insert(0);
        }
    }
    // Every byte from the earliest in-flight start on is theirs.
    let first: Option<BlobPosition> = in_flight
        .iter()
        .map(|f| f.start)
        .min_by_key(|s| (s.pack, s.offset));
    for (&pack, &end) in &ends {
        let path = pack_path(&dir, pack);
        let len = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                findings.items.push(Finding::Pack {
                    pack,
                    problem: "not a file".into(),
                });
                continue;
            }
            Err(_) => {
                findings.items.push(Finding::Pack {
                    pack,
                    problem: "missing".into(),
                });
                continue;
            }
        };
        if len < end {
            findings.items.push(Finding::Pack {
                pack,
                problem: format!("{} bytes short", end - len),
            });
        } else if len > end {
            let covered_from = match first {
                Some(s) if s.pack < pack => Some(0),
                Some(s) if s.pack == pack => Some(s.offset),
                _ => None,
            };
            match covered_from {
                Some(c) if c <= end => {
                    if apply {
                        tracing::warn!(
                            pack,
                            bytes = len - end,
                            "cutting the pack bytes of a commit that never landed"
                        );
                        let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                        f.set_len(end)?;
                        f.sync_all()?;
                    }
                }
                _ => findings.items.push(Finding::PackTail {
                    pack,
                    bytes: len - end,
                }),
            }
        }
    }
    Ok(())
}

/// Packs retired by a compaction whose transaction landed: garbage once
/// nothing is indexed in them (removed when `apply`). Returns those left,
/// which the pack check passes over.
fn retired_packs(
    dir: &Path,
    meta: &Meta,
    ends: &BTreeMap<u32, u64>,
    apply: bool,
    findings: &mut Findings,
) -> Result<std::collections::BTreeSet<u32>> {
    for pack in meta.retired_packs()? {
        if ends.contains_key(&pack) {
            findings.items.push(Finding::Pack {
                pack,
                problem: "retired by a compaction but still indexed".into(),
            });
        } else if apply {
            let path = pack_path(dir, pack);
            tracing::info!(pack, "removing a pack a compaction retired");
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => meta.forget_retired_pack(pack)?,
            }
        }
    }
    Ok(meta.retired_packs()?.into_iter().collect())
}
