//! The `sqlrsync` command line: argument forms, flags and dispatch.
//!
//! Three ways in, decided before clap sees anything:
//! 1. invoked through a link named `sqlite3_rsync`: be sqlite3_rsync;
//! 2. given sqlite3_rsync's own forms (`USER@HOST:PATH`, `--origin`,
//!    `--replica`): hand the arguments to the helper unchanged, which is what
//!    lets `--exe sqlrsync` run our binary on the far side of ssh;
//! 3. otherwise our own forms: LOCAL sync, PUSH, PULL, SUBSCRIBE.
//!
//! For our own forms, the parsed flags ([`Cli`], the low-level arguments)
//! are turned into [`Settings`] once, by [`resolve`], before any mode runs;
//! no mode sees the clap struct.

pub mod forms;
pub mod resolve;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{ArgAction, Parser};

use crate::client::Settings;
pub use crate::client::{Mode, RemoteRef};
use crate::helper;
use crate::ui::Printer;
use crate::wire::one_line;
use forms::Place;

const AFTER_HELP: &str = "\
Forms:
  sqlrsync ORIGIN REPLICA          LOCAL: both are files on this machine; REPLICA
                                   becomes a consistent snapshot of ORIGIN (both
                                   may be in use). No network.
  sqlrsync DB [NS/NAME.db]         PUSH DB as a new version of a replica on the
                                   server (the first push needs an Account Admin
                                   key; later pushes find their key by themselves)
  sqlrsync NS/NAME.db[@V] [DB]     PULL a version into DB (default ./NAME.db);
                                   V is latest, latest-N, N or vN
  sqlrsync NS/NAME.db[@TIME] [DB]  PULL the last version committed at or before
                                   TIME (2026-11-30T12:00:00Z; a date alone is
                                   up to its end, UTC); sqlrsync-server only
  sqlrsync NS/NAME.db [DB] --versions
                                   list the versions (sqlrsync-server only)
  sqlrsync NS/NAME.db DB --subscribe
                                   PULL, then follow every new version
  sqlrsync DB [NS/NAME.db] --watch PUSH now and after every change of DB
  sqlrsync ORIGIN REPLICA --watch  LOCAL now and after every change of ORIGIN
                                   (--waitIdle, --minInterval, --maxInterval)
  sqlrsync DB [USER@]HOST:PATH     sqlite3_rsync over ssh (also HOST:PATH DB)

Each argument is read by the first rule that fits (--dry says which, and why):
  1. a ':' before any '/' is [USER@]HOST:PATH, as sqlite3_rsync reads it:
     snap:2024-01-01.db is host snap (write ./snap:2024-01-01.db for a file)
  2. starting with /, ./, ../ or ~/, or with no '/' at all: a LOCAL file
  3. anything else names a replica on the server: backup/app.db is replica
     app.db in namespace backup (write ./backup/app.db for a local file).
     If a file of that name exists here, the command is refused before
     anything is sent (did you mean ./backup/app.db?); to mean the replica
     anyway, pull NS/NAME.db@latest or push from another directory.
     --server changes none of this.

Keys (first match wins): SQLRSYNC_AUTH_TOKEN, --pullKey/--pushKey, --adminKey,
SQLRSYNC_ADMIN_KEY, then the stored key (~/.config/sqlrsync/local-secrets.toml
for a push, the DB-sqlrsync file next to the database for a pull), then a
prompt on a terminal. Account Admin keys are never written to disk.

Nothing is overwritten by surprise: a pull refuses to replace a database that
pushes to a replica, has changed since it last matched a version, or was never
pulled from that replica; a push refuses when another machine pushed since this
database last matched the replica. --force does it anyway.

Examples:
  sqlrsync app.db ./backup/app.db        # local snapshot, no network
  sqlrsync app.db myteam/app.db -m 'nightly' --server ws://127.0.0.1:8462
  sqlrsync myteam/app.db@latest-1 old.db
  sqlrsync app.db --dry                  # say what would happen, touch nothing";

/// Command-line flags. Field docs are the `--help` text.
#[derive(Debug, Parser, Default)]
#[command(
    name = "sqlrsync",
    about = "Replicate live SQLite databases, sending only the pages that changed",
    after_help = AFTER_HELP,
    disable_version_flag = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The database to copy from: a local file, a remote replica
    /// (namespace/name.db[@VERSION]) or USER@HOST:PATH
    #[arg(value_name = "ORIGIN")]
    pub origin: Option<String>,

    /// The database to copy to (omit to push to the server, or to pull into
    /// ./NAME.db)
    #[arg(value_name = "REPLICA")]
    pub replica: Option<String>,

    /// Server URL for PUSH and PULL [default: from ~/.config/sqlrsync/defaults.toml, else wss://sqlrsync.com]
    #[arg(long, value_name = "URL", help_heading = "Remote")]
    pub server: Option<String>,

    /// Say what would happen (mode, the form of the arguments and why, paths,
    /// keys masked) and touch nothing
    #[arg(long, help_heading = "Common")]
    pub dry: bool,

    /// On the first push, make the replica public (listed, anyone may pull)
    #[arg(long, conflicts_with = "unlisted", help_heading = "Remote")]
    pub public: bool,

    /// On the first push, make the replica unlisted (anyone with the path may pull)
    #[arg(long, help_heading = "Remote")]
    pub unlisted: bool,

    /// Commit message for this push (at most 4096 bytes)
    #[arg(
        short = 'm',
        long = "message",
        value_name = "TEXT",
        help_heading = "Remote"
    )]
    pub message: Option<String>,

    /// Follow: a pull pulls every new version; a push (and a LOCAL sync)
    /// syncs again after each change of the local database, until Ctrl-C
    #[arg(long, visible_alias = "watch", help_heading = "Common")]
    pub subscribe: bool,

    /// With --subscribe/--watch on a push or LOCAL: sync once the database
    /// has been idle this long (500ms, 10s, 5m, 1h, 3d) [default: 1s]
    #[arg(long = "waitIdle", value_name = "DURATION", help_heading = "Common")]
    pub wait_idle: Option<String>,

    /// With --subscribe/--watch: never sync more often than this [default: 0]
    #[arg(long = "minInterval", value_name = "DURATION", help_heading = "Common")]
    pub min_interval: Option<String>,

    /// With --subscribe/--watch: check at least this often, syncing only if
    /// something changed [default: only on changes]
    #[arg(long = "maxInterval", value_name = "DURATION", help_heading = "Common")]
    pub max_interval: Option<String>,

    /// Pull over a database that pushes to a replica, has local changes or
    /// never came from that replica; push over a version another machine
    /// pushed
    #[arg(long, help_heading = "Remote")]
    pub force: bool,

    /// List the versions of a replica on the server (number, time, size,
    /// pages changed, versionHash, message) instead of pulling it: sqlrsync
    /// --versions NS/NAME.db [DB], with the key a pull into DB would use
    #[arg(long, help_heading = "Remote")]
    pub versions: bool,

    /// Print one JSON object with the result on stdout (for scripts)
    #[arg(long, help_heading = "Common")]
    pub json: bool,

    /// No progress bar and no summary line
    #[arg(short = 'q', long, help_heading = "Common")]
    pub quiet: bool,

    /// More output; repeat for more (-vv, -vvv)
    #[arg(short = 'v', action = ArgAction::Count, help_heading = "Common")]
    pub verbose: u8,

    /// sqlite3_rsync protocol version [default: 1 for LOCAL (fastest), 2 for
    /// remote modes (fewest bytes)]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=2), help_heading = "Common")]
    pub protocol: Option<u8>,

    /// Give up on a PUSH or PULL when the server has sent nothing, not even
    /// a keepalive, for this many seconds; also bounds connecting
    /// [default: 120; env SQLRSYNC_IDLE_TIMEOUT or SQLRSYNC_TIMEOUT]
    #[arg(long = "idle-timeout", alias = "timeout", env = "SQLRSYNC_IDLE_TIMEOUT", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..), help_heading = "Remote")]
    pub idle_timeout: Option<u64>,

    /// Do not sync unless both databases are in WAL mode
    #[arg(long = "wal-only", help_heading = "Common")]
    pub wal_only: bool,

    /// Replica Pull key (or an Account Pull key) for this pull
    #[arg(long = "pullKey", value_name = "KEY", help_heading = "Keys")]
    pub pull_key: Option<String>,

    /// Replica Push key for this push
    #[arg(long = "pushKey", value_name = "KEY", help_heading = "Keys")]
    pub push_key: Option<String>,

    /// Replica id that goes with --pullKey/--pushKey
    #[arg(long = "replicaID", value_name = "ID", help_heading = "Keys")]
    pub replica_id: Option<String>,

    /// Account Admin key (never stored; prefer SQLRSYNC_ADMIN_KEY or the prompt)
    #[arg(long = "adminKey", value_name = "KEY", help_heading = "Keys")]
    pub admin_key: Option<String>,

    /// Name of the sqlite3_rsync program on the far side of ssh
    #[arg(long, value_name = "PATH", help_heading = "ssh (sqlite3_rsync forms)")]
    pub exe: Option<String>,

    /// Name of the ssh program
    #[arg(long, value_name = "PATH", help_heading = "ssh (sqlite3_rsync forms)")]
    pub ssh: Option<String>,

    /// ssh TCP port
    #[arg(
        short = 'p',
        long,
        value_name = "PORT",
        help_heading = "ssh (sqlite3_rsync forms)"
    )]
    pub port: Option<u16>,

    /// Print version information
    #[arg(short = 'V', long = "version", help_heading = "Common")]
    pub version: bool,
}

/// An argument to write differently: one line and exit 2, as clap's own
/// usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl UsageError {
    pub fn error(why: String) -> anyhow::Error {
        anyhow::Error::new(UsageError(why))
    }
}

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Exit status of a usage error (clap's).
const EXIT_USAGE: u8 = 2;

/// Decides the mode from the positional arguments (SSH forms never get here).
pub fn mode_of(origin: Option<&str>, replica: Option<&str>) -> Result<Mode, String> {
    let Some(origin) = origin else {
        return Err("no database given; try 'sqlrsync --help'".into());
    };
    let o = forms::classify(origin)?;
    let r = replica.map(forms::classify).transpose()?;
    Ok(match (o, r) {
        (Place::Local(origin), Some(Place::Local(replica))) => Mode::Local { origin, replica },
        (Place::Local(local), None) => Mode::Push {
            local,
            remote: None,
        },
        (Place::Local(local), Some(Place::Remote(remote))) => {
            if remote.version.is_some() {
                return Err(format!(
                    "{}: a push always creates a new version; drop the @VERSION",
                    remote.path
                ));
            }
            Mode::Push {
                local,
                remote: Some(remote),
            }
        }
        (Place::Remote(remote), None) => {
            let local = PathBuf::from(remote.file_name());
            Mode::Pull { remote, local }
        }
        (Place::Remote(remote), Some(Place::Local(local))) => Mode::Pull { remote, local },
        (Place::Remote(_), Some(Place::Remote(_))) => {
            return Err(
                "both arguments name remote replicas; one side must be a local database".into(),
            );
        }
        (Place::Ssh(_), _) | (_, Some(Place::Ssh(_))) => {
            return Err("USER@HOST:PATH forms are handled by sqlite3_rsync".into());
        }
    })
}

/// Entry point of the `sqlrsync` binary.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // A watch's own child (src/watch/changes.rs), never typed by people.
    if args.len() == 3 && args[1] == crate::client::follow::changes::PROBE_ARG {
        return crate::client::follow::changes::serve_probe(std::path::Path::new(&args[2]));
    }
    if crate::dropin::invoked_as_sqlite3_rsync(args.first()) {
        return crate::dropin::exec_helper(&args[1..], &Printer::default());
    }
    if crate::dropin::is_sqlite3_rsync_form(&args[1..]) {
        // sqlite3_rsync has no dry run; ours says what it would run.
        if let Some(dry) = crate::dropin::SshDry::from_args(&args[1..]) {
            dry.print(&forms::explain(&dry.origin, Some(&dry.replica)));
            return ExitCode::SUCCESS;
        }
        return crate::dropin::exec_helper(&args[1..], &Printer::default());
    }
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let printer = Printer::default();
    if cli.version {
        printer.stdout(&format!(
            "sqlrsync {} ({})",
            env!("CARGO_PKG_VERSION"),
            helper::version_line()
        ));
        return ExitCode::SUCCESS;
    }
    init_tracing(cli.verbose);
    let run = resolve::settings(cli, &resolve::ProcessEnv::read())
        .and_then(|(mode, settings)| run(mode, &settings));
    match run {
        Ok(code) => code,
        Err(e) => {
            printer.stderr(&format!("sqlrsync: error: {}", one_line(&format!("{e:#}"))));
            if e.is::<UsageError>() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(mode: Mode, settings: &Settings) -> anyhow::Result<ExitCode> {
    match mode {
        Mode::Local { origin, replica } => crate::local::run(settings, &origin, &replica),
        Mode::Push { .. } | Mode::Pull { .. } => crate::client::run(settings, mode),
    }
}

/// clap's help and version go out as clap prints them (the one output
/// that does not pass through [`Printer`]: clap formats it); a usage error is
/// one line (clap's own first line, without its usage block) and exit 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let text = e.to_string();
    let first = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("invalid arguments");
    let first = first.trim().trim_start_matches("error:").trim();
    Printer::default().stderr(&format!("sqlrsync: error: {first} (see 'sqlrsync --help')"));
    ExitCode::from(EXIT_USAGE)
}

/// `tracing` goes to stderr on its own (`-vv`, `SQLRSYNC_LOG`): logs for
/// debugging, not output, so they do not pass through [`Printer`].
fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 | 1 => "warn",
        2 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SQLRSYNC_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert!(matches!(
            mode_of(Some("a.db"), Some("b.db")),
            Ok(Mode::Local { .. })
        ));
        assert!(matches!(
            mode_of(Some("a.db"), None),
            Ok(Mode::Push { remote: None, .. })
        ));
        assert!(matches!(
            mode_of(Some("./a.db"), Some("ns/a.db")),
            Ok(Mode::Push {
                remote: Some(_),
                ..
            })
        ));
        let Ok(Mode::Pull { local, .. }) = mode_of(Some("ns/x/a.db@3"), None) else {
            panic!()
        };
        assert_eq!(local, PathBuf::from("a.db"));
        assert!(mode_of(Some("ns/a.db"), Some("ns/b.db")).is_err());
        assert!(mode_of(Some("a.db"), Some("ns/b.db@2")).is_err());
        assert!(mode_of(None, None).is_err());
    }
}
