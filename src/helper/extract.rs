//! Writing the embedded helper to disk so it can be executed.
//!
//! The file is named by the first 16 hex digits of the helper's SHA-256, so
//! two sqlrsync versions never overwrite each other's helper and a stale file
//! is never mistaken for the current one. Two processes extracting at once
//! both write their own temp file and rename it over the final name; rename is
//! atomic, so each sees a whole file either way. When the cache directory
//! cannot be written (read-only home, no home at all) the helper goes to a
//! private directory under the system temp dir, `sqlrsync-<uid>` (mode 0700,
//! ours, not a link), reused across runs because LOCAL mode replaces this
//! process with the helper and so never gets to clean up; only if that too is
//! unusable does it go to a fresh temp dir that lives as long as the process.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{HELPER_BYTES, info};

/// An extracted, executable helper. Holds the private temp directory alive
/// when the cache could not be used.
#[derive(Debug)]
pub struct ExtractedHelper {
    /// Absolute path of the executable.
    pub path: PathBuf,
    /// Kept so the fallback directory is removed only when the process ends.
    _private_dir: Option<tempfile::TempDir>,
}

static EXTRACTED: OnceLock<Result<ExtractedHelper, String>> = OnceLock::new();

/// Path of the executable helper, extracting it on first use in this process.
pub fn path() -> anyhow::Result<&'static Path> {
    match EXTRACTED.get_or_init(|| extract().map_err(|e| format!("{e:#}"))) {
        Ok(h) => Ok(&h.path),
        Err(e) => Err(anyhow::anyhow!(
            "cannot prepare the sqlite3_rsync helper: {e}"
        )),
    }
}

/// The cache directory: `SQLRSYNC_CACHE_DIR`, else `<user cache>/sqlrsync`.
fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("SQLRSYNC_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    dirs::cache_dir().map(|d| d.join("sqlrsync"))
}

fn file_name() -> String {
    format!("sqlite3_rsync-{}", &info::HELPER_SHA256[..16])
}

fn extract() -> anyhow::Result<ExtractedHelper> {
    if let Some(dir) = cache_dir() {
        let target = dir.join(file_name());
        if matches_embedded(&target) {
            return Ok(ExtractedHelper {
                path: target,
                _private_dir: None,
            });
        }
        match write_atomically(&dir, &target) {
            Ok(()) => {
                return Ok(ExtractedHelper {
                    path: target,
                    _private_dir: None,
                });
            }
            Err(e) => {
                tracing::debug!(
                    "cache {} not usable ({e}); using a private temp dir",
                    dir.display()
                )
            }
        }
    }
    if let Some(dir) = private_temp_dir() {
        let target = dir.join(file_name());
        if matches_embedded(&target) || write_atomically(&dir, &target).is_ok() {
            return Ok(ExtractedHelper {
                path: target,
                _private_dir: None,
            });
        }
    }
    let private = tempfile::Builder::new()
        .prefix("sqlrsync-helper-")
        .tempdir()?;
    let target = private.path().join(file_name());
    write_atomically(private.path(), &target)?;
    Ok(ExtractedHelper {
        path: target,
        _private_dir: Some(private),
    })
}

/// `<temp>/sqlrsync-<uid>`, created 0700 if missing; None unless it is a
/// real directory owned by us that nobody else can write to.
fn private_temp_dir() -> Option<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let uid = unsafe { libc::geteuid() };
    let dir = std::env::temp_dir().join(format!("sqlrsync-{uid}"));
    let _ = fs::DirBuilder::new().mode(0o700).create(&dir);
    let meta = fs::symlink_metadata(&dir).ok()?;
    (meta.is_dir() && meta.uid() == uid && meta.mode() & 0o022 == 0).then_some(dir)
}

/// True when `path` is an executable regular file holding exactly the
/// embedded bytes. Comparing bytes is cheaper than hashing and as strict.
fn matches_embedded(path: &Path) -> bool {
    let Ok(mut file) = fs::File::open(path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file()
        || meta.len() != HELPER_BYTES.len() as u64
        || meta.permissions().mode() & 0o111 == 0
    {
        return false;
    }
    let mut buf = Vec::with_capacity(HELPER_BYTES.len());
    file.read_to_end(&mut buf).is_ok() && buf == HELPER_BYTES
}

fn write_atomically(dir: &Path, target: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".sqlite3_rsync.")
        .tempfile_in(dir)?;
    tmp.write_all(HELPER_BYTES)?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o755))?;
    // No fsync: every run compares the cached file with the embedded bytes
    // before using it, so a file torn by a crash is rewritten, never run,
    // and the first run does not wait for the disk.
    // Close our write handle before the rename: a file still open for writing
    // cannot be executed (ETXTBSY).
    let tmp_path = tmp.into_temp_path();
    tmp_path.persist(target).map_err(|e| e.error)?;
    Ok(())
}
