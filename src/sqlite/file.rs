//! Looking at a database file before anything touches it.
//!
//! sqlite3_rsync reports bad input late and sometimes after creating files
//! (an empty ORIGIN turns into an empty REPLICA, a REPLICA in a missing
//! directory is an "unable to open" deep in its output). These checks read
//! the 100-byte header ([`super::header`]) and ask SQLite itself, read-only,
//! so that bad input is one clear line before any database is opened for
//! writing.

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

use super::header::{self, HeaderError};
use super::paths::io_reason;

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
    let mut head = [0u8; header::HEADER_LEN];
    let unreadable = |source| DbFileError::Unreadable {
        path: path.into(),
        source,
    };
    let mut file = File::open(path).map_err(unreadable)?;
    let n = read_up_to(&mut file, &mut head).map_err(unreadable)?;
    let corrupt = |why: String| DbFileError::Corrupt {
        path: path.into(),
        why,
    };
    let h = match header::decode(&head[..n]) {
        Ok(h) => h,
        Err(HeaderError::NotADatabase) => return Err(DbFileError::NotADatabase(path.into())),
        Err(e) => return Err(corrupt(e.to_string())),
    };
    if let Some(pages) = h.page_count
        && !h.wal
        && meta.len() < pages as u64 * h.page_size as u64
    {
        return Err(corrupt(format!(
            "the header says {pages} pages of {} bytes but the file has only {} bytes (truncated?)",
            h.page_size,
            meta.len()
        )));
    }
    Ok(FileState::Database(Header {
        page_size: h.page_size,
        page_count: h.page_count,
        wal: h.wal,
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
pub(super) fn open_without_traces(path: &Path) -> (rusqlite::Result<Connection>, bool) {
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
