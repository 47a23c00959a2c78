//! The verdict over a linked sync: success, or why it failed as the user
//! reads it.
//!
//! The helper's `--origin`/`--replica` forms always exit 0, so success is
//! read from the link's [`Outcome`]: how the peer ended, what each side's
//! stream said, the helper's exit and the server's close, in that order.
//! [`Failure`] names the cause as a type; [`Failed`] adds what it means for
//! the user's data. [`super::SyncError`] wraps it for the modes.

use crate::link::{BadConfig, Outcome, PeerEnd};
use crate::wire::{MAX_SHOWN_TEXT, one_line, shown_text};

/// Why a linked sync failed, as the user reads it: the cause, then what it
/// means for their data ("no new version was created" on a push, "the
/// local database is unchanged" on a pull).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.line())]
pub struct Failed {
    pub failure: Failure,
    /// A push (our side is the ORIGIN).
    pub pushing: bool,
}

/// The cause of a [`Failed`] sync.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("interrupted")]
    Interrupted,
    /// The pull's sink refused the version (verification).
    #[error("{0}")]
    Refused(String),
    #[error("the server aborted: {0}")]
    Aborted(String),
    /// The server broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// A helper reported errors in its stream.
    #[error("sync failed ({side}): {errors}")]
    Stream { side: &'static str, errors: String },
    #[error("the sqlite3_rsync helper failed ({how}){stderr}")]
    Helper { how: String, stderr: String },
    #[error("the sync ended before the origin finished")]
    EndedEarly,
    /// A push's server closed with an error (`why` is ": reason" or "").
    #[error("the server closed the connection with code {code}{why}")]
    Closed { code: u16, why: String },
    #[error("the server closed the connection mid-sync with code {code}{why}")]
    ClosedMidSync { code: u16, why: String },
    #[error("{0} before the server confirmed the push")]
    Unconfirmed(String),
    #[error("{0} mid-sync")]
    LostMidSync(String),
    /// The server closed a complete push normally (it committed), but its
    /// CONFIG failed its check, so nothing of it was kept here.
    #[error(
        "the server committed the push{}, but its CONFIG is refused: {why}; \
         nothing was stored here (no push key in local-secrets.toml, no -sqlrsync file)",
        .version.as_deref().map(|v| format!(" as version {v}")).unwrap_or_default()
    )]
    CommittedButRefused {
        version: Option<String>,
        why: String,
    },
    /// The whole push went out, then the connection broke: it may have
    /// been stored (so no "no new version was created").
    #[error(
        "{0} after the whole database was sent, before the server confirmed the push; \
         it may or may not have been stored as a new version (push again: an unchanged \
         push says which version is the latest)"
    )]
    MaybeStored(String),
}

impl Failed {
    fn line(&self) -> String {
        if let Failure::MaybeStored(_) | Failure::CommittedButRefused { .. } = self.failure {
            return self.failure.to_string();
        }
        let unchanged = if self.pushing {
            "no new version was created"
        } else {
            "the local database is unchanged"
        };
        format!("{}; {unchanged}", self.failure)
    }

    /// A version that does not match its hash (not, say, a disk error
    /// while checking it). The commit gate's refusals of a mismatch all
    /// begin with [`crate::client::commit_gate::VERIFICATION_FAILED`].
    pub fn is_verification(&self) -> bool {
        matches!(&self.failure, Failure::Refused(why) if why.starts_with(crate::client::commit_gate::VERIFICATION_FAILED))
    }
}

/// Turns a linked sync into success or a [`Failed`]. `pushing` picks
/// which side is ours.
pub fn verdict(o: &Outcome, pushing: bool) -> Result<(), Failed> {
    judge(o, pushing).map_err(|failure| Failed { failure, pushing })
}

fn judge(o: &Outcome, pushing: bool) -> Result<(), Failure> {
    if o.interrupted {
        return Err(Failure::Interrupted);
    }
    match &o.end {
        PeerEnd::Refused(why) => return Err(Failure::Refused(why.clone())),
        // Say what it means for the user's data, as every other failure does.
        PeerEnd::Aborted(reason) => return Err(Failure::Aborted(one_line(reason))),
        // The cause; whatever the helper said after its input was cut is
        // only a consequence.
        PeerEnd::Protocol(p) => return Err(Failure::Protocol(p.clone())),
        _ => {}
    }
    if let Some(bad) = &o.bad_config {
        return Err(refused_config(o, bad));
    }
    if !o.origin.errors.is_empty() || !o.replica.errors.is_empty() {
        let side = if o.origin.errors.is_empty() {
            "replica"
        } else {
            "origin"
        };
        return Err(Failure::Stream {
            side,
            errors: stream_errors(o),
        });
    }
    if !o.helper.success() {
        let how = match o.helper.status {
            Some(s) => describe_status(s),
            None => "did not exit".into(),
        };
        let stderr = if o.helper_stderr.is_empty() {
            String::new()
        } else {
            format!(": {}", one_line(&o.helper_stderr.join("\n")))
        };
        return Err(Failure::Helper { how, stderr });
    }
    let complete = o.origin.complete();
    let lost = || {
        o.connection_error()
            .unwrap_or_else(|| "connection lost".into())
    };
    let why = |reason: &str| {
        if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        }
    };
    match (pushing, o.close()) {
        (true, Some((1000, _))) if complete => Ok(()),
        (true, Some((1000, _))) => Err(Failure::EndedEarly),
        (true, Some((code, reason))) => Err(Failure::Closed {
            code,
            why: why(reason),
        }),
        // Once the whole origin stream went out, the server needs nothing
        // more from us: it may commit after the connection broke (or have
        // committed just before), so "nothing was stored" would be a guess,
        // and sometimes a false one. (When a send failed, the server got a
        // cut stream and cannot commit it.)
        (true, None) if complete && o.stream_sent => Err(Failure::MaybeStored(lost())),
        (true, None) => Err(Failure::Unconfirmed(lost())),
        (false, _) if complete => Ok(()),
        (false, Some((code, reason))) => Err(Failure::ClosedMidSync {
            code,
            why: why(reason),
        }),
        (false, None) => Err(Failure::LostMidSync(lost())),
    }
}

/// A push's CONFIG failed its check: committed (the server closed a
/// complete push normally), perhaps committed (the whole stream went out,
/// then the connection broke), or not.
fn refused_config(o: &Outcome, bad: &BadConfig) -> Failure {
    let complete = o.origin.complete();
    match o.close() {
        Some((1000, _)) if complete => Failure::CommittedButRefused {
            version: bad.version.clone(),
            why: bad.why.clone(),
        },
        None if complete && o.stream_sent => {
            Failure::MaybeStored(format!("the server sent a bad CONFIG: {}", bad.why))
        }
        _ => Failure::Protocol(format!("the server sent a bad CONFIG: {}", bad.why)),
    }
}

/// The errors the streams reported (texts a server may have sent), as one
/// line of at most a few KiB: the first few, each shown as its text is.
fn stream_errors(o: &Outcome) -> String {
    let all = o.origin.errors.iter().chain(o.replica.errors.iter());
    let mut line = String::new();
    for (i, e) in all.enumerate() {
        if line.len() >= MAX_SHOWN_TEXT {
            let n = o.origin.errors.len() + o.replica.errors.len() - i;
            line.push_str(&format!("; and {n} more"));
            break;
        }
        if !line.is_empty() {
            line.push_str("; ");
        }
        line.push_str(&shown_text(e));
    }
    line
}

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}
