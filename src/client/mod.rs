//! The remote half of the client: PUSH, PULL and SUBSCRIBE over websockets.
//!
//! [`run`] builds a tokio runtime and hands the resolved [`Settings`] over
//! to [`push`], [`pull`] or [`subscribe`]. What they share lives here: the
//! server URL, the upgrade request with its headers (shared/PROTOCOL.md
//! section 2),  and the result report
//! (summary line or `--json`). Connecting and its typed error are in
//! [`connect`], the sync's typed error in [`error`], what a command asks
//! for in [`target`], the settings in [`settings`], and the files kept
//! between runs (defaults.toml, local-secrets.toml, `-sqlrsync`) in
//! [`files`]; `--versions` (one HTTP request, not a sync) is [`versions`].

pub mod apply;
pub mod commit_gate;
pub mod connect;
pub mod error;
pub mod files;
pub mod follow;
pub mod guard;
pub mod http_get;
pub mod keys;
pub mod matched;
pub mod page_cache;
pub mod pull;
pub mod pull_delta;
pub mod push;
pub mod settings;
pub mod subscribe;
pub mod target;
pub mod unchanged;
pub mod verdict;
pub mod versions;
pub mod write_behind;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::sync::watch;

pub use connect::{ConnectError, Connected, Socket, connect, frame_offer};
pub use error::SyncError;
pub use settings::Settings;
pub use target::{Form, Mode, RemoteRef};
pub use verdict::{Failed, Failure, verdict};

use crate::link::Stats;
use crate::ui::progress::Progress;
use crate::ui::{Printer, human_bytes};
use crate::wire::headers;
use files::DefaultsFile;

/// sqlite3_rsync protocol for remote modes: fewest bytes on the wire.
pub const REMOTE_DEFAULT_PROTOCOL: u8 = 2;

/// Exit status after Ctrl-C (128 + SIGINT), as shells expect.
const EXIT_INTERRUPTED: u8 = 130;

/// Default of `--idle-timeout`: a live server is never silent this long
/// (ours pings every 5 s while it works). Pongs answering our own pings do
/// not count: a websocket library sends them even for a stuck server.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a PUSH or PULL mode with settings already checked against it.
pub fn run(s: &Settings, mode: Mode) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let interrupt = interrupt_watch();
        match mode {
            Mode::Push { local, remote } => push::run(s, &local, remote.as_ref(), interrupt).await,
            Mode::Pull { remote, local } if s.versions => versions::run(s, &remote, &local).await,
            Mode::Pull { remote, local } if s.subscribe => {
                subscribe::run(s, &remote, &local, interrupt).await
            }
            Mode::Pull { remote, local } => pull::run(s, &remote, &local, interrupt).await,
            Mode::Local { .. } => bail!("LOCAL mode does not use the server"),
        }
    })
}

/// A watch that turns true on Ctrl-C (and SIGTERM), so a sync can stop at
/// a safe point instead of dying mid-write.
pub fn interrupt_watch() -> watch::Receiver<bool> {
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
pub fn client_id(s: &Settings) -> anyhow::Result<String> {
    DefaultsFile::ensure_ws_id(s.files.config_dir()?)
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

/// Offers the server large frames unless the settings say not to.
pub fn offer_frames(s: &Settings, hdrs: &mut Vec<(&'static str, String)>) {
    if s.large_frames {
        hdrs.push(frame_offer());
    }
}

/// Adds the offer of delta syncs ([`crate::wire::delta`]) unless turned off.
pub fn offer_delta(s: &Settings, hdrs: &mut Vec<(&'static str, String)>) {
    if s.deltas {
        hdrs.push((
            crate::wire::headers::DELTA,
            crate::wire::headers::DELTA_V1.to_string(),
        ));
    }
}

/// How our frames to this server are cut: large only when it answered our
/// offer (see [`crate::wire::framing`]).
pub fn framing_for(c: &Connected) -> crate::link::Framing {
    crate::link::Framing::for_peer(c.max_frame)
}

/// Helper arguments shared by both sides.
pub fn protocol_args(s: &Settings) -> Vec<std::ffi::OsString> {
    let mut a: Vec<std::ffi::OsString> = vec!["--protocol".into(), s.protocol.to_string().into()];
    if s.wal_only {
        a.push("--wal-only".into());
    }
    a
}

/// With `-v`: where the helper of this sync ran from (the cache, a private
/// temp dir or an in-memory file; see `helper::prepared`).
pub fn say_where_helper_ran(printer: &Printer) {
    if printer.verbose > 0
        && let Ok(h) = crate::helper::prepared()
    {
        printer.verbose(&format!("sqlrsync: {}", h.note));
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
    /// Data frames sent and received, and the largest binary one each way.
    pub frames: [u64; 2],
    pub largest_frame: [u64; 2],
    pub seconds: f64,
    /// Seconds spent hashing the pulled file to verify it (part of `seconds`).
    pub verify_seconds: f64,
    /// Some(true) when checked against versionHash; None when the server
    /// sent none (or on a push).
    pub verified: Option<bool>,
    /// A push that found the server's latest version equal to the local
    /// database and sent nothing (see unchanged.rs).
    pub unchanged: bool,
    /// The sync was a delta (SERVER.md "Extensions", [`pull_delta`] and
    /// the push's): only changed pages travelled, without the helper.
    pub delta: bool,
    /// The server's `MESSAGE=` texts as they were shown on stderr: control
    /// characters as visible escapes, each cut at 4 KiB, at most 64 of
    /// them and 64 KiB in all (`crate::wire::ShownMessages`).
    pub messages: Vec<String>,
    /// Messages past those bounds, counted only.
    pub messages_not_shown: u64,
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
            frames: [Stats::get(&stats.frames_out), Stats::get(&stats.frames_in)],
            largest_frame: [
                Stats::get(&stats.largest_out),
                Stats::get(&stats.largest_in),
            ],
            seconds: started.elapsed().as_secs_f64(),
            verify_seconds: 0.0,
            verified: None,
            unchanged: false,
            delta: false,
            messages: Vec::new(),
            messages_not_shown: 0,
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

    /// The `--json` object of this sync.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
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
            "framesSent": self.frames[0],
            "framesReceived": self.frames[1],
            "largestFrameSent": self.largest_frame[0],
            "largestFrameReceived": self.largest_frame[1],
            "speedup": (self.speedup() * 100.0).round() / 100.0,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
            "verifySeconds": (self.verify_seconds * 1000.0).round() / 1000.0,
            "verified": self.verified,
            "unchanged": self.unchanged,
            "delta": self.delta,
            "messages": self.messages,
            // When the sync ended: what tells one sync of a watch
            // (one line each) from the next.
            "at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "messagesNotShown": self.messages_not_shown,
        })
    }

    pub fn print(&self, printer: &Printer) {
        if printer.json {
            printer.json(&self.json());
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
        let how = if self.delta { " as a delta" } else { "" };
        printer.note(&format!(
            "{} {arrow}: {version}, {} of {} pages sent{how}, {} on the wire, {speedup}, {:.1}s{verified}",
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

/// The last lines of a `--dry` report, the same for push and pull: what
/// would be written next to the database.
fn print_dry_writes(printer: &Printer, dash: &std::path::Path, key_request: bool) {
    if key_request {
        printer.stdout(&format!(
            "writes:     {} when the server issues a pull key",
            dash.display()
        ));
    } else {
        printer.stdout(&format!(
            "writes:     nothing new next to the database ({} exists)",
            dash.display()
        ));
    }
    printer.stdout("dry run:    nothing was sent and nothing was written");
}

/// Exit code for a finished command: 130 after Ctrl-C.
pub fn interrupted_exit() -> ExitCode {
    ExitCode::from(EXIT_INTERRUPTED)
}

/// Observer + stats for one sync.
pub fn observer(printer: Printer) -> (crate::link::DriveCtx, Arc<Progress>) {
    let progress = Arc::new(Progress::new(printer));
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
