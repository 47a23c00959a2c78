//! Shared test support: an isolated environment per test, real databases,
//! and the real binaries (`sqlrsync`, `sqlrsync-server`).
//!
//! Every test gets its own temp dir with its own HOME, XDG dirs and cache,
//! so nothing a test writes leaks into another or into the developer's home.

pub mod driver;
pub mod fake;
pub mod faults;
pub mod fixture;
pub mod frames;
pub mod ledger;
pub mod proxy;
pub mod remote;
pub mod strict;
pub mod wsrecord;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

pub use fixture::Fixture;

pub const SQLRSYNC: &str = env!("CARGO_BIN_EXE_sqlrsync");
pub const SERVER: &str = env!("CARGO_BIN_EXE_sqlrsync-server");

/// A temp dir with its own HOME; commands built here run inside it.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("sqlrsync-test-")
            .tempdir()
            .unwrap();
        for d in ["home", "home/.config", "home/.cache"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        TestEnv { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn home(&self) -> PathBuf {
        self.path("home")
    }

    /// `sqlrsync` with this env's HOME, run from the temp dir.
    pub fn sqlrsync(&self) -> Command {
        self.command(SQLRSYNC)
    }

    /// Any program with this env's HOME and a scrubbed key environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.home().join(".config"))
            .env("XDG_CACHE_HOME", self.home().join(".cache"))
            .env_remove("SQLRSYNC_AUTH_TOKEN")
            .env_remove("SQLRSYNC_ADMIN_KEY")
            .env_remove("SQLRSYNC_CACHE_DIR")
            .env_remove("SQLRSYNC_LOG")
            .env_remove("SQLRSYNC_NO_DELTA")
            .stdin(Stdio::null());
        c
    }
}

/// Runs a command to completion, capturing output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("command starts")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Asserts success, printing both streams when it fails.
#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "command failed: {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

/// Asserts failure with exactly one non-empty stderr line containing `needle`.
#[track_caller]
pub fn assert_one_line_error(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "command should fail\nstdout:\n{}\nstderr:\n{}",
        stdout(o),
        stderr(o)
    );
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{err}");
    assert!(
        lines[0].contains(needle),
        "error line {:?} lacks {needle:?}",
        lines[0]
    );
}

/// The JSON object on the last stdout line (`--json`).
#[track_caller]
pub fn json(o: &Output) -> serde_json::Value {
    let out = stdout(o);
    let line = out
        .lines()
        .last()
        .unwrap_or_else(|| panic!("no stdout; stderr: {}", stderr(o)));
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// SIGKILL to one process we started (by its pid, never by name).
pub fn sigkill(child: &mut Child) {
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
}

/// How a test database is laid out.
#[derive(Clone, Copy, Debug)]
pub struct DbSpec {
    pub rows: u32,
    pub page_size: u32,
    pub wal: bool,
    /// Bytes of payload per row.
    pub row_bytes: usize,
}

impl Default for DbSpec {
    fn default() -> Self {
        DbSpec {
            rows: 2000,
            page_size: 4096,
            wal: false,
            row_bytes: 200,
        }
    }
}

/// Creates a database with table `t(id INTEGER PRIMARY KEY, v BLOB, n INT)`.
pub fn make_db(path: &Path, spec: DbSpec) {
    let c = Connection::open(path).unwrap();
    c.execute_batch(&format!("PRAGMA page_size={};", spec.page_size))
        .unwrap();
    if spec.wal {
        c.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .unwrap();
    }
    c.execute_batch(
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v BLOB, n INT); CREATE INDEX t_n ON t(n);",
    )
    .unwrap();
    let tx = c.unchecked_transaction().unwrap();
    {
        let mut st = tx
            .prepare("INSERT INTO t(id, v, n) VALUES (?1, randomblob(?2), ?1 * 7 % 1000)")
            .unwrap();
        for i in 1..=spec.rows {
            st.execute(rusqlite::params![i, spec.row_bytes as i64])
                .unwrap();
        }
    }
    tx.commit().unwrap();
}

/// Rewrites `fraction` of the rows (spread over the table) with new bytes.
pub fn change_rows(path: &Path, fraction: f64) -> usize {
    let c = Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    let rows: i64 = c
        .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap();
    let step = ((1.0 / fraction).round() as i64).max(1);
    c.execute(
        "UPDATE t SET v = randomblob(length(v)), n = n + 1 WHERE id % ?1 = 0",
        [step],
    )
    .unwrap();
    (rows / step) as usize
}

/// A digest of the logical content of every table (order-independent of
/// pages, so it compares databases, not files).
pub fn content_digest(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut h = Sha256::new();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_schema WHERE type='table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for t in tables {
        h.update(t.as_bytes());
        let mut st = c
            .prepare(&format!("SELECT * FROM \"{t}\" ORDER BY rowid"))
            .unwrap();
        let n = st.column_count();
        let mut rows = st.query([]).unwrap();
        while let Some(r) = rows.next().unwrap() {
            for i in 0..n {
                match r.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => h.update(b"N"),
                    rusqlite::types::ValueRef::Integer(v) => h.update(v.to_le_bytes()),
                    rusqlite::types::ValueRef::Real(v) => h.update(v.to_le_bytes()),
                    rusqlite::types::ValueRef::Text(v) | rusqlite::types::ValueRef::Blob(v) => {
                        h.update(v)
                    }
                }
            }
        }
    }
    hex::encode(h.finalize())
}

/// `PRAGMA integrity_check` says ok.
#[track_caller]
pub fn assert_integrity(path: &Path) {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let r: String = c
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(r, "ok", "integrity_check of {}", path.display());
}

pub fn row_count(path: &Path) -> i64 {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))
        .unwrap()
}

/// SHA-256 of a file's bytes.
pub fn file_sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// A running `sqlrsync-server` on a free loopback port, killed on drop.
///
/// Its log (stderr) goes to a file in the test's temp dir, not to the
/// test's output: a green run shows none of it, and a test that fails
/// prints the log's last lines when it drops the server.
pub struct TestServer {
    pub child: Child,
    pub data_dir: PathBuf,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// Where the server's stderr goes (appended to across restarts on the
    /// same data dir).
    pub log_path: PathBuf,
    /// The log, open for reading: still readable after the temp dir is gone.
    log: std::fs::File,
}

/// Lines of the server's log a failing test prints.
const LOG_TAIL_LINES: usize = 200;

impl TestServer {
    /// Starts `sqlrsync-server serve --data-dir DIR --listen 127.0.0.1:0` and
    /// waits for its `listening on ADDR` line on stdout.
    pub fn start(env: &TestEnv, data_dir: &Path) -> TestServer {
        Self::start_with(env, data_dir, &[])
    }

    /// Same, with more `serve` arguments.
    pub fn start_with(env: &TestEnv, data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::start_cmd(env, data_dir, extra, |_| {})
    }

    /// Same, with `adjust` applied to the command first (environment).
    pub fn start_cmd(
        env: &TestEnv,
        data_dir: &Path,
        extra: &[&str],
        adjust: impl FnOnce(&mut Command),
    ) -> TestServer {
        let name = data_dir
            .file_name()
            .map_or("server".into(), |n| n.to_string_lossy().into_owned());
        let log_path = env.path(&format!("{name}.server.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&log_path)
            .expect("server log");
        let mut cmd = env.command(SERVER);
        cmd.args(["serve", "--data-dir"]).arg(data_dir);
        // A free port unless the caller names the address (a restart on
        // the port a graceful stop freed).
        if !extra.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(extra)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(log.try_clone().expect("server log"));
        adjust(&mut cmd);
        let mut child = cmd.spawn().expect("server starts");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            assert!(
                Instant::now() < deadline,
                "server did not say where it listens; its log:\n{}",
                tail(&log_path, LOG_TAIL_LINES)
            );
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(rest) = line.split("listening on ").nth(1) {
                        let a = rest
                            .trim()
                            .trim_start_matches("http://")
                            .trim_start_matches("https://");
                        break a.trim_end_matches('/').to_string();
                    }
                }
                _ => panic!(
                    "server exited before listening; its log:\n{}",
                    tail(&log_path, LOG_TAIL_LINES)
                ),
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        TestServer {
            child,
            data_dir: data_dir.to_path_buf(),
            addr,
            log_path,
            log,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything the server logged so far (and earlier servers on the
    /// same data dir in this test).
    pub fn log(&self) -> String {
        read_all(&self.log)
    }

    /// `sqlrsync-server namespace create NAME`: the new Account Admin key.
    pub fn create_namespace(&self, env: &TestEnv, name: &str) -> String {
        let o = run(env
            .command(SERVER)
            .args(["namespace", "create", name, "--data-dir"])
            .arg(&self.data_dir));
        assert_ok(&o);
        stdout(&o)
            .lines()
            .last()
            .expect("a key line")
            .trim()
            .to_string()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = read_all(&self.log);
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "---- sqlrsync-server on {} (data dir {}): last {} of {} lines of {} ----",
                self.addr,
                self.data_dir.display(),
                lines.len() - from,
                lines.len(),
                self.log_path.display()
            );
            for l in &lines[from..] {
                eprintln!("{l}");
            }
            eprintln!("---- end of the server log ----");
        }
    }
}

/// The whole of a file open for reading, from its start.
fn read_all(mut f: &std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut b = Vec::new();
    let _ = f.seek(std::io::SeekFrom::Start(0));
    let _ = f.read_to_end(&mut b);
    String::from_utf8_lossy(&b).into_owned()
}

/// The last `n` lines of a file.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The `versionHash` of a database file (see sqlite::VersionHasher).
pub fn version_hash(path: &Path) -> String {
    sqlrsync::sqlite::version_hash(path).unwrap()
}

/// The `--json` lines a running child prints, one object each, read on a
/// thread of their own (a subscriber prints one per pull).
pub struct JsonLines(std::sync::mpsc::Receiver<String>);

impl JsonLines {
    /// Takes the child's piped stdout.
    pub fn of(child: &mut Child) -> JsonLines {
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().expect("stdout piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        JsonLines(rx)
    }

    /// The next object, within 30 s (`what` names it in the panic).
    #[track_caller]
    pub fn next(&self, what: &str) -> serde_json::Value {
        let line = self
            .0
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no JSON line for {what}"));
        serde_json::from_str(&line).unwrap()
    }
}
