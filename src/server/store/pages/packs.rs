//! The pack-file backend of [`PageStore`]: content-addressed page blobs in
//! append-only files.
//!
//! A page is stored once, under the SHA-256 of its bytes, in the current pack
//! file `packs/pack-NNNNNN.dat`; its index row (pack, offset, length,
//! compression) lives in the metadata database and is written in the same
//! transaction as the version that needs it. Bytes appended by a commit that
//! then failed are given back at once; after a crash, start-up recovery
//! cuts them when the commit's in-flight record proves them garbage. The
//! SHA-256 address doubles as the page's checksum: a read re-hashes what it
//! decompressed and refuses a mismatch.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use super::{BlobLocation, BlobPosition, PageHash, PageReader, PageStore, page_hash};
use crate::server::store::disk::sync_dir;

/// Packs are closed and a new one started past this size, so no single file
/// grows without bound.
const PACK_ROLLOVER: u64 = 256 * 1024 * 1024;

/// The pack-file implementation of [`PageStore`].
pub struct PackStore {
    /// `DATA_DIR/packs`.
    dir: PathBuf,
    /// Number of the pack being appended to.
    current: u32,
    /// Open handle of the current pack, positioned at its end.
    file: File,
    /// Length of the current pack.
    len: u64,
    /// zstd level for new pages; 0 stores them raw.
    compress_level: i32,
    /// One zstd context for every append, made on first use: making one
    /// per page cost more than compressing the page (a push of 1,908
    /// pages spent most of its commit there).
    compressor: Option<zstd::bulk::Compressor<'static>>,
    /// Output buffer for `compressor`, reused across appends.
    scratch: Vec<u8>,
    /// True when appends happened since the last sync.
    dirty: bool,
}

pub fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("pack-{pack:06}.dat"))
}

impl PackStore {
    /// Opens the store, appending to the last pack. Unreferenced tails are
    /// start-up recovery's to judge (`store::recovery`): only there is it
    /// known whether they are garbage.
    pub fn open(dir: &Path, compress_level: i32) -> Result<PackStore> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut packs: Vec<u32> = Vec::new();
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name();
            let name = name.to_string_lossy();
            if let Some(n) = name
                .strip_prefix("pack-")
                .and_then(|s| s.strip_suffix(".dat"))
                .and_then(|s| s.parse::<u32>().ok())
            {
                packs.push(n);
            }
        }
        packs.sort_unstable();
        let current = packs.last().copied().unwrap_or(1);
        let path = pack_path(dir, current);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        Ok(PackStore {
            dir: dir.to_path_buf(),
            current,
            file,
            len,
            compress_level,
            compressor: None,
            scratch: Vec::new(),
            dirty: false,
        })
    }

    fn roll_over(&mut self) -> Result<()> {
        self.sync()?;
        self.current += 1;
        let path = pack_path(&self.dir, self.current);
        self.file = OpenOptions::new().create(true).append(true).open(&path)?;
        self.len = self.file.metadata()?.len();
        sync_dir(&self.dir)?;
        Ok(())
    }

    /// Compresses `data` into `self.scratch`; false when compression is off
    /// or saves too little to be worth a decompression on every read.
    fn compress(&mut self, data: &[u8]) -> bool {
        if self.compress_level <= 0 || data.len() <= 64 {
            return false;
        }
        if self.compressor.is_none() {
            match zstd::bulk::Compressor::new(self.compress_level) {
                Ok(c) => self.compressor = Some(c),
                Err(_) => return false,
            }
        }
        let Some(c) = self.compressor.as_mut() else {
            return false;
        };
        self.scratch.clear();
        // Room for exactly what is worth keeping: anything longer fails
        // with "destination too small" and the page is stored raw.
        self.scratch.reserve(data.len() - 64);
        matches!(c.compress_to_buffer(data, &mut self.scratch), Ok(n) if n + 64 < data.len())
    }

    /// Appends bytes as they are to be stored.
    fn append_stored(&mut self, bytes: &[u8], compressed: bool) -> Result<BlobLocation> {
        if self.len >= PACK_ROLLOVER {
            self.roll_over()?;
        }
        if let Err(e) = self.file.write_all(bytes) {
            // A full disk writes part of the page and then fails. Cut the
            // part off: the file is opened for appending, so left there it
            // would shift every later page away from the offset recorded
            // for it (`self.len`), and hold space no page refers to.
            let _ = self.file.set_len(self.len);
            return Err(e).with_context(|| {
                format!(
                    "appending to {}",
                    pack_path(&self.dir, self.current).display()
                )
            });
        }
        let loc = BlobLocation {
            pack: self.current,
            offset: self.len,
            stored_len: bytes.len() as u32,
            compressed,
        };
        self.len += bytes.len() as u64;
        self.dirty = true;
        Ok(loc)
    }

    /// The bytes stored at `loc`, as stored.
    fn read_stored(&self, loc: &BlobLocation) -> Result<Vec<u8>> {
        let path = pack_path(&self.dir, loc.pack);
        let mut f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        f.seek(SeekFrom::Start(loc.offset))?;
        let mut buf = vec![0u8; loc.stored_len as usize];
        f.read_exact(&mut buf)
            .with_context(|| format!("reading {} at {}", path.display(), loc.offset))?;
        Ok(buf)
    }

    /// The page in `stored`, decompressed and checked against `hash`.
    fn decode(&self, hash: &PageHash, loc: &BlobLocation, stored: Vec<u8>) -> Result<Vec<u8>> {
        let data = if loc.compressed {
            zstd::bulk::decompress(&stored, 1 << 17).context("decompressing a page")?
        } else {
            stored
        };
        if &page_hash(&data) != hash {
            bail!(
                "page {} in {} at offset {} fails its checksum",
                hex::encode(&hash[..8]),
                pack_path(&self.dir, loc.pack).display(),
                loc.offset
            );
        }
        Ok(data)
    }
}

impl PageStore for PackStore {
    fn append(&mut self, data: &[u8]) -> Result<BlobLocation> {
        let compressed = self.compress(data);
        // Taken out for the write, which borrows self; put back after.
        let scratch = std::mem::take(&mut self.scratch);
        let bytes: &[u8] = if compressed { &scratch } else { data };
        let loc = self.append_stored(bytes, compressed);
        self.scratch = scratch;
        loc
    }

    fn seal(&mut self) -> Result<()> {
        if self.len > 0 {
            self.roll_over()?;
        }
        Ok(())
    }

    fn copy(&mut self, hash: &PageHash, loc: &BlobLocation) -> Result<BlobLocation> {
        let stored = self.read_stored(loc)?;
        self.decode(hash, loc, stored.clone())?;
        self.append_stored(&stored, loc.compressed)
    }

    fn remove_pack(&mut self, pack: u32) -> Result<()> {
        anyhow::ensure!(pack != self.current, "pack {pack} is being appended to");
        let path = pack_path(&self.dir, pack);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", path.display()));
            }
            _ => {}
        }
        sync_dir(&self.dir)
    }

    fn sync(&mut self) -> Result<()> {
        if self.dirty {
            self.file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    fn end(&self) -> BlobPosition {
        BlobPosition {
            pack: self.current,
            offset: self.len,
        }
    }

    fn cut_back(&mut self, start: BlobPosition, expected_end: BlobPosition) -> bool {
        if self.end() != expected_end || start.pack != self.current || start.offset > self.len {
            return false;
        }
        if self.file.set_len(start.offset).is_err() {
            return false;
        }
        self.len = start.offset;
        true
    }

    fn reader(&self) -> Box<dyn PageReader> {
        Box::new(PackReader::new(&self.dir))
    }

    fn read(&self, hash: &PageHash, loc: &BlobLocation) -> Result<Vec<u8>> {
        let stored = self.read_stored(loc)?;
        self.decode(hash, loc, stored)
    }
}

/// The pack-file [`PageReader`]: each pack opened once per reader, one
/// zstd context for every compressed page. Opening the pack for every page
/// and making a context for each cost more than reading the page.
pub struct PackReader {
    /// `DATA_DIR/packs`.
    dir: PathBuf,
    /// The packs opened so far. A pack that compaction retires while this
    /// reader holds it open stays readable through the open file.
    open: HashMap<u32, File>,
    /// Made on the first compressed page.
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// The stored bytes of a compressed page.
    scratch: Vec<u8>,
}

impl PackReader {
    /// A reader of the packs in `dir`.
    pub fn new(dir: &Path) -> PackReader {
        PackReader {
            dir: dir.to_path_buf(),
            open: HashMap::new(),
            decompressor: None,
            scratch: Vec::new(),
        }
    }

    fn pack(&mut self, pack: u32) -> Result<&File> {
        if !self.open.contains_key(&pack) {
            let path = pack_path(&self.dir, pack);
            let f = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            self.open.insert(pack, f);
        }
        Ok(&self.open[&pack])
    }

    /// Reads the stored bytes of `loc` into `out` (their exact length).
    fn read_stored(&mut self, loc: &BlobLocation, out: &mut [u8]) -> Result<()> {
        self.pack(loc.pack)?
            .read_exact_at(out, loc.offset)
            .with_context(|| {
                format!(
                    "reading {} at {}",
                    pack_path(&self.dir, loc.pack).display(),
                    loc.offset
                )
            })
    }
}

impl PageReader for PackReader {
    fn read_into(&mut self, hash: &PageHash, loc: &BlobLocation, out: &mut [u8]) -> Result<()> {
        if loc.compressed {
            let mut stored = std::mem::take(&mut self.scratch);
            stored.resize(loc.stored_len as usize, 0);
            let read = self.read_stored(loc, &mut stored);
            if self.decompressor.is_none() {
                self.decompressor =
                    Some(zstd::bulk::Decompressor::new().context("making a zstd context")?);
            }
            let d = self.decompressor.as_mut().expect("made above");
            let n = read.and_then(|()| {
                d.decompress_to_buffer(&stored, out)
                    .context("decompressing a page")
            });
            self.scratch = stored;
            ensure!(n? == out.len(), "stored page has the wrong size");
        } else {
            ensure!(
                loc.stored_len as usize == out.len(),
                "stored page has the wrong size"
            );
            self.read_stored(loc, out)?;
        }
        if &page_hash(out) != hash {
            bail!(
                "page {} in {} at offset {} fails its checksum",
                hex::encode(&hash[..8]),
                pack_path(&self.dir, loc.pack).display(),
                loc.offset
            );
        }
        Ok(())
    }
}
