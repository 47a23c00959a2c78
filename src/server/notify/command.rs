//! `serve --notify-command CMD`: a notice given to a program, never to a
//! shell. The program and its arguments are the flag's words, split once
//! at start; the notice's data (which holds a replica path a client
//! chose) reaches it only in environment variables:
//!
//! | variable | value |
//! |---|---|
//! | `SQLRSYNC_NOTIFY_STATE` | `overdue` or `resumed` |
//! | `SQLRSYNC_NOTIFY_REPLICA` | NS/PATH |
//! | `SQLRSYNC_NOTIFY_LAST_PUSH` | RFC 3339, empty when never pushed |
//! | `SQLRSYNC_NOTIFY_EXPECTED_SECONDS` | the interval in seconds |
//! | `SQLRSYNC_NOTIFY_EXPECTED` | the interval as given (`1h`) |
//! | `SQLRSYNC_NOTIFY_JSON` | the webhook's JSON |
//!
//! It runs with no input, its output discarded and its errors in the
//! server's log; a run over the timeout is killed and counts as failed,
//! as does a non-zero exit.

use std::process::Stdio;
use std::time::Duration;

use super::Notice;

/// Why a run of the command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("could not start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("it exited with {0}")]
    Exit(std::process::ExitStatus),
    #[error("it ran longer than {0:?} and was killed")]
    TimedOut(Duration),
    #[error("waiting for it: {0}")]
    Wait(#[source] std::io::Error),
}

/// Runs `argv` once for `n` (`json`: its JSON), within `timeout`.
pub async fn run(
    argv: &[String],
    n: &Notice,
    json: &str,
    timeout: Duration,
) -> Result<(), CommandError> {
    let (program, args) = argv.split_first().expect("a parsed command has a program");
    let mut c = tokio::process::Command::new(program);
    c.args(args)
        .env("SQLRSYNC_NOTIFY_STATE", n.state.as_str())
        .env("SQLRSYNC_NOTIFY_REPLICA", &n.replica)
        .env(
            "SQLRSYNC_NOTIFY_LAST_PUSH",
            n.last_push.as_deref().unwrap_or(""),
        )
        .env(
            "SQLRSYNC_NOTIFY_EXPECTED_SECONDS",
            n.expected.as_secs().to_string(),
        )
        .env(
            "SQLRSYNC_NOTIFY_EXPECTED",
            crate::server::cli_ops::shown(n.expected),
        )
        .env("SQLRSYNC_NOTIFY_JSON", json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    let mut child = c.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) if status.success() => Ok(()),
        Ok(Ok(status)) => Err(CommandError::Exit(status)),
        Ok(Err(e)) => Err(CommandError::Wait(e)),
        Err(_) => {
            let _ = child.kill().await;
            Err(CommandError::TimedOut(timeout))
        }
    }
}
