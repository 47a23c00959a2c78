//! Why a sync did not finish, typed by what a caller does about it.
//!
//! A subscription retries what time can fix (a lost connection, a server
//! restarting) and stops on what it cannot (a refusal, an ABORT, the
//! helper rejecting the stream, a copy that fails verification). The
//! variant says which; nothing is decided by reading an error's text. The
//! message each variant carries is the one line the user sees.

use super::verdict::{Failed, Failure};

use super::connect::ConnectError;

/// A failed (or stopped) PUSH or PULL.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Ctrl-C; nothing was changed.
    #[error(transparent)]
    Interrupted(anyhow::Error),
    /// No websocket was opened.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// An anonymous pull refused for want of a key, with the hint of how to
    /// give one.
    #[error(
        "{refused} (no key was sent: pass --pullKey, set SQLRSYNC_AUTH_TOKEN, or run on a terminal to be asked)"
    )]
    NoKey { refused: ConnectError },
    /// The server stopped the sync (ABORT).
    #[error(transparent)]
    Aborted(anyhow::Error),
    /// A helper rejected the stream (its error lines).
    #[error(transparent)]
    Rejected(anyhow::Error),
    /// The version received does not match the server's versionHash.
    #[error(transparent)]
    Verification(anyhow::Error),
    /// The client refused: the sync would lose what someone meant to keep
    /// (see `client::guard`); `--force` overrides.
    #[error(transparent)]
    Conflict(anyhow::Error),
    /// The server lacks an extension of ours that the command needs (a
    /// point in time): nothing was done, and waiting will not change it.
    #[error(transparent)]
    Unsupported(anyhow::Error),
    /// Anything else: a lost connection, a helper that died, a local error.
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl SyncError {
    /// Worth another attempt (a subscription retries it).
    pub fn retryable(&self) -> bool {
        match self {
            SyncError::Connect(c) => c.retryable(),
            SyncError::Other(_) => true,
            SyncError::Interrupted(_)
            | SyncError::NoKey { .. }
            | SyncError::Aborted(_)
            | SyncError::Rejected(_)
            | SyncError::Verification(_)
            | SyncError::Conflict(_)
            | SyncError::Unsupported(_) => false,
        }
    }

    /// The error as the one line `main` prints (`{:#}` keeps the causes).
    pub fn into_anyhow(self) -> anyhow::Error {
        match self {
            SyncError::Interrupted(e)
            | SyncError::Aborted(e)
            | SyncError::Rejected(e)
            | SyncError::Verification(e)
            | SyncError::Conflict(e)
            | SyncError::Unsupported(e)
            | SyncError::Other(e) => e,
            e @ (SyncError::Connect(_) | SyncError::NoKey { .. }) => anyhow::Error::new(e),
        }
    }
}

/// A failed verdict, typed by its cause.
impl From<Failed> for SyncError {
    fn from(f: Failed) -> SyncError {
        let kind = match &f.failure {
            Failure::Interrupted => SyncError::Interrupted,
            Failure::Refused(_) if f.is_verification() => SyncError::Verification,
            Failure::Aborted(_) => SyncError::Aborted,
            Failure::Stream { .. } => SyncError::Rejected,
            _ => SyncError::Other,
        };
        kind(anyhow::Error::new(f))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_policy_and_messages() {
        let refused = || ConnectError::Http {
            status: 401,
            reason: "Unauthorized",
            body: String::new(),
        };
        let e = SyncError::NoKey { refused: refused() };
        assert!(!e.retryable());
        assert_eq!(
            format!("{:#}", e.into_anyhow()),
            "server refused: HTTP 401 Unauthorized (no key was sent: pass --pullKey, set \
             SQLRSYNC_AUTH_TOKEN, or run on a terminal to be asked)"
        );
        assert!(!SyncError::from(refused()).retryable());
        let failed = |failure| {
            SyncError::from(Failed {
                failure,
                pushing: false,
            })
        };
        assert!(!failed(Failure::Aborted("no".into())).retryable());
        assert!(failed(Failure::LostMidSync("lost".into())).retryable());
        let bad = failed(Failure::Refused("VERIFICATION FAILED: x".into()));
        assert!(matches!(bad, SyncError::Verification(_)));
        assert!(failed(Failure::Refused("cannot hash".into())).retryable());
        let chained = SyncError::from(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(format!("{chained:#}"), "outer: inner");
    }
}
