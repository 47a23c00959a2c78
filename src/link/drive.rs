//! A whole helper session on the connecting side: the client's push and
//! pull, and the tests' driver.
//!
//! [`drive`] starts the helper ([`HelperCommand`]) and three tasks, one
//! direction each, websocat style:
//!
//! - helper stdout -> frames ([`super::pump`]), with our control frames
//!   at message boundaries;
//! - frames -> the [`Inbound`] (which feeds the helper's stdin), after the
//!   control-frame rule ([`classify`]) took out the peer's control frames;
//!   text frames (CONFIG, MESSAGE, ABORT) are acted on;
//! - helper stderr -> the user (live) or kept for the result.
//!
//! EOF crosses over: the socket's end closes the helper's stdin, and the
//! helper's stdout EOF (the replica finished, on a pull) makes us close the
//! socket normally. The helper's `--origin`/`--replica` forms always exit
//! 0, so the verdict comes from the streams, the peer's close and the exit
//! status together; [`Outcome`] carries them, typed, to the caller.
//!
//! A peer that goes silent is given up on after the idle timeout: no frame
//! from it (its keepalive Pings count, Pongs to ours do not) for that long.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::process::ChildStderr;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::inbound::{Feed, Inbound};
use super::pump::{Controls, Framing, PumpCtx, PumpEnd, PumpError, pump};
use super::reader::{Reader, ReaderDone, Received};
use super::socket::Socket;
use super::writer::{Out, OutTx, Writer, WriterConfig, spawn_writer};
use super::{Observer, Stats, wait_true};
use crate::helper::{Helper, HelperCommand, HelperExit, Side, SpawnError};
use crate::wire::{Direction, OriginSummary, ReplicaSummary, ServerConfig, keepalive_interval};

/// Frames queued between the stdout pump and the socket writer.
const QUEUE: usize = 4;

/// How long the helper may take to exit once its input closed.
const HELPER_EXIT_GRACE: Duration = Duration::from_secs(20);

/// How long to wait for the server's CONFIG answer after a pull finished.
const CONFIG_GRACE: Duration = Duration::from_secs(10);

/// How long to wait for the server's close reply.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Close codes the driver sends.
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_ERROR: u16 = 1011;

/// What to run and what to send around it.
pub struct DriveSpec {
    /// The helper (its side decides the parsers' directions).
    pub helper: HelperCommand,
    /// Our control frames and where they go.
    pub controls: Controls,
    /// How the helper's output is cut into frames.
    pub framing: Framing,
    /// Wait (briefly) for a CONFIG text frame before closing a finished
    /// pull, because it carries the keys and the version hash.
    pub want_config: bool,
    /// Hand the helper's stderr lines to the observer as they come (-vv);
    /// otherwise they are kept (the first 64) for the result.
    pub live_stderr: bool,
    /// Give up when the peer sends nothing (not even a keepalive) for this
    /// long. We Ping whenever we have been quiet for a quarter of it.
    pub idle_timeout: Duration,
}

/// Where the driver reports.
#[derive(Clone)]
pub struct DriveCtx {
    pub stats: Arc<Stats>,
    pub observer: Option<Arc<dyn Observer>>,
}

/// The connection was lost (no close frame from the peer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionLost {
    #[error(
        "no data from the server: it sent nothing for {}s (the connection stalled)",
        .0.as_secs_f64()
    )]
    Stalled(Duration),
    #[error("the server ended the connection without closing it")]
    Ended,
    #[error("connection lost: {0}")]
    Failed(String),
}

/// How the peer's side of the connection ended.
#[derive(Debug, Clone)]
pub enum PeerEnd {
    /// It closed with this code and reason.
    Closed(u16, String),
    /// It sent `ABORT=reason`.
    Aborted(String),
    /// The connection broke.
    Lost(ConnectionLost),
    /// It broke the protocol (its stream, or a bad CONFIG): the line.
    Protocol(String),
    /// Our [`Inbound`] refused its stream (a failed verification).
    Refused(String),
    /// We stopped reading (Ctrl-C, or no close reply in time).
    Cancelled,
}

/// How a driven session ended; the caller turns it into a verdict.
#[derive(Debug)]
pub struct Outcome {
    /// How the peer's side ended.
    pub end: PeerEnd,
    /// The ORIGIN's stream, whoever ran it.
    pub origin: OriginSummary,
    /// The REPLICA's stream, whoever ran it.
    pub replica: ReplicaSummary,
    /// Every CONFIG the peer sent, in order.
    pub configs: Vec<ServerConfig>,
    /// `MESSAGE=` texts as shown (visible, cut at 4 KiB), in order, at most
    /// a few dozen (already shown through the observer).
    pub messages: Vec<String>,
    /// `MESSAGE=` texts past the bounds of `messages`: counted, not shown.
    pub messages_not_shown: u64,
    /// On a push, a CONFIG that failed its check: nothing of it was used,
    /// and the sync fails (see [`BadConfig`]).
    pub bad_config: Option<BadConfig>,
    /// The peer said a newer version exists (NEWREPLICAVERSION).
    pub newer_version: bool,
    /// How the helper exited.
    pub helper: HelperExit,
    /// The helper's stderr lines (when not live).
    pub helper_stderr: Vec<String>,
    /// Why our pump stopped before the helper's EOF.
    pub pump_error: Option<PumpError>,
    /// Every frame of our stream was handed to the socket. False: what
    /// the peer received was cut short (so a push cannot have been stored).
    pub stream_sent: bool,
    /// Ctrl-C stopped the session.
    pub interrupted: bool,
}

impl Outcome {
    /// Every CONFIG merged: later fields win, omitted ones are kept.
    pub fn config(&self) -> Option<ServerConfig> {
        self.configs.iter().cloned().reduce(merge_config)
    }

    /// The peer's close, when it closed.
    pub fn close(&self) -> Option<(u16, &str)> {
        match &self.end {
            PeerEnd::Closed(code, reason) => Some((*code, reason)),
            _ => None,
        }
    }

    /// Why the connection failed, when it did (ours or the peer's side).
    pub fn connection_error(&self) -> Option<String> {
        match &self.end {
            PeerEnd::Lost(e) => Some(e.to_string()),
            _ => self.pump_error.as_ref().map(|e| e.to_string()),
        }
    }
}

/// A CONFIG refused on a push. The session read on to the server's end,
/// so the verdict can tell a server that committed the push and then sent
/// it from one that sent it and stopped.
#[derive(Debug, Clone)]
pub struct BadConfig {
    /// What its check found (the field, its value made visible).
    pub why: String,
    /// The version the last CONFIG named, made visible (it may be the
    /// bad one's).
    pub version: Option<String>,
}

/// Why a session could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Spawn(#[from] SpawnError),
    #[error("a sync task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Runs `spec` over `ws` until the sync ends, the peer stops it, or
/// `interrupt` fires (Ctrl-C). `inbound` wraps the [`Feed`] of the
/// helper's stdin; it is handed back with the outcome.
pub async fn drive<S, I>(
    ws: S,
    spec: DriveSpec,
    ctx: DriveCtx,
    inbound: impl FnOnce(Feed) -> I,
    interrupt: watch::Receiver<bool>,
) -> Result<(Outcome, I), DriveError>
where
    S: Socket,
    I: Inbound,
{
    let side = spec.helper.side();
    let mut helper = spec.helper.spawn()?;
    let (out_dir, in_dir) = match side {
        Side::Origin => (Direction::FromOrigin, Direction::FromReplica),
        Side::Replica => (Direction::FromReplica, Direction::FromOrigin),
    };
    let (sink, stream) = ws.split_halves();
    let wcfg = WriterConfig {
        queue: QUEUE,
        keepalive: keepalive_interval(spec.idle_timeout),
        stall: None,
        masked: true,
    };
    let (out, writer) = spawn_writer(sink, wcfg, ctx.stats.clone(), None);
    let feed = Feed::new(
        in_dir,
        helper.stdin.take(),
        ctx.stats.clone(),
        ctx.observer.clone(),
    );
    let (cancel_tx, cancel) = watch::channel(false);
    let (seen_tx, config_seen) = watch::channel(false);
    let reader = Reader {
        stream,
        inbound: inbound(feed),
        ctx: ctx.clone(),
        cancel,
        config_seen: seen_tx,
        idle: spec.idle_timeout,
        push: side == Side::Origin,
        got: Received::default(),
        ahead: None,
    };
    let stdout = helper.stdout.take().expect("piped stdout");
    let pump_ctx = PumpCtx {
        stats: ctx.stats.clone(),
        observer: ctx.observer.clone(),
        keep_reading: true,
    };
    let running = Running {
        pump: tokio::spawn(pump(
            stdout,
            out_dir,
            spec.framing,
            spec.controls,
            out.clone(),
            pump_ctx,
        )),
        reader: tokio::spawn(reader.run()),
        stderr: spawn_stderr(helper.stderr.take(), spec.live_stderr, ctx.observer),
        helper,
        out,
        writer,
        cancel: cancel_tx,
        config_seen,
        want_config: spec.want_config,
        side,
    };
    running.finish(interrupt).await
}

/// The tasks of a session, and the order in which they are ended.
struct Running<I> {
    helper: Helper,
    out: OutTx,
    writer: Writer,
    pump: JoinHandle<PumpEnd>,
    reader: JoinHandle<(PeerEnd, I, Received)>,
    stderr: JoinHandle<Vec<String>>,
    cancel: watch::Sender<bool>,
    config_seen: watch::Receiver<bool>,
    want_config: bool,
    side: Side,
}

impl<I: Inbound> Running<I> {
    async fn finish(
        mut self,
        mut interrupt: watch::Receiver<bool>,
    ) -> Result<(Outcome, I), DriveError> {
        let mut pump_done = None;
        let mut reader_done = None;
        let mut interrupted = false;
        // Phase 1: the first of: helper stdout EOF, socket end, Ctrl-C.
        tokio::select! {
            r = &mut self.pump => pump_done = Some(r?),
            r = &mut self.reader => reader_done = Some(r?),
            _ = wait_true(&mut interrupt) => interrupted = true,
        }
        if interrupted {
            // Close the helper's input so an unfinished replica rolls
            // back, then tell the server.
            let _ = self.cancel.send(true);
            let _ = self
                .out
                .send(Out::Close(CLOSE_NORMAL, "interrupted".into()))
                .await;
        }
        // Phase 2: the helper's stdout must end (it exits once its input
        // ends), then the helper itself.
        let (pumped, helper) = self.end_helper(pump_done).await?;
        tracing::debug!(status = ?helper.status, "helper exited");
        // Phase 3: the socket.
        let ours_ok = !interrupted && pumped.error.is_none() && helper.success();
        let reader_done = match reader_done {
            Some(r) => r,
            None => self.end_socket(ours_ok).await?,
        };
        drop(self.out);
        let writer_ok = self.writer.finish(CLOSE_GRACE).await == Some(true);
        tracing::debug!("socket done");
        let (end, inbound, got) = reader_done;
        let helper_stderr = self.stderr.await.unwrap_or_default();
        let feed = inbound.feed();
        let (origin, replica) = match self.side {
            Side::Origin => (pumped.origin, feed.replica.clone()),
            Side::Replica => (feed.origin.clone(), pumped.replica),
        };
        let outcome = Outcome {
            end,
            origin,
            replica,
            configs: got.configs,
            messages: got.messages.kept,
            messages_not_shown: got.messages.not_shown,
            bad_config: got.bad_config.map(|why| BadConfig {
                why,
                version: got.last_version,
            }),
            newer_version: got.newer_version,
            helper,
            helper_stderr,
            stream_sent: writer_ok && pumped.all_queued,
            pump_error: pumped.error,
            interrupted,
        };
        Ok((outcome, inbound))
    }

    /// Waits for the pump (killing the helper when its output does not
    /// end in time), then for the helper's exit.
    async fn end_helper(
        &mut self,
        pump_done: Option<PumpEnd>,
    ) -> Result<(PumpEnd, HelperExit), DriveError> {
        let mut killed = false;
        let pumped = match pump_done {
            Some(p) => p,
            None => match tokio::time::timeout(HELPER_EXIT_GRACE, &mut self.pump).await {
                Ok(r) => r?,
                Err(_) => {
                    self.helper.kill();
                    killed = true;
                    (&mut self.pump).await?
                }
            },
        };
        tracing::debug!("helper output ended");
        let mut exit = self.helper.exit(HELPER_EXIT_GRACE).await;
        exit.killed |= killed;
        Ok((pumped, exit))
    }

    /// On a pull that finished, waits for CONFIG, then closes normally; on
    /// anything that went wrong, closes with an error. Then waits for the
    /// peer's close (or stops reading after a grace).
    async fn end_socket(&mut self, ours_ok: bool) -> Result<ReaderDone<I>, DriveError> {
        if ours_ok && self.want_config && !*self.config_seen.borrow() {
            let (seen, reader) = (&mut self.config_seen, &mut self.reader);
            let waited = tokio::time::timeout(CONFIG_GRACE, async {
                tokio::select! {
                    _ = seen.wait_for(|s| *s) => None,
                    r = reader => Some(r),
                }
            })
            .await;
            if let Ok(Some(r)) = waited {
                return Ok(r?);
            }
        }
        let (code, why) = if ours_ok {
            (CLOSE_NORMAL, "done")
        } else {
            (CLOSE_ERROR, "the sync failed on the client")
        };
        let _ = self.out.send(Out::Close(code, why.into())).await;
        match tokio::time::timeout(CLOSE_GRACE, &mut self.reader).await {
            Ok(r) => Ok(r?),
            Err(_) => {
                let _ = self.cancel.send(true);
                Ok((&mut self.reader).await?)
            }
        }
    }
}

/// The helper's stderr: handed to the observer line by line (live), or
/// the first 64 lines kept for the result.
fn spawn_stderr(
    stderr: Option<ChildStderr>,
    live: bool,
    observer: Option<Arc<dyn Observer>>,
) -> JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let Some(stderr) = stderr else { return kept };
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            match (&observer, live) {
                (Some(o), true) => o.helper_line(&line),
                _ if kept.len() < 64 => kept.push(line),
                _ => {}
            }
        }
        kept
    })
}

/// Later CONFIG fields win; fields a later frame omits are kept.
pub fn merge_config(old: ServerConfig, new: ServerConfig) -> ServerConfig {
    ServerConfig {
        replica_id: new.replica_id.or(old.replica_id),
        replica_path: new.replica_path.or(old.replica_path),
        committed_version_id: new.committed_version_id.or(old.committed_version_id),
        new_pull_key: new.new_pull_key.or(old.new_pull_key),
        new_push_key: new.new_push_key.or(old.new_push_key),
        // The two hashes of one version go together.
        version_xxh3: if new.version_hash.is_some() {
            new.version_xxh3
        } else {
            old.version_xxh3
        },
        version_hash: new.version_hash.or(old.version_hash),
    }
}
