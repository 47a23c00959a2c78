//! `repair`'s rebuild of a latest file that is gone, from the next
//! version's file that outlived the metadata of its commit.
//!
//! When meta.db is one commit behind (restored, or a lost WAL tail), the
//! metadata's latest version L has no file any more (the commit of L+1
//! removed it) while `v<L+1>.db` and the pack bytes of that commit are
//! still there. Those bytes are exactly L's pages that L+1 changed, and
//! the metadata still has every page checksum of L (`latest_sums`). So L
//! is rebuilt page by page: from `v<L+1>.db` where its page has L's
//! checksum, else from a stored page of that checksum (the index, or the
//! unindexed pack tail read blob by blob: zstd frames or raw pages). The
//! result must match L's versionHash, or nothing is written.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};

use super::disk::{hash_file, header_page_size, sync_dir};
use super::meta::{Meta, ReplicaRow};
use super::pages::packs::pack_path;
use super::pages::{PageHash, page_hash};

/// Rebuilds `v<latest>.db` of `r` from `next` (a newer version file);
/// Ok(false) when some page of it is nowhere to be found.
pub fn rebuild_latest(data_dir: &Path, meta: &Meta, r: &ReplicaRow, next: &Path) -> Result<bool> {
    let state = meta.latest_state(r, r.latest)?;
    let row = state.row.context("the latest version has no row")?;
    ensure!(
        state.sums.len() == row.page_count as usize,
        "the latest version's page checksums are incomplete"
    );
    let page = row.page_size as usize;
    if header_page_size(next)? != row.page_size {
        return Ok(false);
    }
    let next_f = File::open(next)?;
    let next_pages = next_f.metadata()?.len() / page as u64;
    let tails = tail_pages(data_dir, meta, page)?;
    let out_path = data_dir
        .join("staging")
        .join(format!("rebuild-{}.db", r.uid));
    let mut out = File::create(&out_path)?;
    let mut buf = vec![0u8; page];
    for (i, want) in state.sums.iter().enumerate() {
        let pgno = i as u64 + 1;
        let from_next = pgno <= next_pages
            && next_f
                .read_exact_at(&mut buf, (pgno - 1) * page as u64)
                .is_ok()
            && page_hash(&buf) == *want;
        if !from_next {
            match stored_page(data_dir, meta, want)?.or_else(|| tails.get(want).cloned()) {
                Some(p) if p.len() == page => buf.copy_from_slice(&p),
                _ => {
                    drop(out);
                    let _ = std::fs::remove_file(&out_path);
                    return Ok(false);
                }
            }
        }
        out.write_all(&buf)?;
    }
    out.sync_all()?;
    drop(out);
    if hash_file(&out_path, row.page_size, row.page_count)? != row.version_hash {
        let _ = std::fs::remove_file(&out_path);
        bail!(
            "the rebuilt version {} does not match its versionHash",
            row.number
        );
    }
    let dir = data_dir.join("replicas").join(&r.uid);
    std::fs::rename(&out_path, dir.join(format!("v{}.db", r.latest)))?;
    sync_dir(&dir)?;
    Ok(true)
}

/// The indexed page with checksum `h`, read and checked.
fn stored_page(data_dir: &Path, meta: &Meta, h: &PageHash) -> Result<Option<Vec<u8>>> {
    let Some(loc) = meta.blob(h)? else {
        return Ok(None);
    };
    let f = File::open(pack_path(&data_dir.join("packs"), loc.pack))?;
    let mut raw = vec![0u8; loc.stored_len as usize];
    f.read_exact_at(&mut raw, loc.offset)?;
    let data = if loc.compressed {
        zstd::bulk::decompress(&raw, 1 << 17)?
    } else {
        raw
    };
    Ok((page_hash(&data) == *h).then_some(data))
}

/// The bytes of `path` from `offset` to its end.
fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Every page in the packs' unindexed tails, by checksum: blobs are zstd
/// frames or raw pages of `page` bytes, one after another.
fn tail_pages(data_dir: &Path, meta: &Meta, page: usize) -> Result<HashMap<PageHash, Vec<u8>>> {
    const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
    let mut found = HashMap::new();
    for (pack, end) in meta.pack_ends()? {
        // Only the tail: the indexed part is read through the index.
        let Ok(bytes) = read_from(&pack_path(&data_dir.join("packs"), pack), end) else {
            continue;
        };
        let mut o = 0;
        while o < bytes.len() {
            let rest = &bytes[o..];
            let (data, len) = if rest.starts_with(&ZSTD_MAGIC) {
                let Ok(n) = zstd::zstd_safe::find_frame_compressed_size(rest) else {
                    break;
                };
                match zstd::bulk::decompress(&rest[..n], 1 << 17) {
                    Ok(d) => (d, n),
                    Err(_) => break,
                }
            } else if rest.len() >= page {
                (rest[..page].to_vec(), page)
            } else {
                break;
            };
            found.insert(page_hash(&data), data);
            o += len;
        }
    }
    Ok(found)
}
