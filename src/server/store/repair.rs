//! `sqlrsync-server repair`: make a data dir that recovery refused
//! servable again, losing nothing.
//!
//! Whatever recovery could not account for ([`recovery::Finding`]) is
//! first set aside, never deleted: moved (or, for pack tails, copied and
//! then cut) into `lost+found/<time>/` under the same relative path. Then
//! what can be rebuilt from those files is: a missing latest file from the
//! next version's file and the pack bytes of its lost commit
//! ([`super::repair_latest`]), and a version file newer than the
//! metadata's latest (a commit whose metadata was lost, or meta.db
//! restored from an older backup) becomes the next version, through the
//! ordinary commit. What cannot be rebuilt (a missing or short pack, a
//! latest file with no newer file) is reported with what would fix it; the
//! copies stay in `lost+found/`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::Store;
use super::commit::{CommitOutcome, Pushed};
use super::disk::{header_page_size, private_dir};
use super::meta::{Meta, ReplicaRow};
use super::recovery::{Finding, Findings};
use super::repair_latest::rebuild_latest;

/// What `repair` did.
#[derive(Debug, Default)]
pub struct RepairReport {
    /// Files set aside, as paths inside the data dir.
    pub set_aside: Vec<String>,
    /// Versions rebuilt from set-aside files.
    pub adopted: Vec<String>,
    /// What could not be fixed, and what would fix it.
    pub unresolved: Vec<String>,
    /// Where the set-aside files are.
    pub lost_found: Option<PathBuf>,
}

/// A version file set aside that may become a version.
struct Orphan {
    replica: ReplicaRow,
    number: u64,
    copy: PathBuf,
}

/// Phase 1, before the pages are opened: sets every finding aside in
/// `lost+found/<time>/` and returns the version files worth adopting.
pub fn set_aside(
    data_dir: &Path,
    meta: &Meta,
    findings: &Findings,
    report: &mut RepairReport,
) -> Result<Vec<(ReplicaRow, u64, PathBuf)>> {
    let stamp = chrono_stamp();
    let lf = data_dir.join("lost+found").join(stamp);
    let replicas = meta.all_replicas()?;
    let rebuilt = rebuild_missing_latest(data_dir, meta, &replicas, findings, report)?;
    let broken_latest: BTreeSet<&str> = findings
        .items
        .iter()
        .filter_map(|f| match f {
            Finding::LatestFile { replica, .. } if !rebuilt.contains(replica) => {
                Some(replica.as_str())
            }
            _ => None,
        })
        .collect();
    let mut orphans = Vec::new();
    for f in &findings.items {
        match f {
            Finding::LatestFile { replica, .. } if rebuilt.contains(replica) => {}
            Finding::UnknownFile { replica, file } => {
                let copy = move_aside(data_dir, &lf, file, report)?;
                let r = replicas.iter().find(|r| &r.path == replica);
                let n = version_number(file);
                match (r, n) {
                    (Some(r), Some(n)) if n > r.latest && !broken_latest.contains(replica.as_str()) => {
                        orphans.push(Orphan {
                            replica: r.clone(),
                            number: n,
                            copy,
                        });
                    }
                    _ => {}
                }
            }
            Finding::UnknownReplicaDir { dir } => {
                move_aside(data_dir, &lf, dir, report)?;
            }
            Finding::PackTail { pack, .. } => {
                let end = meta
                    .pack_ends()?
                    .into_iter()
                    .find(|(p, _)| p == pack)
                    .map_or(0, |(_, e)| e);
                copy_tail_aside(data_dir, &lf, *pack, end, report)?;
            }
            Finding::Pack { pack, problem } => report.unresolved.push(format!(
                "pack {pack} is {problem}: the older versions with pages there cannot be rebuilt until it is restored from a backup"
            )),
            Finding::LatestFile {
                replica, problem, ..
            } => report.unresolved.push(format!(
                "the latest file of {replica} is {problem}: its versions cannot be rebuilt until it is restored (from a backup, or by a push once the replica is deleted)"
            )),
        }
    }
    if !report.set_aside.is_empty() {
        report.lost_found = Some(lf);
    }
    orphans.sort_by_key(|o| (o.replica.id, o.number));
    Ok(orphans
        .into_iter()
        .map(|o| (o.replica, o.number, o.copy))
        .collect())
}

/// For each replica whose latest file is missing and that has a newer
/// version file, rebuilds the latest from it ([`rebuild_latest`]); the
/// replicas rebuilt.
fn rebuild_missing_latest(
    data_dir: &Path,
    meta: &Meta,
    replicas: &[ReplicaRow],
    findings: &Findings,
    report: &mut RepairReport,
) -> Result<BTreeSet<String>> {
    let mut rebuilt = BTreeSet::new();
    for f in &findings.items {
        let Finding::LatestFile {
            replica,
            problem: "missing",
            ..
        } = f
        else {
            continue;
        };
        let Some(r) = replicas.iter().find(|r| &r.path == replica) else {
            continue;
        };
        // The oldest version file newer than the latest: the next one.
        let next = findings
            .items
            .iter()
            .filter_map(|g| match g {
                Finding::UnknownFile { replica: rr, file } if rr == replica => version_number(file)
                    .filter(|n| *n > r.latest)
                    .map(|n| (n, file)),
                _ => None,
            })
            .min_by_key(|(n, _)| *n);
        let Some((n, file)) = next else { continue };
        match rebuild_latest(data_dir, meta, r, file) {
            Ok(true) => {
                report.adopted.push(format!(
                    "v{}.db of {replica} rebuilt from v{n}.db and the pack",
                    r.latest
                ));
                rebuilt.insert(replica.clone());
            }
            Ok(false) => report.unresolved.push(format!(
                "v{}.db of {replica} cannot be rebuilt from v{n}.db: some of its pages are nowhere",
                r.latest
            )),
            Err(e) => report.unresolved.push(format!(
                "v{}.db of {replica} cannot be rebuilt from v{n}.db: {e:#}",
                r.latest
            )),
        }
    }
    Ok(rebuilt)
}

impl Store {
    /// Phase 2: each set-aside version file newer than its replica's latest
    /// becomes the next version (from a copy; the set-aside file stays).
    pub fn adopt(
        &self,
        orphans: &[(ReplicaRow, u64, PathBuf)],
        report: &mut RepairReport,
    ) -> Result<()> {
        for (r, n, copy) in orphans {
            let r = self
                .meta()
                .replica_by_id(r.id)?
                .unwrap_or_else(|| r.clone());
            let staging = self.staging_path(&r);
            std::fs::copy(copy, &staging).with_context(|| format!("copying {}", copy.display()))?;
            let page_size = header_page_size(&staging)?;
            let pages = (std::fs::metadata(&staging)?.len() / page_size as u64) as u32;
            let all: BTreeSet<u32> = (1..=pages).collect();
            let message = format!("recovered by sqlrsync-server repair from v{n}.db");
            let pushed = Pushed {
                staging: &staging,
                sent_pages: &all,
                final_count: pages,
                message: &message,
                keys: &[],
                expect_xxh3: None,
            };
            match self.commit(&r, &pushed) {
                Ok(CommitOutcome::Committed(row)) => report.adopted.push(format!(
                    "v{n}.db of {} is now version {}",
                    r.path, row.number
                )),
                Ok(CommitOutcome::NoChange(_)) => report.adopted.push(format!(
                    "v{n}.db of {} equals its latest version; nothing to add",
                    r.path
                )),
                Err(e) => report.unresolved.push(format!(
                    "v{n}.db of {} could not become a version: {e:#}",
                    r.path
                )),
            }
        }
        Ok(())
    }
}

fn version_number(file: &Path) -> Option<u64> {
    file.file_name()?
        .to_str()?
        .strip_prefix('v')?
        .strip_suffix(".db")?
        .parse()
        .ok()
}

/// Moves `path` (inside `data_dir`) to the same place under `lf`.
fn move_aside(
    data_dir: &Path,
    lf: &Path,
    path: &Path,
    report: &mut RepairReport,
) -> Result<PathBuf> {
    let rel = path.strip_prefix(data_dir).unwrap_or(path);
    let dest = lf.join(rel);
    private_dir(dest.parent().unwrap_or(lf))?;
    std::fs::rename(path, &dest)
        .with_context(|| format!("moving {} to {}", path.display(), dest.display()))?;
    report.set_aside.push(rel.display().to_string());
    Ok(dest)
}

/// Copies the bytes of `pack` past `end` to `lf`, then cuts them off.
fn copy_tail_aside(
    data_dir: &Path,
    lf: &Path,
    pack: u32,
    end: u64,
    report: &mut RepairReport,
) -> Result<()> {
    use std::io::{Seek, SeekFrom, Write};
    let path = super::pages::packs::pack_path(&data_dir.join("packs"), pack);
    let rel = format!(
        "packs/{}.tail-from-{end}",
        path.file_name().unwrap_or_default().to_string_lossy()
    );
    let dest = lf.join(&rel);
    private_dir(dest.parent().unwrap_or(lf))?;
    let mut src = std::fs::File::open(&path)?;
    src.seek(SeekFrom::Start(end))?;
    let mut out = std::fs::File::create(&dest)?;
    std::io::copy(&mut src, &mut out)?;
    out.flush()?;
    out.sync_all()?;
    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
    f.set_len(end)?;
    f.sync_all()?;
    report.set_aside.push(rel);
    Ok(())
}

/// A sortable UTC time stamp for the lost+found folder.
fn chrono_stamp() -> String {
    let now = super::meta::now();
    now.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}
