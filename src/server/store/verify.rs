//! `sqlrsync-server verify`: the whole store re-read, every stored page
//! against its checksum and every version against its versionHash.
//!
//! It may run next to a live server, so it reads only: the latest
//! version's metadata is taken as one snapshot and its file held open
//! while it is checked, and older versions are rebuilt in a scratch file
//! (in the spill folder when the data dir's disk is full, which is not
//! damage).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Result, ensure};

use super::disk::{copy_of, hash_file, is_out_of_space};
use super::meta::{LatestSnapshot, ReplicaRow, VersionRow};
use super::pages::{PageHash, page_hash};
use super::{Store, lock};
use crate::sqlite::VersionHasher;

/// What `verify` looked at.
#[derive(Debug, Default)]
pub struct VerifyCounts {
    /// Stored pages checked.
    pub pages: u64,
    /// Replicas with versions.
    pub replicas: u64,
    /// Versions rebuilt and hashed.
    pub versions: u64,
}

impl Store {
    /// Re-reads the whole store; returns one line per problem found.
    pub fn verify(&self) -> Result<(Vec<String>, VerifyCounts)> {
        let mut damage = Vec::new();
        let mut counts = VerifyCounts::default();
        // Every stored page against its checksum.
        let blobs = self.meta().all_blobs()?;
        for (h, loc) in &blobs {
            counts.pages += 1;
            // Bound first: the guard must be gone before the page is read
            // again below, which takes the same lock.
            let read = lock(&self.pages).read(h, loc);
            if let Err(e) = read {
                // A live server's compaction may have moved or dropped it.
                match self.meta().blob(h)? {
                    None => counts.pages -= 1,
                    Some(moved) if moved != *loc => {
                        if let Err(e) = self.read_page(h) {
                            damage.push(format!("{e:#}"));
                        }
                    }
                    Some(_) => damage.push(format!("{e:#}")),
                }
            }
        }
        // Every version of every replica against its versionHash.
        for r in self.meta().all_replicas()? {
            if r.latest == 0 {
                continue;
            }
            counts.replicas += 1;
            match self.verify_replica_settled(&r) {
                Ok((bad, versions)) => {
                    damage.extend(bad);
                    counts.versions += versions;
                }
                Err(e) => damage.push(format!("{}: {e:#}", r.path)),
            }
        }
        Ok((damage, counts))
    }

    /// [`Store::verify_replica`], again when a live server pruned,
    /// compacted or deleted something meanwhile (the maintenance
    /// generation moved): pages that went away under a check are not
    /// damage. A replica deleted meanwhile has nothing to report.
    fn verify_replica_settled(&self, r: &ReplicaRow) -> Result<(Vec<String>, u64)> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let before = self.meta().maintenance_generation()?;
            let result = self.verify_replica(r);
            let clean = result.as_ref().is_ok_and(|(bad, _)| bad.is_empty());
            if clean || attempts == 3 || self.meta().maintenance_generation()? == before {
                return result;
            }
            if self.meta().replica_by_id(r.id)?.is_none() {
                return Ok((Vec::new(), 0));
            }
        }
    }

    /// Checks every version of `r`; returns the damage found and how many
    /// versions were checked.
    ///
    /// `verify` may run next to a live server, whose commits replace the
    /// latest file (and delete the old one) and its checksums. So the
    /// latest version's metadata is read in one transaction, its file is
    /// opened (an open file stays readable even once a commit deletes it)
    /// and held with a shared lock: the one rewrite in place a server makes,
    /// turning a retired latest file into a spare ([`super::spare`]), takes
    /// the file's exclusive lock first and deletes it instead when it cannot.
    /// If a commit moved the latest in between, the snapshot is taken again. Older versions never
    /// change once their successor exists.
    fn verify_replica(&self, r: &ReplicaRow) -> Result<(Vec<String>, u64)> {
        let mut attempts = 0;
        let (latest, row, sums, file) = loop {
            attempts += 1;
            let LatestSnapshot { latest, row, sums } = self.meta().latest_snapshot(r)?;
            let Some(row) = row else {
                return Ok((vec![format!("{}: latest version row missing", r.path)], 0));
            };
            let path = self.version_path(r, latest);
            match open_locked(&path) {
                Ok(Some(f)) => break (latest, row, sums, f),
                // Made a spare while we waited for the lock: take it again.
                Ok(None) if attempts < 20 => continue,
                Ok(None) => {
                    return Ok((
                        vec![format!("{} v{latest}: kept moving; not checked", r.path)],
                        1,
                    ));
                }
                // A commit replaced the file after the snapshot: take it again.
                Err(_)
                    if attempts < 20
                        && self.meta().replica_by_id(r.id)?.map(|x| x.latest) != Some(latest) =>
                {
                    continue;
                }
                Err(e) => {
                    return Ok((
                        vec![format!(
                            "{} v{latest}: file {} cannot be opened: {e}",
                            r.path,
                            path.display()
                        )],
                        1,
                    ));
                }
            }
        };
        let mut bad = Vec::new();
        let len = file.metadata()?.len();
        if len != row.size() {
            bad.push(format!(
                "{} v{latest}: file is {len} bytes, expected {}",
                r.path,
                row.size()
            ));
            return Ok((bad, 1));
        }
        bad.extend(self.check_latest(r, &file, &row, &sums)?);
        // Older versions: rebuild them one after the other, newest first,
        // applying one back delta at a time to a single copy.
        let tmp = self.data_dir.join("cache").join(format!(
            "verify-{}-{}.tmp",
            r.uid,
            uuid::Uuid::new_v4().simple()
        ));
        let mut older = self.verify_older(r, &file, latest, &tmp);
        let _ = std::fs::remove_file(&tmp);
        if older.as_ref().is_err_and(is_out_of_space) {
            // A full disk is not damage: rebuild in the spill folder.
            let spill = self.spill_dir.join(tmp.file_name().expect("a file name"));
            older = std::fs::create_dir_all(&self.spill_dir)
                .map_err(anyhow::Error::from)
                .and_then(|_| self.verify_older(r, &file, latest, &spill));
            let _ = std::fs::remove_file(&spill);
        }
        match older {
            Ok(more) => bad.extend(more),
            Err(e) => bad.push(format!("{}: older versions: {e:#}", r.path)),
        }
        Ok((bad, latest))
    }

    /// Rebuilds versions `latest-1` down to 1 of `r` in `tmp`, checking each
    /// against its versionHash. A version that cannot be rebuilt makes every
    /// older one unreachable too; each is reported.
    fn verify_older(
        &self,
        r: &ReplicaRow,
        latest: &File,
        latest_number: u64,
        tmp: &Path,
    ) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        if latest_number < 2 {
            return Ok(bad);
        }
        let f = copy_of(latest, tmp)?;
        for k in (1..latest_number).rev() {
            let step = (|| -> Result<()> {
                let Some(v) = self.step_back(r, &f, k)? else {
                    // Pruned: nothing of it is kept to check.
                    return Ok(());
                };
                ensure!(
                    hash_file(tmp, v.page_size, v.page_count)? == v.version_hash,
                    "rebuilt with the wrong hash: the store is damaged"
                );
                if let Some(x) = &v.version_xxh3 {
                    ensure!(
                        crate::sqlite::xxh3_file_pages(tmp, v.page_size, v.page_count)? == *x,
                        "rebuilt with the wrong versionXxh3: the store is damaged"
                    );
                }
                Ok(())
            })();
            if let Err(e) = step {
                for n in (1..=k).rev() {
                    bad.push(format!("{} v{n}: {e:#}", r.path));
                }
                break;
            }
        }
        Ok(bad)
    }

    fn check_latest(
        &self,
        r: &ReplicaRow,
        file: &File,
        row: &VersionRow,
        sums: &[PageHash],
    ) -> Result<Vec<String>> {
        let mut bad = Vec::new();
        if sums.len() != row.page_count as usize {
            bad.push(format!(
                "{} v{}: page checksums missing",
                r.path, row.number
            ));
        }
        let mut buf = vec![0u8; row.page_size as usize];
        let mut hasher = VersionHasher::new();
        let mut xxh3 = VersionHasher::with_kind(crate::sqlite::HashKind::Xxh3);
        for pgno in 1..=row.page_count {
            file.read_exact_at(&mut buf, (pgno as u64 - 1) * row.page_size as u64)?;
            if let Some(s) = sums.get(pgno as usize - 1)
                && page_hash(&buf) != *s
            {
                bad.push(format!(
                    "{} v{}: page {pgno} fails its checksum",
                    r.path, row.number
                ));
            }
            hasher.page(pgno, &buf);
            xxh3.page(pgno, &buf);
        }
        if hasher.finish() != row.version_hash {
            bad.push(format!(
                "{} v{}: versionHash does not match",
                r.path, row.number
            ));
        }
        if row
            .version_xxh3
            .as_ref()
            .is_some_and(|x| *x != xxh3.finish())
        {
            bad.push(format!(
                "{} v{}: versionXxh3 does not match",
                r.path, row.number
            ));
        }
        Ok(bad)
    }
}

/// Opens `path` and takes its shared lock; `None` when, by the time the
/// lock is ours, the path names another file (this one became a spare).
pub(super) fn open_locked(path: &Path) -> std::io::Result<Option<File>> {
    use std::os::unix::fs::MetadataExt;
    let f = File::open(path)?;
    f.lock_shared()?;
    let still =
        std::fs::metadata(path).is_ok_and(|m| m.ino() == f.metadata().map_or(0, |n| n.ino()));
    Ok(still.then_some(f))
}
