//! The client's files: defaults.toml, local-secrets.toml and `<db>-sqlrsync`
//! (formats in shared/PROTOCOL.md section 6).
//!
//! - `~/.config/sqlrsync/defaults.toml`: the default server and this
//!   install's `wsID` (`hostname:uuid`), generated once.
//! - `~/.config/sqlrsync/local-secrets.toml` (0600): one entry per pushed
//!   database with its replica, server and Replica Push key, so that a later
//!   `sqlrsync /path/db` (a cron job) needs nothing else.
//! - `<db>-sqlrsync` (0755): a shell script next to a database that repeats
//!   the pull with its Replica Pull key.
//!
//! Every write goes through a temp file in the same directory, fsync and
//! rename, so a crash leaves the old file or the new one, never half of one.
//! Values that end up in the shell script are single-quoted: a key or path a
//! server sends can never run as a command.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Server used when neither a flag nor a file names one.
pub const DEFAULT_SERVER: &str = "wss://sqlrsync.com";

/// The header comment of every `-sqlrsync` file.
const DASH_HELP_URL: &str = "# https://sqlrsync.com/help/dash-sqlrsync";

/// `~/.config/sqlrsync` (honours `XDG_CONFIG_HOME`).
pub fn config_dir() -> anyhow::Result<PathBuf> {
    let base =
        dirs::config_dir().context("cannot find the configuration directory (is HOME set?)")?;
    Ok(base.join("sqlrsync"))
}

// ---------------------------------------------------------------------------
// defaults.toml

/// The `[defaults]` table of defaults.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Defaults {
    /// Server used when no `--server` flag and no stored entry names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `hostname:uuid`: tells the server which install is talking
    /// (`X-ClientID`), stable across runs.
    #[serde(rename = "wsID", default, skip_serializing_if = "Option::is_none")]
    pub ws_id: Option<String>,
    /// Keys this version does not know, kept on rewrite.
    #[serde(flatten)]
    pub other: toml::Table,
}

/// The whole defaults.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DefaultsFile {
    /// The `[defaults]` table.
    #[serde(default)]
    pub defaults: Defaults,
    /// Other tables, kept on rewrite.
    #[serde(flatten)]
    pub other: toml::Table,
}

impl DefaultsFile {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("defaults.toml")
    }

    /// Reads defaults.toml; a missing file is an empty one.
    pub fn load(dir: &Path) -> anyhow::Result<DefaultsFile> {
        let path = Self::path(dir);
        match fs::read_to_string(&path) {
            Ok(s) => {
                toml::from_str(&s).with_context(|| format!("{} is not valid TOML", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DefaultsFile::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// The stored wsID, or a new `hostname:uuid` (not yet saved).
    pub fn ws_id_or_new(&self) -> (String, bool) {
        match &self.defaults.ws_id {
            Some(id) if !id.trim().is_empty() => (id.clone(), false),
            _ => (new_ws_id(), true),
        }
    }

    /// Returns the wsID, generating and saving it (and the default server)
    /// the first time.
    pub fn ensure_ws_id(dir: &Path) -> anyhow::Result<String> {
        let mut file = Self::load(dir)?;
        let (id, fresh) = file.ws_id_or_new();
        if fresh || file.defaults.server.is_none() {
            file.defaults.ws_id = Some(id.clone());
            file.defaults
                .server
                .get_or_insert_with(|| DEFAULT_SERVER.to_string());
            let text = toml::to_string(&file).context("cannot encode defaults.toml")?;
            write_atomic(&Self::path(dir), text.as_bytes(), 0o644)?;
        }
        Ok(id)
    }
}

/// `hostname:uuid`.
pub fn new_ws_id() -> String {
    format!("{}:{}", hostname(), uuid::Uuid::new_v4())
}

/// This machine's host name (lossy UTF-8).
pub fn hostname() -> String {
    gethostname::gethostname().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------
// local-secrets.toml

/// One pushed database in local-secrets.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SecretEntry {
    /// Absolute path of the local database: how a later push finds its entry.
    pub path: String,
    /// Server the replica lives on.
    #[serde(default)]
    pub server: String,
    /// The server's id of the replica (`X-ReplicaID`).
    #[serde(rename = "replicaID", default)]
    pub replica_id: String,
    /// Remote path of the replica (`namespace/…/name.db`).
    #[serde(rename = "remotePath", default)]
    pub remote_path: String,
    /// Replica Push key issued by the server on the first push.
    #[serde(rename = "pushKey", default)]
    pub push_key: String,
    /// When this database was last pushed.
    #[serde(rename = "lastPush", default, skip_serializing_if = "Option::is_none")]
    pub last_push: Option<toml::value::Datetime>,
    /// Fields other clients wrote, kept on rewrite.
    #[serde(flatten)]
    pub other: toml::Table,
}

/// The whole local-secrets.toml.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Secrets {
    /// One entry per pushed database.
    #[serde(rename = "sqlrsync-databases", default)]
    pub databases: Vec<SecretEntry>,
    /// Other tables, kept on rewrite.
    #[serde(flatten)]
    pub other: toml::Table,
}

impl Secrets {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join("local-secrets.toml")
    }

    /// Reads local-secrets.toml; a missing file has no entries.
    pub fn load(dir: &Path) -> anyhow::Result<Secrets> {
        let path = Self::path(dir);
        match fs::read_to_string(&path) {
            Ok(s) => {
                toml::from_str(&s).with_context(|| format!("{} is not valid TOML", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Secrets::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Every entry of the database at `abs_path`: one per (server,
    /// replica) it pushes to.
    pub fn entries_for<'a>(&'a self, abs_path: &Path) -> impl Iterator<Item = &'a SecretEntry> {
        let p = abs_path.to_string_lossy().into_owned();
        self.databases.iter().filter(move |e| e.path == p)
    }

    /// The entry of the database at `abs_path` that pushes to `remote_path`
    /// on `server`.
    pub fn find(&self, abs_path: &Path, server: &str, remote_path: &str) -> Option<&SecretEntry> {
        self.entries_for(abs_path)
            .find(|e| e.remote_path == remote_path && super::same_server(&e.server, server))
    }

    /// The entry the database at `abs_path` pushed with last (the latest
    /// `lastPush`; the last in the file among equals), among those `keep`
    /// accepts.
    pub fn last_pushed(
        &self,
        abs_path: &Path,
        keep: impl Fn(&SecretEntry) -> bool,
    ) -> Option<&SecretEntry> {
        let when = |e: &SecretEntry| {
            e.last_push
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t.to_string()).ok())
                .map(|t| t.timestamp_millis())
                .unwrap_or(i64::MIN)
        };
        self.entries_for(abs_path).filter(|e| keep(e)).fold(
            None,
            |best: Option<&SecretEntry>, e| match best {
                Some(b) if when(b) > when(e) => Some(b),
                _ => Some(e),
            },
        )
    }

    /// Adds or replaces the entry of (database, server, replica), keeping
    /// all others: a one-off push elsewhere never rebinds a database.
    pub fn upsert(&mut self, entry: SecretEntry) {
        let same = |e: &SecretEntry| {
            e.path == entry.path
                && e.remote_path == entry.remote_path
                && super::same_server(&e.server, &entry.server)
        };
        // The entry written last goes last: among equal `lastPush` times
        // the last in the file is the latest.
        let other = match self.databases.iter().position(same) {
            Some(i) => self.databases.remove(i).other,
            None => toml::Table::new(),
        };
        self.databases.push(SecretEntry { other, ..entry });
    }

    /// Loads the file, lets `change` edit it and, when it returns true,
    /// saves it, all under an exclusive lock (`local-secrets.toml.lock`,
    /// flock), so that sqlrsync processes updating their own entries at the
    /// same time never lose each other's. Returns what `change` returned.
    pub fn update(
        dir: &Path,
        change: impl FnOnce(&mut Secrets) -> anyhow::Result<bool>,
    ) -> anyhow::Result<bool> {
        use std::os::unix::fs::OpenOptionsExt;
        use std::os::unix::io::AsRawFd;
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let lock_path = dir.join("local-secrets.toml.lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        loop {
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        let mut secrets = Self::load(dir)?;
        let changed = change(&mut secrets)?;
        if changed {
            secrets.save(dir)?;
        }
        // Closing `lock` releases it.
        Ok(changed)
    }

    /// Writes the file atomically with mode 0600.
    pub fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("cannot encode local-secrets.toml")?;
        write_atomic(&Self::path(dir), text.as_bytes(), 0o600)
    }
}

/// Now, as a TOML datetime (`2026-11-23T10:00:00.123Z`): milliseconds, so
/// that pushes in one second still order.
pub fn toml_now() -> Option<toml::value::Datetime> {
    chrono::Utc::now()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// <db>-sqlrsync

/// What a `-sqlrsync` file says about the replica a database came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DashFile {
    /// Remote path (first argument of the `sqlrsync` line).
    pub remote_path: String,
    /// `--replicaID=` value.
    pub replica_id: Option<String>,
    /// `--pullKey=` value.
    pub pull_key: Option<String>,
    /// `--server=` value.
    pub server: Option<String>,
}

impl DashFile {
    /// `<database path>-sqlrsync`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut s = db.as_os_str().to_os_string();
        s.push("-sqlrsync");
        PathBuf::from(s)
    }

    /// Reads the `-sqlrsync` file next to `db`; Ok(None) when there is none.
    pub fn load_for(db: &Path) -> anyhow::Result<Option<DashFile>> {
        let path = Self::path_for(db);
        match fs::read_to_string(&path) {
            Ok(s) => Self::parse(&s)
                .map(Some)
                .with_context(|| format!("cannot understand {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Takes the values from the first line starting with `sqlrsync `.
    pub fn parse(text: &str) -> anyhow::Result<DashFile> {
        let Some(line) = text.lines().find(|l| l.starts_with("sqlrsync ")) else {
            bail!("no line starting with 'sqlrsync '");
        };
        let Some(words) = shlex::split(line) else {
            bail!("unbalanced quotes on the sqlrsync line");
        };
        let mut out = DashFile::default();
        let mut positional = words.iter().skip(1).filter(|w| !w.starts_with('-'));
        out.remote_path = positional
            .next()
            .cloned()
            .context("the sqlrsync line names no replica")?;
        let mut it = words.iter().skip(1).peekable();
        while let Some(w) = it.next() {
            let mut take = |name: &str| -> Option<String> {
                if let Some(v) = w.strip_prefix(&format!("{name}=")) {
                    Some(v.to_string())
                } else if w == name {
                    it.peek().map(|v| v.to_string())
                } else {
                    None
                }
            };
            if let Some(v) = take("--replicaID") {
                out.replica_id = Some(v);
            } else if let Some(v) = take("--pullKey") {
                out.pull_key = Some(v);
            } else if let Some(v) = take("--server") {
                out.server = Some(v);
            }
        }
        // The file may have been edited by hand (or written by something
        // else): values are taken literally (nothing here runs a shell), but
        // one that could split a line or a header is refused.
        for (name, v) in [
            ("the replica", Some(&out.remote_path)),
            ("--replicaID", out.replica_id.as_ref()),
            ("--server", out.server.as_ref()),
        ] {
            if let Some(v) = v
                && (v.chars().any(char::is_control) || v.len() > 1024)
            {
                bail!("{name} value {v:?} is not a valid value");
            }
        }
        Ok(out)
    }

    /// The script text for the database at `db`. Refuses values with
    /// control characters (they could split the line); quotes the rest.
    /// Where no `sqlrsync` is on PATH (cron, `env -i`) the script runs the
    /// binary that wrote it (see [`fallback_line`]).
    pub fn render(&self, db: &Path) -> anyhow::Result<String> {
        self.render_with(db, writer_exe().as_deref())
    }

    /// [`DashFile::render`] with `exe` as the binary that writes it.
    fn render_with(&self, db: &Path, exe: Option<&Path>) -> anyhow::Result<String> {
        let name = db
            .file_name()
            .context("the database path has no file name")?
            .to_string_lossy()
            .into_owned();
        // A bare name with ':' would read as USER@HOST:PATH.
        let local = if name.contains(':') {
            format!("./{name}")
        } else {
            name
        };
        let mut line = vec![
            "sqlrsync".to_string(),
            shell_quote(&self.remote_path)?,
            shell_quote(&local)?,
        ];
        if let Some(id) = &self.replica_id {
            line.push(shell_quote(&format!("--replicaID={id}"))?);
        }
        if let Some(k) = &self.pull_key {
            line.push(shell_quote(&format!("--pullKey={k}"))?);
        }
        if let Some(s) = &self.server {
            line.push(shell_quote(&format!("--server={s}"))?);
        }
        line.push("\"$@\"".to_string());
        Ok(format!(
            "#!/bin/bash\n{DASH_HELP_URL}\n# Pulls the latest version of this database again; extra arguments are passed on.\ncd \"$(dirname \"$0\")\" || exit 1\n{}{}\n",
            fallback_line(exe).unwrap_or_default(),
            line.join(" ")
        ))
    }

    /// Writes the script next to `db` atomically, mode 0755.
    pub fn save_for(&self, db: &Path) -> anyhow::Result<PathBuf> {
        let text = self.render(db)?;
        let path = Self::path_for(db);
        write_atomic(&path, text.as_bytes(), 0o755)?;
        Ok(path)
    }
}

/// This binary's absolute path with links resolved, when the OS can say.
fn writer_exe() -> Option<PathBuf> {
    std::env::current_exe().ok()?.canonicalize().ok()
}

/// The script line before the `sqlrsync` line (which stays as other clients
/// read it, PROTOCOL.md section 6): when no `sqlrsync` is on PATH, the
/// name runs `exe`, the binary that wrote the script. A `sqlrsync` on PATH
/// still wins, so the file works where it is shared. None unless `exe` is
/// an absolute UTF-8 path without control characters.
fn fallback_line(exe: Option<&Path>) -> Option<String> {
    let exe = exe.filter(|e| e.is_absolute())?.to_str()?;
    let quoted = shell_quote(exe).ok()?;
    Some(format!(
        "command -v sqlrsync >/dev/null 2>&1 || sqlrsync() {{ {quoted} \"$@\"; }}\n"
    ))
}

/// Quotes one word for bash: bare when it holds only harmless characters,
/// else in single quotes (inside which nothing is special) with each `'`
/// written as `'\''`. Control characters are refused.
pub fn shell_quote(s: &str) -> anyhow::Result<String> {
    if s.chars().any(|c| c.is_control()) {
        bail!("refusing to write a value with control characters into a shell script: {s:?}");
    }
    let harmless = |c: char| c.is_ascii_alphanumeric() || "_-./:=@,+%".contains(c);
    if !s.is_empty() && s.chars().all(harmless) {
        return Ok(s.to_string());
    }
    Ok(format!("'{}'", s.replace('\'', "'\\''")))
}

// ---------------------------------------------------------------------------

/// Writes `bytes` to `path` through a temp file in the same directory with
/// `mode`, fsyncs it, renames it over `path` and fsyncs the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let dir = crate::sqlite::parent_dir(path);
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".sqlrsync-tmp-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(&dir)
        .with_context(|| format!("cannot create a temp file in {}", dir.display()))?;
    // The umask may have narrowed the mode at creation; set it exactly.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Ok(d) = fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn dash_file_round_trips_hostile_values() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("data.db");
        let hostile = DashFile {
            remote_path: "ns/it's $(touch pwned) `touch pwned2`.db".into(),
            replica_id: Some("id;touch pwned3".into()),
            pull_key: Some("$HOME\"'&|".into()),
            server: Some("ws://127.0.0.1:1/ x".into()),
        };
        let path = hostile.save_for(&db).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("#!/bin/bash\n"));
        // The writer (this test binary) is the fallback for a bare PATH.
        assert!(text.contains("\ncommand -v sqlrsync >/dev/null 2>&1 || sqlrsync() { "));
        assert_eq!(DashFile::parse(&text).unwrap(), hostile);
        // bash itself must see exactly these words and run nothing.
        let line = text.lines().find(|l| l.starts_with("sqlrsync ")).unwrap();
        let echo = line
            .replacen("sqlrsync ", "printf '%s\\n' ", 1)
            .replace(" \"$@\"", "");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&echo)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let words: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        assert_eq!(words[0], hostile.remote_path);
        assert_eq!(words[1], "data.db");
        assert_eq!(words[2], "--replicaID=id;touch pwned3");
        assert_eq!(words[3], "--pullKey=$HOME\"'&|");
        for f in ["pwned", "pwned2", "pwned3"] {
            assert!(!dir.path().join(f).exists(), "{f} was created");
        }
        let newline = DashFile {
            remote_path: "ns/a\nb.db".into(),
            ..Default::default()
        };
        assert!(newline.render(&db).is_err());
    }

    #[test]
    fn dash_file_reads_the_documented_form() {
        let text = "#!/bin/bash\n# https://sqlrsync.com/help/dash-sqlrsync\nsqlrsync ns/path/data.db data.db --replicaID=ID --pullKey=KEY --server=wss://example.org \"$@\"\n";
        let d = DashFile::parse(text).unwrap();
        assert_eq!(d.remote_path, "ns/path/data.db");
        assert_eq!(d.replica_id.as_deref(), Some("ID"));
        assert_eq!(d.pull_key.as_deref(), Some("KEY"));
        assert_eq!(d.server.as_deref(), Some("wss://example.org"));
        assert!(DashFile::parse("#!/bin/sh\necho hi\n").is_err());
    }

    #[test]
    fn dash_file_runs_its_writer_where_path_has_no_sqlrsync() {
        let dir = tempfile::tempdir().unwrap();
        // A stand-in for the binary that writes the file, at a path that
        // needs quoting; it records the words it was run with.
        let bin = dir.path().join("it's $(bin)");
        fs::create_dir(&bin).unwrap();
        let out = dir.path().join("out");
        let record = |exe: &Path, who: &str| {
            let body = format!(
                "#!/bin/bash\nprintf '%s\\n' {who} \"$@\" > '{}'\n",
                out.display()
            );
            fs::write(exe, body).unwrap();
            fs::set_permissions(exe, fs::Permissions::from_mode(0o755)).unwrap();
        };
        let writer = bin.join("sqlrsync");
        record(&writer, "writer");
        let db = dir.path().join("data.db");
        let d = DashFile {
            remote_path: "ns/data.db".into(),
            pull_key: Some("KEY".into()),
            ..Default::default()
        };
        let text = d.render_with(&db, Some(&writer)).unwrap();
        // The line other clients read is as it always was.
        assert_eq!(DashFile::parse(&text).unwrap(), d);
        let line = text.lines().find(|l| l.starts_with("sqlrsync ")).unwrap();
        assert_eq!(line, "sqlrsync ns/data.db data.db --pullKey=KEY \"$@\"");
        let script = DashFile::path_for(&db);
        fs::write(&script, &text).unwrap();
        // A PATH with dirname only, as bare as cron's is for sqlrsync.
        let path = dir.path().join("path");
        fs::create_dir(&path).unwrap();
        std::os::unix::fs::symlink(which::which("dirname").unwrap(), path.join("dirname")).unwrap();
        let run = || {
            let o = std::process::Command::new("/bin/bash")
                .arg(&script)
                .arg("-v")
                .env_clear()
                .env("PATH", &path)
                .current_dir("/")
                .output()
                .unwrap();
            assert!(o.status.success(), "{o:?}");
            fs::read_to_string(&out).unwrap()
        };
        assert_eq!(run(), "writer\nns/data.db\ndata.db\n--pullKey=KEY\n-v\n");
        // A sqlrsync on PATH wins: the file still works where it is shared.
        record(&path.join("sqlrsync"), "on-path");
        assert!(run().starts_with("on-path\n"));
        // No fallback line without a usable absolute path.
        let bare = d.render_with(&db, None).unwrap();
        assert!(!bare.contains("command -v"), "{bare}");
        for exe in ["rel/sqlrsync", "/a\nb/sqlrsync", "/a\u{7f}b/sqlrsync"] {
            assert_eq!(d.render_with(&db, Some(Path::new(exe))).unwrap(), bare);
        }
        // Files written before the fallback line still read the same.
        assert_eq!(DashFile::parse(&bare).unwrap(), d);
    }

    #[test]
    fn secrets_keep_other_entries_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            Secrets::path(dir.path()),
            "[[sqlrsync-databases]]\npath = \"/a.db\"\nserver = \"wss://x\"\nreplicaID = \"r1\"\nremotePath = \"ns/a.db\"\npushKey = \"k1\"\nlastPush = 2026-11-23T10:00:00Z\nfuture = 1\n",
        )
        .unwrap();
        let mut s = Secrets::load(dir.path()).unwrap();
        assert_eq!(
            s.find(Path::new("/a.db"), "wss://x", "ns/a.db")
                .unwrap()
                .push_key,
            "k1"
        );
        s.upsert(SecretEntry {
            path: "/b.db".into(),
            server: "ws://y".into(),
            replica_id: "r2".into(),
            remote_path: "ns/b.db".into(),
            push_key: "k2".into(),
            last_push: toml_now(),
            other: Default::default(),
        });
        s.save(dir.path()).unwrap();
        let mode = fs::metadata(Secrets::path(dir.path()))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let again = Secrets::load(dir.path()).unwrap();
        assert_eq!(again.databases.len(), 2);
        let a = again
            .find(Path::new("/a.db"), "wss://x/", "ns/a.db")
            .unwrap();
        assert_eq!(a.other.get("future").and_then(|v| v.as_integer()), Some(1));
        assert_eq!(a.last_push.unwrap().to_string(), "2026-11-23T10:00:00Z");
        assert_eq!(
            again
                .find(Path::new("/b.db"), "ws://y", "ns/b.db")
                .unwrap()
                .push_key,
            "k2"
        );
        let text = fs::read_to_string(Secrets::path(dir.path())).unwrap();
        assert!(text.contains("[[sqlrsync-databases]]"), "{text}");
    }

    #[test]
    fn defaults_generate_ws_id_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = DefaultsFile::ensure_ws_id(dir.path()).unwrap();
        let b = DefaultsFile::ensure_ws_id(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.starts_with(&format!("{}:", hostname())));
        let f = DefaultsFile::load(dir.path()).unwrap();
        assert_eq!(f.defaults.server.as_deref(), Some(DEFAULT_SERVER));
        let text = fs::read_to_string(DefaultsFile::path(dir.path())).unwrap();
        assert!(
            text.contains("[defaults]") && text.contains("wsID"),
            "{text}"
        );
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc-1.db").unwrap(), "abc-1.db");
        assert_eq!(shell_quote("a b").unwrap(), "'a b'");
        assert_eq!(shell_quote("it's").unwrap(), "'it'\\''s'");
        assert_eq!(shell_quote("").unwrap(), "''");
        assert!(shell_quote("a\0b").is_err());
    }
}
