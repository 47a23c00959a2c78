//! Path rules for database files: symbolic links, where a file may be
//! created, whether it may be written, and I/O errors as one line.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

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
