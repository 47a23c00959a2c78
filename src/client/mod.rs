//! The remote half of the client: PUSH, PULL and SUBSCRIBE over websockets.
//!
//! [`run`] checks the flags against the mode, builds a tokio runtime and
//! hands over to [`push`], [`pull`] or [`subscribe`]. What they share lives
//! here: the server URL, the upgrade request with its headers
//! (shared/PROTOCOL.md section 2), connecting with one clear line for each
//! way it can fail, the verdict over a linked sync ([`SyncError`]), and the result report
//! (summary line or `--json`).

pub mod apply;
pub mod commit_gate;
pub mod keys;
pub mod progress;
pub mod pull;
pub mod push;
pub mod subscribe;
pub mod unchanged;
pub mod write_behind;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::cli::{Cli, Mode};
use crate::config::{self, DefaultsFile};
use crate::link::{Outcome, PeerEnd, Stats};
use crate::printer::{Printer, human_bytes};
use crate::wire::{MAX_COMMIT_MESSAGE, headers};

/// sqlite3_rsync protocol for remote modes: fewest bytes on the wire.
pub const REMOTE_DEFAULT_PROTOCOL: u8 = 2;

/// Longest wait for the TCP connection and the websocket upgrade (or the
/// idle timeout, when that is shorter).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Default of `--idle-timeout`: a live server is never silent this long
/// (ours pings every 5 s while it works). Pongs answering our own pings do
/// not count: a websocket library sends them even for a stuck server.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the server may stay completely silent before a sync gives up:
/// `--idle-timeout` (or `SQLRSYNC_IDLE_TIMEOUT`), else `SQLRSYNC_TIMEOUT`,
/// else the default.
pub fn idle_timeout(cli: &Cli) -> Duration {
    cli.idle_timeout
        .or_else(|| {
            std::env::var("SQLRSYNC_TIMEOUT")
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .filter(|s| *s > 0)
        })
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_IDLE_TIMEOUT)
}

/// Largest websocket message accepted from a server: far above any frame a
/// server sends, far below what would threaten the memory bound.
const MAX_INCOMING_MESSAGE: usize = 4 * 1024 * 1024;

/// The websocket type every connection uses.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Exit status after Ctrl-C (128 + SIGINT), as shells expect.
const EXIT_INTERRUPTED: u8 = 130;

/// Runs a PUSH or PULL mode.
pub fn run(cli: &Cli, mode: Mode) -> anyhow::Result<ExitCode> {
    check_flags(cli, &mode)?;
    let printer = Printer {
        quiet: cli.quiet,
        json: cli.json,
        verbose: cli.verbose,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let interrupt = interrupt_watch();
        match mode {
            Mode::Push { local, remote } => {
                push::run(cli, printer, &local, remote.as_ref(), interrupt).await
            }
            Mode::Pull { remote, local } if cli.subscribe => {
                subscribe::run(cli, printer, &remote, &local, interrupt).await
            }
            Mode::Pull { remote, local } => {
                pull::run(cli, printer, &remote, &local, interrupt).await
            }
            Mode::Local { .. } => bail!("LOCAL mode does not use the server"),
        }
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
    match mode {
        Mode::Push { .. } => {
            if cli.subscribe {
                refuse(
                    "--subscribe",
                    "follows a replica on a PULL; it cannot be used with a push",
                )?;
            }
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
        }
        Mode::Local { .. } => {}
    }
    if cli.exe.is_some() || cli.ssh.is_some() || cli.port.is_some() {
        bail!("--exe, --ssh and -p are for the USER@HOST:PATH forms, not for the server");
    }
    Ok(())
}

/// A watch that turns true on Ctrl-C (and SIGTERM), so a sync can stop at
/// a safe point instead of dying mid-write.
fn interrupt_watch() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).ok();
            let term_fut = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term_fut => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

/// The server URL: flag over stored setting over defaults.toml over the
/// built-in default; `http(s)://` is accepted as `ws(s)://`.
pub fn resolve_server(
    flag: Option<&str>,
    stored: Option<&str>,
) -> anyhow::Result<(String, &'static str)> {
    let (raw, from) = if let Some(f) = flag {
        (f.to_string(), "--server flag")
    } else if let Some(s) = stored {
        (s.to_string(), "stored with this database")
    } else {
        let dir = config::config_dir()?;
        match DefaultsFile::load(&dir)?.defaults.server {
            Some(s) if !s.trim().is_empty() => (s, "defaults.toml"),
            _ => (config::DEFAULT_SERVER.to_string(), "built-in default"),
        }
    };
    Ok((normalize_server(&raw)?, from))
}

/// `ws://host[:port][/prefix]` without a trailing slash.
pub fn normalize_server(raw: &str) -> anyhow::Result<String> {
    let s = raw.trim().trim_end_matches('/');
    let s = if let Some(rest) = s.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = s.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        s.to_string()
    };
    let Some(rest) = s.strip_prefix("wss://").or_else(|| s.strip_prefix("ws://")) else {
        bail!("server URL {raw:?} must start with ws:// or wss://");
    };
    if rest.is_empty()
        || rest.starts_with('/')
        || rest.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        bail!("server URL {raw:?} has no valid host");
    }
    Ok(s)
}

/// Same server, whatever the trailing slash or http/ws spelling.
pub fn same_server(a: &str, b: &str) -> bool {
    match (normalize_server(a), normalize_server(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `server/sapi/<endpoint>/<remote path>` with each path part percent-encoded.
pub fn endpoint_url(server: &str, endpoint: &str, remote_path: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const PART: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    let parts: Vec<String> = remote_path
        .split('/')
        .filter(|p| !p.is_empty())
        .map(|p| utf8_percent_encode(p, PART).to_string())
        .collect();
    format!("{server}/sapi/{endpoint}/{}", parts.join("/"))
}

/// This install's `X-ClientID`, created in defaults.toml on first use.
pub fn client_id() -> anyhow::Result<String> {
    DefaultsFile::ensure_ws_id(&config::config_dir()?)
}

/// Opens the websocket with `headers`. Every failure is one line: the
/// server unreachable, TLS refused, or the upgrade refused with its HTTP
/// status and body.
pub async fn connect(
    url: &str,
    hdrs: &[(&'static str, String)],
    idle: Duration,
) -> anyhow::Result<Socket> {
    let mut req = url
        .into_client_request()
        .with_context(|| format!("invalid server URL {url}"))?;
    for (name, value) in hdrs {
        let v = HeaderValue::from_bytes(value.as_bytes())
            .map_err(|_| anyhow::anyhow!("the value of {name} cannot be sent in an HTTP header"))?;
        req.headers_mut().insert(*name, v);
    }
    let mut cfg = WebSocketConfig::default();
    cfg.max_message_size = Some(MAX_INCOMING_MESSAGE);
    cfg.max_frame_size = Some(MAX_INCOMING_MESSAGE);
    cfg.read_buffer_size = 128 * 1024;
    cfg.write_buffer_size = 0;
    let host = host_of(url);
    let attempt = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true);
    let wait = CONNECT_TIMEOUT.min(idle);
    let (ws, _resp) = match tokio::time::timeout(wait, attempt).await {
        Err(_) => bail!(
            "cannot reach the server {host}: no answer within {}s",
            wait.as_secs_f64()
        ),
        Ok(Err(e)) => return Err(describe_connect_error(&host, e)),
        Ok(Ok(x)) => x,
    };
    Ok(ws)
}

fn host_of(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn describe_connect_error(host: &str, e: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Http(resp) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_ref()
                .map(|b| crate::cli::one_line(&String::from_utf8_lossy(b)))
                .unwrap_or_default();
            let body: String = body.chars().take(300).collect();
            let reason = status.canonical_reason().unwrap_or("");
            if body.is_empty() {
                anyhow::anyhow!("server refused: HTTP {} {reason}", status.as_u16())
            } else {
                anyhow::anyhow!("server refused: HTTP {} {reason}: {body}", status.as_u16())
            }
        }
        E::Io(io) if io.to_string().contains("certificate") => anyhow::anyhow!(
            "TLS with {host} failed: {io} (a private CA can be trusted with SSL_CERT_FILE=ca.pem)"
        ),
        E::Io(io) => anyhow::anyhow!("cannot reach the server {host}: {io}"),
        E::Tls(t) => anyhow::anyhow!("TLS with {host} failed: {t}"),
        E::Protocol(tokio_tungstenite::tungstenite::error::ProtocolError::HandshakeIncomplete) => {
            anyhow::anyhow!(
                "cannot reach the server {host}: it closed the connection without answering"
            )
        }
        E::Protocol(tokio_tungstenite::tungstenite::error::ProtocolError::HttparseError(e)) => {
            anyhow::anyhow!(
                "websocket handshake with {host} failed: the answer is not HTTP ({e}); is this an SQLRsync server?"
            )
        }
        other => anyhow::anyhow!("websocket handshake with {host} failed: {other}"),
    }
}

/// Headers common to every endpoint.
pub fn base_headers(
    key: Option<&str>,
    client_id: &str,
    replica_id: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (
            headers::CLIENT_VERSION,
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        (headers::CLIENT_ID, client_id.to_string()),
    ];
    if let Some(k) = key {
        h.push((headers::AUTHORIZATION, k.to_string()));
    }
    if let Some(id) = replica_id.filter(|s| !s.is_empty()) {
        h.push((headers::REPLICA_ID, id.to_string()));
    }
    h
}

/// Helper arguments shared by both sides.
pub fn protocol_args(cli: &Cli) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec![
        "--protocol".into(),
        cli.protocol
            .unwrap_or(REMOTE_DEFAULT_PROTOCOL)
            .to_string()
            .into(),
    ];
    if cli.wal_only {
        a.push("--wal-only".into());
    }
    a
}

/// Why a linked sync failed, as the user reads it: the cause, then what it
/// means for their data ("no new version was created" on a push, "the
/// local database is unchanged" on a pull).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.line())]
pub struct SyncError {
    pub failure: Failure,
    /// A push (our side is the ORIGIN).
    pub pushing: bool,
}

/// The cause of a [`SyncError`].
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
    /// The whole push went out, then the connection broke: it may have
    /// been stored (so no "no new version was created").
    #[error(
        "{0} after the whole database was sent, before the server confirmed the push; \
         it may or may not have been stored as a new version (push again: an unchanged \
         push says which version is the latest)"
    )]
    MaybeStored(String),
}

impl SyncError {
    fn line(&self) -> String {
        if let Failure::MaybeStored(_) = self.failure {
            return self.failure.to_string();
        }
        let unchanged = if self.pushing {
            "no new version was created"
        } else {
            "the local database is unchanged"
        };
        format!("{}; {unchanged}", self.failure)
    }

    /// Worth trying again (a subscription): connection trouble, not a
    /// refusal, an abort, a failed verification or a helper's error.
    pub fn retryable(&self) -> bool {
        match &self.failure {
            Failure::Aborted(_) | Failure::Stream { .. } => false,
            // A version that does not match its hash, not a disk error
            // while checking it.
            Failure::Refused(why) => !why.starts_with("VERIFICATION FAILED"),
            _ => true,
        }
    }
}

/// Turns a linked sync into success or a [`SyncError`]. `pushing` picks
/// which side is ours.
pub fn verdict(o: &Outcome, pushing: bool) -> Result<(), SyncError> {
    judge(o, pushing).map_err(|failure| SyncError { failure, pushing })
}

fn judge(o: &Outcome, pushing: bool) -> Result<(), Failure> {
    if o.interrupted {
        return Err(Failure::Interrupted);
    }
    match &o.end {
        PeerEnd::Refused(why) => return Err(Failure::Refused(why.clone())),
        // Say what it means for the user's data, as every other failure does.
        PeerEnd::Aborted(reason) => return Err(Failure::Aborted(crate::cli::one_line(reason))),
        // The cause; whatever the helper said after its input was cut is
        // only a consequence.
        PeerEnd::Protocol(p) => return Err(Failure::Protocol(p.clone())),
        _ => {}
    }
    let errs: Vec<String> = o
        .origin
        .errors
        .iter()
        .chain(o.replica.errors.iter())
        .map(|e| crate::cli::one_line(e))
        .collect();
    if !errs.is_empty() {
        let side = if o.origin.errors.is_empty() {
            "replica"
        } else {
            "origin"
        };
        return Err(Failure::Stream {
            side,
            errors: errs.join("; "),
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
            format!(": {}", crate::cli::one_line(&o.helper_stderr.join("\n")))
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

fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "unknown status".into(),
    }
}

/// The numbers of one finished sync, for the summary line and `--json`.
#[derive(Debug, Clone)]
pub struct Report {
    pub mode: &'static str,
    pub local: String,
    pub remote: String,
    pub server: String,
    pub version: Option<String>,
    pub pages_sent: u64,
    pub page_count: u64,
    pub page_size: u64,
    pub wire_sent: u64,
    pub wire_received: u64,
    pub stream_bytes: u64,
    /// Wire bytes of the server's text frames (CONFIG, MESSAGE).
    pub text_bytes: u64,
    pub seconds: f64,
    /// Seconds spent hashing the pulled file to verify it (part of `seconds`).
    pub verify_seconds: f64,
    /// Some(true) when checked against versionHash; None when the server
    /// sent none (or on a push).
    pub verified: Option<bool>,
    /// A push that found the server's latest version equal to the local
    /// database and sent nothing (see unchanged.rs).
    pub unchanged: bool,
    pub messages: Vec<String>,
}

impl Report {
    pub fn new(mode: &'static str, stats: &Stats, started: Instant) -> Report {
        Report {
            mode,
            local: String::new(),
            remote: String::new(),
            server: String::new(),
            version: None,
            pages_sent: Stats::get(&stats.pages),
            page_count: Stats::get(&stats.page_count),
            page_size: Stats::get(&stats.page_size),
            wire_sent: Stats::get(&stats.wire_out),
            wire_received: Stats::get(&stats.wire_in),
            stream_bytes: Stats::get(&stats.stream_out) + Stats::get(&stats.stream_in),
            text_bytes: Stats::get(&stats.text_in),
            seconds: started.elapsed().as_secs_f64(),
            verify_seconds: 0.0,
            verified: None,
            unchanged: false,
            messages: Vec::new(),
        }
    }

    pub fn wire_bytes(&self) -> u64 {
        self.wire_sent + self.wire_received
    }

    /// Database bytes over bytes on the wire.
    pub fn speedup(&self) -> f64 {
        let full = (self.page_count * self.page_size) as f64;
        if self.wire_bytes() == 0 {
            return 0.0;
        }
        full / self.wire_bytes() as f64
    }

    pub fn print(&self, printer: &Printer) {
        if printer.json {
            let v = serde_json::json!({
                "mode": self.mode,
                "local": self.local,
                "remote": self.remote,
                "server": self.server,
                "version": self.version,
                "pagesSent": self.pages_sent,
                "pageCount": self.page_count,
                "pageSize": self.page_size,
                "bytesOnWire": self.wire_bytes(),
                "bytesSent": self.wire_sent,
                "bytesReceived": self.wire_received,
                "streamBytes": self.stream_bytes,
                "textBytes": self.text_bytes,
                "speedup": (self.speedup() * 100.0).round() / 100.0,
                "seconds": (self.seconds * 1000.0).round() / 1000.0,
                "verifySeconds": (self.verify_seconds * 1000.0).round() / 1000.0,
                "verified": self.verified,
                "unchanged": self.unchanged,
                "messages": self.messages,
            });
            println!("{v}");
            return;
        }
        let version = self
            .version
            .as_deref()
            .map(|v| format!("version {v}"))
            .unwrap_or_else(|| "no new version".into());
        let arrow = if self.mode == "PUSH" {
            format!("{} -> {}", self.local, self.remote)
        } else {
            format!("{} -> {}", self.remote, self.local)
        };
        let verified = match self.verified {
            Some(true) => ", verified",
            _ => "",
        };
        // "12.3x less than a full copy" says something only when it is more
        // than one; a first copy is simply a full copy.
        let speedup = match self.speedup() {
            s if s >= 1.1 => format!("{s:.1}x less than a full copy"),
            _ => "a full copy".to_string(),
        };
        if self.unchanged {
            printer.note(&format!(
                "{} {arrow}: {version} unchanged, no pages sent, {} on the wire, {:.1}s",
                self.mode,
                human_bytes(self.wire_bytes()),
                self.seconds,
            ));
            return;
        }
        printer.note(&format!(
            "{} {arrow}: {version}, {} of {} pages sent, {} on the wire, {speedup}, {:.1}s{verified}",
            self.mode,
            self.pages_sent,
            self.page_count,
            human_bytes(self.wire_bytes()),
            self.seconds,
        ));
        printer.verbose(&format!(
            "  bytes on the wire {} (sent {}, received {}), sqlite3_rsync stream {} ({:.4}x), server {}",
            self.wire_bytes(),
            self.wire_sent,
            self.wire_received,
            self.stream_bytes,
            if self.stream_bytes > 0 { self.wire_bytes() as f64 / self.stream_bytes as f64 } else { 0.0 },
            self.server
        ));
    }
}

pub use crate::link::wait_true;

/// Exit code for a finished command: 130 after Ctrl-C.
/// The last lines of a `--dry` report, the same for push and pull: what
/// would be written next to the database.
fn print_dry_writes(dash: &std::path::Path, key_request: bool) {
    if key_request {
        println!(
            "writes:     {} when the server issues a pull key",
            dash.display()
        );
    } else {
        println!(
            "writes:     nothing new next to the database ({} exists)",
            dash.display()
        );
    }
    println!("dry run:    nothing was sent and nothing was written");
}

pub fn interrupted_exit() -> ExitCode {
    ExitCode::from(EXIT_INTERRUPTED)
}

/// The link's counters and the progress display for one sync.
pub fn observer(printer: Printer) -> (crate::link::DriveCtx, Arc<progress::Progress>) {
    let progress = Arc::new(progress::Progress::new(printer));
    let ctx = crate::link::DriveCtx {
        stats: Arc::new(Stats::default()),
        observer: Some(progress.clone()),
    };
    (ctx, progress)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        assert_eq!(
            normalize_server("ws://127.0.0.1:8462/").unwrap(),
            "ws://127.0.0.1:8462"
        );
        assert_eq!(normalize_server("https://x.org").unwrap(), "wss://x.org");
        assert!(normalize_server("ftp://x").is_err());
        assert!(normalize_server("ws://").is_err());
        assert!(same_server("ws://a:1/", "http://a:1"));
        assert_eq!(
            endpoint_url("ws://h", "pull", "ns/my db/a.db"),
            "ws://h/sapi/pull/ns/my%20db/a.db"
        );
        assert_eq!(endpoint_url("ws://h", "push", ""), "ws://h/sapi/push/");
    }
}
