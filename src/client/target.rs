//! What a command asks for, once its arguments are classified: the mode
//! and the remote replica it names.
//!
//! These types sit here, below both the command line (which builds them
//! from argument forms) and the modes (which run them), so neither side has
//! to import the other: `cli` depends on `client`, never the reverse.

use std::path::PathBuf;

use crate::wire::VersionRef;

/// What the positional arguments ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Both local: sync with no network.
    Local { origin: PathBuf, replica: PathBuf },
    /// Local database to the server; `remote` None lets secrets or the server
    /// name the replica.
    Push {
        local: PathBuf,
        remote: Option<RemoteRef>,
    },
    /// Server replica into a local database.
    Pull { remote: RemoteRef, local: PathBuf },
}

impl Mode {
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Local { .. } => "LOCAL",
            Mode::Push { .. } => "PUSH",
            Mode::Pull { .. } => "PULL",
        }
    }

    /// PUSH and PULL talk to a server; LOCAL does not.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Mode::Local { .. })
    }
}

/// `namespace/…/name.db[@VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRef {
    /// The remote path without the version suffix.
    pub path: String,
    /// The version asked for; None when no `@` was given.
    pub version: Option<VersionRef>,
}

impl RemoteRef {
    /// Last path component: the default local file name of a pull.
    pub fn file_name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// Which form the positional arguments were read in, and the rule that
/// decided, naming the arguments as typed (worked out by
/// `cli::forms::explain`). `--dry` prints it in every mode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    /// `LOCAL`, `REMOTE` (PUSH, PULL, SUBSCRIBE) or `SSH`.
    pub name: &'static str,
    /// Why, in words.
    pub why: String,
}

impl Form {
    /// The `form:` line of `--dry`, its label padded to `width` like the
    /// mode's other lines.
    pub fn line(&self, width: usize) -> String {
        format!("{:<width$}{} ({})", "form:", self.name, self.why)
    }
}
