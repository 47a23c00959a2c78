//! `/sapi/push/<path>`: a client's ORIGIN against our REPLICA, making a new
//! version.
//!
//! Admission ([`super::admission::admit_push`]) checks the key, names the
//! replica and creates it at the upgrade. The session then takes the replica's
//! push lock, judges the client's frames with [`PushFrames`] (which finds
//! message boundaries, so control frames can be told apart, applies the
//! stream limits, and records the pages sent and the final size), starts
//! the helper `--replica` on a staging copy of the latest version once
//! ORIGIN_BEGIN has told the page size, and links the two. A version is
//! committed only when the origin's stream ended cleanly (ORIGIN_TXN,
//! ORIGIN_END, no ORIGIN_ERROR), the helper's own stream carried no
//! REPLICA_ERROR, the helper exited, and every page of the result was
//! either sent or already in the previous version. Keys issued on
//! KEYREQUEST are stored in the same transaction as the version.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Uri};
use axum::response::{IntoResponse, Response};
use tokio::io::AsyncWriteExt;

use super::admission;
use super::app::AppState;
use super::frames::{Frame as FrameIn, PushAction, PushFrames};
use super::keys::{KeyKind, KeyRecord, MintedOn, PendingKey};
use super::metrics::Kind;
use super::session::{
    Abort, CLOSE_NORMAL, Session, config_text, recv, send_out, spawn_helper, split_file,
};
use super::store::{CommitOutcome, Pushed, ReplicaRow, ReplicaState, VersionRow};
use crate::helper::{Helper, HelperCommand};
use crate::link::{Controls, Frame, Framing, Out, OutTx, PumpCtx, PumpEnd, PumpError, Stats, pump};
use crate::wire::{ClientControl, Direction, ServerConfig, ServerText, headers};

mod delta;

/// Everything a push session needs, settled at the upgrade.
struct PushContext {
    /// The replica (created by this request if it was new).
    replica: ReplicaRow,
    /// The key that authorised the push.
    key: KeyRecord,
    /// The session permit (connection limit, shutdown wait).
    _permit: super::limits::Permit,
    /// How our frames to this client are cut.
    framing: Framing,
    /// The client offered a verified push and we answered: commit only a
    /// stream that matches its STREAMDIGEST.
    verified: bool,
    /// The client offered delta pushes and we answered: its stream may be
    /// a delta ([`delta`]).
    delta: bool,
}

pub async fn handler(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers_in: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let admitted = st
        .key_throttle
        .admit(peer.ip(), &headers_in, || {
            admission::admit_push(&st, &uri, &headers_in, peer)
        })
        .await;
    let ctx = match admitted {
        Ok(p) => PushContext {
            replica: p.replica,
            key: p.key,
            _permit: p.permit,
            framing: st.config.framing_for(&headers_in),
            verified: wants_digest(&headers_in),
            delta: wants_delta(&headers_in),
        },
        Err(r) => {
            super::metrics::refused(&st, Kind::Push, uri.path());
            return r.into_response();
        }
    };
    let config = st.config.clone();
    let mut resp = super::session::bounded_upgrade(ws, st.config.max_frame)
        .on_upgrade(move |socket| session(socket, st, ctx));
    config.answer_offer(&headers_in, &mut resp);
    if wants_digest(&headers_in) {
        resp.headers_mut().insert(
            headers::STREAM_DIGEST,
            axum::http::HeaderValue::from_static(headers::STREAM_DIGEST_XXH3),
        );
    }
    if wants_delta(&headers_in) {
        resp.headers_mut().insert(
            headers::DELTA,
            axum::http::HeaderValue::from_static(headers::DELTA_V1),
        );
    }
    resp
}

/// The client offered delta pushes of the one format we take.
fn wants_delta(h: &HeaderMap) -> bool {
    h.get(headers::DELTA)
        .is_some_and(|v| v.as_bytes() == headers::DELTA_V1.as_bytes())
}

/// The client offered a verified push with a digest we compute.
fn wants_digest(h: &HeaderMap) -> bool {
    h.get(headers::STREAM_DIGEST)
        .is_some_and(|v| v.as_bytes() == headers::STREAM_DIGEST_XXH3.as_bytes())
}

async fn session(socket: WebSocket, st: AppState, ctx: PushContext) {
    let mut link = Session::open(socket, st.config.idle_timeout);
    let out = link.out.clone();
    let path = ctx.replica.path.clone();
    let started = std::time::Instant::now();
    let mut track = st
        .metrics
        .session_started(Kind::Push, &ctx.replica.namespace);
    match run(&mut link, &st, &ctx).await {
        Ok(end) => {
            track.succeeded();
            // Alive, whether it stored anything or not (dead-man notices).
            super::notify::pushed(&st.store, ctx.replica.id);
            match &end {
                PushEnd::Committed(cfg, row) => {
                    tracing::info!(path = %path, version = row.number, changed = row.changed_pages,
                        pages = row.page_count, secs = started.elapsed().as_secs_f64(), "push committed");
                    let text = ServerText::Message(format!(
                        "version {} committed: {} of {} pages changed",
                        row.number, row.changed_pages, row.page_count
                    ));
                    send_out(&out, Out::Text(text.encode())).await;
                    send_out(&out, config_text(cfg.clone())).await;
                }
                PushEnd::NoChange(cfg, latest) => {
                    tracing::info!(path = %path, "push changed nothing");
                    let text = ServerText::Message(format!(
                        "no changes: version {latest} is still the latest; no new version stored"
                    ));
                    send_out(&out, Out::Text(text.encode())).await;
                    send_out(&out, config_text(cfg.clone())).await;
                }
                PushEnd::Delta(cfg, row) => {
                    if let Some(row) = row {
                        tracing::info!(path = %path, version = row.number, changed = row.changed_pages,
                            pages = row.page_count, delta = true,
                            secs = started.elapsed().as_secs_f64(), "push committed");
                    } else {
                        tracing::info!(path = %path, delta = true, "push changed nothing");
                    }
                    match delta::done_frame(cfg) {
                        Some(f) => send_out(&out, Out::binary(f)).await,
                        None => send_out(&out, config_text(cfg.clone())).await,
                    }
                }
                PushEnd::Withdrawn => {
                    tracing::info!(path = %path, "client closed before sending a stream; nothing to do");
                    // As after a failed first push: no empty replica left.
                    let (store, r) = (st.store.clone(), ctx.replica.clone());
                    let _ = tokio::task::spawn_blocking(move || store.forget_if_empty(&r)).await;
                }
            }
            send_out(&out, Out::Close(CLOSE_NORMAL, "done".into())).await;
        }
        Err(abort) => {
            tracing::warn!(path = %path, reason = %abort.reason(), "push aborted; nothing stored");
            // A failed first push must not leave an empty replica behind
            // (it would be listed, and would fix the visibility). Before
            // the ABORT goes out, so the client never sees it still there.
            let (store, r) = (st.store.clone(), ctx.replica.clone());
            match tokio::task::spawn_blocking(move || store.forget_if_empty(&r)).await {
                Ok(Ok(true)) => tracing::info!(path = %path, "removed the empty replica"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(path = %path, error = %format!("{e:#}"), "could not remove the empty replica")
                }
                Err(e) => {
                    tracing::warn!(path = %path, error = %e, "could not remove the empty replica")
                }
            }
            abort.send(&out).await;
        }
    }
    drop(out);
    let (received, sent) = link.finish().await;
    track.bytes(received, sent);
}

enum PushEnd {
    Committed(ServerConfig, VersionRow),
    NoChange(ServerConfig, u64),
    /// A delta push's end (committed when there is a row), answered with
    /// DELTA_DONE rather than texts.
    Delta(ServerConfig, Option<VersionRow>),
    /// The client closed before sending any stream: nothing to do.
    Withdrawn,
}

/// Removes the staging file unless the commit took it.
struct StagingGuard(PathBuf);

impl Drop for StagingGuard {
    fn drop(&mut self) {
        for ext in ["", "-journal", "-wal", "-shm"] {
            let mut p = self.0.as_os_str().to_owned();
            p.push(ext);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
    }
}

/// Takes the replica's push lock, receives the origin's stream into the
/// helper, judges the result and commits it.
async fn run(link: &mut Session, st: &AppState, ctx: &PushContext) -> Result<PushEnd, Abort> {
    let r = &ctx.replica;
    let state = st.store.replica_state(r);
    let mut shutdown = st.shutdown.clone();
    let _push_lock = tokio::select! {
        g = state.push_lock.clone().lock_owned() => g,
        _ = super::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
    };
    // Waiting for another push to this replica is not the client's idling.
    link.activity.touch();
    let latest = state.latest();
    let mut push = Push {
        st,
        ctx,
        out: link.out.clone(),
        state: state.clone(),
        latest,
        keys_issued: KeysIssued::default(),
        frames: PushFrames::new(st.config.stream_limits()),
        helper: None,
        pump: None,
        staging: None,
        base_pages: 0,
    };
    match push.receive(link).await? {
        Received::Withdrawn => return Ok(PushEnd::Withdrawn),
        Received::Delta(begin) => return push.delta(link, begin).await,
        Received::Ended => {}
    }
    if ctx.verified {
        push.check_digest(link).await?;
    }
    let pumped = push.end_helper().await?;
    push.judge(&pumped)?;
    let done = Done {
        final_count: push.frames.summary().txn_page_count.unwrap_or(0),
        sent_pages: push.frames.take_sent_pages(),
        expect_xxh3: None,
    };
    push.commit(done).await
}

/// What a received push amounts to, for the commit.
struct Done {
    /// Pages of the result.
    final_count: u32,
    /// Pages the client sent.
    sent_pages: std::collections::BTreeSet<u32>,
    /// A delta's versionXxh3, which the result must have.
    expect_xxh3: Option<String>,
}

/// How the receiving phase of a push ended.
#[derive(Debug, PartialEq, Eq)]
enum Received {
    /// ORIGIN_END is in.
    Ended,
    /// The client closed before sending any stream.
    Withdrawn,
    /// The client sends a delta instead of a stream, starting so.
    Delta(crate::wire::delta::DeltaBegin),
}

/// One push session's state between the client's frames.
struct Push<'a> {
    st: &'a AppState,
    ctx: &'a PushContext,
    out: OutTx,
    state: std::sync::Arc<ReplicaState>,
    /// The latest version when the push lock was taken.
    latest: Option<std::sync::Arc<super::store::VersionFile>>,
    keys_issued: KeysIssued,
    frames: PushFrames,
    helper: Option<Helper>,
    pump: Option<tokio::task::JoinHandle<PumpEnd>>,
    staging: Option<StagingGuard>,
    /// Pages the staging copy started with (a copy of the latest version).
    base_pages: u32,
}

impl Push<'_> {
    /// The client's frames until ORIGIN_END (or a close before any stream).
    async fn receive(&mut self, link: &mut Session) -> Result<Received, Abort> {
        let st = self.st;
        let mut shutdown = st.shutdown.clone();
        let activity = link.activity.clone();
        let mut first_frame = true;
        loop {
            // The first frame comes at once from a real client (its origin
            // opens the database and speaks); later, the client may wait
            // while our helper hashes, so the clock counts both directions.
            let (wait, why) = if first_frame {
                (
                    st.config.handshake_timeout,
                    "no data from the client after the upgrade",
                )
            } else {
                (
                    st.config.idle_timeout,
                    "no data from the client for too long",
                )
            };
            let frame = tokio::select! {
                biased;
                f = recv(&mut link.rx, &activity) => f,
                _ = super::app::stopped(&mut shutdown) => return Err(Abort::Shutdown),
                res = async { self.pump.as_mut().unwrap().await }, if self.pump.is_some() => {
                    // The helper stopped before the origin finished: it failed.
                    let why = match res {
                        Ok(p) => p.replica.errors.first().cloned().or(stream_error(&p))
                            .unwrap_or_else(|| "the replica side stopped early".into()),
                        Err(e) => format!("replica task failed: {e}"),
                    };
                    return Err(Abort::server(
                        helper_failure(&why, "the server's replica side failed"),
                        why,
                    ));
                }
                _ = activity.idle(wait) => return Err(Abort::Client(why.into())),
            };
            let msg = match frame {
                None => {
                    return Err(Abort::Cut(
                        "connection closed before the push finished".into(),
                    ));
                }
                Some(Err(e)) => return Err(Abort::from_read_error(e, st.config.max_frame)),
                Some(Ok(Frame::Close(..))) if !self.frames.stream_begun() => {
                    // Closed before any stream data: the client learnt from
                    // CONFIG that it has nothing to push (or changed its mind).
                    return Ok(Received::Withdrawn);
                }
                Some(Ok(Frame::Close(..))) => {
                    return Err(Abort::Cut("client closed before the push finished".into()));
                }
                Some(Ok(m)) => m,
            };
            if let Some(begin) = self.delta_begin(&msg)? {
                return Ok(Received::Delta(begin));
            }
            let action = match &msg {
                Frame::Binary(b) => self.frames.frame(FrameIn::Binary(b)),
                Frame::Text(t) => self.frames.frame(FrameIn::Text(t)),
                _ => continue, // ping/pong: the websocket layer answers pings
            };
            first_frame = false;
            let action = action.map_err(|e| Abort::Client(e.0))?;
            self.act(action, &msg).await?;
            if self.frames.ended() {
                return Ok(Received::Ended);
            }
        }
    }

    /// A verified push: the client's STREAMDIGEST, which must come next and
    /// match what arrived, or nothing is stored.
    async fn check_digest(&mut self, link: &mut Session) -> Result<(), Abort> {
        let st = self.st;
        let activity = link.activity.clone();
        loop {
            let frame = tokio::select! {
                f = recv(&mut link.rx, &activity) => f,
                _ = activity.idle(st.config.idle_timeout) => {
                    return Err(Abort::Client("no stream digest from the client".into()));
                }
            };
            let b = match frame {
                Some(Ok(Frame::Binary(b))) => b,
                Some(Ok(Frame::Ping(_) | Frame::Pong(_))) => continue,
                Some(Err(e)) => return Err(Abort::from_read_error(e, st.config.max_frame)),
                _ => {
                    return Err(Abort::Cut(
                        "connection closed before the stream digest".into(),
                    ));
                }
            };
            match self.frames.frame(FrameIn::Binary(&b)) {
                Ok(PushAction::Digest(d)) if d == self.frames.stream_digest() => return Ok(()),
                Ok(PushAction::Digest(_)) => {
                    return Err(Abort::Client(
                        "the stream was damaged on its way to the server (its digest does not match); nothing was stored, push again".into(),
                    ));
                }
                Ok(PushAction::Skip | PushAction::Control(_)) => continue,
                Ok(_) => return Err(Abort::Client("data after ORIGIN_END".into())),
                Err(e) => return Err(Abort::Client(e.0)),
            }
        }
    }

    /// Does what [`PushFrames`] decided for a frame.
    async fn act(&mut self, action: PushAction, msg: &Frame) -> Result<(), Abort> {
        let (st, ctx, r) = (self.st, self.ctx, &self.ctx.replica);
        match action {
            PushAction::Skip | PushAction::Buffered | PushAction::Digest(_) => {}
            PushAction::Control(c) => {
                let key_request = c == ClientControl::KeyRequest;
                let mut cfg = config_for(
                    ctx,
                    latest_number(&self.state),
                    key_request,
                    &mut self.keys_issued,
                );
                // Asked before any stream: the latest version's hash, so a
                // client holding exactly that content can stop here
                // (client::unchanged) instead of syncing to no effect.
                if !self.frames.stream_begun() {
                    let latest = latest_row(st, r, latest_number(&self.state))?;
                    cfg.version_xxh3 = latest.as_ref().and_then(|v| v.version_xxh3.clone());
                    cfg.version_hash = latest.map(|v| v.version_hash);
                }
                send_out(&self.out, config_text(cfg)).await;
            }
            PushAction::Start { page_size, bytes } => {
                let guard = StagingGuard(st.store.staging_path(r));
                let t = std::time::Instant::now();
                self.base_pages =
                    prepare_staging(st, r, self.latest.as_deref(), &guard.0, page_size).await?;
                tracing::debug!(secs = t.elapsed().as_secs_f64(), "staging copy ready");
                let (dir, name) = split_file(&guard.0);
                let mut h = spawn_helper(&HelperCommand::replica(&r.path, name).current_dir(dir))?;
                let stdout = h.stdout.take().expect("piped stdout");
                let pumped = pump_replica(stdout, ctx.framing, self.out.clone());
                self.pump = Some(tokio::spawn(pumped));
                self.staging = Some(guard);
                write_helper(&mut h, &bytes, st.config.idle_timeout).await?;
                self.helper = Some(h);
            }
            PushAction::Forward => {
                if let (Some(h), Frame::Binary(b)) = (self.helper.as_mut(), msg) {
                    write_helper(h, b, st.config.idle_timeout).await?;
                }
            }
        }
        Ok(())
    }

    /// ORIGIN_END is in: lets the replica finish (its stdin closes), then
    /// waits for its stream and its exit.
    async fn end_helper(&mut self) -> Result<(PumpEnd, std::process::ExitStatus), Abort> {
        tracing::debug!("origin stream ended");
        let h = self
            .helper
            .as_mut()
            .ok_or_else(|| Abort::server("the server's replica side is missing", ""))?;
        h.stdin = None;
        let pumped = match self.pump.take() {
            Some(p) => tokio::time::timeout(Duration::from_secs(600), p)
                .await
                .map_err(|_| Abort::server("the server's replica side did not finish", ""))?
                .map_err(|e| Abort::server("the server's replica side failed", e))?,
            None => return Err(Abort::server("the server's replica side is missing", "")),
        };
        let status = h
            .wait(Duration::from_secs(60))
            .await
            .ok_or_else(|| Abort::server("the server's sync helper did not exit", ""))?
            .map_err(|e| Abort::server("the server's sync helper failed", e))?;
        Ok((pumped, status))
    }

    /// A version is stored only from a clean stream both ways, a helper
    /// that exited, and every page of the result sent or already there.
    fn judge(&self, (pumped, status): &(PumpEnd, std::process::ExitStatus)) -> Result<(), Abort> {
        if let Some(e) = stream_error(pumped) {
            return Err(Abort::server("the server's replica side failed", e));
        }
        if let Some(e) = pumped.replica.errors.first() {
            let public = helper_failure(e, "the server's replica side refused the push");
            return Err(Abort::rejected(public, e));
        }
        let summary = self.frames.summary();
        if let Some(e) = summary.errors.first() {
            return Err(Abort::Client(format!("the origin reported an error: {e}")));
        }
        if !summary.complete() || !status.success() {
            return Err(Abort::Client(
                "the push ended without a complete transaction".into(),
            ));
        }
        let final_count = summary.txn_page_count.unwrap_or(0);
        if let Some(p) = self.frames.missing_page(self.base_pages, summary.page_size) {
            return Err(Abort::Client(format!(
                "the origin committed {final_count} pages but never sent page {p}"
            )));
        }
        Ok(())
    }

    /// Stores the staging file as the new version (or notes no change),
    /// with the keys issued on KEYREQUEST in the same transaction.
    async fn commit(mut self, done: Done) -> Result<PushEnd, Abort> {
        let (st, ctx, r) = (self.st, self.ctx, &self.ctx.replica);
        let Done {
            final_count,
            sent_pages,
            expect_xxh3,
        } = done;
        let message = self.frames.message().to_string();
        let new_keys: Vec<_> = self
            .keys_issued
            .pending()
            .iter()
            .map(PendingKey::record)
            .collect();
        let store = st.store.clone();
        let replica = r.clone();
        let staging = self.staging.take().ok_or_else(|| {
            Abort::server("the server lost the pushed copy", "staging file missing")
        })?;
        let mut keys_issued = self.keys_issued;
        tracing::debug!("replica side finished; committing");
        let commit_started = std::time::Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            // The keys sent on KEYREQUEST are stored with the version, in its
            // transaction: a push that fails leaves none behind.
            let res = store
                .commit(
                    &replica,
                    &Pushed {
                        staging: &staging.0,
                        sent_pages: &sent_pages,
                        final_count,
                        message: &message,
                        keys: &new_keys,
                        expect_xxh3: expect_xxh3.as_deref(),
                    },
                )
                .and_then(|o| {
                    if matches!(o, CommitOutcome::NoChange(_)) && !new_keys.is_empty() {
                        // An unchanged push succeeded too: keep its keys.
                        store.meta().add_keys(&new_keys)?;
                    }
                    Ok(o)
                });
            drop(staging);
            res
        })
        .await
        .map_err(|e| Abort::server("the server could not store the version", e))?
        .map_err(|e| {
            if let Some(m) = e.downcast_ref::<super::store::NotTheHashedVersion>() {
                return Abort::rejected(delta::NOT_HASHED, m);
            }
            tracing::error!(error = %format!("{e:#}"), "commit failed");
            Abort::server(
                store_failure(&e, "the server could not store the version"),
                format!("{e:#}"),
            )
        })?;
        st.metrics
            .push_committed(commit_started.elapsed().as_secs_f64());
        match outcome {
            CommitOutcome::Committed(row) => {
                let mut cfg = config_for(ctx, row.number, false, &mut keys_issued);
                cfg.version_hash = Some(row.version_hash.clone());
                cfg.version_xxh3 = row.version_xxh3.clone();
                Ok(PushEnd::Committed(cfg, row))
            }
            CommitOutcome::NoChange(row) => {
                let n = row.as_ref().map_or(0, |r| r.number);
                let mut cfg = config_for(ctx, n, false, &mut keys_issued);
                cfg.version_xxh3 = row.as_ref().and_then(|r| r.version_xxh3.clone());
                cfg.version_hash = row.map(|r| r.version_hash);
                Ok(PushEnd::NoChange(cfg, n))
            }
        }
    }
}

/// The client's text for a store error: a full disk says so (the client
/// can do nothing else about it, and it is no secret), anything else is
/// `otherwise`; the error itself goes to the log.
fn store_failure(e: &anyhow::Error, otherwise: &str) -> String {
    if super::store::is_out_of_space(e) {
        DISK_FULL.into()
    } else {
        otherwise.into()
    }
}

/// The client's text for what our helper reported: SQLite's words for a
/// full disk ("database or disk is full") say that the server's disk is
/// full, anything else is `otherwise`; the helper's text goes to the log.
fn helper_failure(said: &str, otherwise: &str) -> String {
    if said.contains("disk is full") || said.contains("No space left") {
        DISK_FULL.into()
    } else {
        otherwise.into()
    }
}

/// What a push is told when the server's disk is full.
const DISK_FULL: &str = "the server's disk is full; nothing was stored";

fn latest_number(state: &ReplicaState) -> u64 {
    state.latest().map_or(0, |f| f.number)
}

/// Keys made for this session on KEYREQUEST (each kind at most once),
/// stored only when the push succeeds.
#[derive(Default)]
struct KeysIssued {
    pull: Option<PendingKey>,
    push: Option<PendingKey>,
}

impl KeysIssued {
    fn pending(&self) -> Vec<PendingKey> {
        self.pull.iter().chain(&self.push).cloned().collect()
    }
}

/// The row of `version` (none before the first).
fn latest_row(st: &AppState, r: &ReplicaRow, version: u64) -> Result<Option<VersionRow>, Abort> {
    if version == 0 {
        return Ok(None);
    }
    st.store.meta().version(r, version).map_err(|e| {
        Abort::server(
            format!("the server could not read version {version}"),
            format!("{e:#}"),
        )
    })
}

/// The CONFIG answer; on KEYREQUEST a new Replica Pull key, and for a push
/// authorised by the Account Admin key a new Replica Push key (made now,
/// stored with the version), both tied to the key that authorised the
/// push: revoking it revokes them.
fn config_for(
    ctx: &PushContext,
    version: u64,
    key_request: bool,
    issued: &mut KeysIssued,
) -> ServerConfig {
    let r = &ctx.replica;
    if key_request {
        let by = &ctx.key;
        issued
            .pull
            .get_or_insert_with(|| PendingKey::minted(KeyKind::ReplicaPull, r, by, MintedOn::Push));
        if by.kind == KeyKind::Admin {
            issued.push.get_or_insert_with(|| {
                PendingKey::minted(KeyKind::ReplicaPush, r, by, MintedOn::Push)
            });
        }
    }
    let shown = |k: &Option<PendingKey>| {
        if key_request {
            k.as_ref().map(|k| k.key.clone())
        } else {
            None
        }
    };
    ServerConfig {
        replica_id: Some(r.uid.clone()),
        replica_path: Some(r.path.clone()),
        committed_version_id: Some(version.to_string()),
        new_pull_key: shown(&issued.pull),
        new_push_key: shown(&issued.push),
        version_hash: None,
        version_xxh3: None,
    }
}

/// The staging file: a copy of the latest version when the page size
/// matches (so only changed pages travel), otherwise a new empty database.
/// Returns the pages it starts with.
async fn prepare_staging(
    st: &AppState,
    r: &ReplicaRow,
    latest: Option<&super::store::VersionFile>,
    staging: &Path,
    page_size: u32,
) -> Result<u32, Abort> {
    let Some(latest) = latest else { return Ok(0) };
    let src = latest.path.clone();
    let dst = staging.to_path_buf();
    let store = st.store.clone();
    let number = latest.number;
    let rr = r.clone();
    let state = st.store.replica_state(r);
    tokio::task::spawn_blocking(move || -> anyhow::Result<u32> {
        let v = store
            .meta()
            .version(&rr, number)?
            .ok_or_else(|| anyhow::anyhow!("latest version row missing"))?;
        if v.page_size == page_size {
            // The spare copy of this version, ready and synced, if the
            // replica is hot (store::spare); else a copy now.
            if let Some(spare) = state.take_spare(number) {
                match std::fs::rename(&spare, &dst) {
                    Ok(()) => {
                        tracing::debug!("staging copy: the spare");
                        return Ok(v.page_count);
                    }
                    Err(_) => {
                        let _ = std::fs::remove_file(&spare);
                    }
                }
            }
            std::fs::copy(&src, &dst)?;
            start_writeback(&dst);
            return Ok(v.page_count);
        }
        Ok(0)
    })
    .await
    .map_err(|e| Abort::server("the server could not prepare the push", e))?
    .map_err(|e| {
        Abort::server(
            store_failure(&e, "the server could not prepare the push"),
            format!("{e:#}"),
        )
    })
}

/// Starts writing the fresh staging copy to disk now, without waiting: the
/// commit must fsync the whole file before the metadata may point at it,
/// and by then (a sync takes a while) most of it is already on disk, so
/// that fsync only waits for the pages the push changed.
fn start_writeback(path: &Path) {
    #[cfg(target_os = "linux")]
    if let Ok(f) = std::fs::File::open(path) {
        // On its own thread: queueing 100 MB of writeback can itself block
        // for a while, and the helper should start meanwhile.
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: a plain syscall on a descriptor we own; a failure
            // only means the commit's fsync does all the work.
            unsafe {
                libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        });
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
}

/// Writes to the helper's stdin; a failure means the helper stopped, which
/// the pump reports.
///
/// Bounded by the idle timeout: the helper stops reading while its own
/// output is not taken, and its output waits on a client that may have
/// stopped reading. Without the bound a session stuck here would never get
/// back to the loop that watches for idleness, and would keep its staging
/// file, push lock and slot forever.
async fn write_helper(h: &mut Helper, data: &[u8], limit: Duration) -> Result<(), Abort> {
    let Some(stdin) = h.stdin.as_mut() else {
        return Ok(());
    };
    match tokio::time::timeout(limit, stdin.write_all(data)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => {
            h.stdin = None;
            Ok(())
        }
        Err(_) => Err(Abort::Client(
            "the sync stalled: the client is not reading the server's answers".into(),
        )),
    }
}

/// Carries the helper's REPLICA stream (its hashes and its verdict) to
/// the client, following it for REPLICA_ERROR (the helper always exits 0).
async fn pump_replica(
    stdout: tokio::process::ChildStdout,
    framing: Framing,
    out: OutTx,
) -> PumpEnd {
    let ctx = PumpCtx {
        stats: std::sync::Arc::new(Stats::default()),
        observer: None,
        keep_reading: false,
    };
    pump(
        stdout,
        Direction::FromReplica,
        framing,
        Controls::default(),
        out,
        ctx,
    )
    .await
}

/// The helper wrote something that is not a sqlite3_rsync stream (a read
/// error is its end, like EOF).
fn stream_error(p: &PumpEnd) -> Option<String> {
    match &p.error {
        Some(PumpError::Stream(e)) => Some(e.to_string()),
        _ => None,
    }
}
