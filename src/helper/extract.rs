//! Putting the embedded helper where it can be executed.
//!
//! Three places are tried in order, each only when the one before cannot
//! hold or run it:
//!
//! 1. **The cache**, `<cache dir>/sqlite3_rsync-<first 16 hex digits of its
//!    SHA-256>`: kept across runs, so two sqlrsync versions never overwrite
//!    each other's helper and a stale file is never mistaken for the current
//!    one. Two processes extracting at once both write their own temp file
//!    and rename it over the final name; rename is atomic, so each sees a
//!    whole file either way. Passed over when it cannot be written
//!    (read-only home, no home at all) or sits on a `noexec` file system
//!    (statvfs `ST_NOEXEC`).
//! 2. **A private temp dir**: a fresh directory with a random name under the
//!    system temp dir (`TMPDIR`), created 0700 by us (mkdir never follows a
//!    link), checked to be ours and private, the helper written into it as
//!    into the cache. On Linux the file is then opened, checked through that
//!    descriptor, and the directory removed at once: the helper runs as
//!    `/proc/self/fd/N`, so nothing is left behind even when LOCAL mode
//!    replaces this process with the helper (and so never gets to clean
//!    up). Without `/proc` the directory stays for the process's lifetime.
//! 3. **An in-memory file** (Linux `memfd_create`): written, sealed against
//!    any change, reopened read-only, checked, and run as `/proc/self/fd/N`.
//!
//! Every place holds exactly the embedded bytes, compared after writing (and
//! before reuse). A place whose file the OS then refuses to run (EACCES or
//! EPERM: a `noexec` mount statvfs did not show, a security policy) is
//! passed over for the rest of the process through [`refused`], and the
//! next one is prepared. Descriptors are close-on-exec: exec through
//! `/proc/self/fd/N` opens the file before closing them, and only
//! [`ExtractedHelper::keep_across_exec`] (LOCAL mode, whose helper starts its
//! replica side as its own argv[0]) hands one to the helper.

use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{HELPER_BYTES, info};

/// Where a helper runs from, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Place {
    /// `<cache dir>/sqlite3_rsync-<hash>`, kept across runs.
    Cache,
    /// A fresh private directory under the system temp dir.
    TempDir,
    /// An anonymous, sealed in-memory file (Linux).
    Memory,
}

impl Place {
    fn next(self) -> Option<Place> {
        match self {
            Place::Cache => Some(Place::TempDir),
            Place::TempDir => Some(Place::Memory),
            Place::Memory => None,
        }
    }
}

/// An extracted, executable helper.
#[derive(Debug)]
pub struct ExtractedHelper {
    /// What to execute: a file, or `/proc/self/fd/N` for `fd`.
    pub path: PathBuf,
    /// Where it is.
    pub place: Place,
    /// One line for `-v`: where the helper runs from, and why earlier
    /// places were passed over.
    pub note: String,
    /// The open helper when it runs by descriptor (close-on-exec).
    fd: Option<OwnedFd>,
    /// The private directory, when the helper must stay in it.
    dir: Option<tempfile::TempDir>,
}

impl ExtractedHelper {
    /// Lets the descriptor the helper runs from survive an `exec` of it, for
    /// a helper that runs its own argv[0] again (LOCAL mode starts its
    /// replica side so). Only for a process about to become the helper.
    pub fn keep_across_exec(&self) {
        if let Some(fd) = &self.fd {
            // SAFETY: F_SETFD on a descriptor we own changes only its flags.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
        }
    }
}

/// The places one process uses: where they are, which are passed over and
/// why, and the helper prepared last.
struct Chooser {
    cache: Option<PathBuf>,
    temp: PathBuf,
    /// Places before this one are not tried again.
    floor: Place,
    /// Why places were passed over, for the `-v` note.
    passed: Vec<String>,
    current: Option<Arc<ExtractedHelper>>,
}

static CHOOSER: Mutex<Option<Chooser>> = Mutex::new(None);

fn with_chooser<T>(f: impl FnOnce(&mut Chooser) -> T) -> T {
    let mut guard = CHOOSER.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(|| Chooser::new(cache_dir(), std::env::temp_dir())))
}

/// The helper to run, prepared on first use in this process.
pub fn prepared() -> anyhow::Result<Arc<ExtractedHelper>> {
    with_chooser(Chooser::get)
        .map_err(|e| anyhow::anyhow!("cannot prepare the sqlite3_rsync helper: {e}"))
}

/// Path of the executable helper, preparing it on first use. A
/// `/proc/self/fd/N` path stays valid while it is the current helper.
pub fn path() -> anyhow::Result<PathBuf> {
    Ok(prepared()?.path.clone())
}

/// Running `h` failed with `err`: true when that is the OS refusing to
/// execute it (EACCES, EPERM) and another place is left, which the next
/// [`prepared`] then uses.
pub fn refused(h: &ExtractedHelper, err: &io::Error) -> bool {
    with_chooser(|c| c.refused(h, err))
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

impl Chooser {
    fn new(cache: Option<PathBuf>, temp: PathBuf) -> Chooser {
        Chooser {
            cache,
            temp,
            floor: Place::Cache,
            passed: Vec::new(),
            current: None,
        }
    }

    fn get(&mut self) -> Result<Arc<ExtractedHelper>, String> {
        if let Some(h) = &self.current {
            return Ok(h.clone());
        }
        let known = self.passed.len();
        let mut place = Some(self.floor);
        while let Some(p) = place {
            match self.try_place(p) {
                Ok(mut h) => {
                    h.note = self.note(&h);
                    let h = Arc::new(h);
                    self.floor = p;
                    self.current = Some(h.clone());
                    return Ok(h);
                }
                Err(why) => {
                    tracing::debug!("helper: {why}");
                    self.passed.push(why);
                }
            }
            place = p.next();
        }
        let why = self.passed.join("; ");
        // The next call tries again and says so again.
        self.passed.truncate(known);
        Err(why)
    }

    fn refused(&mut self, h: &ExtractedHelper, err: &io::Error) -> bool {
        if !matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM)) {
            return false;
        }
        let Some(next) = h.place.next() else {
            return false;
        };
        if self.floor <= h.place {
            let why = format!("{} could not be run ({err})", h.path.display());
            tracing::debug!("helper: {why}");
            self.passed.push(why);
            self.floor = next;
            self.current = None;
        }
        true
    }

    fn try_place(&self, place: Place) -> Result<ExtractedHelper, String> {
        match place {
            Place::Cache => {
                let dir = self
                    .cache
                    .as_deref()
                    .ok_or("no cache directory (is HOME set?)")?;
                in_cache(dir).map_err(|e| format!("not the cache {}: {e}", dir.display()))
            }
            Place::TempDir => in_temp_dir(&self.temp)
                .map_err(|e| format!("not a temp dir in {}: {e}", self.temp.display())),
            Place::Memory => in_memory().map_err(|e| format!("not in memory: {e}")),
        }
    }

    fn note(&self, h: &ExtractedHelper) -> String {
        let at = match (h.place, &h.dir) {
            (Place::Cache, _) => format!("the cache, {}", h.path.display()),
            (Place::TempDir, Some(d)) => format!("a private temp dir, {}", d.path().display()),
            (Place::TempDir, None) => format!(
                "a private temp dir (removed once opened), as {}",
                h.path.display()
            ),
            (Place::Memory, _) => format!("an in-memory file (sealed), as {}", h.path.display()),
        };
        if self.passed.is_empty() {
            format!("helper from {at}")
        } else {
            format!("helper from {at}; {}", self.passed.join("; "))
        }
    }
}

fn in_cache(dir: &Path) -> io::Result<ExtractedHelper> {
    if noexec(dir) {
        return Err(io::Error::other("it is on a noexec file system"));
    }
    let target = dir.join(file_name());
    if !matches_embedded(&target) {
        write_atomically(dir, &target)?;
        if !matches_embedded(&target) {
            return Err(io::Error::other("the written helper does not read back"));
        }
    }
    Ok(ExtractedHelper {
        path: target,
        place: Place::Cache,
        note: String::new(),
        fd: None,
        dir: None,
    })
}

fn in_temp_dir(base: &Path) -> io::Result<ExtractedHelper> {
    use std::os::unix::fs::MetadataExt;
    if noexec(base) {
        return Err(io::Error::other("it is on a noexec file system"));
    }
    // A random name, created by mkdir with mode 0700: an existing name (a
    // link someone planted included) is never used, only another tried.
    let dir = tempfile::Builder::new()
        .prefix("sqlrsync-helper-")
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir_in(base)?;
    let meta = fs::symlink_metadata(dir.path())?;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(io::Error::other("the new directory is not private"));
    }
    let target = dir.path().join(file_name());
    write_atomically(dir.path(), &target)?;
    if let Some(fd) = open_checked(&target)? {
        let path = fd_path(&fd);
        drop(dir);
        return Ok(ExtractedHelper {
            path,
            place: Place::TempDir,
            note: String::new(),
            fd: Some(fd),
            dir: None,
        });
    }
    if !matches_embedded(&target) {
        return Err(io::Error::other("the written helper does not read back"));
    }
    Ok(ExtractedHelper {
        path: target,
        place: Place::TempDir,
        note: String::new(),
        fd: None,
        dir: Some(dir),
    })
}

/// `/proc/self/fd/N`: the file `fd` is open on, for exec.
fn fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// True when exec through `/proc/self/fd/N` is possible here.
fn can_run_by_descriptor() -> bool {
    cfg!(target_os = "linux") && Path::new("/proc/self/fd").is_dir()
}

/// The helper at `path` opened read-only (never through a link) and
/// checked through that descriptor; None when it cannot run by descriptor.
fn open_checked(path: &Path) -> io::Result<Option<OwnedFd>> {
    use std::os::unix::fs::OpenOptionsExt;
    if !can_run_by_descriptor() {
        return Ok(None);
    }
    let mut file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    if !holds_embedded(&mut file) {
        return Err(io::Error::other("the written helper does not read back"));
    }
    Ok(Some(file.into()))
}

#[cfg(target_os = "linux")]
fn in_memory() -> io::Result<ExtractedHelper> {
    use std::os::fd::FromRawFd;
    if !can_run_by_descriptor() {
        return Err(io::Error::other("no /proc/self/fd to run it from"));
    }
    let name = c"sqlite3_rsync";
    let base = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // MFD_EXEC (Linux 6.3) asks for an executable memfd where
    // vm.memfd_noexec would otherwise seal it noexec; older kernels refuse
    // the flag, and their memfds are executable anyway.
    // SAFETY: a valid C string and flags; the result is checked.
    let mut raw = unsafe { libc::memfd_create(name.as_ptr(), base | libc::MFD_EXEC) };
    if raw < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        raw = unsafe { libc::memfd_create(name.as_ptr(), base) };
    }
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let mut rw = fs::File::from(unsafe { OwnedFd::from_raw_fd(raw) });
    rw.write_all(HELPER_BYTES)?;
    rw.set_permissions(fs::Permissions::from_mode(0o755))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on our own memfd.
    if unsafe { libc::fcntl(rw.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Keep only a read-only descriptor: no writer is left that could make
    // exec fail with ETXTBSY, and what runs is what is checked here.
    let mut ro = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}", rw.as_raw_fd()))?
    };
    drop(rw);
    if !holds_embedded(&mut ro) {
        return Err(io::Error::other("the in-memory helper does not read back"));
    }
    let fd = OwnedFd::from(ro);
    Ok(ExtractedHelper {
        path: fd_path(&fd),
        place: Place::Memory,
        note: String::new(),
        fd: Some(fd),
        dir: None,
    })
}

#[cfg(not(target_os = "linux"))]
fn in_memory() -> io::Result<ExtractedHelper> {
    Err(io::Error::other("in-memory files are run only on Linux"))
}

/// True when the file system holding `dir` (or its nearest existing
/// ancestor) is mounted `noexec`.
fn noexec(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut at = Some(dir);
        while let Some(p) = at {
            if let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) {
                // SAFETY: a valid C string and a zeroed out-parameter.
                let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
                if unsafe { libc::statvfs(c.as_ptr(), &mut st) } == 0 {
                    return st.f_flag & libc::ST_NOEXEC != 0;
                }
            }
            at = p.parent();
        }
        false
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

/// True when `path` is an executable regular file holding exactly the
/// embedded bytes. Comparing bytes is cheaper than hashing and as strict.
fn matches_embedded(path: &Path) -> bool {
    match fs::File::open(path) {
        Ok(mut file) => holds_embedded(&mut file),
        Err(_) => false,
    }
}

/// True when `file` (read from where it stands) is an executable regular
/// file holding exactly the embedded bytes.
fn holds_embedded(file: &mut fs::File) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn runs(h: &ExtractedHelper) {
        let out = std::process::Command::new(&h.path)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", h.path.display()));
        assert!(out.status.success(), "{out:?}");
    }

    #[test]
    fn each_refused_place_gives_way_to_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let temp = tmp.path().join("tmp");
        fs::create_dir(&temp).unwrap();
        let mut c = Chooser::new(Some(tmp.path().join("cache")), temp.clone());
        let eacces = io::Error::from_raw_os_error(libc::EACCES);

        let cache = c.get().unwrap();
        assert_eq!(cache.place, Place::Cache);
        assert!(
            cache.note.starts_with("helper from the cache"),
            "{}",
            cache.note
        );
        runs(&cache);
        // Not a refusal to execute: no fallback.
        assert!(!c.refused(&cache, &io::Error::from_raw_os_error(libc::ENOENT)));
        assert_eq!(c.get().unwrap().place, Place::Cache);

        assert!(c.refused(&cache, &eacces));
        let private = c.get().unwrap();
        assert_eq!(private.place, Place::TempDir);
        assert!(
            private.note.contains("private temp dir"),
            "{}",
            private.note
        );
        assert!(
            private.note.contains("could not be run"),
            "{}",
            private.note
        );
        runs(&private);
        if cfg!(target_os = "linux") {
            // Run by descriptor: the directory is already gone.
            assert_eq!(fs::read_dir(&temp).unwrap().count(), 0);
        }
        // A second refusal of the same helper (another thread) changes nothing.
        assert!(c.refused(&cache, &eacces));
        assert_eq!(c.get().unwrap().place, Place::TempDir);

        if !cfg!(target_os = "linux") {
            return;
        }
        assert!(c.refused(&private, &eacces));
        let memory = c.get().unwrap();
        assert_eq!(memory.place, Place::Memory);
        assert!(memory.note.contains("in-memory file"), "{}", memory.note);
        runs(&memory);
        // Sealed: not even its owner can write it.
        let fd = memory.fd.as_ref().unwrap().as_raw_fd();
        let w = fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/self/fd/{fd}"));
        let mut w = w.expect("memfds reopen writable");
        assert!(w.write_all(b"x").is_err(), "a sealed memfd took a write");
        // Nothing after memory.
        assert!(!c.refused(&memory, &eacces));
    }

    #[test]
    fn unusable_places_are_passed_over_with_their_reason() {
        let tmp = tempfile::tempdir().unwrap();
        // A regular file where each directory should be.
        let blocker = tmp.path().join("not-a-dir");
        fs::write(&blocker, b"").unwrap();
        let mut c = Chooser::new(Some(blocker.join("cache")), blocker.clone());
        if !cfg!(target_os = "linux") {
            assert!(c.get().is_err());
            return;
        }
        let h = c.get().unwrap();
        assert_eq!(h.place, Place::Memory);
        assert!(h.note.contains("not the cache"), "{}", h.note);
        assert!(h.note.contains("not a temp dir"), "{}", h.note);
        runs(&h);
    }
}
