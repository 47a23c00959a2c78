//! A delta push ([`crate::wire::delta`]): only the pages that changed since
//! the version this database last matched, found by one read of the
//! database against its page cache ([`crate::client::page_cache`]), sent
//! without running the helper.
//!
//! It is tried only on a server that answered the delta offer, when the
//! match record and the page cache name the same version. No CONFIG is
//! asked first: DELTA_BEGIN names that version as the base, and a server
//! whose latest is another refuses it before storing anything; the full
//! push that follows asks, and finds the conflict (or a version that
//! already is this database). The read is one read transaction; the
//! versionXxh3 of what it read goes in DELTA_END, and the server commits
//! only a result that hashes the same, answering DELTA_DONE. The same
//! read settles the unchanged check: a database that still is the version
//! it matched only asks the server whether that is still the latest.

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::{Matched, Plan, Settings, SyncError};
use crate::client::page_cache::{self, PageCache};

/// The close code of a server that refused what a client sent.
const CLOSE_POLICY: u16 = 1008;
use crate::link::frame_len;
use crate::sqlite::pages::{PageDigest, Snapshot};
use crate::wire::delta::{DeltaBegin, DeltaFrame, MAX_DELTA_BYTES, page_frame, xxh3_bytes};
use crate::wire::{ClientControl, MAX_SERVER_TEXT_BYTES, ServerConfig, ServerText, ShownMessages};

/// What the page cache makes of a push.
pub(super) enum Prepared {
    /// The database is the version it last matched (this versionXxh3):
    /// nothing to send if that still is the server's latest.
    Unchanged(String),
    /// Send these pages.
    Delta(DeltaPlan),
    /// No usable cache, or too much changed: a full push.
    Full,
}

/// The pages of a delta and what they make.
pub(super) struct DeltaPlan {
    begin: DeltaBegin,
    snapshot: Snapshot,
    replica_id: String,
}

impl DeltaPlan {
    /// Bytes of its largest frame (a DELTA_PAGE).
    pub(super) fn frame_len(&self) -> usize {
        5 + self.begin.page_size as usize
    }
}

/// Why a delta push did not happen.
pub(super) enum Failed {
    /// The server refused it before committing anything (its ABORT): a
    /// full push may still succeed.
    Refused(String),
    /// Anything else, as for a full push.
    Sync(SyncError),
}

/// Reads the database against its page cache of the version it last
/// matched (`record`; blocking work on a thread of its own).
pub(super) async fn prepare(p: &Plan, record: Option<&Matched>) -> Prepared {
    let Some(r) = record else {
        return Prepared::Full;
    };
    let (Some(rid), Some(version)) = (
        r.replica_id.clone(),
        r.version.as_deref().and_then(|v| v.parse::<u64>().ok()),
    ) else {
        return Prepared::Full;
    };
    if r.pending_hash.is_some() {
        return Prepared::Full;
    }
    let (remote, local) = (p.remote_path.clone(), p.local.clone());
    let read = tokio::task::spawn_blocking(move || {
        let cache = page_cache::load(&remote, &local, &rid).filter(|c| c.version == version)?;
        let snap = crate::sqlite::pages::snapshot(
            &local,
            &cache.digests,
            cache.page_size,
            MAX_DELTA_BYTES,
        )
        .ok()?;
        Some((cache, snap, rid))
    })
    .await;
    let Ok(Some((cache, snapshot, replica_id))) = read else {
        return Prepared::Full;
    };
    if snapshot.page_size != cache.page_size || snapshot.too_big || snapshot.digests.is_empty() {
        return Prepared::Full;
    }
    let xxh3 = snapshot.version_xxh3();
    if xxh3 == cache.xxh3_hex() {
        return Prepared::Unchanged(xxh3);
    }
    Prepared::Delta(DeltaPlan {
        begin: DeltaBegin {
            base_version: version,
            base_xxh3: cache.version_xxh3,
            page_size: snapshot.page_size,
            page_count: snapshot.digests.len() as u32,
        },
        snapshot,
        replica_id,
    })
}

/// Sends the delta on `conn` and waits for the server's verdict; on
/// success the page cache moves to the new version and the record is
/// kept as after any push.
pub(super) async fn send(
    s: &Settings,
    p: &Plan,
    mut conn: crate::client::Connected,
    plan: DeltaPlan,
    interrupt: watch::Receiver<bool>,
    started: Instant,
) -> Result<crate::client::Report, Failed> {
    let want = plan.snapshot.version_xxh3();
    let mut counts = Counts::default();
    let mut stop = interrupt.clone();
    let sent = tokio::select! {
        r = write_all(&mut conn.ws, p, &plan, &want, &mut counts) => r,
        _ = crate::client::wait_true(&mut stop) => Err(interrupted()),
    };
    sent.map_err(Failed::Sync)?;
    let mut stop = interrupt;
    let mut answer = tokio::select! {
        a = read_answer(&mut conn.ws, s.idle_timeout, &mut counts) => a?,
        _ = crate::client::wait_true(&mut stop) => return Err(Failed::Sync(interrupted())),
    };
    // DELTA_DONE names the version only: the replica is the one the
    // delta was built on.
    answer
        .config
        .replica_id
        .get_or_insert_with(|| plan.replica_id.clone());
    if answer.config.version_xxh3.as_deref() != Some(want.as_str()) {
        // "No change" for a delta that changed something, or another hash:
        // the server did not store what was hashed here.
        return Err(Failed::Refused(format!(
            "the server answered version {} for the delta, not the database hashed here",
            answer.config.committed_version_id.as_deref().unwrap_or("?")
        )));
    }
    let remote_path = answer
        .config
        .replica_path
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or(p.remote_path.clone());
    let replica_id = answer.config.replica_id.clone().or(p.replica_id.clone());
    super::keep_keys(s, p, &answer.config, &remote_path, replica_id.as_deref())
        .map_err(|e| Failed::Sync(SyncError::Other(e)))?;
    super::record_match(p, &remote_path, &answer.config, &s.printer);
    keep_cache(&remote_path, p, &answer.config, &plan);
    Ok(report(p, &plan, &answer, &counts, remote_path, started))
}

/// Wire counts of the delta, for the report.
#[derive(Default)]
struct Counts {
    wire_out: u64,
    wire_in: u64,
    text_in: u64,
    frames_out: u64,
    frames_in: u64,
    largest_out: u64,
    stream_out: u64,
}

fn interrupted() -> SyncError {
    SyncError::Interrupted(anyhow::anyhow!(
        "interrupted; the server stores nothing of an unfinished push"
    ))
}

/// COMMITMESSAGE, then DELTA_BEGIN, the pages and DELTA_END, flushed once.
async fn write_all(
    ws: &mut crate::client::Socket,
    p: &Plan,
    plan: &DeltaPlan,
    want: &str,
    counts: &mut Counts,
) -> Result<(), SyncError> {
    let mut frames = Vec::with_capacity(plan.snapshot.changed.len() + 3);
    if let Some(m) = &p.message {
        frames.push(ClientControl::CommitMessage(m.clone()).encode());
    }
    frames.push(DeltaFrame::Begin(plan.begin).encode());
    let end = xxh3_bytes(want).expect("a versionXxh3 of ours is 32 hex digits");
    for (pgno, data) in &plan.snapshot.changed {
        frames.push(page_frame(*pgno, data));
    }
    frames.push(DeltaFrame::End { version_xxh3: end }.encode());
    for f in frames {
        counts.wire_out += frame_len(f.len(), true);
        counts.frames_out += 1;
        counts.largest_out = counts.largest_out.max(f.len() as u64);
        counts.stream_out += f.len() as u64;
        ws.feed(WsMessage::Binary(f.into()))
            .await
            .map_err(|e| SyncError::Other(anyhow::anyhow!("sending the delta: {e}")))?;
    }
    ws.flush()
        .await
        .map_err(|e| SyncError::Other(anyhow::anyhow!("sending the delta: {e}")))
}

/// What the server said after the delta.
struct Answer {
    config: ServerConfig,
    messages: ShownMessages,
}

/// The server's texts until it closes: its CONFIG names the new version;
/// an ABORT refuses the delta.
async fn read_answer(
    ws: &mut crate::client::Socket,
    idle: std::time::Duration,
    counts: &mut Counts,
) -> Result<Answer, Failed> {
    let lost = |why: String| Failed::Sync(SyncError::Other(anyhow::anyhow!(why)));
    let mut config: Option<ServerConfig> = None;
    let mut messages = ShownMessages::default();
    loop {
        let next = tokio::time::timeout(idle, ws.next())
            .await
            .map_err(|_| lost("no answer from the server after the delta".into()))?;
        let text = match next {
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(_))) | None => break,
            Some(Ok(WsMessage::Binary(b))) => {
                counts.frames_in += 1;
                counts.wire_in += frame_len(b.len(), false);
                match DeltaFrame::parse(&b) {
                    Ok(DeltaFrame::Done {
                        version,
                        version_xxh3,
                        version_hash,
                    }) => {
                        config = Some(ServerConfig {
                            committed_version_id: Some(version.to_string()),
                            version_xxh3: Some(hex::encode(version_xxh3)),
                            version_hash: Some(hex::encode(version_hash)),
                            ..ServerConfig::default()
                        });
                        continue;
                    }
                    _ => return Err(lost("the server sent data after the delta".into())),
                }
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(lost(format!("connection lost after the delta: {e}"))),
        };
        counts.frames_in += 1;
        counts.wire_in += frame_len(text.len(), false);
        counts.text_in += frame_len(text.len(), false);
        if counts.text_in > MAX_SERVER_TEXT_BYTES {
            return Err(lost("the server sent too much text".into()));
        }
        match ServerText::parse(&text) {
            Ok(ServerText::Config(c)) if c.check().is_ok() => config = Some(c),
            Ok(ServerText::Config(_)) => return Err(lost("the server sent a bad CONFIG".into())),
            Ok(ServerText::Message(m)) => {
                messages.take(&m);
            }
            Ok(ServerText::Abort(r)) => {
                let code = close_code(ws, idle).await;
                let why = crate::wire::shown_text(&r);
                // 1008: the server refused what we sent (a stale cache, a
                // base that moved); a full push may succeed. Anything else
                // (a full disk, a shutdown) a full push would meet too.
                if code == Some(CLOSE_POLICY) {
                    return Err(Failed::Refused(why));
                }
                return Err(Failed::Sync(SyncError::Aborted(anyhow::anyhow!(
                    "the server aborted: {why}; no new version was created"
                ))));
            }
            Err(e) => return Err(lost(e)),
        }
    }
    match config {
        Some(config) if config.committed_version_id.is_some() => Ok(Answer { config, messages }),
        _ => Err(lost(
            "the server closed without confirming the delta; nothing was stored".into(),
        )),
    }
}

/// The close code that follows an ABORT (none if the socket just ends).
async fn close_code(ws: &mut crate::client::Socket, idle: std::time::Duration) -> Option<u16> {
    let wait = async {
        while let Some(m) = ws.next().await {
            match m {
                Ok(WsMessage::Close(c)) => return c.map(|c| u16::from(c.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    };
    tokio::time::timeout(idle, wait).await.ok().flatten()
}

/// The page cache now holds the new version (a failure only costs the next
/// push a full sync).
fn keep_cache(remote_path: &str, p: &Plan, cfg: &ServerConfig, plan: &DeltaPlan) {
    let version = cfg
        .committed_version_id
        .as_deref()
        .and_then(|v| v.parse().ok());
    let (Some(version), Some(x)) = (version, cfg.version_xxh3.as_deref()) else {
        return;
    };
    let digests: Vec<PageDigest> = plan.snapshot.digests.clone();
    match PageCache::checked(&plan.replica_id, version, x, plan.begin.page_size, digests) {
        Some(entry) => {
            let _ = page_cache::save(remote_path, &p.local, &entry);
        }
        None => page_cache::forget(remote_path, &p.local),
    }
}

fn report(
    p: &Plan,
    plan: &DeltaPlan,
    answer: &Answer,
    c: &Counts,
    remote_path: String,
    started: Instant,
) -> crate::client::Report {
    let stats = crate::link::Stats::default();
    let mut r = crate::client::Report::new("PUSH", &stats, started);
    r.local = p.local.display().to_string();
    r.remote = remote_path;
    r.server = p.server.clone();
    r.version = answer.config.committed_version_id.clone();
    r.pages_sent = plan.snapshot.changed.len() as u64;
    r.page_count = plan.begin.page_count as u64;
    r.page_size = plan.begin.page_size as u64;
    r.wire_sent = c.wire_out;
    r.wire_received = c.wire_in;
    r.stream_bytes = c.stream_out;
    r.text_bytes = c.text_in;
    r.frames = [c.frames_out, c.frames_in];
    r.largest_frame = [c.largest_out, 0];
    r.messages = answer.messages.kept.clone();
    r.messages_not_shown = answer.messages.not_shown;
    r.delta = true;
    r
}

/// After a full push to a server that takes deltas: the page cache of the
/// version it committed, so the next push can be a delta. One read of the
/// database; kept only if it hashes to the server's versionXxh3 (nothing
/// changed the database since the push).
pub(super) async fn remember(p: &Plan, remote_path: &str, cfg: &ServerConfig) {
    let (Some(rid), Some(version), Some(x)) = (
        cfg.replica_id.clone(),
        cfg.committed_version_id
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok()),
        cfg.version_xxh3.clone(),
    ) else {
        return;
    };
    let (remote, local) = (remote_path.to_string(), p.local.clone());
    let _ = tokio::task::spawn_blocking(move || {
        let snap = crate::sqlite::pages::snapshot(&local, &[], 0, 0).ok()?;
        match PageCache::checked(&rid, version, &x, snap.page_size, snap.digests) {
            Some(entry) => page_cache::save(&remote, &local, &entry).ok(),
            None => {
                page_cache::forget(&remote, &local);
                None
            }
        }
    })
    .await;
}
