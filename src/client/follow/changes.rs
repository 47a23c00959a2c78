//! When a database has changed: file-system notifications wake us, and
//! SQLite itself says whether anything was committed.
//!
//! Notifications (the `notify` crate: inotify, FSEvents, ...) on the
//! database's directory, for the database, its `-wal` and its `-journal`,
//! wake the watcher at once and cost nothing while the database is idle.
//! But a file event is not a commit: a checkpoint, a reader closing, our
//! own sync reading the origin all touch those files, and a watcher that
//! synced on each would sync for ever. So every wake-up asks
//! `PRAGMA data_version` on a connection kept open for that purpose: it
//! changes exactly when another connection committed. File systems that do
//! not notify (some network mounts) are covered by asking it every
//! [`POLL`] anyway.
//!
//! That connection lives in a small child process (this binary, run as
//! [`PROBE_ARG`]): POSIX locks belong to a process, and the sync itself
//! opens and closes the database in this process (its header, its pages),
//! which silently drops every lock this process's connections hold on the
//! file. A watching connection that lost its locks sees no more commits
//! (found by the first try: the second commit was never seen).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use notify::Watcher as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often data_version is asked without a notification.
pub const POLL: Duration = Duration::from_secs(2);

/// The hidden first argument that runs this binary as the probe.
pub const PROBE_ARG: &str = "--internal-data-version-probe";

/// When to look again after a wake-up that showed no commit yet.
const SETTLE_MS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

/// The change source of one database.
pub struct Changes {
    probe: Probe,
    /// data_version last reported by [`Changes::changed`] (or seen as the
    /// last sync started).
    observed: i64,
    wake: mpsc::Receiver<()>,
    /// Kept alive: dropping it stops the notifications.
    _watcher: Option<notify::RecommendedWatcher>,
    /// Whether notifications work here (else polling alone).
    pub notifying: bool,
}

impl Changes {
    /// Starts watching `db` (which must exist).
    pub async fn new(db: &Path) -> anyhow::Result<Changes> {
        let mut probe = Probe::start(db)?;
        let v = probe.ask().await?;
        // One slot: a wake-up pending is all we need to know.
        let (tx, wake) = mpsc::channel(1);
        let watcher = notifier(db, tx);
        Ok(Changes {
            probe,
            observed: v,
            wake,
            notifying: watcher.is_some(),
            _watcher: watcher,
        })
    }

    /// Called as a sync starts: changes committed from now on are news.
    pub async fn mark_synced(&mut self) -> anyhow::Result<()> {
        self.observed = self.probe.ask().await?;
        Ok(())
    }

    /// Waits until a commit happens that was not reported yet (returns when
    /// it was seen). Wake-ups without a commit are absorbed here.
    pub async fn changed(&mut self) -> anyhow::Result<Instant> {
        // A write's notification comes before its commit is visible (the
        // WAL frames are written, then the index in shared memory, which
        // notifies nobody): after a wake-up, look again a few times.
        let mut settle: &[u64] = &[];
        loop {
            // A database replaced by another file (a restore, `mv`): the
            // probe's connection still sees the old one.
            if self.probe.replaced() {
                self.probe = Probe::start(&self.probe.db)?;
                self.observed = self.probe.ask().await?;
                return Ok(Instant::now());
            }
            let v = self.probe.ask().await?;
            if v != self.observed {
                self.observed = v;
                return Ok(Instant::now());
            }
            let next = match settle.split_first() {
                Some((ms, rest)) => {
                    settle = rest;
                    Duration::from_millis(*ms)
                }
                None => POLL,
            };
            tokio::select! {
                _ = self.wake.recv() => settle = SETTLE_MS,
                _ = tokio::time::sleep(next) => {}
            }
        }
    }
}

/// The child that holds the watching connection; one line per question.
struct Probe {
    db: PathBuf,
    child: tokio::process::Child,
    ask: tokio::process::ChildStdin,
    answers: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// The file the probe opened (device, inode).
    file: Option<(u64, u64)>,
    /// Questions are numbered and answers carry the number: a question
    /// whose wait was cancelled (a `select!` that chose another branch)
    /// leaves an answer behind that the next question skips.
    asked: u64,
}

impl Probe {
    fn start(db: &Path) -> anyhow::Result<Probe> {
        let exe = std::env::current_exe().context("cannot find this program to watch with")?;
        let mut child = tokio::process::Command::new(exe)
            .arg(PROBE_ARG)
            .arg(db)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the watching process")?;
        let ask = child.stdin.take().expect("piped stdin");
        let answers = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Ok(Probe {
            db: db.to_path_buf(),
            child,
            ask,
            answers,
            asked: 0,
            file: file_id(db),
        })
    }

    /// The database path now names another file than the one opened.
    fn replaced(&self) -> bool {
        file_id(&self.db).is_some_and(|now| Some(now) != self.file)
    }

    /// The current data_version.
    async fn ask(&mut self) -> anyhow::Result<i64> {
        let lost = || format!("the process watching {} stopped", self.db.display());
        self.asked += 1;
        let n = self.asked;
        self.ask
            .write_all(format!("{n}\n").as_bytes())
            .await
            .with_context(lost)?;
        self.ask.flush().await.with_context(lost)?;
        loop {
            let Some(line) = self.answers.next_line().await.with_context(lost)? else {
                let _ = self.child.kill().await;
                bail!("{}", lost());
            };
            let (m, answer) = line.split_once(' ').unwrap_or(("", &line));
            if m != n.to_string() {
                continue; // an earlier question's answer
            }
            return answer
                .parse()
                .map_err(|_| anyhow::anyhow!("{}: {answer}", lost()));
        }
    }
}

/// (device, inode) of the file at `p`.
fn file_id(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// The probe's side (`sqlrsync --internal-data-version-probe DB`): opens
/// DB read-only and answers each line on stdin with its data_version, until
/// stdin closes. An error is one line on stdout (the parent shows it).
pub fn serve_probe(db: &Path) -> ExitCode {
    let conn = match rusqlite::Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            println!("cannot open {}: {e}", db.display());
            return ExitCode::FAILURE;
        }
    };
    let _ = conn.busy_timeout(Duration::from_secs(5));
    let mut out = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(n) = line else { break };
        let answer = conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
            .map(|v| v.to_string())
            .unwrap_or_else(|e| format!("cannot read the data version: {e}"));
        if writeln!(out, "{} {answer}", n.trim())
            .and_then(|_| out.flush())
            .is_err()
        {
            break;
        }
    }
    ExitCode::SUCCESS
}

/// Events a commit can cause: writes, creations, removals, and closing a
/// file written to (which often comes last). Reads never commit, and a
/// busy reader must not keep the watcher asking.
fn may_commit(kind: &notify::EventKind) -> bool {
    use notify::EventKind::{Access, Create, Modify, Remove};
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        Modify(_) | Create(_) | Remove(_) | Access(AccessKind::Close(AccessMode::Write))
    )
}

/// Notifications for `db`, `db-wal` and `db-journal`, sent into `tx` (a
/// full channel drops them: one pending wake-up is enough). None when the
/// platform or file system cannot notify.
fn notifier(db: &Path, tx: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    let dir = crate::sqlite::parent_dir(db);
    let name = db.file_name()?.to_os_string();
    let ours = move |p: &Path| {
        p.file_name().is_some_and(|f| {
            let f = f.as_encoded_bytes();
            let n = name.as_encoded_bytes();
            f == n
                || f.strip_prefix(n)
                    .is_some_and(|s| s == b"-wal" || s == b"-journal")
        })
    };
    let mut w = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e
            && may_commit(&e.kind)
            && e.paths.iter().any(|p| ours(p))
        {
            let _ = tx.try_send(());
        }
    })
    .ok()?;
    w.watch(&dir, notify::RecursiveMode::NonRecursive).ok()?;
    Some(w)
}
