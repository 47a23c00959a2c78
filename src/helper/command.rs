//! [`HelperCommand`]: the one way the client, the server and the tests'
//! driver start the embedded helper on one side of sqlite3_rsync, with its
//! stdio piped to us, and wait for it to exit.
//!
//! Every caller needs the same things: `HELPER --origin DB NAME` or
//! `HELPER --replica NAME DB` (plus options such as `--protocol`), stdin and
//! stdout piped and widened ([`super::widen_pipe`]), the process killed if
//! the session drops it, and a bounded wait for its exit.

use std::ffi::OsString;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};

use super::Side;

/// Why the helper could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The embedded executable could not be written out.
    #[error("{0:#}")]
    Extract(anyhow::Error),
    /// The OS refused to run it.
    #[error("cannot start the sqlite3_rsync helper {path}: {source}")]
    Spawn {
        path: String,
        source: std::io::Error,
    },
}

/// What to do with the helper's stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stderr {
    /// Piped to us (the client shows or keeps it, the server logs it).
    Piped,
    /// Shared with our own stderr (the tests' driver).
    Inherit,
}

/// One helper invocation, built before it runs.
#[derive(Debug, Clone)]
pub struct HelperCommand {
    /// The side the helper plays.
    side: Side,
    /// Every argument after the executable.
    args: Vec<OsString>,
    /// Where its stderr goes.
    stderr: Stderr,
    /// Run in a process group of its own, so Ctrl-C reaches only us and we
    /// can close its input and let an unfinished replica roll back cleanly.
    own_group: bool,
    /// Its working directory (None: ours).
    dir: Option<std::path::PathBuf>,
}

impl HelperCommand {
    /// `HELPER --origin DB PEER`: reads `db`, sends pages.
    pub fn origin(db: &Path, peer_name: impl Into<OsString>) -> HelperCommand {
        HelperCommand::new(Side::Origin, db.as_os_str().to_owned(), peer_name.into())
    }

    /// `HELPER --replica PEER DB`: receives pages, writes `db`.
    pub fn replica(peer_name: impl Into<OsString>, db: &Path) -> HelperCommand {
        HelperCommand::new(Side::Replica, peer_name.into(), db.as_os_str().to_owned())
    }

    fn new(side: Side, first: OsString, second: OsString) -> HelperCommand {
        HelperCommand {
            side,
            args: vec![side.flag().into(), first, second],
            stderr: Stderr::Piped,
            own_group: false,
            dir: None,
        }
    }

    /// Appends options (`--protocol 2`, `--wal-only`).
    pub fn args(mut self, more: impl IntoIterator<Item = OsString>) -> HelperCommand {
        self.args.extend(more);
        self
    }

    /// Where its stderr goes (default: piped).
    pub fn stderr(mut self, s: Stderr) -> HelperCommand {
        self.stderr = s;
        self
    }

    /// Runs it in a process group of its own (the interactive client).
    pub fn own_process_group(mut self) -> HelperCommand {
        self.own_group = true;
        self
    }

    /// Runs it in `dir`. The server names its database relative to it,
    /// because the helper's error texts (which name its database) travel
    /// to the peer in the stream, and must not show the server's paths.
    pub fn current_dir(mut self, dir: &Path) -> HelperCommand {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The side it plays.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Starts it with stdin and stdout piped (and widened), killed on drop.
    /// When the OS refuses to execute the helper where it was put, the next
    /// place is prepared and tried (see [`super::refused`]).
    pub fn spawn(&self) -> Result<Helper, SpawnError> {
        loop {
            let exe = super::prepared().map_err(SpawnError::Extract)?;
            match self.spawn_from(&exe.path) {
                Ok(h) => return Ok(h),
                Err(source) if super::refused(&exe, &source) => continue,
                Err(source) => {
                    return Err(SpawnError::Spawn {
                        path: exe.path.display().to_string(),
                        source,
                    });
                }
            }
        }
    }

    fn spawn_from(&self, exe: &Path) -> std::io::Result<Helper> {
        let mut cmd = Command::new(exe);
        cmd.args(&self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(match self.stderr {
                Stderr::Piped => Stdio::piped(),
                Stderr::Inherit => Stdio::inherit(),
            })
            .kill_on_drop(true);
        if self.own_group {
            cmd.process_group(0);
        }
        if let Some(d) = &self.dir {
            cmd.current_dir(d);
        }
        tracing::debug!(helper = ?exe, args = ?self.args, "starting helper");
        let mut child = cmd.spawn()?;
        if let Some(i) = &child.stdin {
            super::widen_pipe(i);
        }
        if let Some(o) = &child.stdout {
            super::widen_pipe(o);
        }
        Ok(Helper {
            stdin: child.stdin.take(),
            stdout: child.stdout.take(),
            stderr: child.stderr.take(),
            child,
        })
    }
}

/// A running helper. Its pipes are taken by whoever moves the bytes; the
/// process itself is killed when this is dropped.
pub struct Helper {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
    child: Child,
}

/// How the helper ended.
#[derive(Debug, Default, Clone, Copy)]
pub struct HelperExit {
    /// Its exit status (None when even the wait after the kill failed).
    pub status: Option<ExitStatus>,
    /// It was killed after not exiting in time.
    pub killed: bool,
}

impl HelperExit {
    /// Exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && !self.killed
    }
}

impl Helper {
    /// Waits up to `grace` for the exit: None when it has not exited by
    /// then (it keeps running; dropping the [`Helper`] kills it).
    pub async fn wait(&mut self, grace: Duration) -> Option<std::io::Result<ExitStatus>> {
        tokio::time::timeout(grace, self.child.wait()).await.ok()
    }

    /// Waits up to `grace` for the exit, then kills it and waits for that.
    pub async fn exit(&mut self, grace: Duration) -> HelperExit {
        match self.wait(grace).await {
            Some(s) => HelperExit {
                status: s.ok(),
                killed: false,
            },
            None => {
                self.kill();
                HelperExit {
                    status: self.child.wait().await.ok(),
                    killed: true,
                }
            }
        }
    }

    /// Asks the OS to kill it now (does not wait).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}
