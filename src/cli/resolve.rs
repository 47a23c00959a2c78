//! Flags, environment and files into [`Settings`], once, before any mode
//! runs (ripgrep's low-level arguments into high-level settings).
//!
//! Each setting is decided here, uv style: flag over environment over file
//! over default. The environment is read once, into [`ProcessEnv`], and
//! this is the only place that reads it for settings (`SQLRSYNC_LOG` is
//! read by the log filter in `cli::init_tracing`, `SQLRSYNC_CACHE_DIR` by
//! the helper's extraction). Flags that make no sense for the mode are
//! refused here too, before anything is opened.

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::bail;

use super::{Cli, Mode, UsageError, forms, mode_of};
use crate::client::files::{self, DefaultsFile};
use crate::client::follow::{Policy, parse_duration};
use crate::client::keys::KeyEnv;
use crate::client::settings::{Files, KeySettings, PushSettings, ServerSettings, Settings};
use crate::client::{DEFAULT_IDLE_TIMEOUT, REMOTE_DEFAULT_PROTOCOL};
use crate::local::LOCAL_DEFAULT_PROTOCOL;
use crate::ui::Printer;
use crate::wire::{MAX_COMMIT_MESSAGE, Visibility};

/// What the process environment says, read once.
#[derive(Debug, Clone, Default)]
pub struct ProcessEnv {
    /// `SQLRSYNC_TIMEOUT` (the older name of `SQLRSYNC_IDLE_TIMEOUT`, which
    /// clap reads as the flag's own environment variable).
    pub timeout: Option<String>,
    /// `SQLRSYNC_AUTH_TOKEN`, non-blank.
    pub auth_token: Option<String>,
    /// `SQLRSYNC_ADMIN_KEY`, non-blank.
    pub admin_key: Option<String>,
    /// stdin and stderr are a terminal: a key prompt can be answered.
    pub tty: bool,
    /// `SQLRSYNC_COMPAT_FRAMES` set (not `0`): never offer large frames.
    pub compat_frames: bool,
    /// `SQLRSYNC_NO_DELTA` set (not `0`): never offer delta syncs.
    pub no_delta: bool,
}

impl ProcessEnv {
    pub fn read() -> ProcessEnv {
        let var = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        ProcessEnv {
            timeout: std::env::var("SQLRSYNC_TIMEOUT").ok(),
            auth_token: var("SQLRSYNC_AUTH_TOKEN"),
            admin_key: var("SQLRSYNC_ADMIN_KEY"),
            tty: std::io::stdin().is_terminal() && std::io::stderr().is_terminal(),
            compat_frames: var("SQLRSYNC_COMPAT_FRAMES").is_some_and(|v| v.trim() != "0"),
            no_delta: var("SQLRSYNC_NO_DELTA").is_some_and(|v| v.trim() != "0"),
        }
    }
}

/// The mode the arguments ask for and the settings it runs with. Refuses
/// bad arguments with one line.
pub fn settings(cli: Cli, env: &ProcessEnv) -> anyhow::Result<(Mode, Settings)> {
    let (origin, replica) = (cli.origin.as_deref(), cli.replica.as_deref());
    if let Some(origin) = origin {
        forms::refuse_lookalikes(origin, replica).map_err(UsageError::error)?;
    }
    let mode = mode_of(origin, replica).map_err(anyhow::Error::msg)?;
    if cli.versions && (!matches!(mode, Mode::Pull { .. }) || cli.subscribe || cli.dry) {
        return Err(UsageError::error(
            "--versions takes a replica on the server, NS/NAME.db (and DB, whose -sqlrsync \
             file may hold its key), and neither --subscribe nor --dry"
                .into(),
        ));
    }
    let form = forms::explain(origin.unwrap_or_default(), replica);
    if mode.is_remote() {
        check_flags(&cli, &mode)?;
    }
    let default_protocol = if mode.is_remote() {
        REMOTE_DEFAULT_PROTOCOL
    } else {
        LOCAL_DEFAULT_PROTOCOL
    };
    let files = Files {
        config_dir: files::config_dir().ok(),
    };
    // defaults.toml matters only to a remote mode without --server.
    let file_server = if mode.is_remote() && cli.server.is_none() {
        DefaultsFile::load(files.config_dir()?)?.defaults.server
    } else {
        None
    };
    let visibility = match (cli.public, cli.unlisted) {
        (true, _) => Visibility::Public,
        (_, true) => Visibility::Unlisted,
        _ => Visibility::Private,
    };
    let watch = watch_policy(&cli)?;
    let settings = Settings {
        printer: Printer {
            quiet: cli.quiet,
            json: cli.json,
            verbose: cli.verbose,
        },
        dry: cli.dry,
        form,
        protocol: cli.protocol.unwrap_or(default_protocol),
        wal_only: cli.wal_only,
        server: ServerSettings {
            flag: cli.server,
            file: file_server,
        },
        idle_timeout: idle_timeout(cli.idle_timeout, env.timeout.as_deref()),
        subscribe: cli.subscribe,
        versions: cli.versions,
        watch,
        force: cli.force,
        large_frames: !env.compat_frames,
        deltas: !env.no_delta && !env.compat_frames,
        push: PushSettings {
            message: cli.message,
            visibility,
        },
        keys: KeySettings {
            pull_key: cli.pull_key,
            push_key: cli.push_key,
            replica_id: cli.replica_id,
            admin_key: cli.admin_key,
            env: KeyEnv {
                auth_token: env.auth_token.clone(),
                admin_key: env.admin_key.clone(),
                tty: env.tty,
            },
        },
        files,
    };
    Ok((mode, settings))
}

/// How long the server may stay completely silent before a sync gives up:
/// `--idle-timeout` (or `SQLRSYNC_IDLE_TIMEOUT`), else `SQLRSYNC_TIMEOUT`,
/// else the default.
fn idle_timeout(flag: Option<u64>, env: Option<&str>) -> Duration {
    flag.or_else(|| env.and_then(|v| v.trim().parse().ok()).filter(|s| *s > 0))
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_IDLE_TIMEOUT)
}

/// `--waitIdle`, `--minInterval`, `--maxInterval` over the defaults.
fn watch_policy(cli: &Cli) -> anyhow::Result<Policy> {
    let parse = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<Duration>> {
        v.as_deref()
            .map(|v| parse_duration(v).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
            .transpose()
    };
    let d = Policy::default();
    let max_interval = parse("--maxInterval", &cli.max_interval)?;
    if max_interval == Some(Duration::ZERO) {
        bail!("--maxInterval must be more than 0");
    }
    Ok(Policy {
        wait_idle: parse("--waitIdle", &cli.wait_idle)?.unwrap_or(d.wait_idle),
        min_interval: parse("--minInterval", &cli.min_interval)?.unwrap_or(d.min_interval),
        max_interval,
    })
}

/// Flags that make no sense for this mode are refused before anything else.
fn check_flags(cli: &Cli, mode: &Mode) -> anyhow::Result<()> {
    if let Some(m) = &cli.message
        && m.len() > MAX_COMMIT_MESSAGE
    {
        bail!(
            "the commit message is {} bytes; at most {MAX_COMMIT_MESSAGE} are allowed",
            m.len()
        );
    }
    let refuse = |flag: &str, why: &str| -> anyhow::Result<()> { bail!("{flag} {why}") };
    if !cli.subscribe
        && (cli.wait_idle.is_some() || cli.min_interval.is_some() || cli.max_interval.is_some())
    {
        refuse(
            "--waitIdle/--minInterval/--maxInterval",
            "only pace --subscribe/--watch",
        )?;
    }
    match mode {
        Mode::Push { .. } => {
            if cli.pull_key.is_some() {
                refuse(
                    "--pullKey",
                    "is for pulls; a push uses --pushKey or an Account Admin key",
                )?;
            }
        }
        Mode::Pull { .. } => {
            if cli.push_key.is_some() {
                refuse("--pushKey", "is for pushes; a pull uses --pullKey")?;
            }
            if cli.message.is_some() {
                refuse(
                    "-m/--message",
                    "is a commit message for a push; a pull creates no version",
                )?;
            }
            if cli.public || cli.unlisted {
                refuse(
                    "--public/--unlisted",
                    "set the visibility on a first push, not on a pull",
                )?;
            }
            if cli.wait_idle.is_some() || cli.min_interval.is_some() || cli.max_interval.is_some() {
                refuse(
                    "--waitIdle/--minInterval/--maxInterval",
                    "pace a push or LOCAL sync that follows its origin; a pull --subscribe follows the server's versions as they come",
                )?;
            }
        }
        Mode::Local { .. } => {}
    }
    if cli.exe.is_some() || cli.ssh.is_some() || cli.port.is_some() {
        bail!("--exe, --ssh and -p are for the USER@HOST:PATH forms, not for the server");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        use clap::Parser;
        Cli::try_parse_from(std::iter::once("sqlrsync").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn layers() {
        let env = ProcessEnv {
            timeout: Some("7".into()),
            ..ProcessEnv::default()
        };
        let (mode, s) = settings(cli(&["a.db", "b.db"]), &env).unwrap();
        assert_eq!(mode.name(), "LOCAL");
        assert_eq!(s.protocol, LOCAL_DEFAULT_PROTOCOL);
        assert_eq!(s.idle_timeout, Duration::from_secs(7));
        let (_, s) = settings(
            cli(&[
                "a.db",
                "ns/a.db",
                "--server",
                "ws://h:1",
                "--idle-timeout",
                "3",
            ]),
            &env,
        )
        .unwrap();
        assert_eq!(s.protocol, REMOTE_DEFAULT_PROTOCOL);
        assert_eq!(s.idle_timeout, Duration::from_secs(3));
        assert_eq!(
            s.server.resolve(Some("ws://stored:2")).unwrap().0,
            "ws://h:1"
        );
        assert_eq!(idle_timeout(None, Some("0")), DEFAULT_IDLE_TIMEOUT);
        assert!(settings(cli(&["ns/a.db", "--pushKey", "k"]), &env).is_err());
        // LOCAL ignores the remote-only flags, as it always did.
        assert!(settings(cli(&["a.db", "b.db", "--pushKey", "k"]), &env).is_ok());
    }
}
