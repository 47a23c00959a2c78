//! Looking at a database file before anything touches it.
//!
//! sqlite3_rsync reports bad input late and sometimes after creating files
//! (an empty ORIGIN turns into an empty REPLICA, a REPLICA in a missing
//! directory is an "unable to open" deep in its output). These checks read
//! the 100-byte header and ask SQLite itself, read-only, so that bad input is
//! one clear line before any database is opened for writing.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

/// The 16-byte magic at the start of every SQLite database.
pub const MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What is at a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// Nothing there.
    Missing,
    /// A regular file of 0 bytes (SQLite treats it as a new database).
    Empty,
    /// A regular file that starts with a valid SQLite header.
    Database(Header),
}

/// The parts of the database header sqlrsync cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Bytes per page (512..=65536): REPLICA must match ORIGIN's.
    pub page_size: u32,
    /// In-header page count, when the header says it is valid.
    pub page_count: Option<u32>,
    /// Read/write versions 2: WAL mode.
    pub wal: bool,
    /// File length in bytes.
    pub len: u64,
}

/// Why a file is not usable as a database.
#[derive(Debug, thiserror::Error)]
pub enum DbFileError {
    /// A directory, device or other non-file.
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    /// The file exists but cannot be opened or read.
    #[error("cannot read {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why the system refused.
        source: io::Error,
    },
    /// No SQLite magic at the start.
    #[error("{0} is not an SQLite database")]
    NotADatabase(PathBuf),
    /// An SQLite header that contradicts itself or the file, or a schema
    /// SQLite cannot read.
    #[error("{path} is corrupt: {why}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, in a few words.
        why: String,
    },
}

impl DbFileError {
    /// One line naming the file's role (ORIGIN, REPLICA) and what is wrong.
    pub fn describe(&self, role: &str) -> String {
        match self {
            DbFileError::NotAFile(p) => format!("{role} {} is not a regular file", p.display()),
            DbFileError::Unreadable { path, source } => {
                format!(
                    "cannot read {role} {}: {}",
                    path.display(),
                    io_reason(source)
                )
            }
            DbFileError::NotADatabase(p) => {
                format!("{role} {} is not an SQLite database", p.display())
            }
            DbFileError::Corrupt { path, why } => {
                format!("{role} {} is corrupt: {why}", path.display())
            }
        }
    }
}

/// Reads the header of `path` without opening it as a database.
pub fn inspect(path: &Path) -> Result<FileState, DbFileError> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(source) => {
            return Err(DbFileError::Unreadable {
                path: path.into(),
                source,
            });
        }
    };
    if !meta.is_file() {
        return Err(DbFileError::NotAFile(path.into()));
    }
    if meta.len() == 0 {
        return Ok(FileState::Empty);
    }
    let mut head = [0u8; 100];
    let mut file = File::open(path).map_err(|source| DbFileError::Unreadable {
        path: path.into(),
        source,
    })?;
    let n = read_up_to(&mut file, &mut head).map_err(|source| DbFileError::Unreadable {
        path: path.into(),
        source,
    })?;
    if n < MAGIC.len() || &head[..16] != MAGIC {
        return Err(DbFileError::NotADatabase(path.into()));
    }
    let corrupt = |why: String| DbFileError::Corrupt {
        path: path.into(),
        why,
    };
    if n < 100 {
        return Err(corrupt(format!(
            "only {n} bytes, shorter than a database header"
        )));
    }
    let raw = u16::from_be_bytes([head[16], head[17]]) as u32;
    let page_size = if raw == 1 { 65536 } else { raw };
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(corrupt(format!("invalid page size {raw} in the header")));
    }
    let be = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let change_counter = be(24);
    let count = be(28);
    let valid_for = be(92);
    let page_count = (count > 0 && change_counter == valid_for).then_some(count);
    let wal = head[18] == 2 && head[19] == 2;
    if let Some(pages) = page_count
        && !wal
        && meta.len() < pages as u64 * page_size as u64
    {
        return Err(corrupt(format!(
            "the header says {pages} pages of {page_size} bytes but the file has only {} bytes (truncated?)",
            meta.len()
        )));
    }
    Ok(FileState::Database(Header {
        page_size,
        page_count,
        wal,
        len: meta.len(),
    }))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Facts SQLite itself reports about a database, read-only.
#[derive(Debug, Clone)]
pub struct Facts {
    /// Bytes per page, as SQLite reads it.
    pub page_size: u32,
    /// Pages in the database including any WAL content: what a sync copies.
    pub page_count: u32,
    /// `delete`, `wal`, ...: shown by `--dry`.
    pub journal_mode: String,
}

/// Opens `path` read-only and asks SQLite for its page size, page count and
/// journal mode, reading the schema so that a damaged file fails here.
/// Returns Ok(None) when SQLite cannot look right now (locked, no -shm
/// access): not proof of damage, so the sync itself decides.
///
/// Creates no file: a WAL database at rest (no `-wal` beside it) is opened
/// `immutable`, because even a read-only SQLite connection would otherwise
/// create the `-wal` and `-shm` files and leave them behind.
pub fn facts(path: &Path) -> Result<Option<Facts>, DbFileError> {
    let wal_file = wal_path(path);
    let (opened, at_rest_wal) = open_without_traces(path);
    let result = opened.and_then(|c| {
        c.busy_timeout(std::time::Duration::from_millis(2000))?;
        c.query_row("SELECT count(*) FROM sqlite_schema", [], |_| Ok(()))?;
        Ok(Facts {
            page_size: c.query_row("PRAGMA page_size", [], |r| r.get(0))?,
            page_count: c.query_row("PRAGMA page_count", [], |r| r.get(0))?,
            journal_mode: c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?,
        })
    });
    match result {
        Ok(mut f) => {
            if at_rest_wal {
                // immutable hides the journal mode; the header told us.
                f.journal_mode = "wal".into();
            }
            Ok(Some(f))
        }
        // A writer that started while we read immutably may have moved
        // pages under us: that is not damage, so let the sync decide.
        Err(_) if at_rest_wal && wal_file.exists() => Ok(None),
        Err(rusqlite::Error::SqliteFailure(e, msg)) => match e.code {
            rusqlite::ErrorCode::NotADatabase => Err(DbFileError::NotADatabase(path.into())),
            rusqlite::ErrorCode::DatabaseCorrupt => Err(DbFileError::Corrupt {
                path: path.into(),
                why: msg.unwrap_or_else(|| "database disk image is malformed".into()),
            }),
            _ => Ok(None),
        },
        Err(_) => Ok(None),
    }
}

/// Opens `path` read-only without leaving files behind: a WAL database at
/// rest (no `-wal`) is opened `immutable`, since even a read-only connection
/// would otherwise create `-wal` and `-shm` and leave them. The flag says
/// whether that happened.
fn open_without_traces(path: &Path) -> (rusqlite::Result<Connection>, bool) {
    let at_rest_wal = matches!(
        inspect(path),
        Ok(FileState::Database(Header { wal: true, .. }))
    ) && !wal_path(path).exists();
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let opened = if at_rest_wal {
        Connection::open_with_flags(immutable_uri(path), flags | OpenFlags::SQLITE_OPEN_URI)
    } else {
        Connection::open_with_flags(path, flags)
    };
    (opened, at_rest_wal)
}

/// True when REPLICA holds exactly ORIGIN's pages right now, so a sync
/// would change nothing. Page 1's bookkeeping bytes that every commit
/// rewrites (change counter 24..28, version-valid-for and SQLite version
/// 92..100) are not content and are ignored; so are the journal-mode bytes
/// 18..20 when REPLICA is in WAL mode, which sqlite3_rsync keeps anyway.
/// Each side is read in one read transaction.
///
/// Comparing bytes costs a fraction of what sqlite3_rsync's hashing of
/// every page on both sides costs, and stops at the first difference; any
/// doubt (an error, a lock) answers false and the real sync decides. If
/// ORIGIN changes while it is read, "same" still means REPLICA is the
/// consistent snapshot a sync a moment earlier would have made.
pub fn same_pages(origin: &Path, replica: &Path) -> bool {
    fn compare(origin: &Path, replica: &Path) -> rusqlite::Result<bool> {
        let o = open_without_traces(origin).0?;
        let r = open_without_traces(replica).0?;
        for c in [&o, &r] {
            c.busy_timeout(std::time::Duration::from_millis(500))?;
            c.execute_batch("BEGIN")?;
        }
        let shape = |c: &Connection| -> rusqlite::Result<(u32, u32)> {
            Ok((
                c.query_row("PRAGMA page_size", [], |r| r.get(0))?,
                c.query_row("PRAGMA page_count", [], |r| r.get(0))?,
            ))
        };
        if shape(&o)? != shape(&r)? {
            return Ok(false);
        }
        // No ORDER BY: the table yields pages in page order by itself, and
        // asking for an order could make SQLite read every page into a
        // sorter before the first comparison. The page numbers are compared
        // anyway, so an unexpected order can only answer "not the same".
        let sql = "SELECT pgno, data FROM sqlite_dbpage";
        let (mut so, mut sr) = (o.prepare(sql)?, r.prepare(sql)?);
        let (mut ro, mut rr) = (so.query([])?, sr.query([])?);
        loop {
            match (ro.next()?, rr.next()?) {
                (None, None) => return Ok(true),
                (Some(a), Some(b)) => {
                    let pgno: u32 = a.get(0)?;
                    if pgno != b.get::<_, u32>(0)? {
                        return Ok(false);
                    }
                    let (x, y) = (a.get_ref(1)?.as_blob()?, b.get_ref(1)?.as_blob()?);
                    let equal = if pgno == 1 && x.len() >= 100 && y.len() == x.len() {
                        // Bytes 18-19 (journal mode) must match too, unless
                        // the replica is in WAL mode: sqlite3_rsync keeps a WAL
                        // replica in WAL mode whatever the origin is, but would
                        // switch a rollback replica of a WAL origin to WAL.
                        x[..18] == y[..18]
                            && (x[18..20] == y[18..20] || y[18] == 2)
                            && x[20..24] == y[20..24]
                            && x[28..92] == y[28..92]
                            && x[100..] == y[100..]
                    } else {
                        x == y
                    };
                    if !equal {
                        return Ok(false);
                    }
                }
                _ => return Ok(false),
            }
        }
    }
    compare(origin, replica).unwrap_or(false)
}

/// `PATH-wal`, where SQLite keeps a WAL database's write-ahead log.
fn wal_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push("-wal");
    PathBuf::from(s)
}

/// `file:PATH?mode=ro&immutable=1`, with PATH percent-encoded so that `?`,
/// `#` or `%` in a file name stay part of the name.
fn immutable_uri(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?mode=ro&immutable=1");
    uri
}

/// True when this process may write to `path` (permissions and read-only
/// mounts alike; access(2) reports EROFS even to root).
pub fn writable(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    unsafe { libc::access(c.as_ptr(), libc::W_OK) == 0 }
}

/// Checks that a new file can be created in `dir`, the way the REPLICA side
/// will create its database and journal. access(2) alone is not enough:
/// root passes it even where nothing can be created (procfs, sysfs). The
/// probe is an unnamed O_TMPFILE where the file system has them, else a
/// named temp file removed at once; either way nothing is left behind.
pub fn can_create_in(dir: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    if !writable(dir) {
        return Err(io::Error::last_os_error());
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } == 0 && vfs.f_flag & libc::ST_RDONLY != 0 {
        return Err(io::Error::from_raw_os_error(libc::EROFS));
    }
    match fs::OpenOptions::new()
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_TMPFILE)
        .open(dir)
    {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL)
            ) =>
        {
            tempfile::Builder::new()
                .prefix(".sqlrsync-probe-")
                .tempfile_in(dir)
                .map(drop)
        }
        Err(e) => Err(e),
    }
}

/// The text of an I/O error without Rust's " (os error N)" suffix.
pub fn io_reason(e: &io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Where a database path really leads: symbolic links are followed to the
/// file they name, which may not exist yet (a dangling link names the file
/// a sync will create, as SQLite itself would). SQLite keeps `-journal` and
/// `-wal` next to that real file, so sqlrsync works on it too and keeps its
/// `-sqlrsync` file beside it: every link to one database finds the same
/// files. The result is absolute with its directory canonical when that
/// exists. A loop is ELOOP.
pub fn resolve_links(path: &Path) -> io::Result<PathBuf> {
    let mut p = std::path::absolute(path)?;
    // Linux gives up after 40 links too.
    for _ in 0..40 {
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let target = fs::read_link(&p)?;
                p = if target.is_absolute() {
                    target
                } else {
                    parent_dir(&p).join(target)
                };
            }
            _ => {
                if let (Some(dir), Some(name)) = (p.parent(), p.file_name())
                    && let Ok(dir) = fs::canonicalize(dir)
                {
                    return Ok(dir.join(name));
                }
                return Ok(p);
            }
        }
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// `" (LINK is a symbolic link to REAL)"` when `given` was resolved to a
/// different file, for error lines that name the real file; else empty.
pub fn link_note(given: &Path, real: &Path) -> String {
    let is_link = fs::symlink_metadata(given).is_ok_and(|m| m.file_type().is_symlink());
    if is_link {
        format!(
            " ({} is a symbolic link to {})",
            given.display(),
            real.display()
        )
    } else {
        String::new()
    }
}

/// The directory a file lives in ("." for a bare name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// True when two existing paths are the same file (links included).
pub fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// The `versionHash` of the database at `path` as SQLite reads it (WAL
/// content included), see [`crate::protocol::VersionHasher`].
///
/// Everything happens inside one read transaction, so the pages are one
/// consistent snapshot. A database in rollback-journal mode (what a pull
/// leaves unless the replica was WAL) is then read straight from the file,
/// its pages hashed on every core: the SHARED lock the transaction holds
/// keeps writers out of the file, and without a WAL the file's bytes are
/// exactly what SQLite would return. A WAL database goes through
/// `sqlite_dbpage`, because its newest pages may live in the WAL.
pub fn version_hash(path: &Path) -> anyhow::Result<String> {
    version_hash_with(path, &ReceivedPages::default())
}

/// Digests of the pages a pull received in the stream, taken as they
/// passed (see [`version_hash_with`]). Memory is capped: past
/// [`ReceivedPages::MAX`] pages the digests are dropped and the whole file
/// is read instead, so a huge database costs time, never memory.
#[derive(Debug, Default)]
pub struct ReceivedPages {
    /// (page number, [`crate::protocol::page_digest_with`] of `kind`) in
    /// arrival order; a later copy of a page replaces an earlier one when
    /// looked up.
    digests: Vec<(u32, [u8; 32])>,
    /// The hash the digests are of, and so the one that verifies the pull.
    kind: crate::protocol::HashKind,
    /// Too many pages to keep: verify by reading everything.
    overflow: bool,
}

impl ReceivedPages {
    /// At most this many digests (about 9 MiB) are kept.
    pub const MAX: usize = 256 * 1024;

    /// Notes one ORIGIN_PAGE.
    pub fn add(&mut self, pgno: u32, data: &[u8]) {
        if self.overflow {
            return;
        }
        if self.digests.len() >= Self::MAX {
            self.overflow = true;
            self.digests = Vec::new();
            return;
        }
        self.digests.push((
            pgno,
            crate::protocol::page_digest_with(self.kind, pgno, data),
        ));
    }

    /// Digests that say nothing: verification reads every page.
    fn overflowed(kind: crate::protocol::HashKind) -> ReceivedPages {
        ReceivedPages {
            digests: Vec::new(),
            overflow: true,
            kind,
        }
    }

    /// No digests yet, to be taken with `kind`.
    pub fn new(kind: crate::protocol::HashKind) -> ReceivedPages {
        ReceivedPages {
            kind,
            ..Default::default()
        }
    }

    /// The hash the digests are of.
    pub fn kind(&self) -> crate::protocol::HashKind {
        self.kind
    }

    /// Page number -> digest, the last copy of each page winning.
    fn by_page(&self, page_count: u32) -> Vec<Option<[u8; 32]>> {
        let mut v = vec![None; page_count as usize];
        if !self.overflow {
            for (pgno, d) in &self.digests {
                if *pgno >= 1 && *pgno <= page_count {
                    v[*pgno as usize - 1] = Some(*d);
                }
            }
        }
        v
    }
}

/// Takes the digests of a pull's pages on a thread of its own, so the
/// socket reader only hands pages over (a cheap reference to the frame they
/// arrived in) and goes straight back to feeding the helper. Inline, the
/// SHA-256 of every page stood between each frame and the helper's stdin:
/// about 90 ms of a 100 MB initial pull on the reader's critical path.
pub struct PageDigester {
    /// Batches of pages, one per websocket frame; bounded, so a hasher that
    /// falls behind slows the reader instead of growing memory (8 batches of
    /// at most one 64 KiB frame each).
    tx: Option<tokio::sync::mpsc::Sender<Vec<(u32, bytes::Bytes)>>>,
    /// The hashing thread; its result is the digests of every page sent.
    thread: std::thread::JoinHandle<ReceivedPages>,
    /// Pages of the frame being read, not yet sent.
    batch: Vec<(u32, bytes::Bytes)>,
    /// The hash taken.
    kind: crate::protocol::HashKind,
}

impl PageDigester {
    /// Starts the hashing thread, taking digests of `kind`.
    pub fn start(kind: crate::protocol::HashKind) -> io::Result<PageDigester> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(u32, bytes::Bytes)>>(8);
        let thread = std::thread::Builder::new()
            .name("page-digests".into())
            .spawn(move || {
                let mut received = ReceivedPages::new(kind);
                while let Some(batch) = rx.blocking_recv() {
                    for (pgno, page) in batch {
                        received.add(pgno, &page);
                    }
                }
                received
            })?;
        Ok(PageDigester {
            tx: Some(tx),
            thread,
            batch: Vec::new(),
            kind,
        })
    }

    /// Notes one page; `page` is a part of `frame` when the page arrived
    /// whole in it (no copy), else it is copied.
    pub fn add(&mut self, pgno: u32, frame: &bytes::Bytes, page: &[u8]) {
        let (base, p) = (frame.as_ptr() as usize, page.as_ptr() as usize);
        let within = p >= base && p + page.len() <= base + frame.len();
        let page = if within {
            frame.slice_ref(page)
        } else {
            bytes::Bytes::copy_from_slice(page)
        };
        self.batch.push((pgno, page));
    }

    /// Hands the pages noted since the last call to the hashing thread.
    pub async fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        if let Some(tx) = &self.tx
            && tx.send(batch).await.is_err()
        {
            // The thread is gone (it panicked): no digests, so the
            // verification reads the file instead.
            self.tx = None;
        }
    }

    /// Waits for every digest. A failed thread yields digests that make
    /// the verification read the whole file, never a wrong answer.
    pub async fn finish(mut self) -> ReceivedPages {
        self.flush().await;
        // Dropping the sender ends the thread's loop.
        let PageDigester {
            tx, thread, kind, ..
        } = self;
        drop(tx);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_else(|| ReceivedPages::overflowed(kind))
    }
}

/// The `versionHash` of the database at `path` after a pull, using the
/// digests of the pages the pull wrote as they arrived (`received`) and
/// reading the rest from the file, in one read transaction. Page 1 is
/// always read back, since SQLite rewrites its header when it commits.
///
/// What this proves: the pages the server sent are the version's pages,
/// and every page the sync kept from the old replica is too. It does not
/// read back what the helper wrote for the received pages; that is
/// SQLite's own write path, committed in one transaction. An initial pull
/// then verifies for the cost of hashing as it goes, instead of reading
/// the whole new file back afterwards.
pub fn version_hash_with(path: &Path, received: &ReceivedPages) -> anyhow::Result<String> {
    let kind = received.kind;
    let c = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    c.busy_timeout(std::time::Duration::from_secs(10))?;
    c.execute_batch("BEGIN")?;
    c.query_row("SELECT 1 FROM sqlite_dbpage WHERE pgno = 1", [], |_| Ok(()))?;
    let page_size: u32 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let page_count: u32 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
    let mut known = received.by_page(page_count);
    if let Some(first) = known.first_mut() {
        *first = None;
    }
    let hash = if mode.eq_ignore_ascii_case("wal") {
        // Through SQLite, which sees the WAL: one scan, hashing only the
        // pages not already known.
        let mut hasher = crate::protocol::VersionHasher::with_kind(kind);
        let mut st = c.prepare("SELECT pgno, data FROM sqlite_dbpage ORDER BY pgno")?;
        let mut rows = st.query([])?;
        while let Some(r) = rows.next()? {
            let pgno: u32 = r.get(0)?;
            match known.get(pgno as usize - 1).copied().flatten() {
                Some(d) => hasher.digest(pgno, &d),
                None => hasher.page(pgno, r.get_ref(1)?.as_blob()?),
            }
        }
        hasher.finish()
    } else {
        digest_file_pages(kind, path, page_size, page_count, known)?
    };
    c.execute_batch("COMMIT")?;
    Ok(hash)
}

/// The `versionHash` of pages 1..`page_count` of the file at `path`, read
/// directly and hashed on up to four threads. The caller makes sure the
/// file does not change meanwhile.
pub fn hash_file_pages(path: &Path, page_size: u32, page_count: u32) -> anyhow::Result<String> {
    digest_file_pages(
        crate::protocol::HashKind::Sha256,
        path,
        page_size,
        page_count,
        vec![None; page_count as usize],
    )
}

/// Like [`hash_file_pages`], taking the digests already `known` (indexed by
/// page number - 1) and reading only the 1 MiB stretches that hold some
/// page still unknown.
fn digest_file_pages(
    kind: crate::protocol::HashKind,
    path: &Path,
    page_size: u32,
    page_count: u32,
    mut known: Vec<Option<[u8; 32]>>,
) -> anyhow::Result<String> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let need = page_size as u64 * page_count as u64;
    let have = file.metadata()?.len();
    anyhow::ensure!(
        have >= need,
        "{} is {have} bytes, shorter than its {page_count} pages of {page_size}",
        path.display()
    );
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    // Contiguous slices, one per thread; each reads 1 MiB at a time.
    let per = (page_count as usize).div_ceil(threads).max(1);
    let batch = ((1 << 20) / page_size as usize).max(1);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut jobs = Vec::new();
        for (t, out) in known.chunks_mut(per).enumerate() {
            let file = &file;
            jobs.push(scope.spawn(move || -> io::Result<()> {
                let first = (t * per) as u64; // zero-based page index
                let mut buf = vec![0u8; batch * page_size as usize];
                for (b, outs) in out.chunks_mut(batch).enumerate() {
                    if outs.iter().all(Option::is_some) {
                        continue;
                    }
                    let start = first + (b * batch) as u64;
                    let bytes = &mut buf[..outs.len() * page_size as usize];
                    file.read_exact_at(bytes, start * page_size as u64)?;
                    for (k, (d, page)) in outs
                        .iter_mut()
                        .zip(bytes.chunks_exact(page_size as usize))
                        .enumerate()
                    {
                        if d.is_none() {
                            let pgno = (start + k as u64 + 1) as u32;
                            *d = Some(crate::protocol::page_digest_with(kind, pgno, page));
                        }
                    }
                }
                Ok(())
            }));
        }
        for j in jobs {
            j.join().expect("hashing thread panicked")?;
        }
        Ok(())
    })?;
    let mut hasher = crate::protocol::VersionHasher::with_kind(kind);
    for (i, d) in known.iter().enumerate() {
        hasher.digest(i as u32 + 1, d.as_ref().expect("every page digested"));
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_hash_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let c = Connection::open(&a).unwrap();
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
            .unwrap();
        drop(c);
        let h1 = version_hash(&a).unwrap();
        let b = dir.path().join("b.db");
        std::fs::copy(&a, &b).unwrap();
        assert_eq!(version_hash(&b).unwrap(), h1);
        let c = Connection::open(&b).unwrap();
        c.execute_batch("INSERT INTO t VALUES (2);").unwrap();
        assert_ne!(version_hash(&b).unwrap(), h1);
        assert!(matches!(
            inspect(&a).unwrap(),
            FileState::Database(Header {
                page_size: 4096,
                ..
            })
        ));
    }

    #[test]
    fn version_hash_reads_wal_and_rollback_files_alike() {
        // The direct multi-threaded read (rollback mode) and the
        // sqlite_dbpage read (WAL mode, pages still in the WAL) must agree
        // on equal content, across many pages and thread boundaries.
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let c = Connection::open(&a).unwrap();
        c.execute_batch(
            "CREATE TABLE t(x); WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<3000) INSERT INTO t SELECT zeroblob(900) || i FROM s;",
        )
        .unwrap();
        drop(c);
        let b = dir.path().join("b.db");
        std::fs::copy(&a, &b).unwrap();
        let wal = Connection::open(&b).unwrap();
        wal.execute_batch("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
            .unwrap();
        assert_eq!(version_hash(&a).unwrap(), version_hash(&b).unwrap());
        let change = "UPDATE t SET x = zeroblob(900) || 'changed' WHERE rowid % 97 = 0;";
        Connection::open(&a).unwrap().execute_batch(change).unwrap();
        wal.execute_batch(change).unwrap();
        assert!(dir.path().join("b.db-wal").metadata().unwrap().len() > 0);
        let (ha, hb) = (version_hash(&a).unwrap(), version_hash(&b).unwrap());
        assert_eq!(ha, hb);
        // And the direct read sees a change on the last page.
        let n: u32 = Connection::open(&a)
            .unwrap()
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&a).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"x", n as u64 * 4096 - 1).unwrap();
        assert_ne!(version_hash(&a).unwrap(), ha);
    }

    #[test]
    fn received_digests_stand_in_for_reading_those_pages() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.db");
        let c = Connection::open(&a).unwrap();
        c.execute_batch(
            "CREATE TABLE t(x); WITH RECURSIVE s(i) AS (VALUES(1) UNION ALL SELECT i+1 FROM s WHERE i<2000) INSERT INTO t SELECT zeroblob(900) || i FROM s;",
        )
        .unwrap();
        drop(c);
        let full = version_hash(&a).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        let pages: Vec<&[u8]> = bytes.chunks(4096).collect();
        // Every page received as it is: the same hash, file unread but page 1.
        let mut all = ReceivedPages::default();
        for (i, p) in pages.iter().enumerate() {
            all.add(i as u32 + 1, p);
        }
        assert_eq!(version_hash_with(&a, &all).unwrap(), full);
        // Some received: the same hash.
        let mut some = ReceivedPages::default();
        for i in (0..pages.len()).step_by(7) {
            some.add(i as u32 + 1, pages[i]);
        }
        assert_eq!(version_hash_with(&a, &some).unwrap(), full);
        // A received page that differs from the version: a different hash
        // (the digests are really used) ...
        let mut wrong = ReceivedPages::default();
        wrong.add(5, &vec![0u8; 4096]);
        assert_ne!(version_hash_with(&a, &wrong).unwrap(), full);
        // ... except page 1, which is always read back.
        let mut p1 = ReceivedPages::default();
        p1.add(1, &vec![0u8; 4096]);
        assert_eq!(version_hash_with(&a, &p1).unwrap(), full);
        // Pages beyond the final count (truncated away) are ignored.
        let mut beyond = ReceivedPages::default();
        beyond.add(pages.len() as u32 + 3, &vec![1u8; 4096]);
        assert_eq!(version_hash_with(&a, &beyond).unwrap(), full);
    }

    #[test]
    fn version_hash_ignores_the_journal_mode_bytes() {
        // sqlite3_rsync may flip page 1's journal-mode bytes on a WAL replica.
        let mut page1 = vec![7u8; 4096];
        let mut h = crate::protocol::VersionHasher::new();
        h.page(1, &page1);
        page1[18] = 2;
        page1[19] = 2;
        let mut h2 = crate::protocol::VersionHasher::new();
        h2.page(1, &page1);
        assert_eq!(h.finish(), h2.finish());
    }
}
