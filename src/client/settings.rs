//! The settings of one run, resolved once before any mode starts.
//!
//! Each setting is decided in one place (`cli::resolve`), uv style: flag,
//! then environment, then file, then default. What the modes receive is
//! these plain structs, never the clap struct and never the environment,
//! so a plan is a function of its settings and the files it reads (and a
//! test can build one by hand). The one setting that depends on the
//! database, the server stored with it, is layered in by
//! [`ServerSettings::resolve`] between the flag and defaults.toml.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use super::files;
use super::keys::KeyEnv;
use super::target::Form;
use crate::ui::Printer;
use crate::wire::Visibility;

/// Everything a mode may consult.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Output policy (`--quiet`, `--json`, `-v`).
    pub printer: Printer,
    /// `--dry`: say what would happen, touch nothing.
    pub dry: bool,
    /// How the positional arguments were read, and why (for `--dry`).
    pub form: Form,
    /// sqlite3_rsync protocol: `--protocol`, else the mode's default.
    pub protocol: u8,
    /// `--wal-only`.
    pub wal_only: bool,
    /// Which server (remote modes).
    pub server: ServerSettings,
    /// `--idle-timeout`, `SQLRSYNC_IDLE_TIMEOUT`, `SQLRSYNC_TIMEOUT`, default.
    pub idle_timeout: Duration,
    /// `--subscribe` (`--watch`).
    pub subscribe: bool,
    /// `--versions`: list the replica's versions instead of pulling it.
    pub versions: bool,
    /// How a push or LOCAL sync follows its origin (`--waitIdle`,
    /// `--minInterval`, `--maxInterval`).
    pub watch: crate::client::follow::Policy,
    /// `--force`: run a sync the client would refuse as overwriting what
    /// someone meant to keep (see `client::guard`).
    pub force: bool,
    /// Offer the server large frames (SERVER.md "Extensions");
    /// `SQLRSYNC_COMPAT_FRAMES=1` turns it off, so every frame is one the
    /// clients that exist for sqlrsync.com would send.
    pub large_frames: bool,
    /// Offer our server delta syncs (SERVER.md "Extensions");
    /// `SQLRSYNC_NO_DELTA=1` (or `SQLRSYNC_COMPAT_FRAMES=1`) turns it off,
    /// so every sync runs the helper (to measure or check the full path).
    pub deltas: bool,
    /// What only a push uses.
    pub push: PushSettings,
    /// Keys from flags and environment.
    pub keys: KeySettings,
    /// Where the client's files live.
    pub files: Files,
}

/// The server URL's layers that do not depend on the database.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    /// `--server`.
    pub flag: Option<String>,
    /// `server` of defaults.toml (read only when there is no flag).
    pub file: Option<String>,
}

impl ServerSettings {
    /// The server URL: flag over the setting stored with this database over
    /// defaults.toml over the built-in default; `http(s)://` is accepted as
    /// `ws(s)://`. Also says where the URL came from (for `--dry`).
    pub fn resolve(&self, stored: Option<&str>) -> anyhow::Result<(String, &'static str)> {
        let (raw, from) = if let Some(f) = &self.flag {
            (f.clone(), "--server flag")
        } else if let Some(s) = stored {
            (s.to_string(), "stored with this database")
        } else {
            match &self.file {
                Some(s) if !s.trim().is_empty() => (s.clone(), "defaults.toml"),
                _ => (files::DEFAULT_SERVER.to_string(), "built-in default"),
            }
        };
        Ok((super::normalize_server(&raw)?, from))
    }
}

/// What only a push uses.
#[derive(Debug, Clone, Default)]
pub struct PushSettings {
    /// `-m/--message`.
    pub message: Option<String>,
    /// `--public`/`--unlisted` (first push only).
    pub visibility: Visibility,
}

/// The keys the command line and the environment give.
#[derive(Debug, Clone, Default)]
pub struct KeySettings {
    /// `--pullKey`.
    pub pull_key: Option<String>,
    /// `--pushKey`.
    pub push_key: Option<String>,
    /// `--replicaID`.
    pub replica_id: Option<String>,
    /// `--adminKey`.
    pub admin_key: Option<String>,
    /// `SQLRSYNC_AUTH_TOKEN`, `SQLRSYNC_ADMIN_KEY`, whether a prompt works.
    pub env: KeyEnv,
}

/// Where the client's files live.
#[derive(Debug, Clone, Default)]
pub struct Files {
    /// `~/.config/sqlrsync` (honours `XDG_CONFIG_HOME`); None when there is
    /// no home directory, which only matters to a mode that needs a file.
    pub config_dir: Option<PathBuf>,
}

impl Files {
    /// The configuration directory, or the one-line reason there is none.
    pub fn config_dir(&self) -> anyhow::Result<&Path> {
        self.config_dir
            .as_deref()
            .context("cannot find the configuration directory (is HOME set?)")
    }
}
